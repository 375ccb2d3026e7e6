#include "server/metrics/drift_monitor.h"

#include <omp.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <limits>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/layout.h"
#include "engine/log.h"
#include "engine/onnx_import.h"
#include "server/repository/loaded_model.h"

namespace qs {
namespace {

constexpr size_t kDefaultWindow = 100;
constexpr size_t kGuardMinSamples = 20;

prometheus::Labels VersionLabels(const std::string& model, const std::string& version) {
  return {{"model", model}, {"version", version}};
}

prometheus::Labels OutputLabels(const std::string& model, const std::string& version,
                                const std::string& output) {
  return {{"model", model}, {"version", version}, {"output", output}};
}

template <typename T>
prometheus::Family<T>& Build(prometheus::detail::Builder<T> builder,
                             prometheus::Registry& registry, const std::string& name,
                             const std::string& help) {
  return builder.Name("quantserve_" + name).Help(help).Register(registry);
}

// Lowers the calling thread's priority by `increment` nice levels (Linux applies
// setpriority on a thread id to that thread only). Failure only costs priority.
void LowerThreadPriority(int increment) {
  if (increment <= 0) return;
  const id_t tid = static_cast<id_t>(::syscall(SYS_gettid));
  errno = 0;
  int current = ::getpriority(PRIO_PROCESS, tid);
  if (current == -1 && errno != 0) current = 0;
  if (::setpriority(PRIO_PROCESS, tid, std::min(19, current + increment)) != 0) {
    QS_LOG(WARNING) << "drift monitor: cannot lower the thread's priority (errno " << errno
                    << ")";
  }
}

absl::StatusOr<Tensor> AsFloat(const Tensor& t) {
  Tensor plain = ToPlain(t);
  if (plain.dtype() == DataType::kFloat32) return plain;
  return CastTensor(plain, DataType::kFloat32);
}

}  // namespace

std::vector<double> DriftRelativeL2Buckets() {
  return {0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.3, 1};
}
std::vector<double> DriftMaxAbsErrorBuckets() {
  return {1e-5, 1e-4, 1e-3, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 10};
}
std::vector<double> DriftCosineBuckets() {
  return {0, 0.5, 0.9, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1};
}
std::vector<double> DriftSqnrBuckets() { return {0, 10, 20, 30, 40, 50, 60, 70, 80, 100}; }

RowDrift CompareRow(const float* quantized, const float* reference, int64_t n) {
  RowDrift d;
  double qq = 0, rr = 0, qr = 0, ee = 0, max_abs = 0;
  float q_best = -std::numeric_limits<float>::infinity(), r_best = q_best;
  for (int64_t i = 0; i < n; ++i) {
    const double q = quantized[i], r = reference[i], e = q - r;
    qq += q * q;
    rr += r * r;
    qr += q * r;
    ee += e * e;
    max_abs = std::max(max_abs, std::abs(e));
    if (quantized[i] > q_best) {
      q_best = quantized[i];
      d.argmax_quantized = i;
    }
    if (reference[i] > r_best) {
      r_best = reference[i];
      d.argmax_reference = i;
    }
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  d.max_abs_error = max_abs;
  if (ee == 0) {
    d.relative_l2 = 0;
    d.sqnr_db = kMaxDriftSqnrDb;
  } else if (rr == 0) {
    d.relative_l2 = nan;
    d.sqnr_db = nan;
  } else {
    d.relative_l2 = std::sqrt(ee / rr);
    d.sqnr_db = std::min(kMaxDriftSqnrDb, 10.0 * std::log10(rr / ee));
  }
  if (qq == 0 && rr == 0) {
    d.cosine_similarity = 1;
  } else if (qq == 0 || rr == 0) {
    d.cosine_similarity = 0;
  } else {
    d.cosine_similarity = std::clamp(qr / std::sqrt(qq * rr), -1.0, 1.0);
  }
  return d;
}

// ---- DriftSampler ----

DriftSampler::DriftSampler(double sample_rate, double max_per_second, uint64_t seed)
    : sample_rate_(sample_rate),
      max_per_second_(max_per_second),
      interval_(max_per_second > 0 ? absl::Seconds(1.0 / max_per_second)
                                   : absl::ZeroDuration()),
      state_(seed) {}

uint64_t DriftSampler::Next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

bool DriftSampler::Sample(const std::function<absl::Time()>& now) {
  if (sample_rate_ <= 0) return false;
  if (sample_rate_ < 1) {
    const double u = static_cast<double>(Next() >> 11) * 0x1.0p-53;
    if (u >= sample_rate_) return false;
  }
  if (max_per_second_ <= 0) return true;
  const absl::Time t = now();
  if (last_taken_.has_value() && t - *last_taken_ < interval_) return false;
  last_taken_ = t;
  return true;
}

uint64_t DriftSeedFor(const std::string& model) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : model) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

// ---- load-time figures ----

namespace {

// 10^(-sqnr/20): +inf dB (identical) gives 0; NaN (not measured) stays NaN.
double RelativeL2FromSqnr(double sqnr_db) { return std::pow(10.0, -sqnr_db / 20.0); }

}  // namespace

absl::StatusOr<std::map<std::string, double>> LoadTimeRelativeL2(
    const std::string& model_path, const std::vector<std::string>& outputs,
    const std::vector<NodePrecision>& report) {
  std::map<std::string, double> out;
  if (report.empty()) return out;
  if (outputs.size() == 1) {
    const double rel = RelativeL2FromSqnr(report.back().sqnr_db);
    if (std::isfinite(rel)) out[outputs[0]] = rel;
    return out;
  }
  std::map<std::string, double> sqnr_by_node;
  for (const NodePrecision& n : report) sqnr_by_node[n.name] = n.sqnr_db;
  auto proto = LoadOnnxModel(model_path);
  if (!proto.ok()) return proto.status();
  auto graph = ImportGraph(*proto);
  if (!graph.ok()) return graph.status();
  std::map<std::string, size_t> producer;
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    for (const auto& o : graph->nodes[i].outputs) producer[o] = i;
  }
  for (const ValueInfo& output : graph->outputs) {
    auto it = producer.find(output.name);
    for (int steps = 0; it != producer.end() && steps < 8; ++steps) {
      const Node& node = graph->nodes[it->second];
      auto r = sqnr_by_node.find(node.name);
      if (r != sqnr_by_node.end()) {
        const double rel = RelativeL2FromSqnr(r->second);
        if (std::isfinite(rel)) out[output.name] = rel;
        break;
      }
      // Not in the plan: fused into or removed in favour of its single data input.
      std::string data_input;
      int data_inputs = 0;
      for (const auto& in : node.inputs) {
        if (in.empty() || graph->initializers.count(in)) continue;
        data_input = in;
        ++data_inputs;
      }
      if (data_inputs != 1) break;
      it = producer.find(data_input);
    }
  }
  return out;
}

