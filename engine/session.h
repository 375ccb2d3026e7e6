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
// calling thread's omp_get_max_threads()).
#ifndef QUANTSERVE_ENGINE_SESSION_H_
#define QUANTSERVE_ENGINE_SESSION_H_

#include <cstdint>
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

struct CompileOptions {
  Precision precision = Precision::kFP32;
  // >0: inputs' leading dimension is a batch dimension of at most this size.
  int max_batch_size = 0;
};

struct PlanStats {
  int64_t num_nodes = 0;           // kernels in the plan after optimization
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
  // When on, Run() records per-node wall time (see profile()).
  void set_profiling(bool on) { profiling_ = on; }
  const std::vector<NodeProfile>& profile() const { return profile_; }
  int64_t peak_activation_bytes() const { return peak_activation_bytes_; }

 private:
  friend class Session;
  struct Impl;
  explicit ExecutionContext(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  bool profiling_ = false;
  std::vector<NodeProfile> profile_;
  int64_t peak_activation_bytes_ = 0;
};

class Session {
 public:
  // Imports, optimizes and plans `model` (already checked by LoadOnnxModel or
  // ParseOnnxModel). Errors: Unimplemented for an unsupported op (naming op, node and
  // opset), InvalidArgument for a malformed graph, Internal for a oneDNN failure.
  static absl::StatusOr<std::unique_ptr<Session>> Compile(
      const onnx::ModelProto& model, const CompileOptions& options);
  ~Session();

  const std::vector<ValueInfo>& inputs() const;
  const std::vector<ValueInfo>& outputs() const;
  PlanStats stats() const;

  std::unique_ptr<ExecutionContext> NewContext() const;

  // Runs one batch. `inputs` are in inputs() order with matching dtypes and shapes
  // compatible with the declared ones. `outputs` receives outputs() in order.
  // Errors: InvalidArgument for mismatched inputs, Internal for a kernel failure.
  absl::Status Run(ExecutionContext* ctx, const std::vector<Tensor>& inputs,
                   std::vector<Tensor>* outputs) const;

 private:
  struct Plan;
  explicit Session(std::unique_ptr<Plan> plan);
  static absl::StatusOr<std::unique_ptr<Plan>> BuildPlan(Graph graph,
                                                         int max_batch_size);
  std::unique_ptr<Plan> plan_;
};

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_SESSION_H_
