// Prometheus metrics of the request path (latency, counts, queue) and of model memory,
// plus the server-wide gauges computed at scrape time. See docs/metrics.md for every
// series and example queries.
//
//   std::shared_ptr<ServingMetrics> metrics = *ServingMetrics::Create(options);  // once
//   exposer.RegisterCollectable(metrics);          // one Collectable: everything below
//   so.observer = metrics->ForModel(*model);       // per loaded model version
//
// Per model-version series carry the labels {model, version} (memory gauges also
// {precision}). They exist exactly as long as some observer returned by ForModel() for
// that model version is alive: the scheduler owns its observer, so the series disappear
// when an unloaded version's last worker has drained and exited, and an unloaded model
// leaves no stale series. Two observers for the same {model, version} (a reload of the
// same version overlaps the old scheduler with the new one) share one set of series.
//
// Accuracy drift: the families of server/metrics/drift_monitor.h live in registry() (so
// they are exposed with everything else). ForModel(const LoadedModel&) gives a version
// whose config has a drift block (drift.sample_rate > 0) a DriftMonitor owned by its
// observer, and the observer's OnOutputs hands each batch to it (sampling and a
// non-blocking enqueue; the FP32 reference runs on the monitor's own thread).
//
// Thread-safety: every method is thread-safe. Observers are cheap (a few atomic adds and
// one short prometheus-cpp histogram lock per histogram) and never block on I/O.
// Collect() runs on the exposer's thread; it reads /proc/self/statm and, when a
// repository was given, takes the repository's lock briefly (ModelRepository::Index).
// It holds no lock of this class while doing so.
//
// Lifetime: ServingMetrics is shared; each observer keeps it alive. The repository given
// in Options must outlive every Collect() call (the daemon destroys the exposer first).
#ifndef QUANTSERVE_SERVER_METRICS_SERVING_METRICS_H_
#define QUANTSERVE_SERVER_METRICS_SERVING_METRICS_H_

#include <array>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/metrics/drift_monitor.h"
#include "server/metrics/server_collectors.h"
#include "server/scheduling/inference_observer.h"

