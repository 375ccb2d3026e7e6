// The engine's public API: compile an ONNX model once, run batches many times.
//
//   auto session = Session::Compile(model_proto, options);   // slow: imports, optimizes,
//                                                            // packs weights
//   auto ctx = (*session)->NewContext();   // one per worker thread
//   (*session)->Run(ctx.get(), inputs, &outputs);
//
// Thread-safety: a Session is immutable after Compile and may be shared by any number of
// threads. An ExecutionContext belongs to one thread at a time (it owns that thread's
// oneDNN stream and cached primitives); create it on the thread that will use it.
// Run() blocks the calling thread for the computation (oneDNN runs an OpenMP team of the
// calling thread's omp_get_max_threads()). A context that has run batch shards (see
// Run) also owns one idle worker thread per shard beyond the first.
#ifndef QUANTSERVE_ENGINE_SESSION_H_
#define QUANTSERVE_ENGINE_SESSION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/graph.h"
#include "engine/tensor.h"
#include "onnx/onnx_pb.h"

namespace qs {

enum class Precision { kFP32, kDynamicRange, kInt8, kFP16, kBF16 };

const char* PrecisionName(Precision p);  // "FP32", "DYNAMIC_RANGE", ...

enum class CalibrationMethod;  // engine/quantize/calibration.h

struct CompileOptions {
  Precision precision = Precision::kFP32;
  // >0: inputs' leading dimension is a batch dimension of at most this size, and the
  // model computes each row of the outputs' leading dimension from the same row of the
  // inputs (what dynamic batching already assumes): Run may cut a batch into shards.
  int max_batch_size = 0;
  // INT8: calibration batches, each one tensor per graph input in inputs() order.
  // Required for INT8 (Compile fails without it); used for the precision report of the
  // other precisions when present (random inputs otherwise).
  std::vector<std::vector<Tensor>> calibration;
  int calibration_method = 0;  // 0 MINMAX, 1 PERCENTILE, 2 ENTROPY
  double calibration_percentile = 99.999;
  // Kept in FP32: by op type or node name (ONNX Runtime's nodes_to_exclude).
  std::vector<std::string> exclude_op_types;
  std::vector<std::string> exclude_nodes;
  // By default the layers that produce a graph output (the classifier head) and
  // convolutions over fewer than 4 input channels (the image stem) stay FP32 (INT8 plans
  // may run the stem in BF16, see int8_stem_in_bf16): they are the most sensitive to
  // rounding and a small share of the operations. So do depthwise convolutions, except
  // at INT8, and, at BF16, convolutions with at most 32 input or output channels (no
  // faster in bf16, and early in the network, where later layers amplify rounding).
  bool disable_default_exclusions = false;
  // INT8 plans run the image stem in BF16 instead of FP32 where the CPU computes bf16
  // natively: it costs no measurable accuracy (its error stays ~20 dB below int8's)
  // and the stem, at FP32, takes a quarter of ResNet-18's INT8 run (4.1 of 19.5 ms at
  // batch 8; BF16: 2.8 ms). Nodes named in exclude_nodes/exclude_op_types stay FP32.
  bool int8_stem_in_bf16 = true;
  // What INT8 plans run the head (the layers producing a graph output) at.
  enum class Int8Head {
    // s8 weights, the input quantized per batch from its observed range (as at
    // DYNAMIC_RANGE): a quarter of the FP32 weights (ResNet-50's classifier: 8.2 -> 2.0
    // MB) and no calibrated range, so no calibration method can clip it (ENTROPY did, at
    // static INT8). Output cosines move by 1e-4 at most against a BF16 head.
    kDynamicRange,
    kBf16,  // where the CPU computes bf16 natively (FP32 elsewhere): half the weights
    kFp32,
  };
  Int8Head int8_head = Int8Head::kDynamicRange;
};

// One line of the precision report: what each node runs at and how far its output is
// from the FP32 plan's on the report data (signal-to-quantization-noise ratio; +inf when
// identical).
struct NodePrecision {
  std::string name;
  std::string op_type;
  std::string precision;  // "FP32", "INT8", "DYNAMIC_RANGE", "BF16"
  double sqnr_db = 0;
};

struct PlanStats {
  int64_t num_nodes = 0;           // kernels in the plan after optimization
  int64_t fp32_weight_bytes = 0;   // what the weights take at FP32
  int64_t stored_weight_bytes = 0;  // what they take as stored (f16 for FP16)
  int64_t num_graph_nodes = 0;     // nodes in the imported graph
  int64_t weight_bytes = 0;        // constant bytes held by the plan
  int64_t peak_activation_bytes = 0;  // largest live activation set seen so far
};

struct NodeProfile {
  std::string name;
  std::string op_type;
  int64_t calls = 0;
  absl::Duration total;
};

class Session;

// Per-thread execution state. Not thread-safe; see the file comment.
class ExecutionContext {
 public:
  ~ExecutionContext();
  // Called after each node with its inputs (as the kernel saw them) and outputs; for
  // calibration and the precision report. Slows every run: leave unset when serving.
  using Tap = std::function<void(size_t node, const std::vector<const Tensor*>& inputs,
                                 const std::vector<Tensor>& outputs)>;
  void set_tap(Tap tap) { tap_ = std::move(tap); }
  // When on, Run() records per-node wall time (see profile()).
  void set_profiling(bool on) { profiling_ = on; }
  const std::vector<NodeProfile>& profile() const { return profile_; }
  // The largest activation set of one run: of a whole run, or summed over the shards of
  // a sharded run (each shard's own peak, so an upper bound).
  int64_t peak_activation_bytes() const;
  // What the context holds for activations between runs: its run-plan arena and its
  // cache of free buffers (buffer_pool.h), and how many allocations the arena served.
  struct ActivationMemory {
    size_t arena_bytes = 0;
    size_t cached_bytes = 0;
    int64_t arena_hits = 0;
  };
  ActivationMemory activation_memory() const;
  // Contexts made for batch shards so far (Session::Run): 0 until a batch was sharded,
  // then the number of threads that ran shards.
  int batch_shard_contexts() const;

