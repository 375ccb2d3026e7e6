// Accuracy drift of a reduced-precision model version against its FP32 reference, run
// in the background on sampled live traffic (DESIGN.md, request flow step 7).
//
//   DriftMetrics drift(*registry);                  // the quantserve_drift_* families
//   auto monitor = DriftMonitor::Create(&drift, DriftOptionsFor(model, fallback));
//   monitor->Offer(batch_inputs, batch_outputs);    // after each execution: never blocks
//
// Per model version whose config has drift.sample_rate > 0:
//  * precision != FP32 ("active"): each execution is sampled with probability
//    sample_rate (DriftSampler) and at most max_samples_per_second; a sampled batch's
//    input and output tensors (shared handles, no data copy) go to a bounded queue
//    (queue_capacity, 8) or, when it is full, are dropped and counted. One background
//    thread at low priority (nice +10 on the thread, one OpenMP thread) compiles the FP32
//    reference from model_path on the first sample, runs it on the sampled inputs and
//    compares outputs row by row (CompareRows): histograms of relative L2, max abs error,
//    cosine similarity, SQNR per output, top-1 agreement counters for the config's
//    classification_outputs, and the mean relative L2 over the last window_size samples.
//    At start it also publishes the load-time relative L2 of each output from the
//    engine's precision report (LoadTimeRelativeL2).
//  * precision FP32 (e.g. after a fallback) ("inactive"): no thread, no sampling; only
//    holds the {model, version} series, so that quantserve_drift_guard_tripped stays
//    visible for a version that fell back to FP32.
// Drift guard (drift.guard_enabled, relative_l2_bound > 0): once any output (classification
// outputs included) has at least min(window_size, 20) samples in its window and their
// mean relative L2 exceeds the bound, the monitor sets guard_tripped, logs an ERROR and,
// once, calls `fallback` with the config at fallback_precision (FP32 or DYNAMIC_RANGE;
// nothing is reloaded when it equals the serving precision).
//
// Thread-safety: DriftMetrics and DriftMonitor are thread-safe. Offer() takes one short
// lock (a random draw, a clock read when rate-limited, a deque push) and never waits for
// the background thread. The destructor stops the thread and joins it: it waits for the
// sample being compared (or a reference compile in progress) to finish; queued samples
// are discarded.
#ifndef QUANTSERVE_SERVER_METRICS_DRIFT_MONITOR_H_
#define QUANTSERVE_SERVER_METRICS_DRIFT_MONITOR_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/session.h"
#include "engine/tensor.h"
#include "model_config.pb.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace qs {

class LoadedModel;

// Called once when a drift guard trips and a fallback applies: the model's name and its
// config with quantization.precision replaced by drift.fallback_precision. Runs on the
// monitor's thread: it must return quickly (start the reload elsewhere).
using DriftFallbackFn =
    std::function<void(const std::string& model, inference::ModelConfig new_config)>;

// Bucket bounds of the drift histograms (see docs/metrics.md).
std::vector<double> DriftRelativeL2Buckets();
std::vector<double> DriftMaxAbsErrorBuckets();
std::vector<double> DriftCosineBuckets();
std::vector<double> DriftSqnrBuckets();
// SQNR values above this (an identical row is +inf) are recorded as this, in dB.
inline constexpr double kMaxDriftSqnrDb = 100;

// The comparison of one row of a quantized output `q` with the reference `r`.
struct RowDrift {
  // ||q - r|| / ||r||; 0 when both are zero; NaN when only ||r|| is zero (undefined).
  double relative_l2 = 0;
  double max_abs_error = 0;  // max |q_i - r_i|
  // <q, r> / (||q|| ||r||); 1 when both are zero, 0 when exactly one is.
  double cosine_similarity = 1;
  // 20 log10(||r|| / ||q - r||), at most kMaxDriftSqnrDb; NaN when ||r|| is zero and
  // q differs.
  double sqnr_db = kMaxDriftSqnrDb;
  // Index of the largest element (the first one on ties) of q and of r.
  int64_t argmax_quantized = 0;
  int64_t argmax_reference = 0;
};
RowDrift CompareRow(const float* quantized, const float* reference, int64_t n);

// Which executions get shadow-run. First a Bernoulli draw: SplitMix64 seeded with `seed`,
// u = (next >> 11) * 2^-53, sampled iff u < sample_rate (sample_rate >= 1 samples
// without drawing). Then, when max_per_second > 0, a token bucket of capacity one
// refilled at max_per_second: a drawn execution is taken iff at least 1/max_per_second
// has passed since the last one taken (the first one always is), so no interval of one
// second holds more than max_per_second samples. Thread-compatible.
class DriftSampler {
 public:
  DriftSampler(double sample_rate, double max_per_second, uint64_t seed);
  // Whether this execution is sampled. `now` is read only when rate-limited.
  bool Sample(const std::function<absl::Time()>& now);
  bool rate_limited() const { return max_per_second_ > 0; }

 private:
  uint64_t Next();
  const double sample_rate_;
  const double max_per_second_;
  const absl::Duration interval_;
  uint64_t state_;
  std::optional<absl::Time> last_taken_;
};

