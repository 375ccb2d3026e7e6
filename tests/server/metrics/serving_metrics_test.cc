// Calls observers directly and reads the values back through Collect().
#include "server/metrics/serving_metrics.h"

#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/onnx_import.h"
#include "gtest/gtest.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "server/repository/loaded_model.h"
#include "server/repository/model_repository.h"

namespace qs {
namespace {

using Labels = std::map<std::string, std::string>;

// The series of `name` whose labels include every pair of `want`; null when absent.
const prometheus::ClientMetric* Find(const std::vector<prometheus::MetricFamily>& families,
                                     const std::string& name, const Labels& want) {
  for (const auto& f : families) {
    if (f.name != name) continue;
    for (const auto& m : f.metric) {
      Labels have;
      for (const auto& l : m.label) have[l.name] = l.value;
      bool match = true;
      for (const auto& [k, v] : want) {
        auto it = have.find(k);
        if (it == have.end() || it->second != v) match = false;
      }
      if (match) return &m;
    }
  }
  return nullptr;
}

// How many series of `name` carry model="<model>".
int CountSeries(const std::vector<prometheus::MetricFamily>& families, const std::string& name,
                const std::string& model) {
  int n = 0;
  for (const auto& f : families) {
    if (f.name != name) continue;
    for (const auto& m : f.metric)
      for (const auto& l : m.label)
        if (l.name == "model" && l.value == model) ++n;
  }
  return n;
}

// Cumulative count of the bucket whose upper bound is `le` (within rounding).
uint64_t Bucket(const prometheus::ClientMetric& m, double le) {
  for (const auto& b : m.histogram.bucket) {
    if (std::abs(b.upper_bound - le) <= 1e-12 * std::max(1.0, le)) return b.cumulative_count;
  }
  ADD_FAILURE() << "no bucket le=" << le;
  return 0;
}

ModelMetricsInfo Info(const std::string& name, const std::string& version) {
  ModelMetricsInfo info;
  info.name = name;
  info.version = version;
  info.precision = "FP32";
  info.weight_bytes = 1000;
  info.fp32_weight_bytes = 1000;
  info.load_duration = absl::Milliseconds(250);
  info.max_queue_size = 16;
  return info;
}

std::shared_ptr<ServingMetrics> NewMetrics(std::vector<double> buckets = {}) {
  ServingMetrics::Options o;
  o.latency_buckets = std::move(buckets);
  auto m = ServingMetrics::Create(o);
  EXPECT_TRUE(m.ok()) << m.status();
  return *m;
}

const Labels kM = {{"model", "m"}, {"version", "3"}};

TEST(LatencyBucketsTest, DefaultIsExponentialFrom50usPast10s) {
  const std::vector<double> b = DefaultLatencyBuckets();
  ASSERT_GE(b.size(), 2u);
  EXPECT_DOUBLE_EQ(b.front(), 50e-6);
  for (size_t i = 1; i < b.size(); ++i) EXPECT_DOUBLE_EQ(b[i], 2 * b[i - 1]);
  EXPECT_GE(b.back(), 10.0);
  EXPECT_LT(b[b.size() - 2], 10.0);
}

TEST(LatencyBucketsTest, Parse) {
  auto ok = ParseLatencyBuckets("0.001, 0.01,0.1");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, (std::vector<double>{0.001, 0.01, 0.1}));
  EXPECT_FALSE(ParseLatencyBuckets("").ok());
  EXPECT_FALSE(ParseLatencyBuckets("0.1,abc").ok());
  EXPECT_FALSE(ParseLatencyBuckets("0.1,0.1").ok());
  EXPECT_FALSE(ParseLatencyBuckets("0.2,0.1").ok());
  EXPECT_FALSE(ParseLatencyBuckets("-1,2").ok());
  EXPECT_FALSE(ParseLatencyBuckets("0,1").ok());
  EXPECT_FALSE(ParseLatencyBuckets("1,inf").ok());
  ServingMetrics::Options o;
  o.latency_buckets = {1, 0.5};
  EXPECT_EQ(ServingMetrics::Create(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ServingMetricsTest, ForModelCreatesEverySeries) {
  auto metrics = NewMetrics();
  auto obs = metrics->ForModel(Info("m", "3"));
  const auto f = metrics->Collect();
  for (const char* outcome : {"success", "rejected", "cancelled", "timeout", "invalid",
                              "internal"}) {
    Labels l = kM;
    l["outcome"] = outcome;
    const auto* c = Find(f, "quantserve_requests_total", l);
    ASSERT_NE(c, nullptr) << outcome;
    EXPECT_EQ(c->counter.value, 0) << outcome;
  }
  for (const char* name : {"quantserve_inferences_total", "quantserve_executions_total"}) {
    ASSERT_NE(Find(f, name, kM), nullptr) << name;
  }
  for (const char* name :
       {"quantserve_request_duration_seconds", "quantserve_queue_duration_seconds",
        "quantserve_compute_input_duration_seconds",
        "quantserve_compute_infer_duration_seconds",
        "quantserve_compute_output_duration_seconds", "quantserve_batch_size"}) {
    const auto* h = Find(f, name, kM);
    ASSERT_NE(h, nullptr) << name;
    EXPECT_EQ(h->histogram.sample_count, 0u) << name;
  }
  Labels mem = kM;
  mem["precision"] = "FP32";
  ASSERT_NE(Find(f, "quantserve_model_weight_bytes", mem), nullptr);
  EXPECT_EQ(Find(f, "quantserve_model_weight_bytes", mem)->gauge.value, 1000);
  EXPECT_EQ(Find(f, "quantserve_model_fp32_weight_bytes", mem)->gauge.value, 1000);
  ASSERT_NE(Find(f, "quantserve_model_load_duration_seconds", kM), nullptr);
  EXPECT_DOUBLE_EQ(Find(f, "quantserve_model_load_duration_seconds", kM)->gauge.value, 0.25);
  EXPECT_EQ(Find(f, "quantserve_pending_requests", kM)->gauge.value, 0);
  EXPECT_EQ(Find(f, "quantserve_inflight_requests", kM)->gauge.value, 0);
  ASSERT_NE(Find(f, "quantserve_queue_capacity", kM), nullptr);
  EXPECT_EQ(Find(f, "quantserve_queue_capacity", kM)->gauge.value, 16);
  // Server-wide gauges are part of the same collection.
  ASSERT_NE(Find(f, "quantserve_process_resident_memory_bytes", {}), nullptr);
  EXPECT_GT(Find(f, "quantserve_process_resident_memory_bytes", {})->gauge.value, 0);
  ASSERT_NE(Find(f, "quantserve_process_virtual_memory_bytes", {}), nullptr);
  EXPECT_GE(Find(f, "quantserve_process_virtual_memory_bytes", {})->gauge.value,
            Find(f, "quantserve_process_resident_memory_bytes", {})->gauge.value);
  ASSERT_NE(Find(f, "quantserve_uptime_seconds", {}), nullptr);
  EXPECT_GE(Find(f, "quantserve_uptime_seconds", {})->gauge.value, 0);
  ASSERT_NE(Find(f, "quantserve_build_info", {}), nullptr);
  EXPECT_EQ(Find(f, "quantserve_build_info", {})->gauge.value, 1);
  EXPECT_FALSE(Find(f, "quantserve_build_info", {})->label.empty());
}

TEST(ServingMetricsTest, SuccessCountsSumsAndBuckets) {
  auto metrics = NewMetrics();
  auto obs = metrics->ForModel(Info("m", "3"));
  InferenceTimings t;
  t.queue = absl::Microseconds(30);
  obs->OnSuccess(1, absl::Microseconds(70), t);   // le 100us
  t.queue = absl::Microseconds(500);
  obs->OnSuccess(4, absl::Milliseconds(1), t);    // le 1.6ms
  t.queue = absl::Seconds(2);
  obs->OnSuccess(2, absl::Seconds(3), t);         // le 3.2768s
  const auto f = metrics->Collect();
  Labels ok = kM;
  ok["outcome"] = "success";
  EXPECT_EQ(Find(f, "quantserve_requests_total", ok)->counter.value, 3);
  EXPECT_EQ(Find(f, "quantserve_inferences_total", kM)->counter.value, 7);

  const auto* req = Find(f, "quantserve_request_duration_seconds", kM);
  ASSERT_NE(req, nullptr);
  EXPECT_EQ(req->histogram.sample_count, 3u);
  EXPECT_NEAR(req->histogram.sample_sum, 70e-6 + 1e-3 + 3.0, 1e-9);
  EXPECT_EQ(Bucket(*req, 50e-6), 0u);
  EXPECT_EQ(Bucket(*req, 100e-6), 1u);
  EXPECT_EQ(Bucket(*req, 800e-6), 1u);
  EXPECT_EQ(Bucket(*req, 1.6e-3), 2u);
  EXPECT_EQ(Bucket(*req, 50e-6 * (1 << 15)), 2u);  // 1.6384 s
  EXPECT_EQ(Bucket(*req, 50e-6 * (1 << 16)), 3u);  // 3.2768 s
  // prometheus-cpp adds the +Inf bucket.
  EXPECT_EQ(req->histogram.bucket.back().cumulative_count, 3u);

  const auto* queue = Find(f, "quantserve_queue_duration_seconds", kM);
  ASSERT_NE(queue, nullptr);
  EXPECT_EQ(queue->histogram.sample_count, 3u);
  EXPECT_NEAR(queue->histogram.sample_sum, 30e-6 + 500e-6 + 2.0, 1e-9);
  EXPECT_EQ(Bucket(*queue, 50e-6), 1u);
  EXPECT_EQ(Bucket(*queue, 400e-6), 1u);
  EXPECT_EQ(Bucket(*queue, 800e-6), 2u);
}

TEST(ServingMetricsTest, FailuresByOutcome) {
  auto metrics = NewMetrics();
  auto obs = metrics->ForModel(Info("m", "3"));
  obs->OnFailure(FailureReason::kInvalid, absl::Microseconds(5));
  obs->OnFailure(FailureReason::kInvalid, absl::Microseconds(5));
  obs->OnFailure(FailureReason::kRejected, absl::Microseconds(5));
  obs->OnFailure(FailureReason::kCancelled, absl::Microseconds(5));
  obs->OnFailure(FailureReason::kTimeout, absl::Microseconds(5));
  obs->OnFailure(FailureReason::kInternal, absl::Microseconds(5));
  obs->OnFailure(FailureReason::kInternal, absl::Microseconds(5));
  obs->OnFailure(FailureReason::kInternal, absl::Microseconds(5));
  const auto f = metrics->Collect();
  const std::map<std::string, double> want = {{"success", 0}, {"invalid", 2}, {"rejected", 1},
                                              {"cancelled", 1}, {"timeout", 1},
                                              {"internal", 3}};
  for (const auto& [outcome, n] : want) {
    Labels l = kM;
    l["outcome"] = outcome;
    EXPECT_EQ(Find(f, "quantserve_requests_total", l)->counter.value, n) << outcome;
  }
  // Failures are not request latencies.
  EXPECT_EQ(Find(f, "quantserve_request_duration_seconds", kM)->histogram.sample_count, 0u);
}

TEST(ServingMetricsTest, ExecutionsQueueAndInFlight) {
  auto metrics = NewMetrics();
  auto obs = metrics->ForModel(Info("m", "3"));
  InferenceTimings t;
  t.compute_input = absl::Microseconds(10);
  t.compute_infer = absl::Microseconds(300);
  t.compute_output = absl::Microseconds(20);
  obs->OnExecution(1, t);
  obs->OnExecution(3, t);
  obs->OnExecution(8, t);
  obs->OnQueueDepth(5);
  obs->OnInFlight(2);
  obs->OnInFlight(3);
  obs->OnInFlight(-4);
  obs->OnOutputs({}, {});  // no-op until drift monitoring exists
  const auto f = metrics->Collect();
  EXPECT_EQ(Find(f, "quantserve_executions_total", kM)->counter.value, 3);
  const auto* b = Find(f, "quantserve_batch_size", kM);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->histogram.sample_count, 3u);
  EXPECT_EQ(b->histogram.sample_sum, 12);
  EXPECT_EQ(Bucket(*b, 1), 1u);
  EXPECT_EQ(Bucket(*b, 2), 1u);
  EXPECT_EQ(Bucket(*b, 4), 2u);
  EXPECT_EQ(Bucket(*b, 8), 3u);
  EXPECT_EQ(Bucket(*b, 256), 3u);
  const auto* infer = Find(f, "quantserve_compute_infer_duration_seconds", kM);
  EXPECT_EQ(infer->histogram.sample_count, 3u);
  EXPECT_NEAR(infer->histogram.sample_sum, 900e-6, 1e-12);
  EXPECT_EQ(Bucket(*infer, 200e-6), 0u);
  EXPECT_EQ(Bucket(*infer, 400e-6), 3u);
  EXPECT_NEAR(Find(f, "quantserve_compute_input_duration_seconds", kM)->histogram.sample_sum,
              30e-6, 1e-12);
  EXPECT_NEAR(Find(f, "quantserve_compute_output_duration_seconds", kM)->histogram.sample_sum,
              60e-6, 1e-12);
  EXPECT_EQ(Find(f, "quantserve_pending_requests", kM)->gauge.value, 5);
  EXPECT_EQ(Find(f, "quantserve_inflight_requests", kM)->gauge.value, 1);
}

TEST(ServingMetricsTest, CustomLatencyBuckets) {
  auto metrics = NewMetrics({0.001, 0.01});
  auto obs = metrics->ForModel(Info("m", "3"));
  obs->OnSuccess(1, absl::Milliseconds(5), InferenceTimings());
  const auto f = metrics->Collect();
  const auto* h = Find(f, "quantserve_request_duration_seconds", kM);
  ASSERT_NE(h, nullptr);
  ASSERT_EQ(h->histogram.bucket.size(), 3u);  // two bounds + Inf
  EXPECT_EQ(h->histogram.bucket[0].cumulative_count, 0u);
  EXPECT_EQ(h->histogram.bucket[1].cumulative_count, 1u);
}

TEST(ServingMetricsTest, SeriesRemovedWhenTheLastObserverGoes) {
  auto metrics = NewMetrics();
  auto a = metrics->ForModel(Info("m", "3"));
  auto other = metrics->ForModel(Info("other", "1"));
  // A reload of the same version overlaps the old observer with the new one: they share
  // the series, so counts continue.
  ModelMetricsInfo reload = Info("m", "3");
  reload.weight_bytes = 400;
  reload.precision = "INT8";
  auto b = metrics->ForModel(reload);
  a->OnFailure(FailureReason::kInvalid, absl::ZeroDuration());
  b->OnFailure(FailureReason::kInvalid, absl::ZeroDuration());
  Labels invalid = kM;
  invalid["outcome"] = "invalid";
  {
    const auto f = metrics->Collect();
    EXPECT_EQ(Find(f, "quantserve_requests_total", invalid)->counter.value, 2);
    EXPECT_EQ(CountSeries(f, "quantserve_model_weight_bytes", "m"), 2);  // FP32 and INT8
  }
  a.reset();  // the old version's scheduler drained
  {
    const auto f = metrics->Collect();
    EXPECT_EQ(Find(f, "quantserve_requests_total", invalid)->counter.value, 2);
    EXPECT_EQ(CountSeries(f, "quantserve_model_weight_bytes", "m"), 1);
    Labels int8 = kM;
    int8["precision"] = "INT8";
    ASSERT_NE(Find(f, "quantserve_model_weight_bytes", int8), nullptr);
    EXPECT_EQ(Find(f, "quantserve_model_weight_bytes", int8)->gauge.value, 400);
  }
  b.reset();  // unloaded
  const auto f = metrics->Collect();
  for (const auto& family : f) {
    EXPECT_EQ(CountSeries(f, family.name, "m"), 0) << family.name;
  }
  EXPECT_EQ(CountSeries(f, "quantserve_requests_total", "other"), 6);
  EXPECT_EQ(CountSeries(f, "quantserve_model_weight_bytes", "other"), 1);
  // A later load starts from zero again.
  auto c = metrics->ForModel(Info("m", "3"));
  EXPECT_EQ(Find(metrics->Collect(), "quantserve_requests_total", invalid)->counter.value, 0);
}

// Activation bytes are per scheduler: a reload of the same version and precision
// overlaps two schedulers, whose figures add up until the old one goes.
TEST(ServingMetricsTest, ActivationBytesSumOverLiveSchedulers) {
  auto metrics = NewMetrics();
  Labels mem = kM;
  mem["precision"] = "FP32";
  auto value = [&] {
    const auto f = metrics->Collect();
    const auto* g = Find(f, "quantserve_model_activation_bytes", mem);
    return g == nullptr ? -1.0 : g->gauge.value;
  };
  auto a = metrics->ForModel(Info("m", "3"));
  EXPECT_EQ(value(), 0);  // the series exists from the load
  a->OnActivationBytes(1000);
  EXPECT_EQ(value(), 1000);
  a->OnActivationBytes(1500);  // a figure replaces that scheduler's last one
  EXPECT_EQ(value(), 1500);
  auto b = metrics->ForModel(Info("m", "3"));  // the reload's scheduler
  b->OnActivationBytes(700);
  EXPECT_EQ(value(), 2200);
  a.reset();  // the old scheduler drained: its contexts are gone
  EXPECT_EQ(value(), 700);
  b.reset();
  EXPECT_EQ(value(), -1);  // unloaded: no series
}

TEST(ServingMetricsTest, ObserverKeepsMetricsAlive) {
  auto metrics = NewMetrics();
  auto obs = metrics->ForModel(Info("m", "3"));
  metrics.reset();  // a scheduler may outlive the daemon's handle
  obs->OnSuccess(1, absl::Milliseconds(1), InferenceTimings());
  obs.reset();
}

// The real fixture: a loaded model's weight bytes and the repository's states.
class LoadedModelMetricsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Unique per process: ctest runs each test of this suite as its own process.
    char dir_template[] = "/tmp/qs_serving_metrics_test_XXXXXX";
    dir_ = new std::string(::mkdtemp(dir_template) != nullptr ? dir_template : "");
    ASSERT_FALSE(dir_->empty()) << "mkdtemp failed";
    const std::string cmd = std::string(QS_PYTHON3) + " " + QS_SOURCE_DIR +
                            "/tests/fixtures/make_bad_models.py --out " + *dir_;
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  static void TearDownTestSuite() {
    if (dir_ == nullptr) return;
    std::filesystem::remove_all(*dir_);
    delete dir_;
    dir_ = nullptr;
  }
  static std::string* dir_;
};
std::string* LoadedModelMetricsTest::dir_ = nullptr;

TEST_F(LoadedModelMetricsTest, WeightBytesOfTheTinyFixture) {
  // The fixture's initializers (W 4x3, b 3, FP32), counted from the file itself.
  auto proto = LoadOnnxModel(*dir_ + "/tiny/2/model.onnx");
  ASSERT_TRUE(proto.ok()) << proto.status();
  int64_t expected = 0;
  for (const auto& init : proto->graph().initializer()) {
    ASSERT_EQ(init.data_type(), onnx::TensorProto::FLOAT);
    int64_t n = 1;
    for (int64_t d : init.dims()) n *= d;
    expected += n * static_cast<int64_t>(sizeof(float));
  }
  EXPECT_EQ(expected, 60);

  ModelLoadRequest req;
  req.name = "tiny";
  req.version = 2;
  req.model_dir = *dir_ + "/tiny";
  auto model = LoadedModel::Load(req);
  ASSERT_TRUE(model.ok()) << model.status();
  auto metrics = NewMetrics();
  auto obs = metrics->ForModel(**model);
  const auto f = metrics->Collect();
  const Labels labels = {{"model", "tiny"}, {"version", "2"}, {"precision", "FP32"}};
  ASSERT_NE(Find(f, "quantserve_model_weight_bytes", labels), nullptr);
  EXPECT_EQ(Find(f, "quantserve_model_weight_bytes", labels)->gauge.value, expected);
  EXPECT_EQ(Find(f, "quantserve_model_fp32_weight_bytes", labels)->gauge.value, expected);
  const auto* load =
      Find(f, "quantserve_model_load_duration_seconds", {{"model", "tiny"}, {"version", "2"}});
  ASSERT_NE(load, nullptr);
  EXPECT_GT(load->gauge.value, 0);
}

TEST_F(LoadedModelMetricsTest, ModelStatesAtScrapeTime) {
  ModelRepository::Options ro;
  ro.root = *dir_;
  auto repo = ModelRepository::Create(ro);
  ASSERT_TRUE(repo.ok()) << repo.status();
  ServingMetrics::Options o;
  o.repository = repo->get();
  auto metrics = ServingMetrics::Create(o);
  ASSERT_TRUE(metrics.ok());
  auto states = [&] {
    std::map<std::string, double> out;
    for (const auto& f : (*metrics)->Collect()) {
      if (f.name != "quantserve_models") continue;
      for (const auto& m : f.metric) out[m.label.at(0).value] = m.gauge.value;
    }
    return out;
  };
  EXPECT_EQ(states(), (std::map<std::string, double>{
                          {"LOADING", 0}, {"READY", 0}, {"UNAVAILABLE", 0}, {"UNLOADING", 0}}));
  (*repo)->LoadAll();
  // tiny (latest version only) and ignored_fields load; truncated, bad_config and
  // missing_input do not.
  EXPECT_EQ(states(), (std::map<std::string, double>{
                          {"LOADING", 0}, {"READY", 2}, {"UNAVAILABLE", 3}, {"UNLOADING", 0}}));
  ASSERT_TRUE((*repo)->UnloadModel("tiny").ok());
  EXPECT_EQ(states()["READY"], 1);
}

}  // namespace
}  // namespace qs
