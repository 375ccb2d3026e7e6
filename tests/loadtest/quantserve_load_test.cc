// Starts the real quantserve daemon on the test repository, runs quantserve-load against it
// for a few short windows and checks its JSON (and CSV) reports.
#include <fcntl.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/npy.h"
#include "engine/tensor.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_process.h"

extern char** environ;

namespace qs {
namespace {

using google::protobuf::ListValue;
using google::protobuf::Struct;
using google::protobuf::Value;

const std::string kRepo = QS_BINARY_DIR "/test_repo";

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs quantserve-load with `args`; returns its exit code, its stdout+stderr in `*output`.
int RunLoad(const std::vector<std::string>& args, const std::string& log, std::string* output) {
  std::vector<std::string> all = {QS_LOAD_BINARY};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return -1;
  int status = 0;
  waitpid(pid, &status, 0);
  *output = ReadFile(log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

double Num(const Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  EXPECT_NE(it, s.fields().end()) << "missing " << key;
  return it == s.fields().end() ? -1 : it->second.number_value();
}

// Checks one level of the report; `key`/`value` name the level ("concurrency", 4).
void CheckLevel(const Struct& level, const std::string& key, double value) {
  SCOPED_TRACE(key + " " + std::to_string(value));
  EXPECT_EQ(Num(level, key), value);
  EXPECT_EQ(Num(level, "errors"), 0);
  EXPECT_TRUE(level.fields().at("errors_by_code").struct_value().fields().empty());
  EXPECT_GT(Num(level, "throughput_rps"), 0);
  EXPECT_GT(Num(level, "inferences_per_s"), 0);
  const Struct& lat = level.fields().at("latency_us").struct_value();
  EXPECT_GT(Num(lat, "p50"), 0);
  EXPECT_LE(Num(lat, "min"), Num(lat, "p50"));
  EXPECT_LE(Num(lat, "p50"), Num(lat, "p90"));
  EXPECT_LE(Num(lat, "p90"), Num(lat, "p95"));
  EXPECT_LE(Num(lat, "p95"), Num(lat, "p99"));
  EXPECT_LE(Num(lat, "p99"), Num(lat, "p99.9"));
  EXPECT_LE(Num(lat, "p99.9"), Num(lat, "max"));
  const double measured = Num(level, "windows_measured");
  EXPECT_GE(measured, 1);
  EXPECT_LE(measured, 3);
  const ListValue& windows = level.fields().at("windows").list_value();
  EXPECT_EQ(windows.values_size(), std::min(3.0, measured));
  double sum = 0;
  for (const Value& w : windows.values()) sum += Num(w.struct_value(), "requests");
  EXPECT_EQ(Num(level, "requests"), sum);
  EXPECT_EQ(Num(level, "requests"), Num(level, "successes"));
  EXPECT_GT(Num(level, "requests"), 0);
}

class QuantserveLoadTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    daemon_ = new testing::DaemonProcess();
    ASSERT_TRUE(daemon_->Start(QS_DAEMON_BINARY, {"--model-repository=" + kRepo}))
        << daemon_->log();
  }
  static void TearDownTestSuite() {
    delete daemon_;
    daemon_ = nullptr;
  }
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/quantserve_load_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }

  // Runs the tool briefly (warm-up 0.2 s, windows of 0.5 s, at most 3) and parses its JSON.
  Struct RunAndParse(std::vector<std::string> args) {
    const std::string json = dir_ + "/out.json";
    for (const char* a : {"--warmup-secs=0.2", "--window-secs=0.5", "--max-windows=3"}) {
      args.push_back(a);
    }
    args.push_back("--address=" + daemon_->address());
    args.push_back("--json=" + json);
    std::string output;
    const int rc = RunLoad(args, dir_ + "/out.log", &output);
    EXPECT_EQ(rc, 0) << output;
    std::cout << output;
    Struct report;
    const auto st = google::protobuf::util::JsonStringToMessage(ReadFile(json), &report);
    EXPECT_TRUE(st.ok()) << st.ToString() << "\n" << ReadFile(json);
    return report;
  }

