// Serving behaviour of the real quantserve binary under real gRPC traffic: dynamic
// batching with many concurrent clients, model lifecycle (explicit load/unload/reload,
// poll-mode version switches, failed loads) while requests keep flowing, SIGTERM drain,
// overload admission (max_queue_size), and deadlines / timeouts / cancellation while
// queued.
//
// Every test builds its own model repository in a fresh temporary directory (copies of
// ${PROJECT_BINARY_DIR}/test_repo folders plus config.pbtxt files and, for the "slow"
// model, an ONNX graph written here), starts its own daemon on 127.0.0.1 with ephemeral
// ports, and waits on conditions (log lines, RPC results) rather than sleeping. Measured
// figures are printed as "[ figure ] ..." lines.
#include <signal.h>
#include <stdlib.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "grpc_service.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "health.grpc.pb.h"
#include "onnx/onnx_pb.h"
#include "tests/integration/daemon_process.h"

namespace qs {
namespace {

namespace fs = std::filesystem;
using inference::GRPCInferenceService;

const std::string kTestRepo = QS_BINARY_DIR "/test_repo";
const std::string kBinary = QS_BINARY_DIR "/server/quantserve";

// ---------------------------------------------------------------------------------
// The tiny model of tests/fixtures/make_bad_models.py: y = Relu(x W + b).
constexpr float kTinyW[4][3] = {
    {1.0f, 0.0f, -1.0f}, {0.5f, 1.0f, 0.0f}, {0.0f, -0.5f, 1.0f}, {-1.0f, 0.25f, 2.0f}};
constexpr std::array<float, 3> kTinyB1 = {0.5f, -1.0f, 0.25f};
constexpr std::array<float, 3> kTinyB2 = {1.5f, 0.0f, 1.25f};

// Exact for inputs that are multiples of 1/4 in [-8, 8]: every product and partial sum
// is a multiple of 1/16 far below 2^20, so FP32 rounds nothing in any summation order.
std::vector<float> TinyReference(const std::vector<float>& x, const std::array<float, 3>& b) {
  const size_t rows = x.size() / 4;
  std::vector<float> y(rows * 3);
  for (size_t r = 0; r < rows; ++r) {
    for (int j = 0; j < 3; ++j) {
      float acc = b[static_cast<size_t>(j)];
      for (int i = 0; i < 4; ++i) acc += x[r * 4 + static_cast<size_t>(i)] * kTinyW[i][j];
      y[r * 3 + static_cast<size_t>(j)] = std::max(acc, 0.0f);
    }
  }
  return y;
}

std::vector<float> RandomTinyRows(std::mt19937* rng, int rows) {
  std::uniform_int_distribution<int> quarter(-32, 32);
  std::vector<float> x(static_cast<size_t>(rows) * 4);
  for (float& v : x) v = static_cast<float>(quarter(*rng)) / 4.0f;
  return x;
}

inference::ModelInferRequest FloatRequest(const std::string& model, const std::string& input,
                                          const std::vector<int64_t>& shape,
                                          const float* data, size_t count,
                                          const std::string& version = "") {
  inference::ModelInferRequest req;
  req.set_model_name(model);
  req.set_model_version(version);
  auto* in = req.add_inputs();
  in->set_name(input);
  in->set_datatype("FP32");
  for (int64_t d : shape) in->add_shape(d);
  req.add_raw_input_contents(reinterpret_cast<const char*>(data), count * sizeof(float));
  return req;
}

inference::ModelInferRequest TinyRequest(const std::vector<float>& x,
                                         const std::string& version = "") {
  return FloatRequest("tiny", "x", {static_cast<int64_t>(x.size() / 4), 4}, x.data(),
                      x.size(), version);
}

std::vector<float> OutputFloats(const inference::ModelInferResponse& resp, int index = 0) {
  if (resp.raw_output_contents_size() <= index) return {};
  const std::string& raw = resp.raw_output_contents(index);
  std::vector<float> out(raw.size() / sizeof(float));
  std::memcpy(out.data(), raw.data(), out.size() * sizeof(float));
  return out;
}

std::chrono::system_clock::time_point In(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

// Polls `cond` until it holds or `timeout` passes. The pause is the polling interval of
// a condition we observe through the server's API, not a guess at how long anything
// takes: every wait is bounded by `timeout` and ends as soon as the condition holds.
bool PollUntil(const std::function<bool()>& cond, absl::Duration timeout = absl::Seconds(30),
               absl::Duration interval = absl::Milliseconds(10)) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    if (cond()) return true;
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(interval);
  }
}

// Threads that are stopped (`stop`) and joined when the group is destroyed, so a failed
// ASSERT never leaves a joinable std::thread behind. Declare it after everything its
// threads use.
class ThreadGroup {
 public:
  explicit ThreadGroup(std::function<void()> stop = nullptr) : stop_(std::move(stop)) {}
  ~ThreadGroup() { JoinAll(); }
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;
  void Add(std::function<void()> fn) { threads_.emplace_back(std::move(fn)); }
  void JoinAll() {
    if (stop_) stop_();
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::function<void()> stop_;
  std::vector<std::thread> threads_;
};

std::string FormatMs(absl::Duration d) { return absl::StrCat(absl::ToDoubleMilliseconds(d)); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  return v[i];
}

// ---------------------------------------------------------------------------------
// A model repository in a fresh temporary directory, removed at the end of the test.
class TempRepo {
 public:
  TempRepo() {
    std::string tmpl = (fs::temp_directory_path() / "qs_serving_XXXXXX").string();
    if (mkdtemp(tmpl.data()) != nullptr) root_ = tmpl;
  }
  ~TempRepo() {
    std::error_code ec;
    if (!root_.empty()) fs::remove_all(root_, ec);
  }
  TempRepo(const TempRepo&) = delete;
  TempRepo& operator=(const TempRepo&) = delete;

  const std::string& root() const { return root_; }
  fs::path Path(const std::string& rel) const { return fs::path(root_) / rel; }

  // Copies <test_repo>/<name> (a generated fixture) into the repository.
  void Copy(const std::string& name) {
    fs::copy(fs::path(kTestRepo) / name, Path(name), fs::copy_options::recursive);
  }
  void Write(const std::string& rel, const std::string& content) {
    const fs::path p = Path(rel);
    fs::create_directories(p.parent_path());
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f.write(content.data(), static_cast<std::streamsize>(content.size()));
  }
  // Publishes `folder` at `rel` in one rename: the folder is filled under a hidden name
  // at the repository root (which the server skips) and then moved into place, so a
  // polling server never sees a half-written model.
  void PublishFolder(const fs::path& source, const std::string& rel) {
    const fs::path staging = Path(".staging");
    fs::remove_all(staging);
    fs::copy(source, staging, fs::copy_options::recursive);
    fs::rename(staging, Path(rel));
  }