// ---- DriftMetrics ----

DriftMetrics::DriftMetrics(prometheus::Registry& registry)
    : samples_(Build(prometheus::BuildCounter(), registry, "drift_samples_total",
                     "Sampled batches compared against the FP32 reference.")),
      dropped_(Build(prometheus::BuildCounter(), registry, "drift_samples_dropped_total",
                     "Sampled batches dropped: the drift queue was full, or the "
                     "reference could not run.")),
      reference_bytes_(Build(prometheus::BuildGauge(), registry, "drift_reference_bytes",
                             "Weight bytes of the FP32 reference plan held for drift "
                             "monitoring (0 until the first sample compiles it).")),
      guard_tripped_(Build(prometheus::BuildGauge(), registry, "drift_guard_tripped",
                           "1 once the drift guard tripped for this version since it was "
                           "last loaded at reduced precision.")),
      relative_l2_(Build(prometheus::BuildHistogram(), registry, "drift_relative_l2",
                         "Per output row: ||q - r|| / ||r|| of the quantized output q "
                         "against the FP32 reference r.")),
      max_abs_error_(Build(prometheus::BuildHistogram(), registry, "drift_max_abs_error",
                           "Per output row: max |q_i - r_i|.")),
      cosine_similarity_(Build(prometheus::BuildHistogram(), registry,
                               "drift_cosine_similarity",
                               "Per output row: cosine similarity of q and r.")),
      sqnr_db_(Build(prometheus::BuildHistogram(), registry, "drift_sqnr_db",
                     "Per output row: 20 log10(||r|| / ||q - r||), dB, capped at 100.")),
      window_relative_l2_(Build(prometheus::BuildGauge(), registry,
                                "drift_window_relative_l2",
                                "Mean relative L2 over the last drift.window_size "
                                "samples (each sample: the mean over its rows).")),
      top1_agreements_(Build(prometheus::BuildCounter(), registry,
                             "drift_top1_agreements_total",
                             "Classification outputs: rows whose argmax equals the "
                             "reference's.")),
      top1_comparisons_(Build(prometheus::BuildCounter(), registry,
                              "drift_top1_comparisons_total",
                              "Classification outputs: rows compared for top-1 "
                              "agreement.")),
      load_relative_l2_(Build(prometheus::BuildGauge(), registry, "model_load_relative_l2",
                              "Relative L2 of the output against FP32 at load, from the "
                              "precision report (first calibration batch).")) {}

