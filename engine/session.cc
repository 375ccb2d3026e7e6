#include "engine/session.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "absl/base/call_once.h"
#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/batch_split.h"
#include "engine/buffer_pool.h"
#include "engine/calibrate.h"
#include "engine/layout.h"
#include "engine/log.h"
#include "engine/onnx_import.h"
#include "engine/ops/impl_autotune.h"
#include "engine/ops/reduced_precision.h"
#include "engine/ops/registry.h"
#include "engine/passes/passes.h"
#include "engine/shard_worker.h"
#include "engine/status_macros.h"

namespace qs {

// One planned node: its kernel and the value slots it reads and writes.
struct PlannedNode {
  std::string name;
  std::string op_type;
  std::unique_ptr<Kernel> kernel;
  std::vector<int> inputs;   // slot per input, -1 for omitted
  std::vector<int> outputs;  // slot per output, -1 for omitted
  std::vector<int> release;  // slots whose last use is this node
  // Per input: its value dies here and no other input of this node reads it, so the
  // kernel may take its buffer over (KernelRunContext::donated) when nothing outside
  // the session holds it.
  std::vector<bool> donatable;
};

struct Session::Plan {
  std::vector<ValueInfo> inputs;
  std::vector<ValueInfo> outputs;
  std::vector<int> input_slots;
  std::vector<int> output_slots;
  int num_slots = 0;
  std::vector<std::pair<int, Tensor>> constants;  // slot -> value
  std::vector<PlannedNode> nodes;
  int max_batch_size = 0;
  PlanStats stats;
  std::vector<NodePrecision> report;
  // Batch split (batch_split.h): nodes [0, split_end) run one sample at a time when a
  // run has more than one; split_inputs are the graph-input slots they read (sliced per
  // sample), split_live_out the slots they produce that later nodes or the outputs read
  // (concatenated back along the batch).
  size_t split_end = 0;
  // Integer plans split only on a single-threaded run (a batch shard; batch_split.h).
  bool split_single_thread = false;
  std::vector<int> split_inputs;
  std::vector<bool> split_input_read_after;  // per split input: a later node reads it
  std::vector<int> split_live_out;
  // Set when a sharded run's outputs did not come out one row range per shard (an
  // output without the batch dimension): later runs go unsharded.
  mutable std::atomic<bool> shards_off{false};
};

struct ExecutionContext::Impl {
  DnnlResources dnnl;
  // Activation buffers recycled across runs (see buffer_pool.h); the cap follows the
  // largest activation set a run has needed.
  std::shared_ptr<BufferPool> pool = BufferPool::Create(kMinPoolCap);
  static constexpr size_t kMinPoolCap = size_t{64} << 20;
  size_t pool_cap = kMinPoolCap;

  // The cap is twice the largest activation set seen (kernels' temporaries and size
  // classes need more than the live set), raised after a run by what the pool had to
  // free in it, up to four times that set: a repeated run then allocates nothing new.
  void AdaptPoolCap(int64_t peak_activation_bytes) {
    const size_t peak = static_cast<size_t>(std::max<int64_t>(peak_activation_bytes, 0));
    const size_t limit = std::max(kMinPoolCap, 4 * peak);
    pool_cap = std::max(pool_cap, std::max(kMinPoolCap, 2 * peak));
    pool_cap = std::min(limit, pool_cap + pool->TakeTurnedAwayBytes());
    pool->set_max_cached_bytes(pool_cap);
  }
  ~Impl() { pool->Drain(); }
  std::vector<std::unique_ptr<KernelState>> states;  // per planned node
  // The batch shards (Session::Run), made on first use: shard 0 runs on the owner's
  // thread, shard k > 0 on its own worker thread. Each has a context of its own
  // (primitives built for one thread, activation pool), created, run and destroyed
  // only on its shard's thread (shard_worker.h says why).
  struct Shard {
    std::unique_ptr<ShardWorker> worker;  // null for shard 0
    std::unique_ptr<ExecutionContext> ctx;
    ~Shard() {
      if (worker == nullptr) return;
      worker->Run([this] { ctx.reset(); });
      worker->Wait();
    }
  };
  std::vector<std::unique_ptr<Shard>> shards;
};

namespace {

// An engine switch from the environment: on unless set to "0" (for A/B measurements and
// as an escape hatch). Callers cache the answer.
bool EnvSwitchOn(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || std::string(v) != "0";
}

// QS_ARENA_PLANS=0 turns run plans off (every buffer from the size-class cache).
bool ArenaPlansEnabled() {
  static const bool enabled = EnvSwitchOn("QS_ARENA_PLANS");
  return enabled;
}

// BeginRun/EndRun of a BufferPool for one Session::Run, keyed by its inputs' types and
// shapes (which decide every allocation of the run).
class RunPlanScope {
 public:
  RunPlanScope(BufferPool* pool, const std::vector<Tensor>& inputs) : pool_(pool) {
    if (pool_ == nullptr) return;
    std::vector<int64_t> key;
    for (const Tensor& t : inputs) {
      key.push_back(static_cast<int64_t>(t.dtype()));
      key.push_back(static_cast<int64_t>(t.layout()));
      key.push_back(t.rank());
      for (int64_t d : t.shape()) key.push_back(d);
    }
    pool_->BeginRun(absl::Hash<std::vector<int64_t>>()(key));
  }
  ~RunPlanScope() {
    if (pool_ != nullptr) pool_->EndRun(succeeded_);
  }
  // The run completed: its recording, if any, may become a plan.
  void Succeeded() { succeeded_ = true; }
  RunPlanScope(const RunPlanScope&) = delete;
  RunPlanScope& operator=(const RunPlanScope&) = delete;

