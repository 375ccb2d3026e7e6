#include "server/metrics/serving_metrics.h"

#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "engine/log.h"
#include "engine/session.h"
#include "model_config.pb.h"
#include "server/repository/loaded_model.h"
#include "server/version.h"

namespace qs {
namespace {

constexpr absl::string_view kOutcomeNames[] = {"success", "rejected", "cancelled",
                                               "timeout", "invalid",  "internal"};

int OutcomeIndex(FailureReason reason) {
  switch (reason) {
    case FailureReason::kRejected: return 1;
    case FailureReason::kCancelled: return 2;
    case FailureReason::kTimeout: return 3;
    case FailureReason::kInvalid: return 4;
    case FailureReason::kInternal: return 5;
  }
  return 5;
}

// The FP32 size of a plan's weights (what its initializers take at FP32), so that
// weight_bytes / fp32_weight_bytes is the saving of a reduced-precision plan.
int64_t Fp32WeightBytes(const PlanStats& stats) { return stats.fp32_weight_bytes; }

prometheus::Labels VersionLabels(const std::string& model, const std::string& version) {
  return {{"model", model}, {"version", version}};
}

std::vector<double> BatchSizeBuckets() {
  std::vector<double> b;
  for (int size = 1; size <= 256; size *= 2) b.push_back(size);
  return b;
}

}  // namespace

absl::string_view OutcomeName(int index) {
  return index >= 0 && index < 6 ? kOutcomeNames[index] : absl::string_view("internal");
}

std::vector<double> DefaultLatencyBuckets() {
  std::vector<double> b;
  double bound = 50e-6;
  while (true) {
    b.push_back(bound);
    if (bound >= 10.0) break;
    bound *= 2;
  }
  return b;
}

absl::Status ValidateLatencyBuckets(const std::vector<double>& buckets) {
  if (buckets.empty()) return absl::InvalidArgumentError("latency buckets: empty list");
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (!std::isfinite(buckets[i]) || buckets[i] <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "latency buckets: bound ", buckets[i], " is not a positive number of seconds"));
    }
    if (i > 0 && buckets[i] <= buckets[i - 1]) {
      return absl::InvalidArgumentError(
          absl::StrCat("latency buckets must strictly increase: ", buckets[i - 1],
                       " is followed by ", buckets[i]));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<double>> ParseLatencyBuckets(absl::string_view text) {
  std::vector<double> buckets;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    double v;
    if (!absl::SimpleAtod(part, &v)) {
      return absl::InvalidArgumentError(
          absl::StrCat("latency buckets: '", part, "' is not a number of seconds"));
    }
    buckets.push_back(v);
  }
  absl::Status st = ValidateLatencyBuckets(buckets);
  if (!st.ok()) return st;
  return buckets;
}

ModelMetricsInfo MetricsInfoFor(const LoadedModel& model) {
  ModelMetricsInfo info;
  info.name = model.name();
  info.version = absl::StrCat(model.version());
  info.precision = inference::Precision_Name(model.config().quantization().precision());
  const PlanStats stats = model.session().stats();
  info.weight_bytes = stats.weight_bytes;
  info.fp32_weight_bytes = Fp32WeightBytes(stats);
  info.min_sqnr_db = MinReducedSqnrDb(model.session().precision_report());
  info.load_duration = model.load_duration();
  info.max_queue_size =
      model.config().dynamic_batching().default_queue_policy().max_queue_size();
  return info;
}

// One model version's view of the series. Holds copies of the metric pointers, which
// stay valid until its own Release() (the families keep them while refs > 0).
class ServingMetrics::Observer : public InferenceObserver {
 public:
  Observer(std::shared_ptr<ServingMetrics> owner, VersionKey version, MemoryKey memory,
           const VersionSeries& series)
      : owner_(std::move(owner)),
        version_(std::move(version)),
        memory_(std::move(memory)),
        s_(series) {}
  ~Observer() override { owner_->Release(version_, memory_, this); }