DriftMetrics::VersionSeries DriftMetrics::AcquireVersion(const std::string& model,
                                                         const std::string& version) {
  absl::MutexLock lock(&mu_);
  VersionEntry& e = versions_[{model, version}];
  if (e.refs++ == 0) {
    const prometheus::Labels labels = VersionLabels(model, version);
    e.s.samples = &samples_.Add(labels);
    e.s.dropped = &dropped_.Add(labels);
    e.s.reference_bytes = &reference_bytes_.Add(labels);
    e.s.guard_tripped = &guard_tripped_.Add(labels);
  }
  return e.s;
}

void DriftMetrics::ReleaseVersion(const std::string& model, const std::string& version) {
  absl::MutexLock lock(&mu_);
  auto it = versions_.find({model, version});
  if (it == versions_.end() || --it->second.refs > 0) return;
  const VersionSeries& s = it->second.s;
  samples_.Remove(s.samples);
  dropped_.Remove(s.dropped);
  reference_bytes_.Remove(s.reference_bytes);
  guard_tripped_.Remove(s.guard_tripped);
  versions_.erase(it);
}

DriftMetrics::OutputSeries DriftMetrics::AcquireOutput(const std::string& model,
                                                       const std::string& version,
                                                       const std::string& output,
                                                       bool classification) {
  absl::MutexLock lock(&mu_);
  OutputEntry& e = outputs_[{model, version, output}];
  const prometheus::Labels labels = OutputLabels(model, version, output);
  if (e.refs++ == 0) {
    e.s.relative_l2 = &relative_l2_.Add(labels, DriftRelativeL2Buckets());
    e.s.max_abs_error = &max_abs_error_.Add(labels, DriftMaxAbsErrorBuckets());
    e.s.cosine_similarity = &cosine_similarity_.Add(labels, DriftCosineBuckets());
    e.s.sqnr_db = &sqnr_db_.Add(labels, DriftSqnrBuckets());
    e.s.window_relative_l2 = &window_relative_l2_.Add(labels);
    // No figure before the first sample (0 would read as "no drift").
    e.s.window_relative_l2->Set(std::numeric_limits<double>::quiet_NaN());
  }
  if (classification && e.s.top1_agreements == nullptr) {
    e.s.top1_agreements = &top1_agreements_.Add(labels);
    e.s.top1_comparisons = &top1_comparisons_.Add(labels);
  }
  OutputSeries s = e.s;
  if (!classification) s.top1_agreements = s.top1_comparisons = nullptr;
  return s;
}

void DriftMetrics::ReleaseOutput(const std::string& model, const std::string& version,
                                 const std::string& output) {
  absl::MutexLock lock(&mu_);
  auto it = outputs_.find({model, version, output});
  if (it == outputs_.end() || --it->second.refs > 0) return;
  const OutputEntry& e = it->second;
  relative_l2_.Remove(e.s.relative_l2);
  max_abs_error_.Remove(e.s.max_abs_error);
  cosine_similarity_.Remove(e.s.cosine_similarity);
  sqnr_db_.Remove(e.s.sqnr_db);
  window_relative_l2_.Remove(e.s.window_relative_l2);
  if (e.s.top1_agreements != nullptr) top1_agreements_.Remove(e.s.top1_agreements);
  if (e.s.top1_comparisons != nullptr) top1_comparisons_.Remove(e.s.top1_comparisons);
  if (e.load_relative_l2 != nullptr) load_relative_l2_.Remove(e.load_relative_l2);
  outputs_.erase(it);
}

void DriftMetrics::SetLoadRelativeL2(const std::string& model, const std::string& version,
                                     const std::string& output, double value) {
  absl::MutexLock lock(&mu_);
  auto it = outputs_.find({model, version, output});
  if (it == outputs_.end()) return;
  if (it->second.load_relative_l2 == nullptr) {
    it->second.load_relative_l2 = &load_relative_l2_.Add(OutputLabels(model, version, output));
  }
  it->second.load_relative_l2->Set(value);
}