 private:
  BufferPool* pool_;
  bool succeeded_ = false;
};

}  // namespace

ExecutionContext::ExecutionContext(std::unique_ptr<Impl> impl)
    : impl_(std::move(impl)) {}
ExecutionContext::~ExecutionContext() = default;

int64_t ExecutionContext::peak_activation_bytes() const {
  // The owner's own runs feed its pool's cap (Impl::AdaptPoolCap); the shards' peaks
  // only add up here, for reporting.
  int64_t shards = 0;
  for (const auto& shard : impl_->shards) {
    if (shard != nullptr && shard->ctx != nullptr) shards += shard->ctx->peak_activation_bytes_;
  }
  return std::max(peak_activation_bytes_, shards);
}

int ExecutionContext::batch_shard_contexts() const {
  int n = 0;
  for (const auto& shard : impl_->shards) n += shard != nullptr && shard->ctx != nullptr;
  return n;
}

ExecutionContext::ActivationMemory ExecutionContext::activation_memory() const {
  const BufferPool& pool = *impl_->pool;
  ActivationMemory m{pool.arena_bytes(), pool.cached_bytes(), pool.arena_hits()};
  for (const auto& shard : impl_->shards) {
    if (shard == nullptr || shard->ctx == nullptr) continue;
    const ActivationMemory s = shard->ctx->activation_memory();
    m.arena_bytes += s.arena_bytes;
    m.cached_bytes += s.cached_bytes;
    m.arena_hits += s.arena_hits;
  }
  return m;
}

Session::Session(std::unique_ptr<Plan> plan) : plan_(std::move(plan)) {}
Session::~Session() = default;

const std::vector<ValueInfo>& Session::inputs() const { return plan_->inputs; }
const std::vector<ValueInfo>& Session::outputs() const { return plan_->outputs; }
PlanStats Session::stats() const { return plan_->stats; }

const char* PrecisionName(Precision p) {
  switch (p) {
    case Precision::kFP32: return "FP32";
    case Precision::kDynamicRange: return "DYNAMIC_RANGE";
    case Precision::kInt8: return "INT8";
    case Precision::kFP16: return "FP16";
    case Precision::kBF16: return "BF16";
  }
  return "FP32";
}

const std::vector<NodePrecision>& Session::precision_report() const {
  return plan_->report;
}

namespace {

// Turns oneDNN's process-wide primitive cache off, once, before the first plan is built,
// unless the user sized it (ONEDNN_/DNNL_PRIMITIVE_CACHE_CAPACITY). Plans hold every
// primitive they run, so the cache mostly kept what nothing runs any more (calibration
// and report plans, timed candidates: 3-4 MB for ResNet-50 INT8); what it did share,
// identical kernels of several instances' contexts, each context now JITs itself
// (ResNet-50 INT8 with 2 instances: 0.2 s more to ready, RSS still 5 MB lower than
// with a cache of 1024 that is never emptied). And oneDNN 2.6's cache is
// not safe to shrink while other threads create primitives: emptying it after each
// model load made a concurrently created MatMul lose its fused ReLU now and then
// (tests/integration/serving_test, reloads under traffic). With capacity 0 no entry
// ever exists, so nothing is shared or evicted.
void TurnOffPrimitiveCacheOnce() {
  static absl::once_flag once;
  absl::call_once(once, [] {
    if (std::getenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY") != nullptr ||
        std::getenv("DNNL_PRIMITIVE_CACHE_CAPACITY") != nullptr) {
      return;
    }
    try {
      dnnl::set_primitive_cache_capacity(0);
    } catch (const dnnl::error& e) {
      QS_LOG(WARNING) << "cannot turn oneDNN's primitive cache off: " << e.what();
    }
  });
}

// ImportGraph with an allocation failure turned into a status.
absl::StatusOr<Graph> ImportGraphOrOom(const onnx::ModelProto& model) {
  try {
    return ImportGraph(model);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory while importing the model");
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Session>> Session::Compile(
    const onnx::ModelProto& model, const CompileOptions& options) {
  QS_ASSIGN_OR_RETURN(Graph graph, ImportGraphOrOom(model));
  return CompileGraph(std::move(graph), options);
}

absl::StatusOr<std::unique_ptr<Session>> Session::Compile(onnx::ModelProto&& model,
                                                          const CompileOptions& options) {
  absl::StatusOr<Graph> graph = ImportGraphOrOom(model);
  model = onnx::ModelProto();  // frees the proto's tensors before compiling
  if (!graph.ok()) return graph.status();
  return CompileGraph(*std::move(graph), options);
}

absl::StatusOr<std::unique_ptr<Session>> Session::CompileGraph(Graph graph,
                                                               const CompileOptions& options) {
  TurnOffPrimitiveCacheOnce();
  try {
    const int64_t graph_nodes = static_cast<int64_t>(graph.nodes.size());
    int64_t fp32_weight_bytes = 0;
    for (const auto& [name, t] : graph.initializers) {
      fp32_weight_bytes += static_cast<int64_t>(
          t.num_elements() * (t.dtype() == DataType::kFloat16 ? 4 : DataTypeSize(t.dtype())));
    }
    QS_RETURN_IF_ERROR(ComputeFloat16InFloat32(&graph));
    QS_RETURN_IF_ERROR(RemoveIdentityNodes(&graph));
    QS_RETURN_IF_ERROR(FoldQdqIntoReducedPrecision(&graph));
    QS_RETURN_IF_ERROR(FoldConstants(&graph));
    QS_RETURN_IF_ERROR(FoldBatchNormIntoConv(&graph));
    QS_RETURN_IF_ERROR(FuseGelu(&graph));
    QS_RETURN_IF_ERROR(FuseLayerNorm(&graph));
    QS_RETURN_IF_ERROR(FuseMatMulPostOps(&graph));
    QS_RETURN_IF_ERROR(FoldTransposeIntoMatMul(&graph));
    QS_RETURN_IF_ERROR(FuseConvAdd(&graph));
    QS_RETURN_IF_ERROR(FuseConvActivation(&graph));
    QS_RETURN_IF_ERROR(EliminateDeadNodes(&graph));
    std::unique_ptr<Plan> plan;
    if (options.precision == Precision::kFP32) {
      QS_ASSIGN_OR_RETURN(plan, BuildPlan(std::move(graph), options.max_batch_size));
    } else {
      QS_ASSIGN_OR_RETURN(plan, BuildReducedPlan(std::move(graph), options));
    }
    plan->stats.num_graph_nodes = graph_nodes;
    plan->stats.fp32_weight_bytes = fp32_weight_bytes;
    if (plan->stats.stored_weight_bytes == 0) {
      plan->stats.stored_weight_bytes = plan->stats.weight_bytes;
    }
    return std::unique_ptr<Session>(new Session(std::move(plan)));
  } catch (const dnnl::error& e) {
    return absl::InternalError(absl::StrCat("oneDNN error while compiling: ", e.what()));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory while compiling the model");
  }
}

absl::StatusOr<std::unique_ptr<Session::Plan>> Session::BuildReducedPlan(
    Graph graph, const CompileOptions& options) {
  if (options.precision == Precision::kFP16) {
    const int64_t stored = RoundWeightsToHalf(&graph);
    QS_ASSIGN_OR_RETURN(auto plan, BuildPlan(std::move(graph), options.max_batch_size));
    plan->stats.stored_weight_bytes = plan->stats.weight_bytes - stored;
    return plan;
  }
  if (options.precision == Precision::kInt8 && options.calibration.empty()) {
    return absl::FailedPreconditionError(
        "INT8 needs calibration data (quantization.calibration.data_dir in the model's "
        "config, or --calibration for quantserve-bench); refusing to calibrate on "
        "random inputs");
  }
  // The FP32 plan of the same graph: the reference for calibration and the report,
  // run on oneDNN's first-choice kernels so that the ranges are reproducible.
  FirstChoiceScope reproducible;
  QS_ASSIGN_OR_RETURN(auto fp32_plan, BuildPlan(graph, options.max_batch_size));
  Session fp32(std::move(fp32_plan));
  std::vector<std::vector<Tensor>> data = options.calibration;
  if (data.empty()) data.push_back(RandomInputs(fp32.inputs()));
  QS_ASSIGN_OR_RETURN(std::vector<NodeRange> ranges,
                      CalibrateRanges(fp32, data, options, graph));
  QS_RETURN_IF_ERROR(AssignPrecision(options, ranges, &graph));
  QS_ASSIGN_OR_RETURN(auto plan, BuildPlan(graph, options.max_batch_size));
  Session reduced(std::move(plan));
  QS_ASSIGN_OR_RETURN(reduced.plan_->report, PrecisionReport(fp32, reduced, graph, data[0]));
  return std::move(reduced.plan_);
}

absl::StatusOr<std::unique_ptr<Session::Plan>> Session::BuildPlan(
    Graph graph, int max_batch_size) {
  auto plan = std::make_unique<Plan>();
  plan->inputs = graph.inputs;
  plan->outputs = graph.outputs;
  plan->max_batch_size = max_batch_size;

  absl::flat_hash_map<std::string, int> slot_of;
  auto slot = [&](const std::string& name) {
    auto [it, inserted] = slot_of.try_emplace(name, plan->num_slots);
    if (inserted) ++plan->num_slots;
    return it->second;
  };
  for (const auto& in : graph.inputs) plan->input_slots.push_back(slot(in.name));
  for (auto& [name, t] : graph.initializers) plan->constants.emplace_back(slot(name), t);
  const KernelRegistry& registry = DefaultKernelRegistry();
  for (const Node& node : graph.nodes) {
    KernelInit init;
    init.node = &node;
    init.opset = graph.opset;
    for (const auto& in : node.inputs) {
      auto c = graph.initializers.find(in);
      init.constants.push_back(c == graph.initializers.end() ? nullptr : &c->second);
      auto vi = graph.value_info.find(in);
      init.input_infos.push_back(vi == graph.value_info.end() ? nullptr : &vi->second);
    }
    QS_ASSIGN_OR_RETURN(auto kernel, registry.Create(init));
    PlannedNode pn;
    pn.name = node.name;
    pn.op_type = node.op_type;
    pn.kernel = std::move(kernel);
    for (const auto& in : node.inputs) pn.inputs.push_back(in.empty() ? -1 : slot(in));
    for (const auto& out : node.outputs)
      pn.outputs.push_back(out.empty() ? -1 : slot(out));
    plan->nodes.push_back(std::move(pn));
  }
  for (const auto& out : graph.outputs) plan->output_slots.push_back(slot(out.name));

  // Constants that only reduced-precision kernels use as weights or bias were consumed
  // at kernel creation (quantized and packed), as were the weights FP32 kernels pack:
  // the plan does not keep the unpacked copy.
  {
    std::vector<bool> needed(plan->num_slots, false);
    for (size_t i = 0; i < graph.nodes.size(); ++i) {
      const bool reduced = graph.nodes[i].attrs.Has(kPrecisionAttr);
      const Kernel& kernel = *plan->nodes[i].kernel;
      const auto& ins = plan->nodes[i].inputs;
      for (size_t k = 0; k < ins.size(); ++k) {
        if (ins[k] < 0 || (reduced && k != 0) || kernel.owns_constant_input(k)) continue;
        needed[ins[k]] = true;
      }
    }
    for (int s : plan->output_slots) needed[s] = true;
    std::vector<std::pair<int, Tensor>> kept;
    for (auto& c : plan->constants) {
      if (needed[c.first]) {
        plan->stats.weight_bytes += static_cast<int64_t>(c.second.byte_size());
        kept.push_back(std::move(c));
      }
    }
    plan->constants = std::move(kept);
    for (const auto& pn : plan->nodes) plan->stats.weight_bytes += pn.kernel->weight_bytes();
  }

  // Liveness: an activation is released after its last reader, unless it is a graph
  // output or a constant (constants are shared handles and stay alive).
  std::vector<int> last_use(plan->num_slots, -1);
  for (size_t i = 0; i < plan->nodes.size(); ++i) {
    for (int s : plan->nodes[i].inputs)
      if (s >= 0) last_use[s] = static_cast<int>(i);
    // An output nobody reads is released right after it is produced.
    for (int s : plan->nodes[i].outputs)
      if (s >= 0 && last_use[s] < static_cast<int>(i)) last_use[s] = static_cast<int>(i);
  }
  std::vector<bool> keep(plan->num_slots, false);
  for (int s : plan->output_slots) keep[s] = true;
  for (const auto& c : plan->constants) keep[c.first] = true;
  for (int s = 0; s < plan->num_slots; ++s) {
    if (!keep[s] && last_use[s] >= 0) plan->nodes[last_use[s]].release.push_back(s);
  }
  for (size_t i = 0; i < plan->nodes.size(); ++i) {
    PlannedNode& pn = plan->nodes[i];
    pn.donatable.assign(pn.inputs.size(), false);
    for (size_t k = 0; k < pn.inputs.size(); ++k) {
      const int s = pn.inputs[k];
      if (s < 0 || keep[s] || last_use[s] != static_cast<int>(i)) continue;
      pn.donatable[k] = std::count(pn.inputs.begin(), pn.inputs.end(), s) == 1;
    }
  }
  plan->split_end = BatchSplitEnd(graph);
  plan->split_single_thread = HasIntegerNodes(graph, graph.nodes.size());
  if (plan->split_end > 0) {
    std::vector<bool> produced(plan->num_slots, false), read_in(plan->num_slots, false),
        read_after(plan->num_slots, false);
    for (size_t i = 0; i < plan->nodes.size(); ++i) {
      for (int s : plan->nodes[i].inputs) {
        if (s < 0) continue;
        (i < plan->split_end ? read_in : read_after)[s] = true;
      }
      if (i < plan->split_end) {
        for (int s : plan->nodes[i].outputs)
          if (s >= 0) produced[s] = true;
      }
    }
    for (int s : plan->output_slots) read_after[s] = true;
    for (int s = 0; s < plan->num_slots; ++s) {
      if (produced[s] && read_after[s]) plan->split_live_out.push_back(s);
    }
    for (int s : plan->input_slots) {
      if (!read_in[s]) continue;
      plan->split_inputs.push_back(s);
      plan->split_input_read_after.push_back(read_after[s]);
    }
  }
  plan->stats.num_nodes = static_cast<int64_t>(plan->nodes.size());
  return plan;
}

std::unique_ptr<ExecutionContext> Session::NewContext() const {
  auto impl = std::make_unique<ExecutionContext::Impl>();
  for (const auto& node : plan_->nodes) impl->states.push_back(node.kernel->NewState());
  auto ctx = std::unique_ptr<ExecutionContext>(new ExecutionContext(std::move(impl)));
  for (const auto& node : plan_->nodes) {
    ctx->profile_.push_back({node.name, node.op_type, 0, absl::ZeroDuration()});
  }
  return ctx;
}

namespace {

// Applies the kernel's LayoutPolicy to its inputs: swaps channels-last inputs in
// `in_ptrs` for plain copies when the kernel cannot take them. Returns true when an
// element-wise kernel runs directly on channels-last inputs (its outputs are then
// channels-last too).
bool PrepareLayouts(const Kernel& kernel, const std::vector<int>& input_slots,
                    const std::vector<Tensor>& slots, std::vector<Tensor>* plain_copies,
                    std::vector<const Tensor*>* in_ptrs) {
  const LayoutPolicy policy = kernel.layout_policy();
  if (policy == LayoutPolicy::kAny) return false;
  bool any_channels_last = false;
  for (const Tensor* t : *in_ptrs) {
    any_channels_last |= t != nullptr && t->layout() == Layout::kChannelsLast;
  }
  if (!any_channels_last) return false;
  if (policy == LayoutPolicy::kElementwise) {
    bool same = true;
    const Shape* ref = nullptr;
    for (const Tensor* t : *in_ptrs) {
      if (t == nullptr || t->num_elements() == 1) continue;  // scalars broadcast alike
      if (t->layout() != Layout::kChannelsLast || (ref != nullptr && t->shape() != *ref)) {
        same = false;
        break;
      }
      ref = &t->shape();
    }
    if (same) return true;
  }
  for (size_t i = 0; i < in_ptrs->size(); ++i) {
    const Tensor* t = (*in_ptrs)[i];
    if (t == nullptr || t->layout() != Layout::kChannelsLast) continue;
    Tensor& copy = (*plain_copies)[input_slots[i]];
    if (!copy.defined()) copy = ToPlain(*t);
    (*in_ptrs)[i] = &copy;
  }
  return false;
}

// ---- batch split (batch_split.h) --------------------------------------------------

// Smallest batch whose leading nodes run per sample (batch_split.h).
constexpr int64_t kMinSplitBatch = 4;

// QS_BATCH_SPLIT=0 runs every node on the whole batch (for A/B measurements).
bool BatchSplitEnabled() {
  static const bool enabled = EnvSwitchOn("QS_BATCH_SPLIT");
  return enabled;
}

// Whether `parts` can be stacked along dimension 0: each defined, of rank >= 1, with
// the first one's dtype, layout and trailing dims.
bool Stackable(const std::vector<Tensor>& parts) {
  if (parts.empty()) return false;
  const Tensor& first = parts[0];
  for (const Tensor& p : parts) {
    if (!p.defined() || p.rank() < 1 || p.dtype() != first.dtype() ||
        p.layout() != first.layout() || p.rank() != first.rank() ||
        !std::equal(p.shape().begin() + 1, p.shape().end(), first.shape().begin() + 1)) {
      return false;
    }
  }
  return true;
}

// `parts` stacked along dimension 0 (see Stackable).
absl::StatusOr<Tensor> ConcatRows(const std::vector<Tensor>& parts) {
  const bool produced = !parts.empty() && std::all_of(parts.begin(), parts.end(),
                                                      [](const Tensor& p) { return p.defined(); });
  if (!produced) return absl::InternalError("batch split: a boundary value was not produced");
  if (!Stackable(parts)) {
    return absl::InternalError("batch split: samples produced mismatched values");
  }
  Shape shape = parts[0].shape();
  int64_t rows = 0;
  for (const Tensor& p : parts) rows += p.dim(0);
  shape[0] = rows;
  Tensor out = Tensor::Uninitialized(parts[0].dtype(), shape);
  out.set_layout(parts[0].layout());
  char* dst = static_cast<char*>(out.raw_data());
  for (const Tensor& p : parts) {
    std::memcpy(dst, p.raw_data(), p.byte_size());
    dst += p.byte_size();
  }
  return out;
}

// ---- batch shards (Session::Run) ----------------------------------------------------

// Fewest rows per shard: at one row per thread the two samples of a batch of 2 share
// the cache and the team's barriers are cheap relative to the layers (ResNet-50 INT8,
// MobileNetV2 INT8 and ResNet-50 FP32 at batch 2: within 2 % either way).
constexpr int64_t kMinShardRows = 2;

// QS_BATCH_SHARDS=0 runs every batch on the whole OpenMP team (for A/B measurements).
bool BatchShardsEnabled() {
  static const bool enabled = EnvSwitchOn("QS_BATCH_SHARDS");
  return enabled;
}

// Rows [begin, begin + n) of `t`: the same buffer when the range starts on a 64-byte
// boundary (the alignment tensors promise), else a copy.
Tensor RowRange(const Tensor& t, int64_t begin, int64_t n) {
  const size_t row_bytes = t.dim(0) == 0 ? 0 : t.byte_size() / static_cast<size_t>(t.dim(0));
  const size_t offset = static_cast<size_t>(begin) * row_bytes;
  if (offset % 64 != 0) return t.Rows(begin, n);
  Shape shape = t.shape();
  shape[0] = n;
  // The view keeps the whole buffer alive through a handle of `t`.
  auto owner = std::make_shared<Tensor>(t);
  void* data = static_cast<char*>(owner->raw_data()) + offset;
  Tensor view = Tensor::Wrap(t.dtype(), shape, data, std::move(owner));
  view.set_layout(t.layout());
  return view;
}

}  // namespace

absl::Status Session::RunNodes(ExecutionContext* ctx, size_t begin, size_t end,
                               std::vector<Tensor>* slots, int64_t* live_bytes) const {
  const Plan& plan = *plan_;
  // Plain copies of channels-last values, made once per value for the kernels that
  // need plain inputs.
  std::vector<Tensor> plain_copies(plan.num_slots);
  std::vector<const Tensor*> in_ptrs;
  std::vector<Tensor*> donated;
  std::vector<Tensor> outs;
  for (size_t n = begin; n < end; ++n) {
    const PlannedNode& node = plan.nodes[n];
    in_ptrs.clear();
    for (int s : node.inputs) {
      in_ptrs.push_back(s >= 0 && (*slots)[s].defined() ? &(*slots)[s] : nullptr);
    }
    const bool channels_last_through = PrepareLayouts(*node.kernel, node.inputs, *slots,
                                                      &plain_copies, &in_ptrs);
    // Donate only the session's sole handle (a graph input is shared with the caller,
    // a plain copy is not the slot); a tap must see the inputs after the run.
    donated.assign(node.inputs.size(), nullptr);
    int64_t donated_bytes = 0;
    for (size_t k = 0; k < node.inputs.size() && !ctx->tap_; ++k) {
      const int s = node.inputs[k];
      if (node.donatable[k] && in_ptrs[k] == &(*slots)[s] && (*slots)[s].unique()) {
        donated[k] = &(*slots)[s];
        donated_bytes += static_cast<int64_t>((*slots)[s].byte_size());
      }
    }
    outs.assign(node.outputs.size(), Tensor());
    KernelRunContext kctx;
    kctx.inputs = in_ptrs;
    kctx.donated = donated;
    kctx.outputs = &outs;
    kctx.state = ctx->impl_->states[n].get();
    kctx.dnnl = &ctx->impl_->dnnl;
    const absl::Time start = ctx->profiling_ ? absl::Now() : absl::InfinitePast();
    absl::Status st;
    try {
      st = node.kernel->Run(kctx);
    } catch (const dnnl::error& e) {
      st = absl::InternalError(absl::StrCat("oneDNN: ", e.what()));
    } catch (const std::bad_alloc&) {
      st = absl::ResourceExhaustedError("out of memory");
    }
    if (!st.ok()) {
      return absl::Status(st.code(), absl::StrCat("node '", node.name, "' (",
                                                  node.op_type, "): ", st.message()));
    }
    if (ctx->profiling_) {
      ctx->profile_[n].calls++;
      ctx->profile_[n].total += absl::Now() - start;
    }
    for (Tensor& out : outs) {
      if (channels_last_through && out.rank() >= 3) out.set_layout(Layout::kChannelsLast);
      if (out.layout() == Layout::kChannelsLast && LayoutIsTrivial(out.shape())) {
        out.set_layout(Layout::kPlain);  // same bytes either way
      }
    }
    if (ctx->tap_) ctx->tap_(n, in_ptrs, outs);
    // A taken-over buffer now lives on as an output: stop counting it as the input.
    *live_bytes -= donated_bytes;
    for (Tensor* d : donated) {
      if (d != nullptr && d->defined()) *live_bytes += static_cast<int64_t>(d->byte_size());
    }
    for (size_t o = 0; o < node.outputs.size(); ++o) {
      if (node.outputs[o] < 0) continue;
      *live_bytes += static_cast<int64_t>(outs[o].byte_size());
      (*slots)[node.outputs[o]] = std::move(outs[o]);
    }
    if (*live_bytes > ctx->peak_activation_bytes_) {
      ctx->peak_activation_bytes_ = *live_bytes;
      ctx->impl_->AdaptPoolCap(ctx->peak_activation_bytes_);
    }
    for (int s : node.release) {
      *live_bytes -= static_cast<int64_t>((*slots)[s].byte_size());
      (*slots)[s] = Tensor();
      plain_copies[s] = Tensor();
    }
  }
  return absl::OkStatus();
}

absl::Status Session::Warmup(ExecutionContext* ctx, const std::vector<Tensor>& inputs,
                             std::vector<Tensor>* outputs) const {
  KernelTimingScope timing;
  return Run(ctx, inputs, outputs);
}

absl::Status Session::CheckInputs(const std::vector<Tensor>& inputs) const {
  const Plan& plan = *plan_;
  if (inputs.size() != plan.inputs.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expected ", plan.inputs.size(), " inputs, got ", inputs.size()));
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    const ValueInfo& info = plan.inputs[i];
    const Tensor& t = inputs[i];
    if (t.dtype() != info.dtype) {
      return absl::InvalidArgumentError(absl::StrCat(
          "input '", info.name, "': expected ", DataTypeName(info.dtype), ", got ",
          DataTypeName(t.dtype())));
    }
    if (info.has_shape) {
      bool ok = t.rank() == static_cast<int>(info.shape.size());
      for (int d = 0; ok && d < t.rank(); ++d) {
        ok = info.shape[d] < 0 || info.shape[d] == t.dim(d);
      }
      if (!ok) {
        return absl::InvalidArgumentError(absl::StrCat(
            "input '", info.name, "': expected shape ", ShapeToString(info.shape),
            ", got ", ShapeToString(t.shape())));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Session::Run(ExecutionContext* ctx, const std::vector<Tensor>& inputs,
                          std::vector<Tensor>* outputs) const {
  QS_RETURN_IF_ERROR(CheckInputs(inputs));
  const int shards = ShardCount(*ctx, inputs);
  if (shards > 1) {
    QS_ASSIGN_OR_RETURN(const bool done, RunShards(ctx, shards, inputs, outputs));
    if (done) return absl::OkStatus();
  }
  return RunWhole(ctx, inputs, outputs);
}

absl::Status Session::RunWhole(ExecutionContext* ctx, const std::vector<Tensor>& inputs,
                               std::vector<Tensor>* outputs) const {
  const Plan& plan = *plan_;
  BufferPool::Scope pool_scope(ctx->impl_->pool.get());
  // Runs of the same input shapes allocate the same way: the pool plans their buffers
  // in one arena (buffer_pool.h). Not with a tap, whose copies depend on the caller.
  // Declared before `slots`, so the run's values have come back when it ends.
  RunPlanScope run_plan(ctx->tap_ || !ArenaPlansEnabled() ? nullptr : ctx->impl_->pool.get(),
                        inputs);
  std::vector<Tensor> slots(plan.num_slots);
  for (size_t i = 0; i < inputs.size(); ++i) slots[plan.input_slots[i]] = inputs[i];
  for (const auto& [s, t] : plan.constants) slots[s] = t;

  // Graph inputs count while they are live (they are released like any value).
  int64_t live_bytes = 0;
  for (int s : plan.input_slots) live_bytes += static_cast<int64_t>(slots[s].byte_size());
  // Samples to run the leading nodes for one at a time (0: no split).
  int64_t split_batch = 0;
  if (plan.split_end > 0 && !ctx->tap_ && BatchSplitEnabled() &&
      (!plan.split_single_thread || omp_get_max_threads() == 1)) {
    for (int s : plan.split_inputs) {
      const Tensor& t = slots[s];
      const int64_t n = t.rank() >= 2 ? t.dim(0) : 0;
      split_batch = (split_batch == 0 || split_batch == n) ? n : -1;
    }
    // At batch 2 the maps of both samples still share the cache: no gain measured.
    if (split_batch < kMinSplitBatch) split_batch = 0;
  }
  if (split_batch > 1) {
    // The leading nodes one sample at a time (batch_split.h), then the rest on the
    // whole batch from the concatenated boundary values.
    std::vector<std::vector<Tensor>> parts(plan.split_live_out.size());
    for (int64_t b = 0; b < split_batch; ++b) {
      std::vector<Tensor> sample(plan.num_slots);
      for (const auto& [s, t] : plan.constants) sample[s] = t;
      int64_t sample_live = 0;
      for (int s : plan.split_inputs) {
        sample[s] = slots[s].Rows(b, 1);
        sample_live += static_cast<int64_t>(sample[s].byte_size());
      }
      QS_RETURN_IF_ERROR(RunNodes(ctx, 0, plan.split_end, &sample, &sample_live));
      for (size_t k = 0; k < plan.split_live_out.size(); ++k) {
        parts[k].push_back(std::move(sample[plan.split_live_out[k]]));
      }
    }
    for (size_t k = 0; k < plan.split_inputs.size(); ++k) {
      const int s = plan.split_inputs[k];
      if (plan.split_input_read_after[k]) continue;
      live_bytes -= static_cast<int64_t>(slots[s].byte_size());
      slots[s] = Tensor();
    }
    for (size_t k = 0; k < plan.split_live_out.size(); ++k) {
      QS_ASSIGN_OR_RETURN(slots[plan.split_live_out[k]], ConcatRows(parts[k]));
      live_bytes += static_cast<int64_t>(slots[plan.split_live_out[k]].byte_size());
      parts[k].clear();
    }
    QS_RETURN_IF_ERROR(RunNodes(ctx, plan.split_end, plan.nodes.size(), &slots, &live_bytes));
  } else {
    QS_RETURN_IF_ERROR(RunNodes(ctx, 0, plan.nodes.size(), &slots, &live_bytes));
  }
  outputs->clear();
  for (size_t i = 0; i < plan.output_slots.size(); ++i) {
    Tensor& t = slots[plan.output_slots[i]];
    if (!t.defined()) {
      return absl::InternalError(
          absl::StrCat("output '", plan.outputs[i].name, "' was not produced"));
    }
    outputs->push_back(ToPlain(t));
  }
  ctx->impl_->AdaptPoolCap(ctx->peak_activation_bytes_);
  run_plan.Succeeded();
  return absl::OkStatus();
}

int Session::ShardCount(const ExecutionContext& ctx,
                        const std::vector<Tensor>& inputs) const {
  const Plan& plan = *plan_;
  // A profile or a tap reports the nodes of one run; a run inside a parallel region
  // already is one thread's share.
  if (plan.max_batch_size <= 0 || inputs.empty() || ctx.tap_ || ctx.profiling_ ||
      plan.shards_off.load(std::memory_order_relaxed) || !BatchShardsEnabled() ||
      omp_in_parallel()) {
    return 1;
  }
  const int threads = omp_get_max_threads();
  if (threads < 2) return 1;
  const int64_t batch = inputs[0].rank() >= 1 ? inputs[0].dim(0) : 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (t.rank() < 1 || t.dim(0) != batch) return 1;
    // A declared fixed leading size admits no smaller shard.
    const ValueInfo& info = plan.inputs[i];
    if (info.has_shape && !info.shape.empty() && info.shape[0] >= 0) return 1;
  }
  // An output declared with a fixed leading size is not batched: its shards' values
  // cannot be joined.
  for (const ValueInfo& info : plan.outputs) {
    if (info.has_shape && (info.shape.empty() || info.shape[0] >= 0)) return 1;
  }
  // Uneven shards leave a thread idle while the larger one finishes, which costs more
  // than the barriers saved (batch 3 on 2 threads: a 2-row shard takes 4/3 of the whole
  // batch's time on both).
  if (batch < kMinShardRows * threads || batch % threads != 0) return 1;
  return threads;
}

absl::StatusOr<bool> Session::RunShards(ExecutionContext* ctx, int shards,
                                        const std::vector<Tensor>& inputs,
                                        std::vector<Tensor>* outputs) const {
  const Plan& plan = *plan_;
  const int64_t rows = inputs[0].dim(0) / shards;
  ExecutionContext::Impl& impl = *ctx->impl_;
  try {
    while (impl.shards.size() < static_cast<size_t>(shards)) {
      auto shard = std::make_unique<ExecutionContext::Impl::Shard>();
      if (!impl.shards.empty()) shard->worker = std::make_unique<ShardWorker>();
      impl.shards.push_back(std::move(shard));
    }
  } catch (const std::exception& e) {  // std::system_error: no thread to be had
    QS_LOG(WARNING) << "batch shards: cannot start a worker thread (" << e.what()
                    << "); running the batch whole";
    return false;
  }
  std::vector<std::vector<Tensor>> in(shards);
  std::vector<std::vector<Tensor>> out(shards);
  for (int k = 0; k < shards; ++k) {
    for (const Tensor& t : inputs) in[k].push_back(RowRange(t, k * rows, rows));
  }
  std::vector<absl::Status> status(shards);
  const KernelChoice choice = CurrentKernelChoice();
  // One shard on this thread (its primitives built for one thread too), exceptions
  // turned into statuses: nothing may escape a worker's job.
  auto run_shard = [&](int k) {
    KernelChoiceScope carried(choice);
    ExecutionContext::Impl::Shard& shard = *impl.shards[k];
    try {
      if (shard.ctx == nullptr) shard.ctx = NewContext();
      status[k] = RunWhole(shard.ctx.get(), in[k], &out[k]);
    } catch (const std::bad_alloc&) {
      status[k] = absl::ResourceExhaustedError("out of memory");
    } catch (const std::exception& e) {
      status[k] = absl::InternalError(absl::StrCat("batch shard: ", e.what()));
    }
  };
  for (int k = 1; k < shards; ++k) impl.shards[k]->worker->Run([&run_shard, k] { run_shard(k); });
  {
    const int team = omp_get_max_threads();
    omp_set_num_threads(1);
    run_shard(0);
    omp_set_num_threads(team);
  }
  for (int k = 1; k < shards; ++k) impl.shards[k]->worker->Wait();
  for (const absl::Status& st : status) QS_RETURN_IF_ERROR(st);
  in.clear();
  outputs->clear();
  std::vector<Tensor> parts(shards);
  for (size_t i = 0; i < plan.outputs.size(); ++i) {
    bool one_range_each = true;
    for (int k = 0; k < shards; ++k) {
      parts[k] = std::move(out[k][i]);
      one_range_each = one_range_each && parts[k].rank() >= 1 && parts[k].dim(0) == rows;
    }
    if (!one_range_each || !Stackable(parts)) {
      // Not batched along dimension 0, or of data-dependent trailing sizes: this run's
      // shards cannot be joined.
      if (!plan.shards_off.exchange(true)) {
        QS_LOG(WARNING) << "output '" << plan.outputs[i].name
                        << "' does not come out one row range per batch shard; "
                           "batches of this model run whole from now on";
      }
      outputs->clear();
      return false;
    }
    QS_ASSIGN_OR_RETURN(Tensor joined, ConcatRows(parts));
    outputs->push_back(std::move(joined));
  }
  return true;
}

}  // namespace qs