  static testing::DaemonProcess* daemon_;
  std::string dir_;
};
testing::DaemonProcess* QuantserveLoadTest::daemon_ = nullptr;

TEST_F(QuantserveLoadTest, ClosedLoopInfer) {
  Struct report = RunAndParse({"--rpc=infer", "--model=tiny", "--concurrency=1,4"});
  ASSERT_TRUE(report.fields().count("levels"));
  EXPECT_EQ(report.fields().at("rpc").string_value(), "infer");
  EXPECT_EQ(report.fields().at("model").string_value(), "tiny");
  const ListValue& levels = report.fields().at("levels").list_value();
  ASSERT_EQ(levels.values_size(), 2);
  CheckLevel(levels.values(0).struct_value(), "concurrency", 1);
  CheckLevel(levels.values(1).struct_value(), "concurrency", 4);
}

TEST_F(QuantserveLoadTest, ClosedLoopLive) {
  Struct report = RunAndParse({"--rpc", "live", "--concurrency", "1,4"});
  ASSERT_TRUE(report.fields().count("levels"));
  EXPECT_EQ(report.fields().at("rpc").string_value(), "live");
  const ListValue& levels = report.fields().at("levels").list_value();
  ASSERT_EQ(levels.values_size(), 2);
  CheckLevel(levels.values(0).struct_value(), "concurrency", 1);
  CheckLevel(levels.values(1).struct_value(), "concurrency", 4);
}

// Open loop with rows from a .npy file (3 rows, batch 2: the rows cycle) and a CSV report.
TEST_F(QuantserveLoadTest, OpenLoopPoissonFromNpyWithCsv) {
  Tensor x(DataType::kFloat32, {3, 4});
  for (int i = 0; i < 12; ++i) x.data<float>()[i] = 0.1f * static_cast<float>(i);
  ASSERT_TRUE(WriteNpy(dir_ + "/x.npy", x).ok());
  const std::string csv = dir_ + "/out.csv";
  Struct report = RunAndParse({"--model=tiny", "--version=2", "--inputs=" + dir_, "--batch=2",
                               "--request-rate=200", "--distribution=poisson", "--csv=" + csv});
  ASSERT_TRUE(report.fields().count("levels"));
  EXPECT_EQ(report.fields().at("version").string_value(), "2");
  EXPECT_EQ(Num(report, "batch"), 2);
  const ListValue& levels = report.fields().at("levels").list_value();
  ASSERT_EQ(levels.values_size(), 1);
  const Struct& level = levels.values(0).struct_value();
  CheckLevel(level, "request_rate", 200);
  EXPECT_EQ(level.fields().at("distribution").string_value(), "poisson");
  EXPECT_NEAR(Num(level, "inferences_per_s"), 2 * Num(level, "throughput_rps"), 0.01);
  // 200 req/s for 0.5 s windows: ~100 per window (Poisson); generous bounds.
  EXPECT_GT(Num(level, "throughput_rps"), 100);
  EXPECT_LT(Num(level, "throughput_rps"), 400);
  std::string text = ReadFile(csv);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 2) << text;
  EXPECT_EQ(text.rfind("rpc,model,mode,concurrency,request_rate", 0), 0u) << text;
}

TEST_F(QuantserveLoadTest, RejectsBadUse) {
  std::string output;
  EXPECT_NE(RunLoad({"--model=tiny", "--concurrency=1", "--request-rate=10",
                     "--address=" + daemon_->address()},
                    dir_ + "/log", &output),
            0);
  EXPECT_NE(output.find("mutually exclusive"), std::string::npos) << output;
  EXPECT_NE(
      RunLoad({"--model=no_such_model", "--address=" + daemon_->address()}, dir_ + "/log", &output),
      0);
  EXPECT_NE(output.find("NOT_FOUND"), std::string::npos) << output;
}

}  // namespace
}  // namespace qs