// ---- DriftMonitor ----

double DriftMonitor::Window::Mean() const {
  if (count == 0) return std::numeric_limits<double>::quiet_NaN();
  double sum = 0;
  for (size_t i = 0; i < count; ++i) sum += values[i];
  return sum / static_cast<double>(count);
}

void DriftMonitor::Window::Add(double v, size_t capacity) {
  if (values.size() < capacity) values.resize(capacity);
  values[next] = v;
  next = (next + 1) % capacity;
  count = std::min(count + 1, capacity);
}

DriftMonitorOptions DriftOptionsFor(const LoadedModel& model, DriftFallbackFn fallback) {
  DriftMonitorOptions o;
  o.model = model.name();
  o.version = absl::StrCat(model.version());
  o.config = model.config();
  o.model_path = model.model_path();
  for (const ValueInfo& out : model.session().outputs()) o.outputs.push_back(out.name);
  o.precision_report = model.session().precision_report();
  o.fallback = std::move(fallback);
  return o;
}

bool DriftMonitor::Configured(const inference::ModelConfig& config) {
  return config.drift().sample_rate() > 0;
}

absl::StatusOr<std::unique_ptr<DriftMonitor>> DriftMonitor::Create(
    DriftMetrics* metrics, DriftMonitorOptions options) {
  const inference::DriftConfig& d = options.config.drift();
  const std::string where =
      absl::StrCat("model '", options.model, "' version ", options.version, ": drift.");
  if (!(d.sample_rate() >= 0 && d.sample_rate() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "sample_rate must be in [0, 1], not ", d.sample_rate()));
  }
  if (!(d.max_samples_per_second() >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, "max_samples_per_second must be >= 0, not ", d.max_samples_per_second()));
  }
  if (!(d.relative_l2_bound() >= 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, "relative_l2_bound must be >= 0, not ", d.relative_l2_bound()));
  }
  if (d.guard_enabled() && d.fallback_precision() != inference::FP32 &&
      d.fallback_precision() != inference::DYNAMIC_RANGE) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "fallback_precision must be FP32 or DYNAMIC_RANGE, not ",
                     inference::Precision_Name(d.fallback_precision())));
  }
  if (!options.outputs.empty()) {
    const std::set<std::string> known(options.outputs.begin(), options.outputs.end());
    for (const std::string& name : d.classification_outputs()) {
      if (!known.count(name)) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, "classification_outputs names '", name, "', which is not an output"));
      }
    }
  }
  if (options.queue_capacity == 0) options.queue_capacity = 1;
  return std::unique_ptr<DriftMonitor>(new DriftMonitor(metrics, std::move(options)));
}

DriftMonitor::DriftMonitor(DriftMetrics* metrics, DriftMonitorOptions options)
    : metrics_(metrics),
      options_(std::move(options)),
      drift_(options_.config.drift()),
      active_(options_.config.quantization().precision() != inference::FP32),
      window_size_(drift_.window_size() > 0 ? drift_.window_size() : kDefaultWindow),
      min_guard_samples_(std::min(window_size_, kGuardMinSamples)),
      clock_(options_.clock ? options_.clock : [] { return absl::Now(); }),
      version_series_(metrics_->AcquireVersion(options_.model, options_.version)),
      sampler_(drift_.sample_rate(), drift_.max_samples_per_second(),
               options_.seed.value_or(DriftSeedFor(options_.model))) {
  if (!active_) return;
  version_series_.guard_tripped->Set(0);  // a fresh reduced-precision load
  const std::set<std::string> classification(drift_.classification_outputs().begin(),
                                             drift_.classification_outputs().end());
  for (const std::string& name : options_.outputs) {
    const bool cls = classification.count(name) > 0;
    classification_.push_back(cls);
    output_series_.push_back(
        metrics_->AcquireOutput(options_.model, options_.version, name, cls));
  }
  windows_.resize(options_.outputs.size());
  warned_.assign(options_.outputs.size(), false);
  thread_ = std::thread([this] { Run(); });
}

DriftMonitor::~DriftMonitor() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    queue_.clear();
  }
  if (thread_.joinable()) thread_.join();
  for (const std::string& name : options_.outputs) {
    if (active_) metrics_->ReleaseOutput(options_.model, options_.version, name);
  }
  metrics_->ReleaseVersion(options_.model, options_.version);
}