namespace qs {

class LoadedModel;

// 50 us x 2^k for k = 0..18: 50 us ... 13.1 s (the first bound >= 10 s).
std::vector<double> DefaultLatencyBuckets();
// Parses "0.001,0.01,0.1" (seconds). InvalidArgument unless the list is non-empty,
// every bound is finite and > 0, and the bounds strictly increase.
absl::StatusOr<std::vector<double>> ParseLatencyBuckets(absl::string_view text);
absl::Status ValidateLatencyBuckets(const std::vector<double>& buckets);

// What ForModel needs to know about a model version (taken from a LoadedModel, or built
// directly by tests).
struct ModelMetricsInfo {
  std::string name;
  std::string version;
  std::string precision = "FP32";  // inference::Precision name
  int64_t weight_bytes = 0;        // constant bytes held by the plan as loaded
  // What the same weights take in FP32 (PlanStats::fp32_weight_bytes).
  int64_t fp32_weight_bytes = 0;
  // Lowest SQNR (dB) over the plan's reduced-precision nodes; NaN when it has none
  // (FP32, FP16), and then no quantserve_model_min_sqnr_db series is created.
  double min_sqnr_db = std::numeric_limits<double>::quiet_NaN();
  absl::Duration load_duration;
  int64_t max_queue_size = 0;      // the batcher's bound; 0 = unbounded
};

// The info for a loaded model version (its config's precision, its plan's statistics).
ModelMetricsInfo MetricsInfoFor(const LoadedModel& model);

class ServingMetrics : public prometheus::Collectable,
                       public std::enable_shared_from_this<ServingMetrics> {
 public:
  struct Options {
    // Bounds of the five latency histograms, seconds; empty: DefaultLatencyBuckets().
    std::vector<double> latency_buckets;
    // Optional: source of quantserve_models{state}; must outlive every Collect().
    const ModelRepository* repository = nullptr;
    std::string build_version;  // quantserve_build_info{version}; empty: kQuantserveVersion
    // Called when a drift guard trips with a fallback precision (see DriftMonitor);
    // null: the guard only alarms.
    DriftFallbackFn drift_fallback;
  };
  // InvalidArgument for bad latency buckets.
  static absl::StatusOr<std::shared_ptr<ServingMetrics>> Create(Options options);
  ~ServingMetrics() override;

  // The observer for one model version; sets its memory and load-time gauges and
  // creates its series (all request outcomes at 0). Destroying the last observer of a
  // {model, version} removes that version's series. The LoadedModel form also creates
  // the version's DriftMonitor when its config has a drift block (an invalid drift block
  // is logged as an ERROR and monitoring stays off for that version).
  std::shared_ptr<InferenceObserver> ForModel(const LoadedModel& model);
  std::shared_ptr<InferenceObserver> ForModel(const ModelMetricsInfo& info);

  // The registry holding the per-model families (for sibling modules' families).
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  // Everything: the registry's families, then the scrape-time gauges (process memory,
  // uptime, build info, model states).
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  class Observer;
  static constexpr int kOutcomes = 6;  // success + the five FailureReasons

  // One {model, version}'s series; owned by the families, alive while refs > 0.
  struct VersionSeries {
    int refs = 0;
    prometheus::Histogram* request_duration = nullptr;
    prometheus::Histogram* queue_duration = nullptr;
    prometheus::Histogram* compute_input_duration = nullptr;
    prometheus::Histogram* compute_infer_duration = nullptr;
    prometheus::Histogram* compute_output_duration = nullptr;
    prometheus::Histogram* batch_size = nullptr;
    std::array<prometheus::Counter*, kOutcomes> requests{};  // by outcome index
    prometheus::Counter* inferences = nullptr;
    prometheus::Counter* executions = nullptr;
    prometheus::Gauge* pending = nullptr;
    prometheus::Gauge* inflight = nullptr;
    prometheus::Gauge* load_duration = nullptr;
    prometheus::Gauge* queue_capacity = nullptr;
  };
  // One {model, version, precision}'s memory gauges.
  struct MemorySeries {
    int refs = 0;
    prometheus::Gauge* weight_bytes = nullptr;
    prometheus::Gauge* fp32_weight_bytes = nullptr;
    prometheus::Gauge* min_sqnr_db = nullptr;  // null unless reduced-precision nodes
    prometheus::Gauge* activation_bytes = nullptr;
    // Each live observer's (scheduler's) last figure; the gauge is their sum.
    std::map<const void*, int64_t> activation_by_observer;
  };
  using VersionKey = std::pair<std::string, std::string>;
  using MemoryKey = std::tuple<std::string, std::string, std::string>;

  explicit ServingMetrics(Options options);
  VersionSeries* AcquireVersion(const VersionKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  MemorySeries* AcquireMemory(const MemoryKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Called by an observer's destructor.
  void Release(const VersionKey& version, const MemoryKey& memory, const void* observer)
      ABSL_LOCKS_EXCLUDED(mu_);
  void SetActivationBytes(const MemoryKey& memory, const void* observer, int64_t bytes)
      ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  const ProcessCollector process_;
  const std::unique_ptr<ModelStateCollector> states_;  // null without a repository
  const std::shared_ptr<prometheus::Registry> registry_;
  // Families are owned by registry_ and live as long as it does.
  prometheus::Family<prometheus::Histogram>& request_duration_;
  prometheus::Family<prometheus::Histogram>& queue_duration_;
  prometheus::Family<prometheus::Histogram>& compute_input_duration_;
  prometheus::Family<prometheus::Histogram>& compute_infer_duration_;
  prometheus::Family<prometheus::Histogram>& compute_output_duration_;
  prometheus::Family<prometheus::Histogram>& batch_size_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& inferences_;
  prometheus::Family<prometheus::Counter>& executions_;
  prometheus::Family<prometheus::Gauge>& pending_;
  prometheus::Family<prometheus::Gauge>& inflight_;
  prometheus::Family<prometheus::Gauge>& load_duration_;
  prometheus::Family<prometheus::Gauge>& queue_capacity_;
  prometheus::Family<prometheus::Gauge>& weight_bytes_;
  prometheus::Family<prometheus::Gauge>& fp32_weight_bytes_;
  prometheus::Family<prometheus::Gauge>& min_sqnr_db_;
  prometheus::Family<prometheus::Gauge>& activation_bytes_;
  // The drift families (in registry_); outlives every observer's DriftMonitor, since
  // observers keep this object alive.
  const std::unique_ptr<DriftMetrics> drift_ = std::make_unique<DriftMetrics>(*registry_);

  absl::Mutex mu_;
  std::map<VersionKey, VersionSeries> versions_ ABSL_GUARDED_BY(mu_);
  std::map<MemoryKey, MemorySeries> memory_ ABSL_GUARDED_BY(mu_);
};

// The `outcome` label values of quantserve_requests_total: 0 "success", then one per
// FailureReason in enum order ("rejected", "cancelled", "timeout", "invalid",
// "internal").
absl::string_view OutcomeName(int index);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_METRICS_SERVING_METRICS_H_