 private:
  std::string root_;
};

// ---------------------------------------------------------------------------------
// A deliberately slow model, written as ONNX here (the engine compiles it like any
// other): x FP32 [batch, kSlowDim] -> Unsqueeze -> Expand to [batch, kSlowRows, kSlowDim]
// -> kSlowLayers x (MatMul W -> Relu) -> ReduceMean over the rows -> MatMul -> y FP32
// [batch, 4]. About kSlowRows*kSlowDim^2*kSlowLayers multiply-adds per row of x.
constexpr int kSlowDim = 256;
constexpr int kSlowRows = 128;
constexpr int kSlowLayers = 8;

void SetTensorType(onnx::ValueInfoProto* vi, const std::string& name,
                   const std::vector<int64_t>& dims) {
  vi->set_name(name);
  auto* t = vi->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) {
    auto* dim = t->mutable_shape()->add_dim();
    if (d < 0) {
      dim->set_dim_param("batch");
    } else {
      dim->set_dim_value(d);
    }
  }
}

void AddInitializer(onnx::GraphProto* g, const std::string& name, int elem_type,
                    const std::vector<int64_t>& dims, const void* data, size_t bytes) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(elem_type);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(data, bytes);
}

onnx::NodeProto* AddNode(onnx::GraphProto* g, const std::string& op,
                         const std::vector<std::string>& inputs, const std::string& output) {
  auto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(output);
  for (const auto& i : inputs) n->add_input(i);
  n->add_output(output);
  return n;
}

std::string SlowModelBytes() {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.set_producer_name("quantserve/tests/integration/serving_test.cc");
  auto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(13);
  auto* g = m.mutable_graph();
  g->set_name("slow");
  SetTensorType(g->add_input(), "x", {-1, kSlowDim});
  SetTensorType(g->add_output(), "y", {-1, 4});

  const std::vector<int64_t> axes = {1};
  const std::vector<int64_t> expand = {1, kSlowRows, 1};
  AddInitializer(g, "axes", onnx::TensorProto::INT64, {1}, axes.data(), 8);
  AddInitializer(g, "expand_shape", onnx::TensorProto::INT64, {3}, expand.data(), 24);
  std::vector<float> w(static_cast<size_t>(kSlowDim) * kSlowDim);
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = static_cast<float>(static_cast<int>((i * 37) % 17) - 8) / (8.0f * kSlowDim);
  }
  // Identity-ish so activations stay O(1) through the layers.
  for (int i = 0; i < kSlowDim; ++i) w[static_cast<size_t>(i) * kSlowDim + i] += 1.0f;
  AddInitializer(g, "W", onnx::TensorProto::FLOAT, {kSlowDim, kSlowDim}, w.data(),
                 w.size() * sizeof(float));
  std::vector<float> wout(static_cast<size_t>(kSlowDim) * 4);
  for (size_t i = 0; i < wout.size(); ++i) {
    wout[i] = static_cast<float>(static_cast<int>(i % 7) - 3) / kSlowDim;
  }
  AddInitializer(g, "W_out", onnx::TensorProto::FLOAT, {kSlowDim, 4}, wout.data(),
                 wout.size() * sizeof(float));

  AddNode(g, "Unsqueeze", {"x", "axes"}, "x3");
  std::string h = "h0";
  AddNode(g, "Expand", {"x3", "expand_shape"}, h);
  for (int l = 0; l < kSlowLayers; ++l) {
    const std::string mm = absl::StrCat("mm", l), next = absl::StrCat("h", l + 1);
    AddNode(g, "MatMul", {h, "W"}, mm);
    AddNode(g, "Relu", {mm}, next);
    h = next;
  }
  auto* mean = AddNode(g, "ReduceMean", {h}, "mean");
  auto* a = mean->add_attribute();
  a->set_name("axes");
  a->set_type(onnx::AttributeProto::INTS);
  a->add_ints(1);
  auto* k = mean->add_attribute();
  k->set_name("keepdims");
  k->set_type(onnx::AttributeProto::INT);
  k->set_i(0);
  AddNode(g, "MatMul", {"mean", "W_out"}, "y");
  return m.SerializeAsString();
}

std::vector<float> SlowInput() {
  std::vector<float> x(kSlowDim);
  for (int i = 0; i < kSlowDim; ++i) x[static_cast<size_t>(i)] = static_cast<float>(i % 5) / 4.0f;
  return x;
}

inference::ModelInferRequest SlowRequest() {
  const std::vector<float> x = SlowInput();
  return FloatRequest("slow", "x", {1, kSlowDim}, x.data(), x.size());
}

// ---------------------------------------------------------------------------------
// The daemon's resident set, from /proc/<pid>/status (kB).
pid_t DaemonPid() {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    std::ifstream f(e.path() / "stat");
    std::string line;
    if (!std::getline(f, line)) continue;
    const size_t open = line.find('('), close = line.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    if (line.substr(open + 1, close - open - 1) != "quantserve") continue;
    std::istringstream rest(line.substr(close + 2));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == getpid()) return static_cast<pid_t>(std::stoi(name));
  }
  return -1;
}

struct ProcMemory {
  int64_t rss_kb = -1, vm_kb = -1, threads = -1;
};

ProcMemory ReadProcMemory(pid_t pid) {
  ProcMemory m;
  std::ifstream f(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) m.rss_kb = std::stoll(line.substr(6));
    if (line.rfind("VmSize:", 0) == 0) m.vm_kb = std::stoll(line.substr(7));
    if (line.rfind("Threads:", 0) == 0) m.threads = std::stoll(line.substr(8));
  }
  return m;
}

int64_t RssKb(pid_t pid) { return ReadProcMemory(pid).rss_kb; }

// ---------------------------------------------------------------------------------
struct Stats {
  bool found = false;
  uint64_t inference = 0, execution = 0, success = 0, fail = 0;
  uint64_t infer_ns = 0, infer_count = 0;  // compute_infer over all requests
  double MsPerRequest() const {
    return infer_count ? static_cast<double>(infer_ns) / static_cast<double>(infer_count) / 1e6
                       : 0.0;
  }
  std::map<uint64_t, uint64_t> executions_by_batch;  // batch size -> executions
};

class ServingTest : public ::testing::Test {
 protected:
  void TearDown() override {
    // QS_SERVING_TEST_LOG=1 prints the daemon's log (timestamps included) after each test.
    if (daemon_ != nullptr && std::getenv("QS_SERVING_TEST_LOG") != nullptr) {
      std::printf("---- daemon log ----\n%s---- end of daemon log ----\n",
                  daemon_->log().c_str());
    }
    channel_.reset();
    daemon_.reset();  // SIGKILL if a test left it running
  }

  // Starts the daemon with `args` (plus ephemeral loopback ports).
  bool StartDaemon(const std::vector<std::string>& args) {
    daemon_ = std::make_unique<testing::DaemonProcess>();
    if (!daemon_->Start(kBinary, args)) return false;
    channel_ = NewChannel();
    return channel_->WaitForConnected(In(absl::Seconds(10)));
  }
  // A channel with its own connection (not shared with other channels).
  std::shared_ptr<grpc::Channel> NewChannel() const {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel(daemon_->address(), grpc::InsecureChannelCredentials(),
                                     args);
  }
  std::unique_ptr<GRPCInferenceService::Stub> Stub() const {
    return GRPCInferenceService::NewStub(channel_);
  }

