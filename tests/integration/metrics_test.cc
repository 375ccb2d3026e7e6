// The Prometheus endpoint of the real quantserve binary: known traffic in, exact values
// out; the page passes `promtool check metrics`; and a real Prometheus server scrapes it
// and answers queries with the same values.
//
// ctest runs the suites separately (see CMakeLists.txt): MetricsTest.*, PromtoolTest.*,
// PrometheusServerTest.*. Each test starts its own daemon, so counts start at zero.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/onnx_import.h"
#include "engine/session.h"
#include "grpc_service.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_process.h"

extern char** environ;

namespace qs {
namespace {

const std::string kRepo = QS_BINARY_DIR "/test_repo";
const std::string kBinary = QS_BINARY_DIR "/server/quantserve";
const std::string kPromtool = QS_PROMTOOL;
const std::string kPrometheus = QS_PROMETHEUS;
constexpr int kSuccesses = 7;
constexpr int kInvalid = 2;

// ---- HTTP over a plain socket (HTTP/1.0: the server closes, no chunked bodies) ----

struct HttpResponse {
  int status = 0;
  std::string body;
};

std::optional<HttpResponse> HttpGet(int port, const std::string& target) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return std::nullopt;
  timeval tv{10, 0};  // a hung server fails the test instead of hanging it
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
  size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      ::close(fd);
      return std::nullopt;
    }
    sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buf[8192];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n < 0) {
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    raw.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  const size_t header_end = raw.find("\r\n\r\n");
  if (header_end == std::string::npos || raw.compare(0, 5, "HTTP/") != 0) return std::nullopt;
  HttpResponse r;
  r.status = std::atoi(raw.c_str() + raw.find(' ') + 1);
  r.body = raw.substr(header_end + 4);
  return r;
}

std::string UrlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof(hex), "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

// ---- the text exposition format ----

// Sample key as prometheus-cpp writes it: labels sorted by name, a bucket's "le" last.
std::string Key(const std::string& name, const std::map<std::string, std::string>& labels) {
  if (labels.empty()) return name;
  std::string key = name + "{";
  bool first = true;
  auto add = [&](const std::string& k, const std::string& v) {
    if (!first) key += ",";
    key += k + "=\"" + v + "\"";
    first = false;
  };
  for (const auto& [k, v] : labels)
    if (k != "le") add(k, v);
  if (labels.count("le")) add("le", labels.at("le"));
  return key + "}";
}

