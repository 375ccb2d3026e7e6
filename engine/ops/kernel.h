// The kernel contract: one Kernel per graph node, created once at compile time.
//
// Ownership and threading: a Kernel is immutable after creation (it may hold packed
// weights) and is shared by every ExecutionContext, so Run() must be const and
// thread-safe. Per-thread mutable state (oneDNN primitives cached per input shape,
// scratch buffers) lives in the KernelState that NewState() returns; one state exists per
// (ExecutionContext, node) and is only used by the thread that owns the context.
// oneDNN objects are created and used on that thread.
//
// Errors: factories return InvalidArgument/Unimplemented naming the node, op and
// attribute; Run returns InvalidArgument for shape errors in the inputs. dnnl::error may
// be thrown from Run: the session catches it at its seam and maps it to Internal.
#ifndef QUANTSERVE_ENGINE_OPS_KERNEL_H_
#define QUANTSERVE_ENGINE_OPS_KERNEL_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "dnnl.hpp"
#include "engine/graph.h"
#include "engine/tensor.h"

namespace qs {

// The oneDNN engine and stream of one execution context (one thread).
struct DnnlResources {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
};

class KernelState {
 public:
  virtual ~KernelState() = default;
};

struct KernelRunContext {
  // Inputs in node order; nullptr for an omitted optional input.
  absl::Span<const Tensor* const> inputs;
  // Sized to the node's output count; the kernel assigns each present output.
  std::vector<Tensor>* outputs = nullptr;
  KernelState* state = nullptr;  // from NewState(), may be nullptr
  DnnlResources* dnnl = nullptr;

  // Per input, the session's own handle when this node is the value's last reader and
  // nothing else holds its buffer; nullptr otherwise. A kernel may move from it to
  // reuse the buffer (e.g. accumulate its output in place); inputs[i] then points at an
  // empty tensor. May be empty (no input donated).
  absl::Span<Tensor* const> donated;

  const Tensor* input(size_t i) const {
    return i < inputs.size() ? inputs[i] : nullptr;
  }
  // Takes over input i's buffer when it is donated; an undefined tensor otherwise.
  Tensor TakeInput(size_t i) const {
    if (i >= donated.size() || donated[i] == nullptr) return Tensor();
    Tensor t = std::move(*donated[i]);
    *donated[i] = Tensor();  // a moved-from Tensor keeps its dtype and data pointer
    return t;
  }
  size_t num_inputs() const { return inputs.size(); }
};

// Which memory orders a kernel's inputs may have (see Layout in tensor.h).
enum class LayoutPolicy {
  // Inputs are always plain; the session converts channels-last inputs first.
  kPlainOnly,
  // Element-wise: when every input of rank >= 3 has the same shape and layout (scalars
  // aside), they are passed as they are and the outputs take that layout; otherwise
  // the session converts them to plain.
  kElementwise,
  // The kernel handles either order and tags its outputs itself.
  kAny,
};

class Kernel {
 public:
  virtual ~Kernel() = default;
  virtual LayoutPolicy layout_policy() const { return LayoutPolicy::kPlainOnly; }
  // Bytes of weights the kernel holds itself in a form the plan's constants do not
  // (quantized or converted copies), for the plan's weight accounting.
  virtual int64_t weight_bytes() const { return 0; }
  // True when the kernel took what it needs of constant input `i` at creation (packed
  // weights) and never reads it from the run context: the plan then drops its own
  // reference, so the unpacked copy is freed once packed.
  virtual bool owns_constant_input(size_t /*i*/) const { return false; }
  virtual std::unique_ptr<KernelState> NewState() const { return nullptr; }
  virtual absl::Status Run(KernelRunContext& ctx) const = 0;
};

// What a factory sees when it builds a kernel for a node.
struct KernelInit {
  const Node* node = nullptr;
  int64_t opset = 0;
  // Per input: the constant value when the input is an initializer or folded constant,
  // else nullptr. Kernels may pre-pack constant weights from these.
  std::vector<const Tensor*> constants;
  // Per input: shape information from ONNX shape inference when known (may be null).
  std::vector<const ValueInfo*> input_infos;

  const Tensor* constant(size_t i) const {
    return i < constants.size() ? constants[i] : nullptr;
  }
};

using KernelFactory =
    std::function<absl::StatusOr<std::unique_ptr<Kernel>>(const KernelInit&)>;

// Helper for factories: InvalidArgument "node 'n' (Op): <msg>".
template <typename... Args>
absl::Status NodeError(const Node& node, const Args&... args) {
  return absl::InvalidArgumentError(
      absl::StrCat("node '", node.name, "' (", node.op_type, "): ", args...));
}

// Helper for Run(): InvalidArgument for bad run-time inputs.
template <typename... Args>
absl::Status RunError(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_OPS_KERNEL_H_