// FNV-1a of the model name: the default seed of a model's sampler.
uint64_t DriftSeedFor(const std::string& model);

// Load-time relative L2 of each graph output, from the reduced plan's precision report
// (Session::precision_report(): per node in plan order, SQNR of its output against the
// FP32 plan on the first calibration batch, or on random inputs without calibration
// data): the output's producing node's SQNR s gives 10^(-s/20). With one output
// (`outputs`, in Session::outputs() order) the producer is the plan's last node (the
// engine drops nodes that feed no output, so the last one produces it); otherwise the
// producers are found by importing `model_path` (which costs a parse of the file; nodes
// the engine fused or removed are followed to their single data input). Outputs without
// a measured figure are left out. Empty for an FP32 report.
absl::StatusOr<std::map<std::string, double>> LoadTimeRelativeL2(
    const std::string& model_path, const std::vector<std::string>& outputs,
    const std::vector<NodePrecision>& report);

// The quantserve_drift_* families and quantserve_model_load_relative_l2, registered in
// one registry, with per-series reference counts: series exist while some monitor of
// their {model, version} (per-output series: some active monitor) holds them, so two
// monitors of the same version (a reload overlapping the old one) share one set, and an
// unloaded version leaves no stale series. Thread-safe.
class DriftMetrics {
 public:
  explicit DriftMetrics(prometheus::Registry& registry);
  DriftMetrics(const DriftMetrics&) = delete;
  DriftMetrics& operator=(const DriftMetrics&) = delete;

  struct VersionSeries {
    prometheus::Counter* samples = nullptr;
    prometheus::Counter* dropped = nullptr;
    prometheus::Gauge* reference_bytes = nullptr;
    prometheus::Gauge* guard_tripped = nullptr;
  };
  struct OutputSeries {
    prometheus::Histogram* relative_l2 = nullptr;
    prometheus::Histogram* max_abs_error = nullptr;
    prometheus::Histogram* cosine_similarity = nullptr;
    prometheus::Histogram* sqnr_db = nullptr;
    prometheus::Gauge* window_relative_l2 = nullptr;
    prometheus::Counter* top1_agreements = nullptr;   // classification outputs only
    prometheus::Counter* top1_comparisons = nullptr;  // classification outputs only
  };
  // The returned pointers stay valid until the matching Release.
  VersionSeries AcquireVersion(const std::string& model, const std::string& version)
      ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseVersion(const std::string& model, const std::string& version)
      ABSL_LOCKS_EXCLUDED(mu_);
  OutputSeries AcquireOutput(const std::string& model, const std::string& version,
                             const std::string& output, bool classification)
      ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseOutput(const std::string& model, const std::string& version,
                     const std::string& output) ABSL_LOCKS_EXCLUDED(mu_);
  // Sets quantserve_model_load_relative_l2 of an output held by AcquireOutput (the
  // series is created on first use and goes with the output's series).
  void SetLoadRelativeL2(const std::string& model, const std::string& version,
                         const std::string& output, double value) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using VersionKey = std::pair<std::string, std::string>;
  using OutputKey = std::tuple<std::string, std::string, std::string>;
  struct VersionEntry {
    int refs = 0;
    VersionSeries s;
  };
  struct OutputEntry {
    int refs = 0;
    OutputSeries s;
    prometheus::Gauge* load_relative_l2 = nullptr;
  };

  prometheus::Family<prometheus::Counter>& samples_;
  prometheus::Family<prometheus::Counter>& dropped_;
  prometheus::Family<prometheus::Gauge>& reference_bytes_;
  prometheus::Family<prometheus::Gauge>& guard_tripped_;
  prometheus::Family<prometheus::Histogram>& relative_l2_;
  prometheus::Family<prometheus::Histogram>& max_abs_error_;
  prometheus::Family<prometheus::Histogram>& cosine_similarity_;
  prometheus::Family<prometheus::Histogram>& sqnr_db_;
  prometheus::Family<prometheus::Gauge>& window_relative_l2_;
  prometheus::Family<prometheus::Counter>& top1_agreements_;
  prometheus::Family<prometheus::Counter>& top1_comparisons_;
  prometheus::Family<prometheus::Gauge>& load_relative_l2_;

  absl::Mutex mu_;
  std::map<VersionKey, VersionEntry> versions_ ABSL_GUARDED_BY(mu_);
  std::map<OutputKey, OutputEntry> outputs_ ABSL_GUARDED_BY(mu_);
};

// Runs the FP32 reference on sampled inputs (tests inject one; by default the monitor
// compiles model_path at FP32). Called only on the monitor's thread.
using DriftReferenceFn = std::function<absl::Status(const std::vector<Tensor>& inputs,
                                                    std::vector<Tensor>* outputs)>;

struct DriftMonitorOptions {
  std::string model;
  std::string version;
  // The version's completed config: drift() drives the monitor, quantization.precision
  // says whether it is active, and the fallback reload starts from it.
  inference::ModelConfig config;
  std::string model_path;            // ONNX file of the FP32 reference
  std::vector<std::string> outputs;  // output names in Session::outputs() order
  std::vector<NodePrecision> precision_report;  // for the load-time gauges
  DriftFallbackFn fallback;                     // null: the guard only alarms