  grpc::Status Infer(const inference::ModelInferRequest& req,
                     inference::ModelInferResponse* resp,
                     absl::Duration deadline = absl::Seconds(30)) const {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(deadline));
    return Stub()->ModelInfer(&ctx, req, resp);
  }

  Stats GetStats(const std::string& model, const std::string& version = "") const {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(10)));
    inference::ModelStatisticsRequest req;
    req.set_name(model);
    req.set_version(version);
    inference::ModelStatisticsResponse resp;
    Stats s;
    if (!Stub()->ModelStatistics(&ctx, req, &resp).ok()) return s;
    for (const auto& m : resp.model_stats()) {
      s.found = true;
      s.inference += m.inference_count();
      s.execution += m.execution_count();
      s.success += m.inference_stats().success().count();
      s.fail += m.inference_stats().fail().count();
      s.infer_ns += m.inference_stats().compute_infer().ns();
      s.infer_count += m.inference_stats().compute_infer().count();
      for (const auto& b : m.batch_stats())
        s.executions_by_batch[b.batch_size()] += b.compute_infer().count();
    }
    return s;
  }

  // ModelReady: 1 ready, 0 not ready, -1 NOT_FOUND, -2 other error.
  int ModelReady(const std::string& model, const std::string& version = "") const {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(2)));
    inference::ModelReadyRequest req;
    req.set_name(model);
    req.set_version(version);
    inference::ModelReadyResponse resp;
    grpc::Status st = Stub()->ModelReady(&ctx, req, &resp);
    if (st.error_code() == grpc::StatusCode::NOT_FOUND) return -1;
    if (!st.ok()) return -2;
    return resp.ready() ? 1 : 0;
  }

  bool ServerReady() const {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(2)));
    inference::ServerReadyResponse resp;
    return Stub()->ServerReady(&ctx, {}, &resp).ok() && resp.ready();
  }

  grpc::Status Load(const std::string& model, const std::string& config_json = "") const {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(30)));
    inference::RepositoryModelLoadRequest req;
    req.set_model_name(model);
    if (!config_json.empty()) (*req.mutable_parameters())["config"].set_string_param(config_json);
    inference::RepositoryModelLoadResponse resp;
    return Stub()->RepositoryModelLoad(&ctx, req, &resp);
  }

  grpc::Status Unload(const std::string& model) const {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(30)));
    inference::RepositoryModelUnloadRequest req;
    req.set_model_name(model);
    inference::RepositoryModelUnloadResponse resp;
    return Stub()->RepositoryModelUnload(&ctx, req, &resp);
  }

  std::map<std::string, inference::RepositoryIndexResponse::ModelIndex> Index() const {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(2)));
    inference::RepositoryIndexResponse resp;
    std::map<std::string, inference::RepositoryIndexResponse::ModelIndex> out;
    if (!Stub()->RepositoryIndex(&ctx, {}, &resp).ok()) return out;
    for (const auto& m : resp.models()) out[m.name() + "/" + m.version()] = m;
    return out;
  }

  std::unique_ptr<testing::DaemonProcess> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
};

const char* kTinyBatchedConfig =
    "name: \"tiny\"\n"
    "max_batch_size: 8\n"
    "dynamic_batching { max_queue_delay_microseconds: 2000 }\n";

// ---------------------------------------------------------------------------------
// 1. Concurrency: 64 clients x 200 requests with different inputs; each answer is the
// exact single-request result for its own input, and the batcher formed batches.
TEST_F(ServingTest, ConcurrentClientsGetTheirOwnAnswersFromBatches) {
  TempRepo repo;
  repo.Copy("tiny");  // versions 1 and 2; the default policy serves the latest (2)
  repo.Write("tiny/config.pbtxt", kTinyBatchedConfig);
  ASSERT_TRUE(StartDaemon({"--model-repository=" + repo.root()})) << daemon_->log();

  // One at a time first: the served answers equal the formula exactly.
  std::mt19937 rng(12345);
  constexpr int kSingles = 16;
  for (int i = 0; i < kSingles; ++i) {
    const std::vector<float> x = RandomTinyRows(&rng, 1);
    inference::ModelInferResponse resp;
    grpc::Status st = Infer(TinyRequest(x), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(OutputFloats(resp), TinyReference(x, kTinyB2));
  }
  const Stats before = GetStats("tiny");
  ASSERT_EQ(before.inference, static_cast<uint64_t>(kSingles));
  ASSERT_EQ(before.execution, static_cast<uint64_t>(kSingles));

  constexpr int kClients = 64, kRequests = 200, kChannels = 4;
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < kChannels; ++i) channels.push_back(NewChannel());
  std::atomic<int> ok{0}, wrong{0}, failed{0};
  absl::Mutex mu;
  std::vector<std::string> problems;
  const absl::Time start = absl::Now();
  ThreadGroup clients;
  for (int c = 0; c < kClients; ++c) {
    clients.Add([&, c] {
      auto stub = GRPCInferenceService::NewStub(channels[static_cast<size_t>(c % kChannels)]);
      std::mt19937 local(static_cast<unsigned>(1000 + c));
      for (int r = 0; r < kRequests; ++r) {
        const std::vector<float> x = RandomTinyRows(&local, 1);
        grpc::ClientContext ctx;
        ctx.set_deadline(In(absl::Seconds(60)));
        inference::ModelInferResponse resp;
        grpc::Status st = stub->ModelInfer(&ctx, TinyRequest(x), &resp);
        if (!st.ok()) {
          ++failed;
          absl::MutexLock lock(&mu);
          if (problems.size() < 10) problems.push_back(st.error_message());
          continue;
        }
        if (OutputFloats(resp) == TinyReference(x, kTinyB2) && resp.model_version() == "2") {
          ++ok;
        } else {
          ++wrong;
          absl::MutexLock lock(&mu);
          if (problems.size() < 10) problems.push_back("wrong answer");
        }
      }
    });
  }
  clients.JoinAll();
  const absl::Duration elapsed = absl::Now() - start;
  EXPECT_EQ(ok.load(), kClients * kRequests);
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(failed.load(), 0);
  for (const auto& p : problems) ADD_FAILURE() << p;

  const Stats after = GetStats("tiny");
  EXPECT_EQ(after.inference, static_cast<uint64_t>(kSingles + kClients * kRequests));
  EXPECT_EQ(after.success, static_cast<uint64_t>(kSingles + kClients * kRequests));
  EXPECT_LT(after.execution, after.inference);  // batches of more than one request formed
  const uint64_t executions = after.execution - before.execution;
  std::string histogram;
  for (const auto& [size, n] : after.executions_by_batch) {
    absl::StrAppend(&histogram, size, ":", n, " ");
  }
  std::printf("[ figure ] %d requests from %d clients in %s ms (%.0f req/s); %llu executions, "
              "mean batch %.2f; executions by batch size: %s\n",
              kClients * kRequests, kClients, FormatMs(elapsed).c_str(),
              kClients * kRequests / absl::ToDoubleSeconds(elapsed),
              static_cast<unsigned long long>(executions),
              static_cast<double>(kClients * kRequests) / static_cast<double>(executions),
              histogram.c_str());
}