void DriftMonitor::Offer(const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& outputs) {
  if (!active_) return;
  absl::MutexLock lock(&mu_);
  ++counts_.offered;
  if (stop_ || !sampler_.Sample(clock_)) return;
  ++counts_.sampled;
  if (queue_.size() >= options_.queue_capacity) {
    ++counts_.dropped;
    version_series_.dropped->Increment();
    return;
  }
  queue_.push_back(Sample{inputs, outputs});
}

void DriftMonitor::WaitUntilIdle() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &DriftMonitor::IdleOrStopped));
}

DriftMonitor::Counts DriftMonitor::counts() const {
  absl::MutexLock lock(&mu_);
  return counts_;
}

double DriftMonitor::WindowRelativeL2(size_t index) const {
  absl::MutexLock lock(&mu_);
  return index < windows_.size() ? windows_[index].Mean()
                                 : std::numeric_limits<double>::quiet_NaN();
}

bool DriftMonitor::guard_tripped() const {
  absl::MutexLock lock(&mu_);
  return tripped_;
}

void DriftMonitor::PublishLoadTimeDrift() {
  if (options_.model_path.empty() || options_.precision_report.empty()) return;
  auto figures =
      LoadTimeRelativeL2(options_.model_path, options_.outputs, options_.precision_report);
  if (!figures.ok()) {
    QS_LOG(WARNING) << "drift: model '" << options_.model << "' version "
                    << options_.version
                    << ": no load-time relative L2: " << figures.status().message();
    return;
  }
  for (const auto& [output, value] : *figures) {
    metrics_->SetLoadRelativeL2(options_.model, options_.version, output, value);
  }
}

absl::Status DriftMonitor::RunReference(const std::vector<Tensor>& inputs,
                                        std::vector<Tensor>* outputs) {
  if (options_.reference) return options_.reference(inputs, outputs);
  if (reference_failed_) return absl::FailedPreconditionError("no FP32 reference");
  if (reference_ == nullptr) {
    const absl::Time start = absl::Now();
    auto fail = [&](const absl::Status& st) {
      reference_failed_ = true;
      QS_LOG(ERROR) << "drift: model '" << options_.model << "' version "
                    << options_.version << ": cannot build the FP32 reference from "
                    << options_.model_path << ": " << st.message()
                    << "; drift samples are dropped";
      return st;
    };
    auto proto = LoadOnnxModel(options_.model_path);
    if (!proto.ok()) return fail(proto.status());
    CompileOptions co;
    co.precision = Precision::kFP32;
    co.max_batch_size = options_.config.max_batch_size();
    auto session = Session::Compile(*std::move(proto), co);
    if (!session.ok()) return fail(session.status());
    reference_ = *std::move(session);
    reference_ctx_ = reference_->NewContext();  // on this thread, which runs it
    const int64_t bytes = reference_->stats().weight_bytes;
    version_series_.reference_bytes->Set(static_cast<double>(bytes));
    QS_LOG(INFO) << "drift: model '" << options_.model << "' version " << options_.version
                 << ": FP32 reference compiled in "
                 << absl::FormatDuration(absl::Now() - start) << " (" << bytes
                 << " weight bytes)";
  }
  return reference_->Run(reference_ctx_.get(), inputs, outputs);
}