  void OnSuccess(int64_t batch_size, absl::Duration total,
                 const InferenceTimings& timings) override {
    s_.requests[0]->Increment();
    s_.inferences->Increment(static_cast<double>(batch_size));
    s_.request_duration->Observe(absl::ToDoubleSeconds(total));
    s_.queue_duration->Observe(absl::ToDoubleSeconds(timings.queue));
  }
  void OnFailure(FailureReason reason, absl::Duration /*total*/) override {
    s_.requests[OutcomeIndex(reason)]->Increment();
  }
  void OnExecution(int64_t batch_size, const InferenceTimings& timings) override {
    s_.executions->Increment();
    s_.batch_size->Observe(static_cast<double>(batch_size));
    s_.compute_input_duration->Observe(absl::ToDoubleSeconds(timings.compute_input));
    s_.compute_infer_duration->Observe(absl::ToDoubleSeconds(timings.compute_infer));
    s_.compute_output_duration->Observe(absl::ToDoubleSeconds(timings.compute_output));
  }
  void OnQueueDepth(int64_t queued) override { s_.pending->Set(static_cast<double>(queued)); }
  void OnInFlight(int64_t delta) override {
    if (delta >= 0) {
      s_.inflight->Increment(static_cast<double>(delta));
    } else {
      s_.inflight->Decrement(static_cast<double>(-delta));
    }
  }
  // Accuracy drift: the monitor samples and enqueues (never blocks).
  void OnOutputs(const std::vector<Tensor>& inputs,
                 const std::vector<Tensor>& outputs) override {
    if (drift_ != nullptr) drift_->Offer(inputs, outputs);
  }
  void OnActivationBytes(int64_t bytes) override {
    owner_->SetActivationBytes(memory_, this, bytes);
  }
  // Set once, by ForModel, before the observer is handed out.
  void set_drift(std::unique_ptr<DriftMonitor> drift) { drift_ = std::move(drift); }

 private:
  const std::shared_ptr<ServingMetrics> owner_;
  const VersionKey version_;
  const MemoryKey memory_;
  const VersionSeries s_;
  // Destroyed before owner_ (which owns the drift families it uses).
  std::unique_ptr<DriftMonitor> drift_;
};

absl::StatusOr<std::shared_ptr<ServingMetrics>> ServingMetrics::Create(Options options) {
  if (options.latency_buckets.empty()) options.latency_buckets = DefaultLatencyBuckets();
  absl::Status st = ValidateLatencyBuckets(options.latency_buckets);
  if (!st.ok()) return st;
  if (options.build_version.empty()) options.build_version = kQuantserveVersion;
  return std::shared_ptr<ServingMetrics>(new ServingMetrics(std::move(options)));
}

namespace {

template <typename T>
prometheus::Family<T>& Build(prometheus::detail::Builder<T> builder,
                             prometheus::Registry& registry, const std::string& name,
                             const std::string& help) {
  return builder.Name("quantserve_" + name).Help(help).Register(registry);
}

}  // namespace