// ---------------------------------------------------------------------------------
// 2a/2c. Explicit mode: unload and reload tiny while clients keep sending. A request may
// be refused (UNAVAILABLE / NOT_FOUND) only while tiny is unloaded or loading; accepted
// requests always complete with the right answer; reloading a loaded model (and a
// failed reload) loses nothing. A model that fails to load leaves the others READY.
TEST_F(ServingTest, ExplicitUnloadAndReloadUnderTraffic) {
  TempRepo repo;
  repo.Copy("tiny");
  repo.Copy("truncated");
  repo.Copy("digits_mlp");
  ASSERT_TRUE(StartDaemon({"--model-repository=" + repo.root(), "--model-control-mode=explicit",
                           "--load-model=tiny", "--load-model=digits_mlp"}))
      << daemon_->log();
  ASSERT_EQ(ModelReady("tiny"), 1);
  ASSERT_EQ(ModelReady("truncated"), -1);  // not loaded in explicit mode

  // Odd while tiny may legitimately be missing: from just before the unload is sent
  // until its load has returned.
  std::atomic<int> generation{0};
  std::atomic<bool> stop{false};
  struct Counts {
    int sent = 0, answered = 0, ok = 0, refused = 0;
    int wrong = 0, refused_while_loaded = 0, other = 0;
    std::vector<std::string> problems;
  };
  absl::Mutex mu;
  Counts counts;
  constexpr int kThreads = 4, kReloads = 200;
  ThreadGroup traffic([&] { stop = true; });
  for (int t = 0; t < kThreads; ++t) {
    traffic.Add([&, t] {
      auto stub = GRPCInferenceService::NewStub(channel_);
      std::mt19937 rng(static_cast<unsigned>(77 + t));
      while (!stop.load()) {
        const std::vector<float> x = RandomTinyRows(&rng, 1 + t % 2);
        const int g0 = generation.load();
        {
          absl::MutexLock lock(&mu);
          ++counts.sent;
        }
        grpc::ClientContext ctx;
        ctx.set_deadline(In(absl::Seconds(20)));
        inference::ModelInferResponse resp;
        grpc::Status st = stub->ModelInfer(&ctx, TinyRequest(x), &resp);
        const int g1 = generation.load();
        absl::MutexLock lock(&mu);
        ++counts.answered;
        if (st.ok()) {
          if (OutputFloats(resp) == TinyReference(x, kTinyB2) && resp.model_version() == "2") {
            ++counts.ok;
          } else {
            ++counts.wrong;
            if (counts.problems.size() < 10) {
              counts.problems.push_back(absl::StrCat(
                  "wrong answer (generation ", g0, "->", g1, ", version '",
                  resp.model_version(), "'): got [", absl::StrJoin(OutputFloats(resp), ","),
                  "], want [", absl::StrJoin(TinyReference(x, kTinyB2), ","), "] for x [",
                  absl::StrJoin(x, ","), "]"));
            }
          }
        } else if (st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                   st.error_code() == grpc::StatusCode::NOT_FOUND) {
          if (g0 == g1 && g0 % 2 == 0) {
            ++counts.refused_while_loaded;
            if (counts.problems.size() < 10)
              counts.problems.push_back(absl::StrCat("refused while loaded: ", st.error_message()));
          } else {
            ++counts.refused;
          }
        } else {
          ++counts.other;
          if (counts.problems.size() < 10) {
            counts.problems.push_back(
                absl::StrCat("code ", st.error_code(), ": ", st.error_message()));
          }
        }
      }
    });
  }
  auto wait_for = [&](auto field_of, int target) {
    absl::MutexLock lock(&mu);
    auto reached = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return field_of(counts) >= target; };
    return mu.AwaitWithTimeout(absl::Condition(&reached), absl::Seconds(20));
  };
  auto ok_of = [](const Counts& c) { return c.ok; };
  auto refused_of = [](const Counts& c) { return c.refused; };
  auto snapshot = [&](auto field_of) {
    absl::MutexLock lock(&mu);
    return field_of(counts);
  };

  ASSERT_TRUE(wait_for(ok_of, 100));
  for (int cycle = 0; cycle < 3; ++cycle) {
    generation.fetch_add(1);  // odd: refusals allowed from here
    grpc::Status st = Unload("tiny");
    ASSERT_TRUE(st.ok()) << st.error_message();
    // Traffic really hit the unloaded model.
    ASSERT_TRUE(wait_for(refused_of, snapshot(refused_of) + 20));
    EXPECT_EQ(ModelReady("tiny"), -1);
    st = Load("tiny");
    ASSERT_TRUE(st.ok()) << st.error_message();
    generation.fetch_add(1);  // even: from here on every request must succeed
    ASSERT_TRUE(wait_for(ok_of, snapshot(ok_of) + 50));
  }
  // Reloading the loaded model, many times (each swap is a chance for a request to
  // meet the retired scheduler): it keeps serving throughout, nothing is refused.
  const pid_t pid = DaemonPid();
  const ProcMemory mem_before = ReadProcMemory(pid);
  const int ok_before_reloads = snapshot(ok_of);
  for (int i = 0; i < kReloads; ++i) {
    grpc::Status st = Load("tiny");
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  const int ok_during_reloads = snapshot(ok_of) - ok_before_reloads;
  ASSERT_TRUE(wait_for(ok_of, snapshot(ok_of) + 20));
  const ProcMemory mem_after = ReadProcMemory(pid);
  // A reload that fails (the config names an input the graph lacks) keeps the loaded
  // version serving, also without a single refusal.
  grpc::Status bad = Load(
      "tiny",
      R"({"name":"tiny","input":[{"name":"not_in_model","data_type":"TYPE_FP32","dims":[4]}]})");
  EXPECT_FALSE(bad.ok());
  ASSERT_TRUE(wait_for(ok_of, snapshot(ok_of) + 20));
  EXPECT_EQ(ModelReady("tiny"), 1);

  // 2c. A model that fails to load: the others stay READY, the server stays ready.
  grpc::Status truncated = Load("truncated");
  EXPECT_FALSE(truncated.ok());
  EXPECT_NE(truncated.error_message().find("model.onnx"), std::string::npos)
      << truncated.error_message();
  ASSERT_TRUE(wait_for(ok_of, snapshot(ok_of) + 20));
  traffic.JoinAll();

  EXPECT_EQ(ModelReady("truncated"), 0);
  EXPECT_EQ(ModelReady("tiny"), 1);
  EXPECT_EQ(ModelReady("digits_mlp"), 1);
  EXPECT_TRUE(ServerReady());
  auto index = Index();
  EXPECT_EQ(index["truncated/1"].state(), "UNAVAILABLE");
  EXPECT_EQ(index["tiny/2"].state(), "READY");
  EXPECT_EQ(index["digits_mlp/1"].state(), "READY");

  absl::MutexLock lock(&mu);
  EXPECT_EQ(counts.answered, counts.sent);  // every request got an answer
  EXPECT_EQ(counts.wrong, 0);
  EXPECT_EQ(counts.refused_while_loaded, 0);
  EXPECT_EQ(counts.other, 0);  // no DEADLINE_EXCEEDED / INTERNAL / CANCELLED
  for (const auto& p : counts.problems) ADD_FAILURE() << p;
  std::printf("[ figure ] explicit lifecycle: %d requests, %d ok, %d refused while tiny was "
              "unloaded/loading (3 unload/load cycles, %d reloads with %d requests served "
              "meanwhile, 1 failed reload); daemon across the reloads: VmRSS %lld -> %lld kB, "
              "VmSize %lld -> %lld kB, threads %lld -> %lld\n",
              counts.sent, counts.ok, counts.refused, kReloads, ok_during_reloads,
              static_cast<long long>(mem_before.rss_kb), static_cast<long long>(mem_after.rss_kb),
              static_cast<long long>(mem_before.vm_kb), static_cast<long long>(mem_after.vm_kb),
              static_cast<long long>(mem_before.threads),
              static_cast<long long>(mem_after.threads));
  // Finished repository-operation threads are reaped: a reload leaves no stack behind.
  EXPECT_LT(mem_after.vm_kb, mem_before.vm_kb + 256 * 1024);
}