std::vector<double> DriftMonitor::Compare(const Sample& sample,
                                          const std::vector<Tensor>& reference) {
  const size_t n = options_.outputs.size();
  std::vector<double> means(n, std::numeric_limits<double>::quiet_NaN());
  const bool batched = options_.config.max_batch_size() > 0;
  for (size_t i = 0; i < n && i < sample.outputs.size() && i < reference.size(); ++i) {
    const Tensor& q_in = sample.outputs[i];
    const Tensor& r_in = reference[i];
    auto q = AsFloat(q_in);
    auto r = AsFloat(r_in);
    if (!q.ok() || !r.ok() || q_in.shape() != r_in.shape()) {
      if (!warned_[i]) {
        warned_[i] = true;
        QS_LOG(WARNING) << "drift: model '" << options_.model << "' version "
                        << options_.version << " output '" << options_.outputs[i]
                        << "': not comparable with the reference ("
                        << DataTypeName(q_in.dtype()) << ShapeToString(q_in.shape())
                        << " vs " << DataTypeName(r_in.dtype())
                        << ShapeToString(r_in.shape()) << ")";
      }
      continue;
    }
    const int64_t total = q->num_elements();
    const int64_t rows = batched && q->rank() >= 1 ? q->dim(0) : 1;
    if (rows <= 0 || total == 0) continue;
    const int64_t len = total / rows;
    const DriftMetrics::OutputSeries& s = output_series_[i];
    double sum = 0;
    int64_t valid = 0, agreements = 0;
    for (int64_t row = 0; row < rows; ++row) {
      const RowDrift d = CompareRow(q->data<float>() + row * len,
                                    r->data<float>() + row * len, len);
      if (!std::isnan(d.relative_l2)) {
        s.relative_l2->Observe(d.relative_l2);
        sum += d.relative_l2;
        ++valid;
      }
      s.max_abs_error->Observe(d.max_abs_error);
      s.cosine_similarity->Observe(d.cosine_similarity);
      if (!std::isnan(d.sqnr_db)) s.sqnr_db->Observe(d.sqnr_db);
      if (d.argmax_quantized == d.argmax_reference) ++agreements;
    }
    if (classification_[i]) {
      s.top1_comparisons->Increment(static_cast<double>(rows));
      s.top1_agreements->Increment(static_cast<double>(agreements));
    }
    if (valid > 0) means[i] = sum / static_cast<double>(valid);
  }
  return means;
}

void DriftMonitor::Trip(size_t output, double value, size_t samples) {
  version_series_.guard_tripped->Set(1);
  const inference::Precision serving = options_.config.quantization().precision();
  const inference::Precision fallback = drift_.fallback_precision();
  std::string action;
  if (fallback == serving) {
    action = "fallback_precision equals the serving precision: not reloading";
  } else if (!options_.fallback) {
    action = "no reload hook: not reloading";
  } else {
    action = absl::StrCat("reloading at ", inference::Precision_Name(fallback));
  }
  QS_LOG(ERROR) << "drift guard tripped: model '" << options_.model << "' version "
                << options_.version << " output '" << options_.outputs[output]
                << "': mean relative L2 " << value << " over the last " << samples
                << " samples exceeds the bound " << drift_.relative_l2_bound() << " ("
                << inference::Precision_Name(serving) << " vs FP32); " << action;
  if (fallback == serving || !options_.fallback) return;
  inference::ModelConfig config = options_.config;
  config.mutable_quantization()->set_precision(fallback);
  options_.fallback(options_.model, std::move(config));
}

void DriftMonitor::Run() {
  pthread_setname_np(pthread_self(), "qs-drift");  // for top -H / ps -L
  LowerThreadPriority(options_.nice_increment);
  omp_set_num_threads(1);
  PublishLoadTimeDrift();
  const bool guard = drift_.guard_enabled() && drift_.relative_l2_bound() > 0;
  while (true) {
    Sample sample;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &DriftMonitor::HasWorkOrStopped));
      if (stop_) return;
      sample = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
    }
    if (options_.before_sample) options_.before_sample();
    std::vector<Tensor> reference;
    const absl::Status st = RunReference(sample.inputs, &reference);
    std::vector<double> means;
    if (st.ok()) means = Compare(sample, reference);
    sample = Sample();  // the batch's buffers are not needed any more
    reference.clear();

    std::vector<double> window(means.size());
    std::optional<std::pair<size_t, double>> trip;
    size_t trip_samples = 0;
    {
      absl::MutexLock lock(&mu_);
      if (!st.ok()) {
        ++counts_.failed;
        ++counts_.dropped;
      } else {
        ++counts_.processed;
        for (size_t i = 0; i < means.size(); ++i) {
          if (!std::isnan(means[i])) windows_[i].Add(means[i], window_size_);
          window[i] = windows_[i].Mean();
          if (guard && !tripped_ && !trip && windows_[i].count >= min_guard_samples_ &&
              window[i] > drift_.relative_l2_bound()) {
            tripped_ = true;
            trip = std::make_pair(i, window[i]);
            trip_samples = windows_[i].count;
          }
        }
      }
    }
    if (!st.ok()) {
      version_series_.dropped->Increment();
    } else {
      version_series_.samples->Increment();
      for (size_t i = 0; i < window.size(); ++i) {
        if (!std::isnan(window[i])) output_series_[i].window_relative_l2->Set(window[i]);
      }
    }
    if (trip) Trip(trip->first, trip->second, trip_samples);
    absl::MutexLock lock(&mu_);
    busy_ = false;
  }
}

}  // namespace qs