ServingMetrics::ServingMetrics(Options options)
    : options_(std::move(options)),
      process_(options_.build_version, absl::Now()),
      states_(options_.repository ? std::make_unique<ModelStateCollector>(options_.repository)
                                  : nullptr),
      registry_(std::make_shared<prometheus::Registry>()),
      request_duration_(Build(prometheus::BuildHistogram(), *registry_,
                              "request_duration_seconds",
                              "Successful requests: receipt to response ready, seconds.")),
      queue_duration_(Build(prometheus::BuildHistogram(), *registry_,
                            "queue_duration_seconds",
                            "Successful requests: time waiting in the batcher queue, seconds.")),
      compute_input_duration_(Build(prometheus::BuildHistogram(), *registry_,
                                    "compute_input_duration_seconds",
                                    "Per execution: assembling the batch inputs, seconds.")),
      compute_infer_duration_(Build(prometheus::BuildHistogram(), *registry_,
                                    "compute_infer_duration_seconds",
                                    "Per execution: running the model, seconds.")),
      compute_output_duration_(Build(prometheus::BuildHistogram(), *registry_,
                                     "compute_output_duration_seconds",
                                     "Per execution: splitting outputs and completing the "
                                     "requests, seconds.")),
      batch_size_(Build(prometheus::BuildHistogram(), *registry_, "batch_size",
                        "Rows per model execution.")),
      requests_(Build(prometheus::BuildCounter(), *registry_, "requests_total",
                      "Inference requests by outcome (success, rejected, cancelled, "
                      "timeout, invalid, internal).")),
      inferences_(Build(prometheus::BuildCounter(), *registry_, "inferences_total",
                        "Rows inferred by successful requests (a batch-8 request counts 8).")),
      executions_(Build(prometheus::BuildCounter(), *registry_, "executions_total",
                        "Model executions (batches run).")),
      pending_(Build(prometheus::BuildGauge(), *registry_, "pending_requests",
                     "Requests waiting in the batcher queue.")),
      inflight_(Build(prometheus::BuildGauge(), *registry_, "inflight_requests",
                      "Requests being executed.")),
      load_duration_(Build(prometheus::BuildGauge(), *registry_,
                           "model_load_duration_seconds",
                           "Time the last load of the model version took, seconds.")),
      queue_capacity_(Build(prometheus::BuildGauge(), *registry_, "queue_capacity",
                            "The batcher's max_queue_size; 0 = unbounded.")),
      weight_bytes_(Build(prometheus::BuildGauge(), *registry_, "model_weight_bytes",
                          "Constant (weight) bytes held by the loaded plan.")),
      fp32_weight_bytes_(Build(prometheus::BuildGauge(), *registry_,
                               "model_fp32_weight_bytes",
                               "Bytes the same weights would take in FP32.")),
      min_sqnr_db_(Build(prometheus::BuildGauge(), *registry_, "model_min_sqnr_db",
                         "Lowest signal-to-quantization-noise ratio (dB) over the "
                         "reduced-precision nodes at load; per-node figures are in "
                         "the ModelConfig parameter qs_precision_report.")),
      activation_bytes_(Build(prometheus::BuildGauge(), *registry_, "model_activation_bytes",
                              "Bytes the model's workers hold for activations between runs "
                              "(arenas, cached buffers, batch input buffers), all "
                              "instances.")) {}

ServingMetrics::~ServingMetrics() = default;

ServingMetrics::VersionSeries* ServingMetrics::AcquireVersion(const VersionKey& key) {
  VersionSeries& s = versions_[key];
  if (s.refs++ > 0) return &s;
  const prometheus::Labels labels = VersionLabels(key.first, key.second);
  const std::vector<double>& lat = options_.latency_buckets;
  s.request_duration = &request_duration_.Add(labels, lat);
  s.queue_duration = &queue_duration_.Add(labels, lat);
  s.compute_input_duration = &compute_input_duration_.Add(labels, lat);
  s.compute_infer_duration = &compute_infer_duration_.Add(labels, lat);
  s.compute_output_duration = &compute_output_duration_.Add(labels, lat);
  s.batch_size = &batch_size_.Add(labels, BatchSizeBuckets());
  for (int i = 0; i < kOutcomes; ++i) {
    prometheus::Labels l = labels;
    l["outcome"] = std::string(OutcomeName(i));
    s.requests[i] = &requests_.Add(l);
  }
  s.inferences = &inferences_.Add(labels);
  s.executions = &executions_.Add(labels);
  s.pending = &pending_.Add(labels);
  s.inflight = &inflight_.Add(labels);
  s.load_duration = &load_duration_.Add(labels);
  s.queue_capacity = &queue_capacity_.Add(labels);
  return &s;
}

ServingMetrics::MemorySeries* ServingMetrics::AcquireMemory(const MemoryKey& key) {
  MemorySeries& s = memory_[key];
  if (s.refs++ > 0) return &s;
  prometheus::Labels labels = VersionLabels(std::get<0>(key), std::get<1>(key));
  labels["precision"] = std::get<2>(key);
  s.weight_bytes = &weight_bytes_.Add(labels);
  s.fp32_weight_bytes = &fp32_weight_bytes_.Add(labels);
  s.activation_bytes = &activation_bytes_.Add(labels);
  return &s;
}

std::shared_ptr<InferenceObserver> ServingMetrics::ForModel(const LoadedModel& model) {
  std::shared_ptr<InferenceObserver> observer = ForModel(MetricsInfoFor(model));
  if (DriftMonitor::Configured(model.config())) {
    auto drift = DriftMonitor::Create(drift_.get(),
                                      DriftOptionsFor(model, options_.drift_fallback));
    if (drift.ok()) {
      static_cast<Observer&>(*observer).set_drift(*std::move(drift));
    } else {
      QS_LOG(ERROR) << drift.status().message() << "; drift monitoring is off";
    }
  }
  return observer;
}