// ---------------------------------------------------------------------------------
// 2b/2c. Poll mode: a new version folder appears, becomes READY, takes over the default
// version and retires the old one, with no request failing meanwhile; a broken model
// appearing later leaves everything else READY.
TEST_F(ServingTest, PollModeSwitchesVersionsWithoutDowntime) {
  TempRepo repo;
  repo.Copy("tiny");  // 1 and 2, no config: latest 1 version -> 2
  repo.Copy("digits_mlp");
  ASSERT_TRUE(StartDaemon({"--model-repository=" + repo.root(), "--model-control-mode=poll",
                           "--repository-poll-secs=1"}))
      << daemon_->log();
  const std::vector<float> x = {1, 2, 3, 4};
  {
    inference::ModelInferResponse resp;
    ASSERT_TRUE(Infer(TinyRequest(x), &resp).ok());
    ASSERT_EQ(resp.model_version(), "2");
    ASSERT_EQ(OutputFloats(resp), TinyReference(x, kTinyB2));
  }

  // Default-version traffic during the switch: every request must succeed, answered by
  // version 2 (v2 weights) or version 3 (v1 weights), consistently.
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0}, wrong{0}, from_v3{0};
  absl::Mutex mu;
  std::vector<std::string> problems;
  ThreadGroup traffic([&] { stop = true; });
  for (int t = 0; t < 2; ++t) {
    traffic.Add([&, t] {
      auto stub = GRPCInferenceService::NewStub(channel_);
      std::mt19937 rng(static_cast<unsigned>(5 + t));
      while (!stop.load()) {
        const std::vector<float> in = RandomTinyRows(&rng, 1);
        grpc::ClientContext ctx;
        ctx.set_deadline(In(absl::Seconds(20)));
        inference::ModelInferResponse resp;
        grpc::Status st = stub->ModelInfer(&ctx, TinyRequest(in), &resp);
        if (!st.ok()) {
          ++failed;
          absl::MutexLock lock(&mu);
          if (problems.size() < 10) problems.push_back(st.error_message());
          continue;
        }
        const auto& bias = resp.model_version() == "3" ? kTinyB1 : kTinyB2;
        if ((resp.model_version() == "2" || resp.model_version() == "3") &&
            OutputFloats(resp) == TinyReference(in, bias)) {
          ++ok;
          if (resp.model_version() == "3") ++from_v3;
        } else {
          ++wrong;
        }
      }
    });
  }

  // Version 3 = version 1's graph, so the default answer visibly changes back.
  const absl::Time published = absl::Now();
  repo.PublishFolder(repo.Path("tiny/1"), "tiny/3");
  absl::Time ready_at;
  const bool switched = PollUntil([&] {
    if (ModelReady("tiny", "3") != 1) return false;
    inference::ModelInferResponse resp;
    if (!Infer(TinyRequest(x), &resp, absl::Seconds(2)).ok()) return false;
    ready_at = absl::Now();
    return resp.model_version() == "3" && OutputFloats(resp) == TinyReference(x, kTinyB1);
  });
  ASSERT_TRUE(switched) << daemon_->log();
  // The old version is retired.
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(In(absl::Seconds(2)));
    inference::ModelMetadataRequest req;
    req.set_name("tiny");
    inference::ModelMetadataResponse resp;
    ASSERT_TRUE(Stub()->ModelMetadata(&ctx, req, &resp).ok());
    EXPECT_EQ(std::vector<std::string>(resp.versions().begin(), resp.versions().end()),
              std::vector<std::string>{"3"});
  }
  EXPECT_LE(ModelReady("tiny", "2"), 0);  // NOT_FOUND (-1) or not ready (0)
  {
    inference::ModelInferResponse resp;
    grpc::Status st = Infer(TinyRequest(x, "2"), &resp);
    EXPECT_TRUE(st.error_code() == grpc::StatusCode::NOT_FOUND ||
                st.error_code() == grpc::StatusCode::UNAVAILABLE)
        << st.error_code() << " " << st.error_message();
  }
  // Some traffic ran on the new version before we stop.
  EXPECT_TRUE(PollUntil([&] { return from_v3.load() >= 50; }, absl::Seconds(10)));
  traffic.JoinAll();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
  for (const auto& p : problems) ADD_FAILURE() << p;
  std::printf("[ figure ] poll mode: version 3 served %s ms after its folder appeared "
              "(poll interval 1 s); %d requests during the switch, %d by version 3, %d "
              "failed\n",
              FormatMs(ready_at - published).c_str(), ok.load() + failed.load() + wrong.load(),
              from_v3.load(), failed.load());

  // 2c. A broken model appears: it is UNAVAILABLE with a reason, nothing else changes.
  repo.PublishFolder(fs::path(kTestRepo) / "truncated", "truncated");
  ASSERT_TRUE(PollUntil([&] {
    auto index = Index();
    auto it = index.find("truncated/1");
    return it != index.end() && it->second.state() == "UNAVAILABLE";
  })) << daemon_->log();
  EXPECT_NE(Index()["truncated/1"].reason().find("model.onnx"), std::string::npos);
  EXPECT_EQ(ModelReady("tiny", "3"), 1);
  EXPECT_EQ(ModelReady("digits_mlp"), 1);
  EXPECT_TRUE(ServerReady());
  inference::ModelInferResponse resp;
  EXPECT_TRUE(Infer(TinyRequest(x), &resp).ok());
}