// "name{labels} value" lines -> value; comments skipped.
std::map<std::string, double> ParseSamples(const std::string& page) {
  std::map<std::string, double> out;
  std::istringstream in(page);
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

std::string Scrape(int metrics_port) {
  auto r = HttpGet(metrics_port, "/metrics");
  EXPECT_TRUE(r.has_value()) << "cannot scrape port " << metrics_port;
  if (!r) return "";
  EXPECT_EQ(r->status, 200);
  return r->body;
}

// ---- traffic ----

inference::ModelInferRequest TinyRequest() {
  const float x[4] = {1, 2, 3, 4};
  inference::ModelInferRequest req;
  req.set_model_name("tiny");
  auto* in = req.add_inputs();
  in->set_name("x");
  in->set_datatype("FP32");
  in->add_shape(1);
  in->add_shape(4);
  req.add_raw_input_contents(reinterpret_cast<const char*>(x), sizeof(x));
  return req;
}

// kSuccesses good requests and kInvalid malformed ones to `tiny`.
void SendKnownTraffic(const std::string& address) {
  auto stub = inference::GRPCInferenceService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  for (int i = 0; i < kSuccesses; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    inference::ModelInferResponse resp;
    grpc::Status st = stub->ModelInfer(&ctx, TinyRequest(), &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  inference::ModelInferRequest bad_shape = TinyRequest();
  bad_shape.mutable_inputs(0)->set_shape(1, 5);
  inference::ModelInferRequest short_data = TinyRequest();
  short_data.mutable_raw_input_contents(0)->resize(10);
  for (const auto* req : {&bad_shape, &short_data}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    inference::ModelInferResponse resp;
    EXPECT_EQ(stub->ModelInfer(&ctx, *req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
}

// What the engine's plan reports for tiny version 2, and the FP32 bytes of the fixture's
// initializers (tests/fixtures/make_bad_models.py: W 4x3 and b 3), which must agree.
int64_t TinyWeightBytes() {
  const std::string path = kRepo + "/tiny/2/model.onnx";
  auto proto = LoadOnnxModel(path);
  EXPECT_TRUE(proto.ok()) << proto.status();
  if (!proto.ok()) return -1;
  int64_t initializer_bytes = 0;
  for (const auto& init : proto->graph().initializer()) {
    EXPECT_EQ(init.data_type(), onnx::TensorProto::FLOAT);
    int64_t n = 1;
    for (int64_t d : init.dims()) n *= d;
    initializer_bytes += n * static_cast<int64_t>(sizeof(float));
  }
  CompileOptions options;
  options.max_batch_size = 4;
  auto session = Session::Compile(*proto, options);
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return -1;
  const int64_t plan_bytes = (*session)->stats().weight_bytes;
  EXPECT_EQ(plan_bytes, initializer_bytes);
  return plan_bytes;
}

const std::map<std::string, std::string> kTiny = {{"model", "tiny"}, {"version", "2"}};

std::map<std::string, std::string> With(std::map<std::string, std::string> labels,
                                        const std::string& k, const std::string& v) {
  labels[k] = v;
  return labels;
}

// Scrapes until `done(samples)` or 10 s; returns the last samples.
template <typename Pred>
std::map<std::string, double> ScrapeUntil(int port, Pred done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::map<std::string, double> s;
  while (true) {
    s = ParseSamples(Scrape(port));
    if (done(s) || std::chrono::steady_clock::now() > deadline) return s;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

class MetricsTest : public ::testing::Test {
 protected:
  void StartDaemon(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"--model-repository=" + kRepo};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_TRUE(daemon_.Start(kBinary, args)) << daemon_.log();
    ASSERT_GT(daemon_.metrics_port(), 0) << daemon_.log();
  }
  void TearDown() override { EXPECT_EQ(daemon_.Stop(SIGTERM), 0) << daemon_.log(); }
  testing::DaemonProcess daemon_;
};

TEST_F(MetricsTest, KnownTrafficGivesExactValues) {
  StartDaemon();
  SendKnownTraffic(daemon_.address());
  // OnExecution runs after the responses went out: wait until it is counted too.
  const auto s = ScrapeUntil(daemon_.metrics_port(), [](const auto& s) {
    auto it = s.find(Key("quantserve_batch_size_sum", kTiny));
    return it != s.end() && it->second >= kSuccesses;
  });
  auto value = [&s](const std::string& key) {
    auto it = s.find(key);
    EXPECT_NE(it, s.end()) << key;
    return it == s.end() ? -1.0 : it->second;
  };
  EXPECT_EQ(value(Key("quantserve_requests_total", With(kTiny, "outcome", "success"))),
            kSuccesses);
  EXPECT_EQ(value(Key("quantserve_requests_total", With(kTiny, "outcome", "invalid"))),
            kInvalid);
  for (const char* outcome : {"rejected", "cancelled", "timeout", "internal"}) {
    EXPECT_EQ(value(Key("quantserve_requests_total", With(kTiny, "outcome", outcome))), 0)
        << outcome;
  }
  EXPECT_EQ(value(Key("quantserve_request_duration_seconds_count", kTiny)), kSuccesses);
  EXPECT_GT(value(Key("quantserve_request_duration_seconds_sum", kTiny)), 0);
  EXPECT_EQ(value(Key("quantserve_request_duration_seconds_bucket",
                      With(kTiny, "le", "+Inf"))),
            kSuccesses);
  EXPECT_EQ(value(Key("quantserve_queue_duration_seconds_count", kTiny)), kSuccesses);
  EXPECT_EQ(value(Key("quantserve_inferences_total", kTiny)), kSuccesses);
  const double executions = value(Key("quantserve_executions_total", kTiny));
  EXPECT_GE(executions, 1);
  EXPECT_LE(executions, kSuccesses);
  EXPECT_EQ(value(Key("quantserve_batch_size_count", kTiny)), executions);
  EXPECT_EQ(value(Key("quantserve_batch_size_sum", kTiny)), kSuccesses);
  EXPECT_EQ(value(Key("quantserve_compute_infer_duration_seconds_count", kTiny)), executions);
  EXPECT_EQ(value(Key("quantserve_pending_requests", kTiny)), 0);
  EXPECT_EQ(value(Key("quantserve_inflight_requests", kTiny)), 0);
  EXPECT_EQ(value(Key("quantserve_queue_capacity", kTiny)), 0);  // no config: unbounded

  const int64_t weight_bytes = TinyWeightBytes();
  EXPECT_EQ(weight_bytes, 60);  // 4x3 + 3 floats, as the fixture's docstring states
  const auto mem = With(kTiny, "precision", "FP32");
  EXPECT_EQ(value(Key("quantserve_model_weight_bytes", mem)), weight_bytes);
  EXPECT_EQ(value(Key("quantserve_model_fp32_weight_bytes", mem)), weight_bytes);
  // tiny's activations (a few floats per row) are all below the pool's 64 KiB floor:
  // its context holds none between runs (SchedulerTest covers models that do).
  EXPECT_EQ(value(Key("quantserve_model_activation_bytes", mem)), 0);
  EXPECT_GT(value(Key("quantserve_model_load_duration_seconds", kTiny)), 0);

  EXPECT_GT(value("quantserve_process_resident_memory_bytes"), 0);
  EXPECT_GE(value("quantserve_process_virtual_memory_bytes"),
            value("quantserve_process_resident_memory_bytes"));
  EXPECT_GE(value("quantserve_uptime_seconds"), 0);
  EXPECT_GE(value(Key("quantserve_models", {{"state", "READY"}})), 4);
  EXPECT_GE(value(Key("quantserve_models", {{"state", "UNAVAILABLE"}})), 3);
  EXPECT_EQ(value(Key("quantserve_models", {{"state", "LOADING"}})), 0);
  // Models that failed to load have no per-model series.
  for (const auto& [key, v] : s) {
    EXPECT_EQ(key.find("model=\"truncated\""), std::string::npos) << key;
  }
}

TEST_F(MetricsTest, UnloadRemovesTheModelsSeries) {
  StartDaemon({"--model-control-mode=explicit", "--load-model=*"});
  SendKnownTraffic(daemon_.address());
  auto before = ParseSamples(Scrape(daemon_.metrics_port()));
  ASSERT_EQ(before[Key("quantserve_requests_total", With(kTiny, "outcome", "success"))],
            kSuccesses);
  auto stub = inference::GRPCInferenceService::NewStub(
      grpc::CreateChannel(daemon_.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  inference::RepositoryModelUnloadRequest req;
  inference::RepositoryModelUnloadResponse resp;
  req.set_model_name("tiny");
  ASSERT_TRUE(stub->RepositoryModelUnload(&ctx, req, &resp).ok());
  // The series go when the version's workers have drained, just after the unload.
  auto has_tiny = [](const std::map<std::string, double>& s) {
    for (const auto& [key, v] : s)
      if (key.find("model=\"tiny\"") != std::string::npos) return true;
    return false;
  };
  const auto after = ScrapeUntil(daemon_.metrics_port(),
                                 [&](const auto& s) { return !has_tiny(s); });
  EXPECT_FALSE(has_tiny(after));
  // Other models keep theirs.
  EXPECT_EQ(after.count(Key("quantserve_requests_total",
                            {{"model", "digits_mlp"}, {"outcome", "success"},
                             {"version", "1"}})),
            1u);
}

TEST_F(MetricsTest, LatencyBucketsFlag) {
  StartDaemon({"--metrics-latency-buckets=0.001,0.01,0.1"});
  SendKnownTraffic(daemon_.address());
  const auto s = ParseSamples(Scrape(daemon_.metrics_port()));
  int buckets = 0;
  for (const auto& [key, v] : s) {
    if (key.rfind("quantserve_request_duration_seconds_bucket{", 0) == 0 &&
        key.find("model=\"tiny\"") != std::string::npos)
      ++buckets;
  }
  EXPECT_EQ(buckets, 4);  // three bounds + Inf
  EXPECT_EQ(s.count(Key("quantserve_request_duration_seconds_bucket",
                        With(kTiny, "le", "0.01"))),
            1u);
}

// ---- promtool ----

// Runs `promtool check metrics` on `page`; returns its exit status and output.
int PromtoolCheck(const std::string& page, std::string* output) {
  char dir_template[] = "/tmp/qs_promtool_XXXXXX";
  const char* dir = ::mkdtemp(dir_template);
  if (dir == nullptr) return -1;
  const std::string in = std::string(dir) + "/page.prom", out = std::string(dir) + "/out";
  std::ofstream(in) << page;
  const std::string cmd = "'" + kPromtool + "' check metrics < '" + in + "' > '" + out +
                          "' 2>&1";
  const int rc = std::system(cmd.c_str());
  std::ifstream f(out);
  *output = std::string(std::istreambuf_iterator<char>(f), {});
  std::filesystem::remove_all(dir);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

class PromtoolTest : public MetricsTest {};

TEST_F(PromtoolTest, LintsTheScrapedPageClean) {
  ASSERT_TRUE(std::filesystem::exists(kPromtool))
      << kPromtool << " missing: scripts/install-deps test (Debian package prometheus)";
  // The check must be able to fail: a counter without _total is a lint error.
  std::string output;
  EXPECT_NE(PromtoolCheck("# HELP bad_counter x\n# TYPE bad_counter counter\n"
                          "bad_counter 1\n",
                          &output),
            0)
      << output;
  StartDaemon();
  SendKnownTraffic(daemon_.address());
  const std::string page = Scrape(daemon_.metrics_port());
  ASSERT_NE(page.find("quantserve_requests_total"), std::string::npos);
  const int rc = PromtoolCheck(page, &output);
  EXPECT_EQ(rc, 0) << output << "\n--- page ---\n" << page;
  EXPECT_EQ(output, "") << output;
}

// ---- a real Prometheus server ----

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  int port = -1;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

// The values of an instant-vector answer, in order ("value":[<time>,"<v>"]).
std::vector<double> VectorValues(const std::string& json) {
  std::vector<double> out;
  const std::string marker = "\"value\":[";
  for (size_t p = json.find(marker); p != std::string::npos; p = json.find(marker, p + 1)) {
    const size_t quote = json.find('"', json.find(',', p));
    if (quote == std::string::npos) break;
    out.push_back(std::strtod(json.c_str() + quote + 1, nullptr));
  }
  return out;
}

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// The ```promql blocks of docs/metrics.md (indented lines continue the previous query) and
// the "expr" strings of the Grafana dashboard, with Grafana's variables substituted.
std::vector<std::string> DocumentedQueries() {
  std::vector<std::string> out;
  std::istringstream doc(ReadFile(std::string(QS_SOURCE_DIR) + "/docs/metrics.md"));
  std::string line;
  bool in_block = false;
  while (std::getline(doc, line)) {
    if (line.rfind("```", 0) == 0) {
      in_block = !in_block && line == "```promql";
      continue;
    }
    if (!in_block || line.empty()) continue;
    if (line[0] == ' ' && !out.empty()) {
      out.back() += " " + line;
    } else {
      out.push_back(line);
    }
  }
  const std::string json =
      ReadFile(std::string(QS_SOURCE_DIR) + "/config/grafana/quantserve-dashboard.json");
  const std::string marker = "\"expr\": \"";
  for (size_t p = json.find(marker); p != std::string::npos; p = json.find(marker, p)) {
    p += marker.size();
    std::string expr;
    for (; p < json.size() && json[p] != '"'; ++p) {
      if (json[p] == '\\' && p + 1 < json.size()) ++p;  // \" and \\ only
      expr += json[p];
    }
    for (const auto& [var, value] :
         {std::pair<std::string, std::string>{"$__rate_interval", "1m"}, {"$model", ".*"}}) {
      for (size_t v = expr.find(var); v != std::string::npos; v = expr.find(var))
        expr.replace(v, var.size(), value);
    }
    out.push_back(expr);
  }
  return out;
}

class PrometheusServerTest : public MetricsTest {
 protected:
  void TearDown() override {
    if (prometheus_pid_ > 0) {
      ::kill(prometheus_pid_, SIGTERM);
      int status = 0;
      ::waitpid(prometheus_pid_, &status, 0);
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
    MetricsTest::TearDown();
  }

  // Starts Prometheus scraping the daemon every second.
  void StartPrometheus() {
    ASSERT_TRUE(std::filesystem::exists(kPrometheus))
        << kPrometheus << " missing: scripts/install-deps test (Debian package prometheus)";
    char dir_template[] = "/tmp/qs_prometheus_XXXXXX";
    ASSERT_NE(::mkdtemp(dir_template), nullptr);
    dir_ = dir_template;
    std::ofstream(dir_ + "/prometheus.yml")
        << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        << "scrape_configs:\n  - job_name: quantserve\n    scrape_interval: 1s\n"
        << "    static_configs:\n      - targets: ['127.0.0.1:" << daemon_.metrics_port()
        << "']\n";
    web_port_ = FreePort();
    ASSERT_GT(web_port_, 0);
    std::vector<std::string> args = {
        kPrometheus, "--config.file=" + dir_ + "/prometheus.yml",
        "--storage.tsdb.path=" + dir_ + "/data",
        "--web.listen-address=127.0.0.1:" + std::to_string(web_port_), "--log.level=warn"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = dir_ + "/prometheus.log";
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    const int rc = posix_spawn(&prometheus_pid_, kPrometheus.c_str(), &actions, nullptr,
                               argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ASSERT_EQ(rc, 0) << "cannot start " << kPrometheus;
  }

  std::string PrometheusLog() const {
    std::ifstream f(dir_ + "/prometheus.log");
    return std::string(std::istreambuf_iterator<char>(f), {});
  }

  // GET /api/v1/query; the JSON body, or "" when Prometheus is not answering yet.
  std::string Query(const std::string& promql) {
    auto r = HttpGet(web_port_, "/api/v1/query?query=" + UrlEncode(promql));
    if (!r || r->status != 200) return "";
    return r->body;
  }

  // Polls `promql` until it yields exactly one value equal to `want` (60 s at most).
  bool AwaitValue(const std::string& promql, double want, std::string* last) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      *last = Query(promql);
      const auto values = VectorValues(*last);
      if (values.size() == 1 && values[0] == want) return true;
      int status = 0;
      if (::waitpid(prometheus_pid_, &status, WNOHANG) == prometheus_pid_) {
        prometheus_pid_ = -1;
        *last = "prometheus exited:\n" + PrometheusLog();
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
  }

  pid_t prometheus_pid_ = -1;
  std::string dir_;
  int web_port_ = -1;
};

TEST_F(PrometheusServerTest, ScrapesAndAnswersQueries) {
  StartDaemon();
  SendKnownTraffic(daemon_.address());
  StartPrometheus();
  std::string last;
  EXPECT_TRUE(AwaitValue(
      "quantserve_requests_total{model=\"tiny\",version=\"2\",outcome=\"success\"}",
      kSuccesses, &last))
      << last << "\n" << PrometheusLog();
  EXPECT_TRUE(AwaitValue(
      "quantserve_requests_total{model=\"tiny\",version=\"2\",outcome=\"invalid\"}", kInvalid,
      &last))
      << last;
  EXPECT_TRUE(AwaitValue(
      "quantserve_model_weight_bytes{model=\"tiny\",version=\"2\",precision=\"FP32\"}",
      static_cast<double>(TinyWeightBytes()), &last))
      << last;
  EXPECT_TRUE(AwaitValue("up{job=\"quantserve\"}", 1, &last)) << last;
  // Every query of docs/metrics.md and of the Grafana dashboard is valid PromQL.
  const std::vector<std::string> queries = DocumentedQueries();
  EXPECT_GE(queries.size(), 20u);
  for (const std::string& promql : queries) {
    const std::string body = Query(promql);
    EXPECT_NE(body.find("\"status\":\"success\""), std::string::npos)
        << promql << "\n" << body;
  }
}

}  // namespace
}  // namespace qs