std::shared_ptr<InferenceObserver> ServingMetrics::ForModel(const ModelMetricsInfo& info) {
  VersionKey vkey{info.name, info.version};
  MemoryKey mkey{info.name, info.version, info.precision};
  VersionSeries series;
  {
    absl::MutexLock lock(&mu_);
    VersionSeries* v = AcquireVersion(vkey);
    MemorySeries* m = AcquireMemory(mkey);
    // The newest load of a version states its memory and load time.
    v->load_duration->Set(absl::ToDoubleSeconds(info.load_duration));
    v->queue_capacity->Set(static_cast<double>(info.max_queue_size));
    m->weight_bytes->Set(static_cast<double>(info.weight_bytes));
    m->fp32_weight_bytes->Set(static_cast<double>(info.fp32_weight_bytes));
    if (!std::isnan(info.min_sqnr_db)) {
      if (m->min_sqnr_db == nullptr) {
        prometheus::Labels labels = VersionLabels(info.name, info.version);
        labels["precision"] = info.precision;
        m->min_sqnr_db = &min_sqnr_db_.Add(labels);
      }
      m->min_sqnr_db->Set(info.min_sqnr_db);
    }
    series = *v;
  }
  return std::make_shared<Observer>(shared_from_this(), std::move(vkey), std::move(mkey),
                                    series);
}

namespace {

void SetToSum(prometheus::Gauge* gauge, const std::map<const void*, int64_t>& parts) {
  int64_t total = 0;
  for (const auto& [who, bytes] : parts) total += bytes;
  gauge->Set(static_cast<double>(total));
}

}  // namespace

void ServingMetrics::SetActivationBytes(const MemoryKey& memory, const void* observer,
                                        int64_t bytes) {
  absl::MutexLock lock(&mu_);
  auto m = memory_.find(memory);
  if (m == memory_.end()) return;
  m->second.activation_by_observer[observer] = bytes;
  SetToSum(m->second.activation_bytes, m->second.activation_by_observer);
}

void ServingMetrics::Release(const VersionKey& version, const MemoryKey& memory,
                             const void* observer) {
  absl::MutexLock lock(&mu_);
  auto v = versions_.find(version);
  if (v != versions_.end() && --v->second.refs == 0) {
    VersionSeries& s = v->second;
    request_duration_.Remove(s.request_duration);
    queue_duration_.Remove(s.queue_duration);
    compute_input_duration_.Remove(s.compute_input_duration);
    compute_infer_duration_.Remove(s.compute_infer_duration);
    compute_output_duration_.Remove(s.compute_output_duration);
    batch_size_.Remove(s.batch_size);
    for (prometheus::Counter* c : s.requests) requests_.Remove(c);
    inferences_.Remove(s.inferences);
    executions_.Remove(s.executions);
    pending_.Remove(s.pending);
    inflight_.Remove(s.inflight);
    load_duration_.Remove(s.load_duration);
    queue_capacity_.Remove(s.queue_capacity);
    versions_.erase(v);
  }
  auto m = memory_.find(memory);
  if (m != memory_.end() && m->second.activation_by_observer.erase(observer) > 0) {
    // A retired scheduler's contexts are gone with it.
    SetToSum(m->second.activation_bytes, m->second.activation_by_observer);
  }
  if (m != memory_.end() && --m->second.refs == 0) {
    weight_bytes_.Remove(m->second.weight_bytes);
    fp32_weight_bytes_.Remove(m->second.fp32_weight_bytes);
    activation_bytes_.Remove(m->second.activation_bytes);
    if (m->second.min_sqnr_db != nullptr) min_sqnr_db_.Remove(m->second.min_sqnr_db);
    memory_.erase(m);
  }
}

std::vector<prometheus::MetricFamily> ServingMetrics::Collect() const {
  // No lock of ours is held here (see the header): the repository's Index() may run
  // while a scheduler is being destroyed under the repository lock.
  std::vector<prometheus::MetricFamily> out = registry_->Collect();
  for (auto& f : process_.Collect()) out.push_back(std::move(f));
  if (states_) {
    for (auto& f : states_->Collect()) out.push_back(std::move(f));
  }
  return out;
}

}  // namespace qs