// ---------------------------------------------------------------------------------
// 3. SIGTERM drain: requests queued when SIGTERM arrives all complete; during the drain
// health says NOT_SERVING and new requests get UNAVAILABLE; the exit code is 0.
TEST_F(ServingTest, SigtermDrainsQueuedRequests) {
  TempRepo repo;
  repo.Copy("tiny");
  repo.Copy("digits_mlp");
  // 200 ms batching delay: the digits requests sit in the queue until SIGTERM.
  repo.Write("digits_mlp/config.pbtxt",
             "name: \"digits_mlp\"\nmax_batch_size: 32\n"
             "dynamic_batching { max_queue_delay_microseconds: 200000 }\n");
  // One request at a time on one worker: a backlog that takes a while to drain, so the
  // drain phase can be observed from outside.
  repo.Write("slow/1/model.onnx", SlowModelBytes());
  repo.Write("slow/config.pbtxt",
             "name: \"slow\"\nmax_batch_size: 1\ndynamic_batching {}\n"
             "instance_group [{ kind: KIND_CPU count: 1 }]\n");
  ASSERT_TRUE(StartDaemon({"--model-repository=" + repo.root()})) << daemon_->log();

  // References (before SIGTERM): 20 held-out digits rows, sent as one full batch of 32
  // (runs at once), and the slow model's answer.
  constexpr int kDigits = 20, kSlow = 40;
  std::vector<float> rows(32 * 64);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<float>((i * 7) % 17) / 16.0f;
  std::vector<float> digits_ref;
  {
    inference::ModelInferResponse resp;
    grpc::Status st =
        Infer(FloatRequest("digits_mlp", "input", {32, 64}, rows.data(), rows.size()), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    digits_ref = OutputFloats(resp);
    ASSERT_EQ(digits_ref.size(), 32u * 10);
  }
  std::vector<float> slow_ref;
  {
    inference::ModelInferResponse resp;
    ASSERT_TRUE(Infer(SlowRequest(), &resp).ok());
    slow_ref = OutputFloats(resp);
  }
  const Stats slow_stats = GetStats("slow");
  ASSERT_GE(slow_stats.execution, 1u);

  // One stream: 20 digits requests (batched, waiting out the 200 ms delay), 40 slow
  // requests (queued behind one another), then a tiny request as a barrier. The server
  // reads a stream's messages in order and enqueues each before reading the next, so
  // once the barrier's answer arrives, all 60 requests are queued (or running).
  grpc::ClientContext stream_ctx;
  stream_ctx.set_deadline(In(absl::Seconds(30)));
  auto stream = Stub()->ModelStreamInfer(&stream_ctx);
  for (int i = 0; i < kDigits; ++i) {
    auto req = FloatRequest("digits_mlp", "input", {1, 64}, rows.data() + i * 64, 64);
    req.set_id(absl::StrCat("digits-", i));
    ASSERT_TRUE(stream->Write(req));
  }
  for (int i = 0; i < kSlow; ++i) {
    auto req = SlowRequest();
    req.set_id(absl::StrCat("slow-", i));
    ASSERT_TRUE(stream->Write(req));
  }
  auto barrier = TinyRequest({1, 2, 3, 4});
  barrier.set_id("barrier");
  ASSERT_TRUE(stream->Write(barrier));
  // Half-close now: the server finishes the stream by itself once every answer is
  // written, so the stream never waits on us during the shutdown.
  ASSERT_TRUE(stream->WritesDone());
  std::map<std::string, inference::ModelStreamInferResponse> answers;
  inference::ModelStreamInferResponse sr;
  while (answers.count("barrier") == 0 && stream->Read(&sr)) {
    answers[sr.infer_response().id()] = sr;
  }
  ASSERT_EQ(answers.count("barrier"), 1u);
  ASSERT_TRUE(answers["barrier"].error_message().empty()) << answers["barrier"].error_message();
  const size_t before_sigterm = answers.size() - 1;

  // SIGTERM; Stop() waits for the exit, so it runs beside us.
  int exit_code = -2;
  const absl::Time sigterm = absl::Now();
  // On an early return, cancel the stream first: the daemon waits for it to close.
  ThreadGroup stopper([&] { stream_ctx.TryCancel(); });
  stopper.Add([&] { exit_code = daemon_->Stop(SIGTERM); });
  ASSERT_TRUE(daemon_->WaitForLog("shutting down"));

  // Probe while draining: health first says NOT_SERVING, then (once gRPC itself stops)
  // fails; inference is refused with UNAVAILABLE. A probe that raced the drain flag may
  // still be served (it was accepted), but never answered with another error.
  auto health = grpc::health::v1::Health::NewStub(channel_);
  bool saw_not_serving = false, infer_refused = false, infer_other_error = false;
  std::string refusal;
  bool health_after_not_serving_was_serving = false;
  const absl::Time probe_deadline = absl::Now() + absl::Seconds(10);
  while ((!saw_not_serving || !infer_refused) && absl::Now() < probe_deadline) {
    grpc::ClientContext hc;
    hc.set_deadline(In(absl::Seconds(1)));
    grpc::health::v1::HealthCheckResponse hr;
    grpc::Status hs = health->Check(&hc, {}, &hr);
    if (hs.ok() && hr.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING) {
      saw_not_serving = true;
    } else if (hs.ok() && saw_not_serving) {
      health_after_not_serving_was_serving = true;
    } else if (!hs.ok()) {
      break;  // the gRPC server stopped taking calls: the drain is over
    }
    if (!infer_refused) {
      inference::ModelInferResponse resp;
      grpc::Status st = Infer(TinyRequest({1, 2, 3, 4}), &resp, absl::Seconds(1));
      if (st.error_code() == grpc::StatusCode::UNAVAILABLE) {
        infer_refused = true;
        refusal = st.error_message();
      } else if (!st.ok()) {
        infer_other_error = true;
        refusal = absl::StrCat(st.error_code(), ": ", st.error_message());
      }
    }
  }
  EXPECT_TRUE(saw_not_serving) << "health never reported NOT_SERVING during the drain";
  EXPECT_FALSE(health_after_not_serving_was_serving);
  EXPECT_TRUE(infer_refused) << refusal;
  EXPECT_FALSE(infer_other_error) << refusal;

  // Every queued request completes, correctly.
  absl::Time digits_done, all_done;
  while (answers.size() < static_cast<size_t>(kDigits + kSlow + 1) && stream->Read(&sr)) {
    answers[sr.infer_response().id()] = sr;
    int n_digits = 0;
    for (const auto& [id, a] : answers) n_digits += id.rfind("digits-", 0) == 0;
    if (n_digits == kDigits && digits_done == absl::Time()) digits_done = absl::Now();
  }
  all_done = absl::Now();
  grpc::Status fin = stream->Finish();
  EXPECT_TRUE(fin.ok()) << fin.error_code() << " " << fin.error_message();
  ASSERT_EQ(answers.size(), static_cast<size_t>(kDigits + kSlow + 1));
  for (int i = 0; i < kDigits; ++i) {
    const auto& a = answers[absl::StrCat("digits-", i)];
    ASSERT_TRUE(a.error_message().empty()) << a.error_message();
    const std::vector<float> got = OutputFloats(a.infer_response());
    ASSERT_EQ(got.size(), 10u);
    for (size_t j = 0; j < 10; ++j) {
      EXPECT_NEAR(got[j], digits_ref[static_cast<size_t>(i) * 10 + j], 1e-5);
    }
  }
  for (int i = 0; i < kSlow; ++i) {
    const auto& a = answers[absl::StrCat("slow-", i)];
    ASSERT_TRUE(a.error_message().empty()) << a.error_message();
    EXPECT_EQ(OutputFloats(a.infer_response()), slow_ref);
  }
  stopper.JoinAll();
  EXPECT_EQ(exit_code, 0) << daemon_->log();
  EXPECT_NE(daemon_->log().find("stopped"), std::string::npos);
  std::printf("[ figure ] SIGTERM drain: %zu of %d queued requests had finished before "
              "SIGTERM; digits batch (200 ms delay) answered %s ms after SIGTERM, all %d "
              "answered after %s ms; slow model %.2f ms per request; NOT_SERVING observed: "
              "%s; probe refusal: \"%s\"\n",
              before_sigterm, kDigits + kSlow,
              digits_done == absl::Time() ? "?" : FormatMs(digits_done - sigterm).c_str(),
              kDigits + kSlow, FormatMs(all_done - sigterm).c_str(),
              slow_stats.MsPerRequest(), saw_not_serving ? "yes" : "no",
              refusal.c_str());
}

// ---------------------------------------------------------------------------------
// 3b. SIGTERM while an explicit RepositoryModelLoad is still loading (warming up): the
// half-loaded model is never served and does not hold up the drain; exit code 0.
TEST_F(ServingTest, SigtermDuringExplicitLoadExitsCleanly) {
  TempRepo repo;
  repo.Copy("tiny");
  repo.Write("slow/1/model.onnx", SlowModelBytes());
  // 1000 warmup runs (about a second): the load stays LOADING long enough to signal the
  // daemon in the middle of it.
  repo.Write("slow/config.pbtxt",
             "name: \"slow\"\nmax_batch_size: 1\n"
             "instance_group [{ kind: KIND_CPU count: 1 }]\n"
             "model_warmup [{ name: \"zeros\" batch_size: 1 count: 1000 inputs {\n"
             "  key: \"x\" value { data_type: TYPE_FP32 dims: [ 256 ] zero_data: true } } }]\n");
  ASSERT_TRUE(StartDaemon({"--model-repository=" + repo.root(), "--model-control-mode=explicit",
                           "--load-model=tiny", "--exit-timeout-secs=10"}))
      << daemon_->log();

  auto stub = Stub();
  grpc::ClientContext load_ctx;
  load_ctx.set_deadline(In(absl::Seconds(30)));
  inference::RepositoryModelLoadRequest load_req;
  load_req.set_model_name("slow");
  inference::RepositoryModelLoadResponse load_resp;
  absl::Notification load_done;
  grpc::Status load_status;
  stub->async()->RepositoryModelLoad(&load_ctx, &load_req, &load_resp,
                                     [&](grpc::Status s) {
                                       load_status = std::move(s);
                                       load_done.Notify();
                                     });
  // Wait (on the server's own index) until the load is under way.
  const bool loading = PollUntil([&] {
    auto index = Index();
    auto it = index.find("slow/1");
    return it != index.end() && it->second.state() == "LOADING";
  }, absl::Seconds(10), absl::Milliseconds(5));
  if (!loading) {
    load_ctx.TryCancel();
    load_done.WaitForNotification();
  }
  ASSERT_TRUE(loading) << daemon_->log();

  const absl::Time sigterm = absl::Now();
  const int exit_code = daemon_->Stop(SIGTERM);
  const absl::Duration took = absl::Now() - sigterm;
  ASSERT_TRUE(load_done.WaitForNotificationWithTimeout(absl::Seconds(30)));
  const std::string log = daemon_->log();
  EXPECT_EQ(exit_code, 0) << log;
  EXPECT_EQ(log.find("exit timeout reached"), std::string::npos) << log;
  // The load was answered, and not with success: the model never served.
  EXPECT_EQ(load_status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << load_status.error_code() << " " << load_status.error_message();
  EXPECT_NE(load_status.error_message().find("shutting down"), std::string::npos)
      << load_status.error_message();
  std::printf("[ figure ] SIGTERM during a model load: exit code %d after %s ms (exit timeout "
              "10 s); the load answered: \"%s\"\n",
              exit_code, FormatMs(took).c_str(), load_status.error_message().c_str());
}

// ---------------------------------------------------------------------------------
// 4. Overload: a full queue refuses at once with UNAVAILABLE "maximum queue size"; every
// accepted request succeeds; memory stays bounded.
TEST_F(ServingTest, OverloadIsRefusedQuicklyAndMemoryStaysBounded) {
  TempRepo repo;
  repo.Write("slow/1/model.onnx", SlowModelBytes());
  repo.Write("slow/config.pbtxt",
             "name: \"slow\"\nmax_batch_size: 1\n"
             "dynamic_batching { default_queue_policy { max_queue_size: 4 } }\n"
             "instance_group [{ kind: KIND_CPU count: 1 }]\n");
  ASSERT_TRUE(StartDaemon({"--model-repository=" + repo.root()})) << daemon_->log();
  const pid_t pid = DaemonPid();
  ASSERT_GT(pid, 0);

  std::vector<float> ref;
  {
    inference::ModelInferResponse resp;
    ASSERT_TRUE(Infer(SlowRequest(), &resp).ok());
    ref = OutputFloats(resp);
    ASSERT_EQ(ref.size(), 4u);
  }
  const int64_t rss_before = RssKb(pid);
  ASSERT_GT(rss_before, 0);

  struct Call {
    grpc::ClientContext ctx;
    inference::ModelInferResponse resp;
    grpc::Status status;
    absl::Time sent, done;
  };
  constexpr int kRounds = 5, kFlood = 200;
  const inference::ModelInferRequest req = SlowRequest();
  auto stub = Stub();
  std::atomic<int64_t> rss_peak{rss_before};
  std::atomic<bool> sampling{true};
  ThreadGroup sampler([&] { sampling = false; });
  sampler.Add([&] {
    // Samples the resident set while the floods run (2 ms sampling period).
    while (sampling.load()) {
      const int64_t rss = RssKb(pid);
      int64_t peak = rss_peak.load();
      while (rss > peak && !rss_peak.compare_exchange_weak(peak, rss)) {
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
  });
  constexpr int kProbes = 10;  // sequential requests sent while each flood is queued
  int accepted = 0, rejected = 0, other = 0, wrong = 0;
  std::vector<double> reject_ms, accept_ms, probe_reject_ms;
  std::string other_message;
  for (int round = 0; round < kRounds; ++round) {
    std::vector<std::unique_ptr<Call>> calls;
    absl::Mutex mu;
    int remaining = kFlood;
    for (int i = 0; i < kFlood; ++i) {
      calls.push_back(std::make_unique<Call>());
      Call* c = calls.back().get();
      c->ctx.set_deadline(In(absl::Seconds(30)));
      c->sent = absl::Now();
      stub->async()->ModelInfer(&c->ctx, &req, &c->resp, [c, &mu, &remaining](grpc::Status s) {
        c->done = absl::Now();
        absl::MutexLock lock(&mu);
        c->status = std::move(s);
        --remaining;
      });
    }
    // One request at a time behind the flood: the refusal latency without a burst of
    // our own calls in front of it.
    for (int i = 0; i < kProbes; ++i) {
      const absl::Time sent = absl::Now();
      inference::ModelInferResponse resp;
      grpc::Status st = Infer(req, &resp);
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - sent);
      if (st.ok()) {
        ++accepted;
        if (OutputFloats(resp) != ref) ++wrong;
      } else if (st.error_code() == grpc::StatusCode::UNAVAILABLE &&
                 st.error_message().find("maximum queue size") != std::string::npos) {
        ++rejected;
        probe_reject_ms.push_back(ms);
      } else {
        ++other;
        other_message = absl::StrCat(st.error_code(), ": ", st.error_message());
      }
    }
    {
      absl::MutexLock lock(&mu);
      auto all_done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return remaining == 0; };
      ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all_done), absl::Seconds(60)));
    }
    for (const auto& c : calls) {
      const double ms = absl::ToDoubleMilliseconds(c->done - c->sent);
      if (c->status.ok()) {
        ++accepted;
        accept_ms.push_back(ms);
        if (OutputFloats(c->resp) != ref) ++wrong;
      } else if (c->status.error_code() == grpc::StatusCode::UNAVAILABLE &&
                 c->status.error_message().find("maximum queue size") != std::string::npos) {
        ++rejected;
        reject_ms.push_back(ms);
      } else {
        ++other;
        other_message = absl::StrCat(c->status.error_code(), ": ", c->status.error_message());
      }
    }
  }
  sampler.JoinAll();
  const int64_t rss_after = RssKb(pid);

  EXPECT_GT(rejected, 0);
  EXPECT_GT(accepted, 0);
  EXPECT_EQ(other, 0) << other_message;
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(accepted + rejected + other, kRounds * (kFlood + kProbes));
  const Stats stats = GetStats("slow");
  EXPECT_EQ(stats.inference, static_cast<uint64_t>(accepted + 1));  // + the reference
  EXPECT_EQ(stats.fail, 0u);
  EXPECT_LT(rss_peak.load(), 2 * rss_before + 200 * 1024);
  EXPECT_LT(rss_after, 2 * rss_before + 200 * 1024);
  std::printf("[ figure ] overload: %d x (%d concurrent + %d sequential) requests, "
              "max_queue_size 4: %d accepted (all correct), %d refused with 'maximum queue "
              "size'; refusal latency (client send -> status) within the burst p50 %.2f ms, "
              "p90 %.2f ms, max %.2f ms; one at a time behind the burst (%zu refused) p50 %.2f "
              "ms, max %.2f ms; accepted latency p50 %.2f ms, max %.2f ms; slow model %.2f ms "
              "compute per request; daemon VmRSS before %lld kB, peak %lld kB, after %lld kB\n",
              kRounds, kFlood, kProbes, accepted, rejected, Percentile(reject_ms, 0.5),
              Percentile(reject_ms, 0.9), Percentile(reject_ms, 1.0), probe_reject_ms.size(),
              Percentile(probe_reject_ms, 0.5), Percentile(probe_reject_ms, 1.0),
              Percentile(accept_ms, 0.5), Percentile(accept_ms, 1.0),
              stats.MsPerRequest(), static_cast<long long>(rss_before),
              static_cast<long long>(rss_peak.load()), static_cast<long long>(rss_after));
}

