#include "engine/ops/impl_autotune.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <unordered_map>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "engine/buffer_pool.h"
#include "engine/tensor.h"

namespace qs {
namespace {

constexpr int kMaxCandidates = 3;
constexpr int kTimedRuns = 3;
constexpr size_t kMinTunedDstBytes = size_t{1} << 20;
// Decisions kept at most. Past it (a model with free spatial sizes warmed up at many
// shapes) new shapes keep oneDNN's first choice: no unbounded cache.
constexpr size_t kMaxDecisions = 4096;

struct DecisionCache {
  absl::Mutex mu;
  // key -> the chosen implementation's name
  absl::flat_hash_map<std::string, std::string> impl ABSL_GUARDED_BY(mu);
};

thread_local bool first_choice_only = false;
thread_local bool timing_allowed = false;

DecisionCache& Decisions() {
  static DecisionCache* cache = new DecisionCache;  // leaked: used until exit
  return *cache;
}

bool IsReference(const dnnl::convolution_forward::primitive_desc& pd) {
  return std::string(pd.impl_info_str()).find("ref") != std::string::npos;
}

// Zero-filled, 64-byte aligned scratch for one timing; not from the context's pool
// (these are transient and may be of sizes the plan never uses).
Tensor ZeroBuffer(size_t bytes) {
  BufferPool::Scope no_pool(nullptr);
  return Tensor(DataType::kUInt8, {static_cast<int64_t>(std::max<size_t>(bytes, 1))});
}

// Fastest of kTimedRuns executions (after one untimed run that warms caches and pages).
// Infinity when an extra argument's size is unknown (not timed).
double TimeOnce(const dnnl::convolution_forward::primitive_desc& pd,
                const std::vector<int>& extra_args, DnnlResources* dnnl) {
  const dnnl::engine& eng = dnnl->engine;
  std::vector<Tensor> buffers;  // keeps the zero-filled memory alive
  std::unordered_map<int, dnnl::memory> args;
  auto add = [&](int arg, const dnnl::memory::desc& md) {
    buffers.push_back(ZeroBuffer(md.get_size()));
    args[arg] = dnnl::memory(md, eng, buffers.back().raw_data());
  };
  add(DNNL_ARG_SRC, pd.src_desc());
  add(DNNL_ARG_WEIGHTS, pd.weights_desc());
  add(DNNL_ARG_DST, pd.dst_desc());
  if (pd.bias_desc().get_size() > 0) add(DNNL_ARG_BIAS, pd.bias_desc());
  for (int arg : extra_args) {
    const dnnl::memory::desc md = pd.query_md(dnnl::query::exec_arg_md, arg);
    if (md.get_size() == 0) return std::numeric_limits<double>::infinity();
    add(arg, md);
  }
  dnnl::convolution_forward prim(pd);
  double best = std::numeric_limits<double>::infinity();
  for (int run = 0; run <= kTimedRuns; ++run) {
    const auto start = std::chrono::steady_clock::now();
    prim.execute(dnnl->stream, args);
    dnnl->stream.wait();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (run > 0) best = std::min(best, took.count());
  }
  return best;
}

// QS_CONV_AUTOTUNE=0 keeps oneDNN's first choice everywhere (for A/B measurements and
// for bit-reproducible runs across machines).
bool TuningEnabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("QS_CONV_AUTOTUNE");
    return v == nullptr || std::string(v) != "0";
  }();
  return enabled;
}

// `pd` advanced to the implementation named `name`. Positions are not stable: once a
// primitive of the problem is in oneDNN's primitive cache, a fresh iterator can list
// its first implementation twice (oneDNN 2.6), so implementations are found by name.
bool AdvanceTo(dnnl::convolution_forward::primitive_desc* pd, const std::string& name) {
  constexpr int kMaxSteps = 32;
  for (int i = 0; i < kMaxSteps; ++i) {
    if (pd->impl_info_str() == name) return true;
    if (!pd->next_impl()) return false;
  }
  return false;
}

}  // namespace

dnnl::convolution_forward::primitive_desc FastestConvolution(
    const dnnl::convolution_forward::desc& desc, const dnnl::primitive_attr& attr,
    DnnlResources* dnnl, const std::string& problem_key, const std::vector<int>& extra_args) {
  dnnl::convolution_forward::primitive_desc first(desc, attr, dnnl->engine);
  if (first_choice_only || first.dst_desc().get_size() < kMinTunedDstBytes) return first;
  // oneDNN partitions the work for the threads it will have (omp_get_max_threads() at
  // creation): a batch shard's single-threaded kernel is another decision.
  const std::string key = absl::StrCat(problem_key, "/threads=", omp_get_max_threads());
  DecisionCache& cache = Decisions();
  std::string chosen;
  bool known = false;
  {
    absl::MutexLock lock(&cache.mu);
    auto it = cache.impl.find(key);
    if (it != cache.impl.end()) {
      chosen = it->second;
      known = true;
    }
  }
  if (!known) {
    // On a request (or with tuning off): no timing, nothing recorded.
    if (!timing_allowed || !TuningEnabled()) return first;
    {
      absl::MutexLock lock(&cache.mu);
      if (cache.impl.size() >= kMaxDecisions) return first;
    }
    // Candidates: distinct kernels for the ISA of oneDNN's first choice (kernels for
    // an older ISA, such as jit:avx2 on an AVX-512 machine, are never faster).
    std::vector<std::string> candidates;
    const std::string first_name = first.impl_info_str();
    const std::string isa = first_name.substr(first_name.find(':') + 1);
    {
      dnnl::convolution_forward::primitive_desc it(desc, attr, dnnl->engine);
      do {
        const std::string name = it.impl_info_str();
        if (!IsReference(it) && name.substr(name.find(':') + 1) == isa &&
            std::find(candidates.begin(), candidates.end(), name) == candidates.end()) {
          candidates.push_back(name);
        }
      } while (static_cast<int>(candidates.size()) < kMaxCandidates && it.next_impl());
    }
    chosen = first_name;
    if (candidates.size() > 1) {
      double best = std::numeric_limits<double>::infinity();
      for (const std::string& name : candidates) {
        dnnl::convolution_forward::primitive_desc pd(desc, attr, dnnl->engine);
        if (!AdvanceTo(&pd, name)) continue;
        const double t = TimeOnce(pd, extra_args, dnnl);
        if (t < best) {
          best = t;
          chosen = name;
        }
      }
    }
    absl::MutexLock lock(&cache.mu);
    chosen = cache.impl.try_emplace(key, chosen).first->second;
  }
  if (chosen == first.impl_info_str()) return first;
  dnnl::convolution_forward::primitive_desc pd(desc, attr, dnnl->engine);
  return AdvanceTo(&pd, chosen) ? pd : first;
}

KernelTimingScope::KernelTimingScope() : previous_(timing_allowed) {
  timing_allowed = true;
}

KernelTimingScope::~KernelTimingScope() { timing_allowed = previous_; }

FirstChoiceScope::FirstChoiceScope() : previous_(first_choice_only) {
  first_choice_only = true;
}

FirstChoiceScope::~FirstChoiceScope() { first_choice_only = previous_; }

KernelChoice CurrentKernelChoice() { return {timing_allowed, first_choice_only}; }

KernelChoiceScope::KernelChoiceScope(KernelChoice choice) : previous_(CurrentKernelChoice()) {
  timing_allowed = choice.timing_allowed;
  first_choice_only = choice.first_choice_only;
}

KernelChoiceScope::~KernelChoiceScope() {
  timing_allowed = previous_.timing_allowed;
  first_choice_only = previous_.first_choice_only;
}

}  // namespace qs
