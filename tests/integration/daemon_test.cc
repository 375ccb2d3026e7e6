// Starts the real quantserve binary on the generated test repository and calls every
// foundation RPC over gRPC.
#include <signal.h>

#include <cstring>
#include <map>
#include <memory>

#include "engine/npy.h"
#include "grpc_service.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "tests/integration/daemon_process.h"

namespace qs {
namespace {

const std::string kRepo = QS_BINARY_DIR "/test_repo";
const std::string kBinary = QS_BINARY_DIR "/server/quantserve";

class DaemonTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new testing::DaemonProcess();
    ASSERT_TRUE(daemon_->Start(kBinary, {"--model-repository=" + kRepo}))
        << daemon_->log();
    channel_ = grpc::CreateChannel(daemon_->address(), grpc::InsecureChannelCredentials());
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
    channel_.reset();
  }
  std::unique_ptr<inference::GRPCInferenceService::Stub> Stub() {
    return inference::GRPCInferenceService::NewStub(channel_);
  }

  static testing::DaemonProcess* daemon_;
  static std::shared_ptr<grpc::Channel> channel_;
};
testing::DaemonProcess* DaemonTest::daemon_ = nullptr;
std::shared_ptr<grpc::Channel> DaemonTest::channel_;

TEST_F(DaemonTest, LiveReadyAndMetadata) {
  grpc::ClientContext c1, c2, c3;
  inference::ServerLiveResponse live;
  ASSERT_TRUE(Stub()->ServerLive(&c1, {}, &live).ok());
  EXPECT_TRUE(live.live());
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(Stub()->ServerReady(&c2, {}, &ready).ok());
  EXPECT_TRUE(ready.ready());
  inference::ServerMetadataResponse meta;
  ASSERT_TRUE(Stub()->ServerMetadata(&c3, {}, &meta).ok());
  EXPECT_EQ(meta.name(), "quantserve");
  EXPECT_FALSE(meta.version().empty());
  EXPECT_NE(std::find(meta.extensions().begin(), meta.extensions().end(), "model_repository"),
            meta.extensions().end());
}