// ---------------------------------------------------------------------------------
// 5. Deadlines, `timeout` and cancellation while queued: the request is answered
// (DEADLINE_EXCEEDED / CANCELLED) and never executes.
TEST_F(ServingTest, DeadlineTimeoutAndCancelWhileQueuedNeverExecute) {
  TempRepo repo;
  repo.Copy("tiny");
  repo.Copy("digits_mlp");
  // 300 ms batching delay: a lone request waits longer than its deadline.
  repo.Write("digits_mlp/config.pbtxt",
             "name: \"digits_mlp\"\nmax_batch_size: 32\n"
             "dynamic_batching { max_queue_delay_microseconds: 300000 }\n");
  ASSERT_TRUE(StartDaemon({"--model-repository=" + repo.root()})) << daemon_->log();
  std::vector<float> rows(32 * 64, 0.25f);
  const auto one_row = FloatRequest("digits_mlp", "input", {1, 64}, rows.data(), 64);
  const auto full_batch = FloatRequest("digits_mlp", "input", {32, 64}, rows.data(), rows.size());

  // A full batch runs at once; the counters only move with executions. If an expired
  // request were still queued, it would run with (or before) the full batch.
  auto full_batch_runs_alone = [&](const Stats& before) {
    inference::ModelInferResponse resp;
    grpc::Status st = Infer(full_batch, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    const Stats after = GetStats("digits_mlp");
    EXPECT_EQ(after.inference, before.inference + 32);
    EXPECT_EQ(after.execution, before.execution + 1);
  };

  // (a) gRPC deadline 50 ms < 300 ms queue delay.
  {
    const Stats before = GetStats("digits_mlp");
    ASSERT_TRUE(before.found);
    const absl::Time start = absl::Now();
    inference::ModelInferResponse resp;
    grpc::Status st = Infer(one_row, &resp, absl::Milliseconds(50));
    const absl::Duration took = absl::Now() - start;
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
    // The server drops it from the queue (recorded as a failure) without running it.
    Stats now;
    ASSERT_TRUE(PollUntil([&] {
      now = GetStats("digits_mlp");
      return now.fail == before.fail + 1;
    }, absl::Seconds(5)));
    EXPECT_EQ(now.execution, before.execution);
    EXPECT_EQ(now.inference, before.inference);
    full_batch_runs_alone(now);
    std::printf("[ figure ] gRPC deadline 50 ms while queued: client saw DEADLINE_EXCEEDED "
                "after %s ms\n", FormatMs(took).c_str());
  }
  // (b) `timeout` parameter (int64 microseconds) 50 ms, no tighter gRPC deadline: the
  // server itself answers DEADLINE_EXCEEDED, before the 300 ms delay would have run it.
  {
    const Stats before = GetStats("digits_mlp");
    auto req = one_row;
    (*req.mutable_parameters())["timeout"].set_int64_param(50000);
    const absl::Time start = absl::Now();
    inference::ModelInferResponse resp;
    grpc::Status st = Infer(req, &resp, absl::Seconds(10));
    const absl::Duration took = absl::Now() - start;
    EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
    EXPECT_NE(st.error_message().find("queue"), std::string::npos) << st.error_message();
    EXPECT_LT(took, absl::Milliseconds(290));
    const Stats after = GetStats("digits_mlp");
    EXPECT_EQ(after.fail, before.fail + 1);
    EXPECT_EQ(after.execution, before.execution);
    EXPECT_EQ(after.inference, before.inference);
    full_batch_runs_alone(after);
    std::printf("[ figure ] timeout parameter 50 ms while queued: server answered "
                "DEADLINE_EXCEEDED after %s ms\n", FormatMs(took).c_str());
  }
  // (c) Cancelled while queued: a stream carries the digits request and then a tiny
  // barrier; the barrier's answer proves the digits request is queued; then cancel.
  {
    const Stats before = GetStats("digits_mlp");
    grpc::ClientContext ctx;
    auto stream = Stub()->ModelStreamInfer(&ctx);
    auto req = one_row;
    req.set_id("queued");
    ASSERT_TRUE(stream->Write(req));
    auto barrier = TinyRequest({1, 2, 3, 4});
    barrier.set_id("barrier");
    ASSERT_TRUE(stream->Write(barrier));
    inference::ModelStreamInferResponse sr;
    ASSERT_TRUE(stream->Read(&sr));
    ASSERT_EQ(sr.infer_response().id(), "barrier");
    const absl::Time cancelled = absl::Now();
    ctx.TryCancel();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
    Stats now;
    ASSERT_TRUE(PollUntil([&] {
      now = GetStats("digits_mlp");
      return now.fail == before.fail + 1;
    }, absl::Seconds(5)));
    const absl::Duration took = absl::Now() - cancelled;
    EXPECT_EQ(now.execution, before.execution);
    EXPECT_EQ(now.inference, before.inference);
    full_batch_runs_alone(now);
    std::printf("[ figure ] cancel while queued: dropped from the queue (failure counted) "
                "within %s ms of the cancel (queue delay 300 ms)\n", FormatMs(took).c_str());
  }
  EXPECT_TRUE(ServerReady());
}

}  // namespace
}  // namespace qs