  size_t queue_capacity = 8;
  int nice_increment = 10;  // the monitor thread's niceness (Linux: per thread)
  // Tests: a fake clock, a fixed seed, an injected reference, and a hook called on the
  // monitor's thread before each sample is compared (block it to fill the queue).
  std::function<absl::Time()> clock;  // null: absl::Now
  std::optional<uint64_t> seed;       // absent: DriftSeedFor(model)
  DriftReferenceFn reference;         // null: compile model_path at FP32, lazily
  std::function<void()> before_sample;
};

// Options for a loaded version (name, version, config, model path, output names,
// precision report).
DriftMonitorOptions DriftOptionsFor(const LoadedModel& model, DriftFallbackFn fallback);

class DriftMonitor {
 public:
  // True when the config asks for drift monitoring (drift.sample_rate > 0).
  static bool Configured(const inference::ModelConfig& config);
  // InvalidArgument for a sample_rate outside (0, 1], a negative max_samples_per_second
  // or relative_l2_bound, or a guard with fallback_precision other than FP32 or
  // DYNAMIC_RANGE. `metrics` must outlive the monitor.
  static absl::StatusOr<std::unique_ptr<DriftMonitor>> Create(DriftMetrics* metrics,
                                                              DriftMonitorOptions options);
  ~DriftMonitor();
  DriftMonitor(const DriftMonitor&) = delete;
  DriftMonitor& operator=(const DriftMonitor&) = delete;

  // False for an FP32 version (nothing to compare; Offer is a no-op).
  bool active() const { return active_; }

  // One successful execution's batch. Never blocks: samples (see the file comment) and
  // enqueues handles to the tensors, or drops the sample when the queue is full.
  void Offer(const std::vector<Tensor>& inputs, const std::vector<Tensor>& outputs)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Blocks until the queue is empty and no sample is being compared (tests).
  void WaitUntilIdle() ABSL_LOCKS_EXCLUDED(mu_);

  struct Counts {
    int64_t offered = 0;    // Offer() calls
    int64_t sampled = 0;    // chosen by the sampler (queued + dropped)
    int64_t dropped = 0;    // chosen, but the queue was full
    int64_t processed = 0;  // compared against the reference
    int64_t failed = 0;     // the reference could not run (counted as dropped too)
  };
  Counts counts() const ABSL_LOCKS_EXCLUDED(mu_);
  // Mean relative L2 over the window of output `index`; NaN before its first sample.
  double WindowRelativeL2(size_t index) const ABSL_LOCKS_EXCLUDED(mu_);
  bool guard_tripped() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Sample {
    std::vector<Tensor> inputs;
    std::vector<Tensor> outputs;
  };
  // Ring buffer of the last window_size per-sample relative L2 means of one output.
  struct Window {
    std::vector<double> values;
    size_t next = 0;
    size_t count = 0;
    double Mean() const;
    void Add(double v, size_t capacity);
  };

  DriftMonitor(DriftMetrics* metrics, DriftMonitorOptions options);
  void Run();  // the monitor thread
  void PublishLoadTimeDrift();
  absl::Status RunReference(const std::vector<Tensor>& inputs, std::vector<Tensor>* outputs);
  // Compares one sample's outputs with the reference's and records the histograms and
  // top-1 counters; returns the per-output mean relative L2 (NaN: no valid row).
  std::vector<double> Compare(const Sample& sample, const std::vector<Tensor>& reference);
  void Trip(size_t output, double value, size_t samples);
  bool HasWorkOrStopped() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || !queue_.empty();
  }
  bool IdleOrStopped() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || (queue_.empty() && !busy_);
  }

  DriftMetrics* const metrics_;
  const DriftMonitorOptions options_;
  const inference::DriftConfig& drift_;  // options_.config.drift()
  const bool active_;
  const size_t window_size_;
  const size_t min_guard_samples_;
  std::function<absl::Time()> clock_;
  DriftMetrics::VersionSeries version_series_;
  std::vector<DriftMetrics::OutputSeries> output_series_;  // active only
  std::vector<bool> classification_;                       // per output

  mutable absl::Mutex mu_;
  DriftSampler sampler_ ABSL_GUARDED_BY(mu_);
  std::deque<Sample> queue_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool tripped_ ABSL_GUARDED_BY(mu_) = false;
  Counts counts_ ABSL_GUARDED_BY(mu_);
  std::vector<Window> windows_ ABSL_GUARDED_BY(mu_);

  // The monitor thread's own state (no lock: only that thread touches it).
  std::unique_ptr<Session> reference_;
  std::unique_ptr<ExecutionContext> reference_ctx_;
  bool reference_failed_ = false;
  std::vector<bool> warned_;  // per output: a shape or type mismatch was logged

  std::thread thread_;  // last: started once everything above is built
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_METRICS_DRIFT_MONITOR_H_
