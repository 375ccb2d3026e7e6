// The drift monitor: exact sampling and rate limiting with a fake clock, drop counting
// with a blocked worker, metric values for known tensors, the guard, series lifetime, and
// the real path (a lazily compiled FP32 reference and the load-time gauge) on a small
// ONNX model built here.
#include "server/metrics/drift_monitor.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "engine/onnx_import.h"
#include "engine/session.h"
#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"

namespace qs {
namespace {

using Labels = std::map<std::string, std::string>;

// ---- reading the registry ----

const prometheus::ClientMetric* Find(const std::vector<prometheus::MetricFamily>& families,
                                     const std::string& name, const Labels& want) {
  for (const auto& f : families) {
    if (f.name != name) continue;
    for (const auto& m : f.metric) {
      Labels have;
      for (const auto& l : m.label) have[l.name] = l.value;
      if (have == want) return &m;
    }
  }
  return nullptr;
}

int CountSeries(const std::vector<prometheus::MetricFamily>& families,
                const std::string& prefix) {
  int n = 0;
  for (const auto& f : families)
    if (f.name.rfind(prefix, 0) == 0) n += static_cast<int>(f.metric.size());
  return n;
}

// ---- tensors ----

Tensor Make(Shape shape, const std::vector<float>& values) {
  Tensor t(DataType::kFloat32, std::move(shape));
  EXPECT_EQ(static_cast<size_t>(t.num_elements()), values.size());
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

Tensor Scaled(const Tensor& t, float factor) {
  Tensor out = t.Clone();
  for (int64_t i = 0; i < out.num_elements(); ++i) out.data<float>()[i] *= factor;
  return out;
}

// The reference most tests use: its outputs are its inputs (one output per input).
absl::Status IdentityReference(const std::vector<Tensor>& inputs, std::vector<Tensor>* out) {
  *out = inputs;
  return absl::OkStatus();
}

// A fake clock the test advances.
class FakeClock {
 public:
  absl::Time Now() {
    ++reads_;
    return now_;
  }
  void Set(absl::Duration since_epoch) { now_ = absl::UnixEpoch() + since_epoch; }
  int reads() const { return reads_; }
  std::function<absl::Time()> fn() {
    return [this] { return Now(); };
  }

 private:
  absl::Time now_ = absl::UnixEpoch();
  int reads_ = 0;
};

inference::ModelConfig Config(double sample_rate, inference::Precision precision) {
  inference::ModelConfig c;
  c.set_name("m");
  c.set_max_batch_size(8);
  c.mutable_quantization()->set_precision(precision);
  c.mutable_drift()->set_sample_rate(sample_rate);
  return c;
}

DriftMonitorOptions Options(inference::ModelConfig config,
                            std::vector<std::string> outputs = {"y"}) {
  DriftMonitorOptions o;
  o.model = "m";
  o.version = "1";
  o.config = std::move(config);
  o.outputs = std::move(outputs);
  o.reference = IdentityReference;
  o.seed = 7;
  return o;
}

class DriftMonitorTest : public ::testing::Test {
 protected:
  std::unique_ptr<DriftMonitor> NewMonitor(DriftMonitorOptions o) {
    auto m = DriftMonitor::Create(&drift_, std::move(o));
    EXPECT_TRUE(m.ok()) << m.status();
    return m.ok() ? *std::move(m) : nullptr;
  }
  std::vector<prometheus::MetricFamily> Collect() { return registry_->Collect(); }
  double Value(const std::string& name, const Labels& labels) {
    const auto f = Collect();
    const auto* m = Find(f, name, labels);
    EXPECT_NE(m, nullptr) << name;
    if (m == nullptr) return -1;
    return name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0
               ? m->counter.value
               : m->gauge.value;
  }

  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  DriftMetrics drift_{*registry_};
  const Labels v_ = {{"model", "m"}, {"version", "1"}};
  const Labels y_ = {{"model", "m"}, {"version", "1"}, {"output", "y"}};
};

// ---- row comparison ----

TEST(CompareRowTest, ScaledByOnePercent) {
  const std::vector<float> r = {1, -2, 3, 0.5f};
  std::vector<float> q;
  for (float v : r) q.push_back(v * 1.01f);
  const RowDrift d = CompareRow(q.data(), r.data(), 4);
  EXPECT_NEAR(d.relative_l2, 0.01, 1e-6);
  EXPECT_NEAR(d.cosine_similarity, 1.0, 1e-12);
  EXPECT_NEAR(d.sqnr_db, 40.0, 1e-3);
  EXPECT_NEAR(d.max_abs_error, 0.03, 1e-6);
  EXPECT_EQ(d.argmax_quantized, 2);
  EXPECT_EQ(d.argmax_reference, 2);
}

TEST(CompareRowTest, EdgeCases) {
  const std::vector<float> zero = {0, 0}, one = {1, 0}, other = {0, 1}, neg = {-1, 0};
  RowDrift same = CompareRow(one.data(), one.data(), 2);
  EXPECT_EQ(same.relative_l2, 0);
  EXPECT_EQ(same.sqnr_db, kMaxDriftSqnrDb);
  EXPECT_EQ(same.cosine_similarity, 1);
  RowDrift zeros = CompareRow(zero.data(), zero.data(), 2);
  EXPECT_EQ(zeros.relative_l2, 0);
  EXPECT_EQ(zeros.cosine_similarity, 1);
  RowDrift undefined = CompareRow(one.data(), zero.data(), 2);  // reference is zero
  EXPECT_TRUE(std::isnan(undefined.relative_l2));
  EXPECT_TRUE(std::isnan(undefined.sqnr_db));
  EXPECT_EQ(undefined.cosine_similarity, 0);
  EXPECT_EQ(undefined.max_abs_error, 1);
  RowDrift orthogonal = CompareRow(other.data(), one.data(), 2);
  EXPECT_NEAR(orthogonal.relative_l2, std::sqrt(2.0), 1e-12);
  EXPECT_EQ(orthogonal.cosine_similarity, 0);
  EXPECT_EQ(orthogonal.argmax_quantized, 1);
  EXPECT_EQ(orthogonal.argmax_reference, 0);
  RowDrift opposite = CompareRow(neg.data(), one.data(), 2);
  EXPECT_EQ(opposite.cosine_similarity, -1);
  EXPECT_NEAR(opposite.relative_l2, 2, 1e-12);
  EXPECT_NEAR(opposite.sqnr_db, -20 * std::log10(2.0), 1e-9);
}

// ---- sampler ----

uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

TEST(DriftSamplerTest, SampleRateIsTheDocumentedBernoulliStream) {
  FakeClock clock;
  DriftSampler sampler(0.3, 0, 42);
  uint64_t state = 42;
  int taken = 0;
  for (int i = 0; i < 10000; ++i) {
    const bool want = static_cast<double>(SplitMix64(&state) >> 11) * 0x1.0p-53 < 0.3;
    ASSERT_EQ(sampler.Sample(clock.fn()), want) << "execution " << i;
    taken += want;
  }
  EXPECT_NEAR(taken / 10000.0, 0.3, 0.02);
  EXPECT_EQ(clock.reads(), 0);  // no rate limit: the clock is never read
}

TEST(DriftSamplerTest, RateOneAndSameSeedSameChoices) {
  FakeClock clock;
  DriftSampler all(1.0, 0, 1);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(all.Sample(clock.fn()));
  DriftSampler a(0.01, 0, DriftSeedFor("digits")), b(0.01, 0, DriftSeedFor("digits"));
  int taken = 0;
  for (int i = 0; i < 20000; ++i) {
    const bool x = a.Sample(clock.fn());
    ASSERT_EQ(x, b.Sample(clock.fn()));
    taken += x;
  }
  EXPECT_GT(taken, 140);
  EXPECT_LT(taken, 260);
  EXPECT_NE(DriftSeedFor("digits"), DriftSeedFor("digitz"));
}

TEST(DriftSamplerTest, RateLimitIsExactWithAFakeClock) {
  FakeClock clock;
  DriftSampler sampler(1.0, 2, 1);  // at most 2 per second: >= 500 ms apart
  const struct {
    int ms;
    bool taken;
  } steps[] = {{0, true},     {100, false},  {499, false}, {500, true},  {900, false},
               {1000, true},  {1200, false}, {1499, false}, {2000, true}, {2001, false},
               {10000, true}, {10500, true}};
  for (const auto& s : steps) {
    clock.Set(absl::Milliseconds(s.ms));
    EXPECT_EQ(sampler.Sample(clock.fn()), s.taken) << "at " << s.ms << " ms";
  }
  // A sustained stream of 1000 executions per second for 10 s yields 2 per second.
  DriftSampler busy(1.0, 2, 1);
  int taken = 0;
  for (int ms = 0; ms < 10000; ++ms) {
    clock.Set(absl::Milliseconds(ms));
    taken += busy.Sample(clock.fn());
  }
  EXPECT_EQ(taken, 20);
}

TEST(DriftSamplerTest, RateLimitAppliesAfterTheDraw) {
  FakeClock clock;
  DriftSampler sampler(0.5, 1000, 3);
  uint64_t state = 3;
  int draws_passed = 0;
  for (int i = 0; i < 1000; ++i) {
    clock.Set(absl::Seconds(i));  // far apart: the limit never binds
    const bool want = static_cast<double>(SplitMix64(&state) >> 11) * 0x1.0p-53 < 0.5;
    EXPECT_EQ(sampler.Sample(clock.fn()), want);
    draws_passed += want;
  }
  EXPECT_EQ(clock.reads(), draws_passed);  // the clock is read only for drawn executions
}

// ---- the monitor ----

TEST_F(DriftMonitorTest, KnownTensorsGiveExactValues) {
  inference::ModelConfig c = Config(1, inference::INT8);
  c.mutable_drift()->add_classification_outputs("logits");
  DriftMonitorOptions o = Options(c, {"y", "logits"});
  auto monitor = NewMonitor(std::move(o));
  ASSERT_NE(monitor, nullptr);
  // Reference = inputs. y: q = r * 1.01 (two rows). logits: row 0 agrees, row 1 flips.
  const Tensor r = Make({2, 4}, {1, -2, 3, 0.5f, 4, 3, 2, 1});
  const Tensor r_logits = Make({2, 3}, {0.1f, 0.7f, 0.2f, 0.5f, 0.3f, 0.2f});
  const Tensor q_logits = Make({2, 3}, {0.1f, 0.6f, 0.3f, 0.3f, 0.6f, 0.1f});
  monitor->Offer({r, r_logits}, {Scaled(r, 1.01f), q_logits});
  monitor->WaitUntilIdle();

  EXPECT_EQ(Value("quantserve_drift_samples_total", v_), 1);
  EXPECT_EQ(Value("quantserve_drift_samples_dropped_total", v_), 0);
  EXPECT_EQ(Value("quantserve_drift_guard_tripped", v_), 0);
  EXPECT_EQ(Value("quantserve_drift_reference_bytes", v_), 0);  // injected reference
  const auto f = Collect();
  const auto* rel = Find(f, "quantserve_drift_relative_l2", y_);
  ASSERT_NE(rel, nullptr);
  EXPECT_EQ(rel->histogram.sample_count, 2u);
  EXPECT_NEAR(rel->histogram.sample_sum, 0.02, 1e-6);
  const auto* cos = Find(f, "quantserve_drift_cosine_similarity", y_);
  ASSERT_NE(cos, nullptr);
  EXPECT_NEAR(cos->histogram.sample_sum, 2.0, 1e-9);
  const auto* sqnr = Find(f, "quantserve_drift_sqnr_db", y_);
  ASSERT_NE(sqnr, nullptr);
  EXPECT_NEAR(sqnr->histogram.sample_sum, 80.0, 1e-3);
  const auto* max_abs = Find(f, "quantserve_drift_max_abs_error", y_);
  ASSERT_NE(max_abs, nullptr);
  EXPECT_NEAR(max_abs->histogram.sample_sum, 0.03 + 0.04, 1e-6);
  EXPECT_NEAR(Value("quantserve_drift_window_relative_l2", y_), 0.01, 1e-6);
  EXPECT_NEAR(monitor->WindowRelativeL2(0), 0.01, 1e-6);

  Labels logits = {{"model", "m"}, {"version", "1"}, {"output", "logits"}};
  EXPECT_EQ(Value("quantserve_drift_top1_agreements_total", logits), 1);
  EXPECT_EQ(Value("quantserve_drift_top1_comparisons_total", logits), 2);
  // Top-1 counters exist only for classification outputs.
  EXPECT_EQ(Find(f, "quantserve_drift_top1_comparisons_total", y_), nullptr);
  EXPECT_EQ(monitor->counts().processed, 1);
}

TEST_F(DriftMonitorTest, RateLimitWithAFakeClock) {
  FakeClock clock;
  inference::ModelConfig c = Config(1, inference::INT8);
  c.mutable_drift()->set_max_samples_per_second(2);
  DriftMonitorOptions o = Options(c);
  o.clock = clock.fn();
  auto monitor = NewMonitor(std::move(o));
  const Tensor r = Make({1, 2}, {1, 2});
  for (int ms : {0, 100, 200, 500, 600, 999, 1000, 1001}) {
    clock.Set(absl::Milliseconds(ms));
    monitor->Offer({r}, {r});
  }
  monitor->WaitUntilIdle();
  const DriftMonitor::Counts n = monitor->counts();
  EXPECT_EQ(n.offered, 8);
  EXPECT_EQ(n.sampled, 3);  // 0, 500, 1000 ms
  EXPECT_EQ(n.processed, 3);
  EXPECT_EQ(Value("quantserve_drift_samples_total", v_), 3);
}

TEST_F(DriftMonitorTest, SampleRateThroughTheMonitor) {
  DriftMonitorOptions o = Options(Config(0.25, inference::INT8));
  o.seed = 11;
  auto monitor = NewMonitor(std::move(o));
  uint64_t state = 11;
  int want = 0;
  const Tensor r = Make({1, 2}, {1, 2});
  for (int i = 0; i < 400; ++i) {
    want += static_cast<double>(SplitMix64(&state) >> 11) * 0x1.0p-53 < 0.25;
    monitor->Offer({r}, {r});
    monitor->WaitUntilIdle();  // never a full queue
  }
  EXPECT_EQ(monitor->counts().sampled, want);
  EXPECT_EQ(Value("quantserve_drift_samples_total", v_), want);
  EXPECT_EQ(Value("quantserve_drift_samples_dropped_total", v_), 0);
}

TEST_F(DriftMonitorTest, FullQueueDropsAndCounts) {
  absl::Notification entered, release;
  std::atomic<int> calls{0};
  DriftMonitorOptions o = Options(Config(1, inference::INT8));
  o.queue_capacity = 8;
  o.before_sample = [&] {
    if (calls++ == 0) {
      entered.Notify();
      release.WaitForNotification();
    }
  };
  auto monitor = NewMonitor(std::move(o));
  const Tensor r = Make({1, 2}, {1, 2});
  monitor->Offer({r}, {r});
  entered.WaitForNotification();  // the worker holds sample 1
  const absl::Time start = absl::Now();
  for (int i = 0; i < 8 + 5; ++i) monitor->Offer({r}, {r});  // 8 fit, 5 are dropped
  // Offer never waits for the blocked worker.
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_EQ(monitor->counts().dropped, 5);
  EXPECT_EQ(Value("quantserve_drift_samples_dropped_total", v_), 5);
  EXPECT_EQ(Value("quantserve_drift_samples_total", v_), 0);
  release.Notify();
  monitor->WaitUntilIdle();
  EXPECT_EQ(Value("quantserve_drift_samples_total", v_), 9);
  EXPECT_EQ(Value("quantserve_drift_samples_dropped_total", v_), 5);
  EXPECT_EQ(calls.load(), 9);
}

TEST_F(DriftMonitorTest, DestructionWithQueuedSamplesDoesNotWaitForThem) {
  absl::Notification entered, release;
  DriftMonitorOptions o = Options(Config(1, inference::INT8));
  std::atomic<int> calls{0};
  o.before_sample = [&] {
    if (calls++ == 0) {
      entered.Notify();
      release.WaitForNotification();
    }
  };
  auto monitor = NewMonitor(std::move(o));
  const Tensor r = Make({1, 2}, {1, 2});
  for (int i = 0; i < 5; ++i) monitor->Offer({r}, {r});
  entered.WaitForNotification();
  release.Notify();
  monitor.reset();  // joins after the current sample; the queued ones are discarded
  EXPECT_LE(calls.load(), 5);
  EXPECT_EQ(CountSeries(Collect(), "quantserve_drift_"), 0);
}

TEST_F(DriftMonitorTest, WindowIsTheMeanOfTheLastSamples) {
  inference::ModelConfig c = Config(1, inference::INT8);
  c.mutable_drift()->set_window_size(4);
  auto monitor = NewMonitor(Options(c));
  const Tensor r = Make({1, 2}, {3, 4});
  auto offer = [&](float factor) {
    monitor->Offer({r}, {Scaled(r, factor)});
    monitor->WaitUntilIdle();
  };
  for (int i = 0; i < 4; ++i) offer(1.01f);
  EXPECT_NEAR(Value("quantserve_drift_window_relative_l2", y_), 0.01, 1e-6);
  offer(1.05f);
  offer(1.05f);  // window: 0.01 0.01 0.05 0.05
  EXPECT_NEAR(Value("quantserve_drift_window_relative_l2", y_), 0.03, 1e-6);
  offer(1.05f);
  offer(1.05f);
  EXPECT_NEAR(Value("quantserve_drift_window_relative_l2", y_), 0.05, 1e-6);
}

TEST_F(DriftMonitorTest, GuardTripsOnceAfterEnoughSamplesAndFallsBack) {
  inference::ModelConfig c = Config(1, inference::INT8);
  c.mutable_drift()->set_window_size(50);  // guard needs min(50, 20) = 20 samples
  c.mutable_drift()->set_relative_l2_bound(0.05);
  c.mutable_drift()->set_guard_enabled(true);
  c.mutable_drift()->set_fallback_precision(inference::DYNAMIC_RANGE);
  DriftMonitorOptions o = Options(c);
  absl::Mutex mu;
  std::vector<std::pair<std::string, inference::ModelConfig>> calls;
  o.fallback = [&](const std::string& model, inference::ModelConfig config) {
    absl::MutexLock lock(&mu);
    calls.emplace_back(model, std::move(config));
  };
  auto monitor = NewMonitor(std::move(o));
  const Tensor r = Make({1, 2}, {3, 4});
  for (int i = 0; i < 19; ++i) {
    monitor->Offer({r}, {Scaled(r, 1.1f)});  // relative L2 0.1 > 0.05
    monitor->WaitUntilIdle();
  }
  EXPECT_FALSE(monitor->guard_tripped());
  EXPECT_EQ(Value("quantserve_drift_guard_tripped", v_), 0);
  monitor->Offer({r}, {Scaled(r, 1.1f)});
  monitor->WaitUntilIdle();
  EXPECT_TRUE(monitor->guard_tripped());
  EXPECT_EQ(Value("quantserve_drift_guard_tripped", v_), 1);
  for (int i = 0; i < 30; ++i) monitor->Offer({r}, {Scaled(r, 1.1f)});
  monitor->WaitUntilIdle();
  absl::MutexLock lock(&mu);
  ASSERT_EQ(calls.size(), 1u);  // once
  EXPECT_EQ(calls[0].first, "m");
  EXPECT_EQ(calls[0].second.quantization().precision(), inference::DYNAMIC_RANGE);
  EXPECT_EQ(calls[0].second.drift().guard_enabled(), true);  // the rest is kept
  EXPECT_EQ(calls[0].second.max_batch_size(), 8);
}

TEST_F(DriftMonitorTest, GuardStaysQuietUnderTheBound) {
  inference::ModelConfig c = Config(1, inference::INT8);
  c.mutable_drift()->set_window_size(20);
  c.mutable_drift()->set_relative_l2_bound(0.05);
  c.mutable_drift()->set_guard_enabled(true);
  c.mutable_drift()->add_classification_outputs("logits");
  DriftMonitorOptions o = Options(c, {"y", "logits"});
  int fallbacks = 0;
  o.fallback = [&](const std::string&, inference::ModelConfig) { ++fallbacks; };
  auto monitor = NewMonitor(std::move(o));
  const Tensor r = Make({1, 2}, {3, 4});
  for (int i = 0; i < 60; ++i) {
    monitor->Offer({r, r}, {Scaled(r, 1.01f), Scaled(r, 1.04f)});  // 1 % and 4 %
    monitor->WaitUntilIdle();
  }
  EXPECT_FALSE(monitor->guard_tripped());
  EXPECT_EQ(fallbacks, 0);
  EXPECT_NEAR(monitor->WindowRelativeL2(1), 0.04, 1e-6);
  Labels logits = {{"model", "m"}, {"version", "1"}, {"output", "logits"}};
  EXPECT_EQ(Value("quantserve_drift_top1_agreements_total", logits), 60);
}

TEST_F(DriftMonitorTest, ClassificationOutputsAreGuardedToo) {
  inference::ModelConfig c = Config(1, inference::INT8);
  c.mutable_drift()->set_window_size(20);
  c.mutable_drift()->set_relative_l2_bound(0.05);
  c.mutable_drift()->set_guard_enabled(true);
  c.mutable_drift()->add_classification_outputs("y");
  DriftMonitorOptions o = Options(c);
  int fallbacks = 0;
  o.fallback = [&](const std::string&, inference::ModelConfig config) {
    EXPECT_EQ(config.quantization().precision(), inference::FP32);
    ++fallbacks;
  };
  auto monitor = NewMonitor(std::move(o));
  const Tensor r = Make({1, 2}, {3, 4});
  for (int i = 0; i < 20; ++i) {
    monitor->Offer({r}, {Scaled(r, 1.5f)});  // same class, 50 % relative L2
    monitor->WaitUntilIdle();
  }
  EXPECT_TRUE(monitor->guard_tripped());
  EXPECT_EQ(fallbacks, 1);
}

TEST_F(DriftMonitorTest, WindowGaugeIsNanBeforeTheFirstSample) {
  auto monitor = NewMonitor(Options(Config(1, inference::INT8)));
  EXPECT_TRUE(std::isnan(Value("quantserve_drift_window_relative_l2", y_)));
  EXPECT_TRUE(std::isnan(monitor->WindowRelativeL2(0)));
}

TEST_F(DriftMonitorTest, GuardWithFallbackEqualToTheServingPrecisionOnlyAlarms) {
  inference::ModelConfig c = Config(1, inference::DYNAMIC_RANGE);
  c.mutable_drift()->set_window_size(20);
  c.mutable_drift()->set_relative_l2_bound(0.05);
  c.mutable_drift()->set_guard_enabled(true);
  c.mutable_drift()->set_fallback_precision(inference::DYNAMIC_RANGE);
  DriftMonitorOptions o = Options(c);
  int fallbacks = 0;
  o.fallback = [&](const std::string&, inference::ModelConfig) { ++fallbacks; };
  auto monitor = NewMonitor(std::move(o));
  const Tensor r = Make({1, 2}, {3, 4});
  for (int i = 0; i < 25; ++i) {
    monitor->Offer({r}, {Scaled(r, 2.0f)});
    monitor->WaitUntilIdle();
  }
  EXPECT_TRUE(monitor->guard_tripped());
  EXPECT_EQ(fallbacks, 0);
}

TEST_F(DriftMonitorTest, FailingReferenceCountsDrops) {
  DriftMonitorOptions o = Options(Config(1, inference::INT8));
  o.reference = [](const std::vector<Tensor>&, std::vector<Tensor>*) {
    return absl::InternalError("boom");
  };
  auto monitor = NewMonitor(std::move(o));
  const Tensor r = Make({1, 2}, {3, 4});
  for (int i = 0; i < 3; ++i) {
    monitor->Offer({r}, {r});
    monitor->WaitUntilIdle();
  }
  EXPECT_EQ(monitor->counts().failed, 3);
  EXPECT_EQ(Value("quantserve_drift_samples_dropped_total", v_), 3);
  EXPECT_EQ(Value("quantserve_drift_samples_total", v_), 0);
}

TEST_F(DriftMonitorTest, Fp32VersionOnlyHoldsTheVersionSeries) {
  inference::ModelConfig c = Config(1, inference::INT8);
  c.mutable_drift()->set_window_size(20);
  c.mutable_drift()->set_relative_l2_bound(0.05);
  c.mutable_drift()->set_guard_enabled(true);
  auto quantized = NewMonitor(Options(c));
  const Tensor r = Make({1, 2}, {3, 4});
  for (int i = 0; i < 20; ++i) {
    quantized->Offer({r}, {Scaled(r, 2.0f)});
    quantized->WaitUntilIdle();
  }
  ASSERT_TRUE(quantized->guard_tripped());
  // The fallback load of the same version at FP32 overlaps the old one, then replaces it.
  c.mutable_quantization()->set_precision(inference::FP32);
  auto fp32 = NewMonitor(Options(c));
  EXPECT_FALSE(fp32->active());
  fp32->Offer({r}, {r});  // no-op
  quantized.reset();
  const auto f = Collect();
  EXPECT_EQ(Find(f, "quantserve_drift_guard_tripped", v_)->gauge.value, 1);
  EXPECT_EQ(Find(f, "quantserve_drift_samples_total", v_)->counter.value, 20);
  EXPECT_EQ(Find(f, "quantserve_drift_window_relative_l2", y_), nullptr);  // per output: gone
  fp32.reset();
  EXPECT_EQ(CountSeries(Collect(), "quantserve_drift_"), 0);
}

TEST_F(DriftMonitorTest, TwoMonitorsOfOneVersionShareSeries) {
  auto a = NewMonitor(Options(Config(1, inference::INT8)));
  auto b = NewMonitor(Options(Config(1, inference::INT8)));
  const Tensor r = Make({1, 2}, {3, 4});
  a->Offer({r}, {r});
  b->Offer({r}, {r});
  a->WaitUntilIdle();
  b->WaitUntilIdle();
  EXPECT_EQ(Value("quantserve_drift_samples_total", v_), 2);
  a.reset();
  EXPECT_EQ(Value("quantserve_drift_samples_total", v_), 2);
  EXPECT_GT(CountSeries(Collect(), "quantserve_drift_"), 0);
  b.reset();
  EXPECT_EQ(CountSeries(Collect(), "quantserve_drift_"), 0);
}

TEST_F(DriftMonitorTest, InvalidConfigsAreRejected) {
  auto bad = [&](inference::ModelConfig c, std::vector<std::string> outputs = {"y"}) {
    auto m = DriftMonitor::Create(&drift_, Options(std::move(c), std::move(outputs)));
    EXPECT_FALSE(m.ok());
    if (!m.ok()) {
      EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
    }
  };
  bad(Config(1.5, inference::INT8));
  inference::ModelConfig c = Config(1, inference::INT8);
  c.mutable_drift()->set_max_samples_per_second(-1);
  bad(c);
  c = Config(1, inference::INT8);
  c.mutable_drift()->set_relative_l2_bound(-0.1);
  bad(c);
  c = Config(1, inference::INT8);
  c.mutable_drift()->set_guard_enabled(true);
  c.mutable_drift()->set_fallback_precision(inference::FP16);
  bad(c);
  c = Config(1, inference::INT8);
  c.mutable_drift()->add_classification_outputs("nope");
  bad(c);
  EXPECT_TRUE(DriftMonitor::Configured(Config(0.01, inference::INT8)));
  EXPECT_FALSE(DriftMonitor::Configured(Config(0, inference::INT8)));
}

// ---- the real reference: a small MLP in ONNX, INT8 against FP32 ----

void AddInitializer(onnx::GraphProto* g, const std::string& name, Shape dims,
                    std::mt19937* rng) {
  auto* t = g->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  int64_t n = 1;
  for (int64_t d : dims) {
    t->add_dims(d);
    n *= d;
  }
  std::normal_distribution<float> dist(0, 0.5f);
  for (int64_t i = 0; i < n; ++i) t->add_float_data(dist(*rng));
}

void AddValue(google::protobuf::RepeatedPtrField<onnx::ValueInfoProto>* list,
              const std::string& name, int64_t width) {
  auto* v = list->Add();
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  tt->mutable_shape()->add_dim()->set_dim_param("N");
  tt->mutable_shape()->add_dim()->set_dim_value(width);
}

// x [N,16] -> Gemm(32) -> Relu -> Gemm(5) -> y, written to `path`.
void WriteMlp(const std::string& path) {
  std::mt19937 rng(5);
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(13);
  auto* g = m.mutable_graph();
  g->set_name("mlp");
  AddInitializer(g, "w1", {32, 16}, &rng);
  AddInitializer(g, "b1", {32}, &rng);
  AddInitializer(g, "w2", {5, 32}, &rng);
  AddInitializer(g, "b2", {5}, &rng);
  auto gemm = [&](const std::string& name, const std::string& in, const std::string& w,
                  const std::string& b, const std::string& out) {
    auto* n = g->add_node();
    n->set_name(name);
    n->set_op_type("Gemm");
    n->add_input(in);
    n->add_input(w);
    n->add_input(b);
    n->add_output(out);
    auto* a = n->add_attribute();
    a->set_name("transB");
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(1);
  };
  gemm("fc1", "x", "w1", "b1", "h");
  auto* relu = g->add_node();
  relu->set_name("relu");
  relu->set_op_type("Relu");
  relu->add_input("h");
  relu->add_output("hr");
  gemm("fc2", "hr", "w2", "b2", "y");
  AddValue(g->mutable_input(), "x", 16);
  AddValue(g->mutable_output(), "y", 5);
  std::ofstream(path, std::ios::binary) << m.SerializeAsString();
}

Tensor RandomRows(int64_t rows, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0, 1);
  Tensor t(DataType::kFloat32, {rows, 16});
  for (int64_t i = 0; i < t.num_elements(); ++i) t.data<float>()[i] = dist(rng);
  return t;
}

TEST_F(DriftMonitorTest, RealFp32ReferenceAndLoadTimeGauge) {
  char dir_template[] = "/tmp/qs_drift_monitor_test_XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::string path = dir + "/model.onnx";
  WriteMlp(path);
  auto proto = LoadOnnxModel(path);
  ASSERT_TRUE(proto.ok()) << proto.status();
  CompileOptions io;
  io.precision = Precision::kInt8;
  io.max_batch_size = 8;
  io.disable_default_exclusions = true;
  io.calibration = {{RandomRows(8, 1)}, {RandomRows(8, 2)}};
  auto int8 = Session::Compile(*proto, io);
  ASSERT_TRUE(int8.ok()) << int8.status();
  CompileOptions fo;
  fo.max_batch_size = 8;
  auto fp32 = Session::Compile(*proto, fo);
  ASSERT_TRUE(fp32.ok()) << fp32.status();

  // The load-time figure is the SQNR of fc2 (the output's producer) in the report: the
  // last node for a single output, and found in the imported graph otherwise.
  auto load = LoadTimeRelativeL2(path, {"y"}, (*int8)->precision_report());
  ASSERT_TRUE(load.ok()) << load.status();
  auto parsed = LoadTimeRelativeL2(path, {}, (*int8)->precision_report());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(*parsed, *load);
  ASSERT_EQ(load->count("y"), 1u);
  double fc2_sqnr = 0;
  for (const auto& n : (*int8)->precision_report())
    if (n.name == "fc2") fc2_sqnr = n.sqnr_db;
  EXPECT_NEAR(load->at("y"), std::pow(10.0, -fc2_sqnr / 20), 1e-12);
  EXPECT_GT(load->at("y"), 0);
  EXPECT_LT(load->at("y"), 0.5);

  inference::ModelConfig c = Config(1, inference::INT8);
  DriftMonitorOptions o = Options(c);
  o.reference = nullptr;  // compile model_path at FP32
  o.model_path = path;
  o.precision_report = (*int8)->precision_report();
  auto monitor = NewMonitor(std::move(o));

  const Tensor x = RandomRows(4, 3);
  std::vector<Tensor> q, r;
  auto ctx = (*int8)->NewContext();
  ASSERT_TRUE((*int8)->Run(ctx.get(), {x}, &q).ok());
  auto fctx = (*fp32)->NewContext();
  ASSERT_TRUE((*fp32)->Run(fctx.get(), {x}, &r).ok());
  double want = 0;
  for (int row = 0; row < 4; ++row) {
    want += CompareRow(q[0].data<float>() + row * 5, r[0].data<float>() + row * 5, 5)
                .relative_l2 / 4;
  }
  monitor->Offer({x}, q);
  monitor->WaitUntilIdle();
  EXPECT_EQ(Value("quantserve_drift_samples_total", v_), 1);
  EXPECT_EQ(Value("quantserve_drift_reference_bytes", v_), (*fp32)->stats().weight_bytes);
  EXPECT_GT(want, 0);
  EXPECT_NEAR(Value("quantserve_drift_window_relative_l2", y_), want, 1e-9);
  EXPECT_NEAR(Value("quantserve_model_load_relative_l2", y_), load->at("y"), 1e-12);
  monitor.reset();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace qs