 private:
  friend class Session;
  struct Impl;
  explicit ExecutionContext(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  bool profiling_ = false;
  Tap tap_;
  std::vector<NodeProfile> profile_;
  int64_t peak_activation_bytes_ = 0;
};

class Session {
 public:
  // Imports, optimizes and plans `model` (already checked by LoadOnnxModel or
  // ParseOnnxModel). Errors: Unimplemented for an unsupported op (naming op, node and
  // opset), InvalidArgument for a malformed graph, Internal for a oneDNN failure.
  // The first Compile in a process turns oneDNN's primitive cache off (plans own their
  // primitives; see session.cc) unless ONEDNN_PRIMITIVE_CACHE_CAPACITY sizes it.
  static absl::StatusOr<std::unique_ptr<Session>> Compile(
      const onnx::ModelProto& model, const CompileOptions& options);
  // The same, freeing `model` (moved from) once its tensors are imported: a loader that
  // has no further use for the proto does not hold the model's weights twice while
  // calibrating.
  static absl::StatusOr<std::unique_ptr<Session>> Compile(onnx::ModelProto&& model,
                                                          const CompileOptions& options);
  ~Session();

  const std::vector<ValueInfo>& inputs() const;
  const std::vector<ValueInfo>& outputs() const;
  PlanStats stats() const;
  // Empty for FP32 plans.
  const std::vector<NodePrecision>& precision_report() const;

  std::unique_ptr<ExecutionContext> NewContext() const;

  // Runs one batch. `inputs` are in inputs() order with matching dtypes and shapes
  // compatible with the declared ones. `outputs` receives outputs() in order.
  // Errors: InvalidArgument for mismatched inputs, Internal for a kernel failure.
  //
  // Batch shards: when the plan has a batch dimension (max_batch_size > 0), the calling
  // thread has T > 1 OpenMP threads and the batch splits into T equal row ranges of at
  // least 2 rows, the calling thread and T - 1 worker threads of the context each run
  // one range through the whole plan on single-threaded primitives, and the outputs are
  // joined: no barrier between layers and no layer too small to split across threads
  // (batch 8 on 2 threads, idle host: 1-4 % faster; with other work competing for the
  // cores, which a team pays at every barrier, up to 23 %: docs/performance.md). Not
  // while profiling or with a tap (they report one run's nodes). QS_BATCH_SHARDS=0 in
  // the environment turns it off.
  absl::Status Run(ExecutionContext* ctx, const std::vector<Tensor>& inputs,
                   std::vector<Tensor>* outputs) const;

  // Run, letting the convolutions whose primitives are built during it choose their
  // oneDNN kernel by timing candidates (engine/ops/impl_autotune.h; a few milliseconds
  // per new shape). For warmup at load: Run itself never times, so a request never
  // waits for it, and shapes first seen on a request keep oneDNN's first choice.
  absl::Status Warmup(ExecutionContext* ctx, const std::vector<Tensor>& inputs,
                      std::vector<Tensor>* outputs) const;

 private:
  struct Plan;
  explicit Session(std::unique_ptr<Plan> plan);
  // Compile's work after the import.
  static absl::StatusOr<std::unique_ptr<Session>> CompileGraph(Graph graph,
                                                               const CompileOptions& options);
  static absl::StatusOr<std::unique_ptr<Plan>> BuildPlan(Graph graph,
                                                         int max_batch_size);
  static absl::StatusOr<std::unique_ptr<Plan>> BuildReducedPlan(Graph graph,
                                                                const CompileOptions& options);
  // Run's parts: the inputs checked against inputs(); how many shards to cut the batch
  // into (1: none); one batch on the calling thread's OpenMP team; `shards` row ranges of
  // the batch, one per thread, each on a context of its own (false, with nothing
  // produced, when the outputs cannot be joined along the batch).
  absl::Status CheckInputs(const std::vector<Tensor>& inputs) const;
  int ShardCount(const ExecutionContext& ctx, const std::vector<Tensor>& inputs) const;
  absl::Status RunWhole(ExecutionContext* ctx, const std::vector<Tensor>& inputs,
                        std::vector<Tensor>* outputs) const;
  absl::StatusOr<bool> RunShards(ExecutionContext* ctx, int shards,
                                 const std::vector<Tensor>& inputs,
                                 std::vector<Tensor>* outputs) const;
  // Runs plan nodes [begin, end) on `slots`, releasing values after their last reader;
  // `live_bytes` tracks the live activation bytes.
  absl::Status RunNodes(ExecutionContext* ctx, size_t begin, size_t end,
                        std::vector<Tensor>* slots, int64_t* live_bytes) const;
  std::unique_ptr<Plan> plan_;
};

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_SESSION_H_
