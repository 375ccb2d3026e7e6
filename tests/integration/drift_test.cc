// Accuracy drift of the real quantserve binary: an INT8 digits_mlp whose calibration data
// was scaled by 1e-3 (activation ranges far too small, so everything saturates) drifts
// past drift.relative_l2_bound, its guard trips and the daemon reloads it at FP32 while
// requests keep succeeding; the same model calibrated properly stays under the bound.
//
// The suite builds one temporary repository from ${PROJECT_BINARY_DIR}/test_repo
// (ctest fixture test_repo): digits_damaged and digits_good, both copies of digits_mlp
// version 1 with every Gemm quantized (disable_default_exclusions), calibrated on
// held-out rows 0..99 (scaled by 1e-3 for digits_damaged), and
//   drift { sample_rate: 1 relative_l2_bound: 0.05 window_size: 20
//           guard_enabled: true fallback_precision: FP32 }.
// Traffic is held-out rows 100..359, one row per request. Each test starts its own
// daemon; measured figures are printed as "[ figure   ] ..." lines.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/npy.h"
#include "engine/tensor.h"
#include "grpc_service.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_process.h"

namespace qs {
namespace {

namespace fs = std::filesystem;

const std::string kTestRepo = QS_BINARY_DIR "/test_repo";
const std::string kBinary = QS_BINARY_DIR "/server/quantserve";
constexpr int64_t kCalibrationRows = 100;
constexpr double kBound = 0.05;

void Figure(const std::string& text) { std::printf("[ figure   ] %s\n", text.c_str()); }

// ---- HTTP GET over a plain socket (HTTP/1.0) and the text exposition format ----

std::optional<std::string> HttpGetBody(int port, const std::string& target) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return std::nullopt;
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return std::nullopt;
  }
  const std::string request =
      "GET " + target + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    ::close(fd);
    return std::nullopt;
  }
  std::string raw;
  char buf[8192];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) raw.append(buf, static_cast<size_t>(n));
  ::close(fd);
  const size_t header_end = raw.find("\r\n\r\n");
  if (n < 0 || header_end == std::string::npos || raw.find(" 200 ") == std::string::npos)
    return std::nullopt;
  return raw.substr(header_end + 4);
}

// Sample key as prometheus-cpp writes it: labels sorted by name.
std::string Key(const std::string& name, const std::map<std::string, std::string>& labels) {
  std::string key = name + "{";
  bool first = true;
  for (const auto& [k, v] : labels) {
    key += (first ? "" : ",") + k + "=\"" + v + "\"";
    first = false;
  }
  return key + "}";
}

std::map<std::string, double> Scrape(int port) {
  std::map<std::string, double> out;
  auto body = HttpGetBody(port, "/metrics");
  EXPECT_TRUE(body.has_value()) << "cannot scrape port " << port;
  if (!body) return out;
  std::istringstream in(*body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    const size_t brace = line.find('}');
    const size_t space = line.find(' ', brace == std::string::npos ? 0 : brace);
    if (space == std::string::npos) continue;
    out[line.substr(0, space)] = std::strtod(line.c_str() + space + 1, nullptr);
  }
  return out;
}

double Get(const std::map<std::string, double>& s, const std::string& key) {
  auto it = s.find(key);
  return it == s.end() ? -1 : it->second;
}

// ---- the repository ----