TEST_F(DaemonTest, HealthCheck) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  grpc::ClientContext c1, c2;
  grpc::health::v1::HealthCheckRequest req;
  grpc::health::v1::HealthCheckResponse resp;
  ASSERT_TRUE(health->Check(&c1, req, &resp).ok());
  EXPECT_EQ(resp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  req.set_service("no.such.Service");
  EXPECT_EQ(health->Check(&c2, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(DaemonTest, ModelReadyAndUnknownModel) {
  grpc::ClientContext c1, c2, c3;
  inference::ModelReadyRequest req;
  inference::ModelReadyResponse resp;
  req.set_name("tiny");
  ASSERT_TRUE(Stub()->ModelReady(&c1, req, &resp).ok());
  EXPECT_TRUE(resp.ready());
  req.set_name("no_such_model");
  EXPECT_EQ(Stub()->ModelReady(&c2, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  req.set_name("../tiny");
  EXPECT_EQ(Stub()->ModelReady(&c3, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(DaemonTest, ModelMetadataDerivedFromGraph) {
  grpc::ClientContext ctx;
  inference::ModelMetadataRequest req;
  inference::ModelMetadataResponse resp;
  req.set_name("tiny");
  ASSERT_TRUE(Stub()->ModelMetadata(&ctx, req, &resp).ok());
  EXPECT_EQ(resp.name(), "tiny");
  ASSERT_EQ(resp.versions_size(), 1);  // default policy: latest 1
  EXPECT_EQ(resp.versions(0), "2");
  ASSERT_EQ(resp.inputs_size(), 1);
  EXPECT_EQ(resp.inputs(0).name(), "x");
  EXPECT_EQ(resp.inputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(resp.inputs(0).shape().begin(), resp.inputs(0).shape().end()),
            (std::vector<int64_t>{-1, 4}));
  ASSERT_EQ(resp.outputs_size(), 1);
  EXPECT_EQ(resp.outputs(0).name(), "y");
}

TEST_F(DaemonTest, ModelConfigIsCompleted) {
  grpc::ClientContext c1, c2;
  inference::ModelConfigRequest req;
  inference::ModelConfigResponse resp;
  req.set_name("tiny");
  ASSERT_TRUE(Stub()->ModelConfig(&c1, req, &resp).ok());
  EXPECT_EQ(resp.config().name(), "tiny");
  EXPECT_EQ(resp.config().max_batch_size(), 4);
  ASSERT_EQ(resp.config().input_size(), 1);
  EXPECT_EQ(resp.config().input(0).data_type(), inference::TYPE_FP32);
  ASSERT_EQ(resp.config().input(0).dims_size(), 1);
  EXPECT_EQ(resp.config().input(0).dims(0), 4);
  req.set_name("digits_mlp");
  ASSERT_TRUE(Stub()->ModelConfig(&c2, req, &resp).ok());
  EXPECT_EQ(resp.config().max_batch_size(), 32);
}

TEST_F(DaemonTest, RepositoryIndexReportsStatesAndReasons) {
  grpc::ClientContext ctx;
  inference::RepositoryIndexResponse resp;
  ASSERT_TRUE(Stub()->RepositoryIndex(&ctx, {}, &resp).ok());
  std::map<std::string, inference::RepositoryIndexResponse::ModelIndex> by_name;
  for (const auto& m : resp.models()) by_name[m.name()] = m;
  EXPECT_EQ(by_name["tiny"].state(), "READY");
  EXPECT_EQ(by_name["digits_mlp"].state(), "READY");
  EXPECT_EQ(by_name["ignored_fields"].state(), "READY");
  EXPECT_EQ(by_name["truncated"].state(), "UNAVAILABLE");
  EXPECT_NE(by_name["truncated"].reason().find("model.onnx"), std::string::npos)
      << by_name["truncated"].reason();
  EXPECT_EQ(by_name["bad_config"].state(), "UNAVAILABLE");
  EXPECT_NE(by_name["bad_config"].reason().find("config.pbtxt:3:"), std::string::npos)
      << by_name["bad_config"].reason();
  EXPECT_EQ(by_name["missing_input"].state(), "UNAVAILABLE");
  EXPECT_NE(by_name["missing_input"].reason().find("not_in_model"), std::string::npos)
      << by_name["missing_input"].reason();
  EXPECT_EQ(by_name.count("bad..name"), 0u);
  // The ignored Triton fields were reported in the log, not fatal.
  EXPECT_NE(daemon_->log().find("execution_accelerators"), std::string::npos);
}

inference::ModelInferRequest TinyRequest(const std::vector<float>& x) {
  inference::ModelInferRequest req;
  req.set_model_name("tiny");
  req.set_id("req-7");
  auto* in = req.add_inputs();
  in->set_name("x");
  in->set_datatype("FP32");
  in->add_shape(static_cast<int64_t>(x.size() / 4));
  in->add_shape(4);
  req.add_raw_input_contents(reinterpret_cast<const char*>(x.data()), x.size() * 4);
  return req;
}

TEST_F(DaemonTest, ModelInferComputesTinyModel) {
  grpc::ClientContext ctx;
  inference::ModelInferResponse resp;
  auto req = TinyRequest({1, 2, 3, 4});
  grpc::Status st = Stub()->ModelInfer(&ctx, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.id(), "req-7");
  EXPECT_EQ(resp.model_version(), "2");
  ASSERT_EQ(resp.raw_output_contents_size(), 1);
  ASSERT_EQ(resp.raw_output_contents(0).size(), 12u);
  float y[3];
  std::memcpy(y, resp.raw_output_contents(0).data(), 12);
  // Version 2 of tests/fixtures/make_bad_models.py's tiny model (exact in FP32).
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], 1.5f);
  EXPECT_EQ(y[2], 11.25f);
}

TEST_F(DaemonTest, ModelInferRejectsBadInputPrecisely) {
  {
    grpc::ClientContext ctx;
    inference::ModelInferResponse resp;
    auto req = TinyRequest({1, 2, 3, 4});
    req.mutable_inputs(0)->set_shape(1, 5);
    grpc::Status st = Stub()->ModelInfer(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("'x'"), std::string::npos) << st.error_message();
    EXPECT_NE(st.error_message().find("[-1,4]"), std::string::npos) << st.error_message();
  }
  {
    grpc::ClientContext ctx;
    inference::ModelInferResponse resp;
    auto req = TinyRequest({1, 2, 3, 4});
    req.set_model_name("no_such_model");
    EXPECT_EQ(Stub()->ModelInfer(&ctx, req, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    inference::ModelInferResponse resp;
    auto req = TinyRequest({1, 2, 3, 4});
    req.mutable_raw_input_contents(0)->resize(10);
    grpc::Status st = Stub()->ModelInfer(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("16"), std::string::npos) << st.error_message();
  }
  {
    grpc::ClientContext ctx;
    inference::ModelInferResponse resp;
    auto req = TinyRequest({1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4});
    grpc::Status st = Stub()->ModelInfer(&ctx, req, &resp);  // batch 5 > max 4
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("max_batch_size"), std::string::npos);
  }
}

TEST_F(DaemonTest, DigitsClassifierMatchesHeldOutLabels) {
  auto x = ReadNpy(kRepo + "/digits_mlp/testdata/x.npy");
  auto y = ReadNpy(kRepo + "/digits_mlp/testdata/y.npy");
  ASSERT_TRUE(x.ok() && y.ok());
  const int64_t n = x->dim(0);
  int correct = 0;
  for (int64_t start = 0; start < n; start += 32) {
    const int64_t b = std::min<int64_t>(32, n - start);
    inference::ModelInferRequest req;
    req.set_model_name("digits_mlp");
    auto* in = req.add_inputs();
    in->set_name("input");
    in->set_datatype("FP32");
    in->add_shape(b);
    in->add_shape(64);
    req.add_raw_input_contents(
        reinterpret_cast<const char*>(x->data<float>() + start * 64), b * 64 * 4);
    grpc::ClientContext ctx;
    inference::ModelInferResponse resp;
    grpc::Status st = Stub()->ModelInfer(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    const float* p = reinterpret_cast<const float*>(resp.raw_output_contents(0).data());
    for (int64_t i = 0; i < b; ++i) {
      const float* row = p + i * 10;
      const int arg = static_cast<int>(std::max_element(row, row + 10) - row);
      correct += arg == y->data<int64_t>()[start + i];
    }
  }
  // scikit-learn's own predictions reach 98.6 % on this split (tools/make_example_models.py
  // asserts the exported graph reproduces them); our engine must match them.
  EXPECT_GE(static_cast<double>(correct) / n, 0.98);
}

TEST_F(DaemonTest, StreamInferMatchesResponsesById) {
  grpc::ClientContext ctx;
  auto stream = Stub()->ModelStreamInfer(&ctx);
  auto a = TinyRequest({1, 2, 3, 4});
  a.set_id("a");
  auto bad = TinyRequest({1, 2, 3, 4});
  bad.set_id("bad");
  bad.set_model_name("no_such_model");
  auto b = TinyRequest({0, 0, 0, 0, 1, 2, 3, 4});
  b.set_id("b");
  ASSERT_TRUE(stream->Write(a));
  ASSERT_TRUE(stream->Write(bad));
  ASSERT_TRUE(stream->Write(b));
  stream->WritesDone();
  std::map<std::string, inference::ModelStreamInferResponse> by_id;
  inference::ModelStreamInferResponse resp;
  while (stream->Read(&resp)) by_id[resp.infer_response().id()] = resp;
  ASSERT_TRUE(stream->Finish().ok());
  ASSERT_EQ(by_id.size(), 3u);
  EXPECT_TRUE(by_id["a"].error_message().empty());
  EXPECT_NE(by_id["bad"].error_message().find("no_such_model"), std::string::npos);
  ASSERT_TRUE(by_id["b"].error_message().empty()) << by_id["b"].error_message();
  const auto& out = by_id["b"].infer_response();
  ASSERT_EQ(out.outputs(0).shape(0), 2);
  float y[6];
  std::memcpy(y, out.raw_output_contents(0).data(), 24);
  EXPECT_EQ(y[4], 1.5f);  // second row = [1,2,3,4]
  EXPECT_EQ(y[5], 11.25f);
}

TEST_F(DaemonTest, ModelStatisticsCountsInferences) {
  grpc::ClientContext ctx;
  inference::ModelStatisticsRequest req;
  req.set_name("tiny");
  inference::ModelStatisticsResponse resp;
  ASSERT_TRUE(Stub()->ModelStatistics(&ctx, req, &resp).ok());
  ASSERT_EQ(resp.model_stats_size(), 1);
  const auto& s = resp.model_stats(0);
  EXPECT_EQ(s.version(), "2");
  EXPECT_GE(s.inference_stats().success().count(), 1u);
  EXPECT_GE(s.inference_count(), s.inference_stats().success().count());
  EXPECT_GE(s.inference_stats().success().ns(), s.inference_stats().compute_infer().ns());
}

TEST(DaemonFlagsTest, HelpListsEveryFlagWithItsDefault) {
  FILE* p = popen((kBinary + " --help 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  for (const char* flag : {"model_repository", "grpc_address", "grpc_port", "metrics_port",
                           "model_control_mode", "load_model", "repository_poll_secs",
                           "exit_timeout_secs", "log_verbose", "grpc_max_message_bytes"}) {
    EXPECT_NE(out.find(std::string("--") + flag), std::string::npos) << flag << "\n" << out;
  }
  EXPECT_NE(out.find("default: 8001"), std::string::npos) << out;
}

// Last: stops the daemon and checks the clean exit.
TEST_F(DaemonTest, ZzSigtermExitsCleanly) {
  EXPECT_EQ(daemon_->Stop(SIGTERM), 0) << daemon_->log();
  if (getenv("QS_PRINT_LOG")) fprintf(stderr, "%s", daemon_->log().c_str());
  EXPECT_NE(daemon_->log().find("stopped"), std::string::npos);
}

}  // namespace
}  // namespace qs