std::string Config(const std::string& name) {
  return "name: \"" + name + R"pb("
max_batch_size: 32
input [ { name: "input" data_type: TYPE_FP32 dims: [ 64 ] } ]
output [ { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [ { kind: KIND_CPU count: 1 } ]
quantization {
  precision: INT8
  calibration { data_dir: "calibration" }
  disable_default_exclusions: true
}
drift {
  sample_rate: 1
  relative_l2_bound: 0.05
  window_size: 20
  guard_enabled: true
  fallback_precision: FP32
}
)pb";
}

Tensor Rows(const Tensor& t, int64_t begin, int64_t count, float scale) {
  Shape shape = t.shape();
  shape[0] = count;
  Tensor out(DataType::kFloat32, shape);
  const int64_t width = t.num_elements() / t.dim(0);
  const float* src = t.data<float>() + begin * width;
  for (int64_t i = 0; i < count * width; ++i) out.data<float>()[i] = src[i] * scale;
  return out;
}

class DriftTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/qs_drift_test_XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    root_ = new std::string(tmpl);
    auto x = ReadNpy(kTestRepo + "/digits_mlp/testdata/x.npy");
    ASSERT_TRUE(x.ok()) << x.status() << " (run the test_repo fixture)";
    auto y = ReadNpy(kTestRepo + "/digits_mlp/testdata/y.npy");
    ASSERT_TRUE(y.ok()) << y.status();
    x_ = new Tensor(*x);
    y_ = new Tensor(*y);
    for (const auto& [name, scale] :
         {std::pair<std::string, float>{"digits_damaged", 1e-3f}, {"digits_good", 1.0f}}) {
      const fs::path dir = fs::path(*root_) / name;
      fs::create_directories(dir / "1");
      fs::create_directories(dir / "calibration");
      fs::copy_file(kTestRepo + "/digits_mlp/1/model.onnx", dir / "1" / "model.onnx");
      std::ofstream(dir / "config.pbtxt") << Config(name);
      ASSERT_TRUE(WriteNpy((dir / "calibration" / "input.npy").string(),
                           Rows(*x, 0, kCalibrationRows, scale))
                      .ok());
    }
  }
  static void TearDownTestSuite() {
    if (root_ != nullptr) fs::remove_all(*root_);
    delete root_;
    delete x_;
    delete y_;
  }

  void SetUp() override {
    ASSERT_TRUE(daemon_.Start(kBinary, {"--model-repository=" + *root_})) << daemon_.log();
    ASSERT_GT(daemon_.metrics_port(), 0);
    stub_ = inference::GRPCInferenceService::NewStub(
        grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override { EXPECT_EQ(daemon_.Stop(SIGTERM), 0) << daemon_.log(); }

  // Sends held-out rows [begin, end) one per request; returns the number answered
  // correctly (argmax == label). Every request must succeed.
  int SendRows(const std::string& model, int64_t begin, int64_t end) {
    int correct = 0;
    for (int64_t row = begin; row < end; ++row) {
      inference::ModelInferRequest req;
      req.set_model_name(model);
      auto* in = req.add_inputs();
      in->set_name("input");
      in->set_datatype("FP32");
      in->add_shape(1);
      in->add_shape(64);
      req.add_raw_input_contents(
          reinterpret_cast<const char*>(x_->data<float>() + row * 64), 64 * sizeof(float));
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      inference::ModelInferResponse resp;
      grpc::Status st = stub_->ModelInfer(&ctx, req, &resp);
      EXPECT_TRUE(st.ok()) << model << " row " << row << ": " << st.error_message();
      if (!st.ok() || resp.raw_output_contents_size() != 1 ||
          resp.raw_output_contents(0).size() != 10 * sizeof(float)) {
        ++failures_;
        continue;
      }
      const float* p = reinterpret_cast<const float*>(resp.raw_output_contents(0).data());
      int best = 0;
      for (int k = 1; k < 10; ++k)
        if (p[k] > p[best]) best = k;
      correct += best == y_->data<int64_t>()[row];
    }
    return correct;
  }

  inference::Precision Precision(const std::string& model) {
    grpc::ClientContext ctx;
    inference::ModelConfigRequest req;
    req.set_name(model);
    inference::ModelConfigResponse resp;
    grpc::Status st = stub_->ModelConfig(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.config().quantization().precision();
  }

  // Polls `done` for up to 60 s.
  template <typename Pred>
  bool Eventually(Pred done) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return done();
  }

  static std::string* root_;
  static Tensor* x_;
  static Tensor* y_;
  testing::DaemonProcess daemon_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
  int failures_ = 0;
};
std::string* DriftTest::root_ = nullptr;
Tensor* DriftTest::x_ = nullptr;
Tensor* DriftTest::y_ = nullptr;

const std::map<std::string, std::string> kDamaged = {{"model", "digits_damaged"},
                                                     {"version", "1"}};
const std::map<std::string, std::string> kGood = {{"model", "digits_good"}, {"version", "1"}};

std::map<std::string, std::string> With(std::map<std::string, std::string> labels,
                                        const std::string& k, const std::string& v) {
  labels[k] = v;
  return labels;
}

TEST_F(DriftTest, DamagedCalibrationTripsTheGuardAndFallsBackToFp32) {
  ASSERT_EQ(Precision("digits_damaged"), inference::INT8);
  const int64_t rows = x_->dim(0);
  const int64_t half = kCalibrationRows + (rows - kCalibrationRows) / 2;
  const int before = SendRows("digits_damaged", kCalibrationRows, half);
  Figure("digits_damaged INT8 (damaged calibration) accuracy while the guard evaluates: " +
         std::to_string(before) + "/" + std::to_string(half - kCalibrationRows));

  // The guard trips on the monitor's thread and the reload runs in the background.
  EXPECT_TRUE(daemon_.WaitForLog(
      "drift guard tripped: model 'digits_damaged' version 1 output 'probabilities'"))
      << daemon_.log();
  ASSERT_TRUE(Eventually([&] { return Precision("digits_damaged") == inference::FP32; }))
      << daemon_.log();
  const auto s = Scrape(daemon_.metrics_port());
  // The version keeps its guard series after the fallback, at 1.
  EXPECT_EQ(Get(s, Key("quantserve_drift_guard_tripped", kDamaged)), 1) << daemon_.log();
  EXPECT_GE(Get(s, Key("quantserve_drift_samples_total", kDamaged)), 20);
  // The precision label of the memory gauges shows the switch (the INT8 series goes
  // once the old version's workers have drained).
  EXPECT_GT(Get(s, Key("quantserve_model_weight_bytes", With(kDamaged, "precision", "FP32"))),
            0);
  EXPECT_TRUE(Eventually([&] {
    return Scrape(daemon_.metrics_port())
               .count(Key("quantserve_model_weight_bytes",
                          With(kDamaged, "precision", "INT8"))) == 0;
  }));

  // The logged figure is above the bound.
  const std::string log = daemon_.log();
  const size_t at = log.find("mean relative L2 ", log.find("drift guard tripped"));
  ASSERT_NE(at, std::string::npos);
  const double figure = std::strtod(log.c_str() + at + 17, nullptr);
  Figure("digits_damaged windowed relative L2 at the trip: " + std::to_string(figure));
  EXPECT_GT(figure, kBound);

  // Served at FP32 now: the rest of the rows are answered like the FP32 model.
  const int after = SendRows("digits_damaged", half, rows);
  Figure("digits_damaged accuracy after the fallback to FP32: " + std::to_string(after) +
         "/" + std::to_string(rows - half));
  EXPECT_GE(after, 0.9 * static_cast<double>(rows - half));
  EXPECT_EQ(failures_, 0);
  const auto t = Scrape(daemon_.metrics_port());
  for (const char* outcome : {"rejected", "cancelled", "timeout", "invalid", "internal"}) {
    EXPECT_EQ(Get(t, Key("quantserve_requests_total", With(kDamaged, "outcome", outcome))),
              0)
        << outcome;
  }
  EXPECT_EQ(log.find("drift guard tripped: model 'digits_good'"), std::string::npos);
  // The daemon's account of the switch, for the ctest log.
  std::istringstream lines(daemon_.log());
  for (std::string line; std::getline(lines, line);) {
    if (line.find("digits_damaged") != std::string::npos &&
        (line.find("drift") != std::string::npos || line.find("loaded") != std::string::npos))
      std::printf("[ log      ] %s\n", line.c_str());
  }
}

TEST_F(DriftTest, ProperCalibrationStaysUnderTheBound) {
  ASSERT_EQ(Precision("digits_good"), inference::INT8);
  const int64_t rows = x_->dim(0);
  const int correct = SendRows("digits_good", kCalibrationRows, rows);
  Figure("digits_good INT8 accuracy: " + std::to_string(correct) + "/" +
         std::to_string(rows - kCalibrationRows));
  EXPECT_EQ(failures_, 0);
  // Every execution is sampled (sample_rate 1, no cap): wait until the monitor has
  // compared or dropped all of them.
  std::map<std::string, double> s;
  ASSERT_TRUE(Eventually([&] {
    s = Scrape(daemon_.metrics_port());
    const double executions = Get(s, Key("quantserve_executions_total", kGood));
    return executions > 0 &&
           Get(s, Key("quantserve_drift_samples_total", kGood)) +
                   Get(s, Key("quantserve_drift_samples_dropped_total", kGood)) ==
               executions;
  }));
  const double samples = Get(s, Key("quantserve_drift_samples_total", kGood));
  Figure("digits_good drift samples compared: " + std::to_string(samples) + ", dropped: " +
         std::to_string(Get(s, Key("quantserve_drift_samples_dropped_total", kGood))));
  EXPECT_GE(samples, 20);
  const auto out = With(kGood, "output", "probabilities");
  const double window = Get(s, Key("quantserve_drift_window_relative_l2", out));
  const double rows_seen = Get(s, Key("quantserve_drift_relative_l2_count", out));
  const double mean = Get(s, Key("quantserve_drift_relative_l2_sum", out)) / rows_seen;
  Figure("digits_good relative L2: window mean " + std::to_string(window) +
         ", mean over all rows " + std::to_string(mean) + " (bound 0.05)");
  Figure("digits_good load-time relative L2 (precision report): " +
         std::to_string(Get(s, Key("quantserve_model_load_relative_l2", out))));
  EXPECT_GE(window, 0);
  EXPECT_LT(window, kBound);
  EXPECT_GE(rows_seen, samples);
  EXPECT_GE(Get(s, Key("quantserve_model_load_relative_l2", out)), 0);
  EXPECT_GT(Get(s, Key("quantserve_drift_reference_bytes", kGood)), 0);
  EXPECT_EQ(Get(s, Key("quantserve_drift_guard_tripped", kGood)), 0);
  EXPECT_EQ(Precision("digits_good"), inference::INT8);
  EXPECT_EQ(daemon_.log().find("drift guard tripped"), std::string::npos) << daemon_.log();
}

}  // namespace
}  // namespace qs
