// Helpers shared by the kernels that run on oneDNN (conv, matmul, pool, softmax) and
// small attribute-parsing utilities shared by all ops files.
//
// Conventions: engine tensors are dense row-major ("plain") buffers, so a plain memory
// descriptor is format_tag a/ab/abc/... by rank. oneDNN memory objects created here wrap
// tensor buffers without copying; they are per-thread objects (see kernel.h).
#ifndef QUANTSERVE_ENGINE_OPS_DNNL_UTIL_H_
#define QUANTSERVE_ENGINE_OPS_DNNL_UTIL_H_

#include <cstdint>
#include <initializer_list>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "dnnl.hpp"
#include "engine/graph.h"
#include "engine/ops/kernel.h"
#include "engine/tensor.h"

namespace qs {

// ---- attributes -------------------------------------------------------------------

// The engine-internal attribute the fusion pass sets on a Conv to fold the activation
// that follows it: "Relu", "Clip" (bounds in kFusedActivationParamsAttr = [min, max]) or
// "Gelu" (erf form; MatMul only).
inline constexpr char kFusedActivationAttr[] = "qs_fused_activation";
inline constexpr char kFusedActivationParamsAttr[] = "qs_fused_activation_params";
// Set by FuseConvAdd: input 3 of the Conv is added to its output (before the fused
// activation).
inline constexpr char kFusedSumAttr[] = "qs_fused_sum";
// Set by FuseMatMulPostOps: the MatMul's output is multiplied by this scalar.
inline constexpr char kMatMulScaleAttr[] = "qs_scale";
// Set by FoldTransposeIntoMatMul: MatMul input 0 / 1 is read as Transpose(input, perm).
inline constexpr char kPermAAttr[] = "qs_perm_a";
inline constexpr char kPermBAttr[] = "qs_perm_b";

// InvalidArgument naming the first attribute of `node` that is not in `allowed`, so a
// model using a feature we do not implement fails at compile time instead of computing
// something else.
absl::Status CheckAttributes(const Node& node,
                             std::initializer_list<absl::string_view> allowed);

// Normalizes axis `axis` of a rank-`rank` tensor into [0, rank); InvalidArgument when
// out of range.
absl::StatusOr<int> NormalizeAxis(int64_t axis, int rank);

// ---- fused sums ---------------------------------------------------------------------

// The buffer a fused sum post-op accumulates into, starting as input `i` (same dtype):
// that input's own buffer when the session donated it and it already has `layout` (or
// its shape makes the layout immaterial), otherwise a copy in `layout`. Tagged `layout`.
Tensor AccumulatorFromInput(KernelRunContext& ctx, size_t i, Layout layout);

// ---- fused activations (post-ops) --------------------------------------------------

struct FusedActivation {
  enum class Kind { kNone, kRelu, kClip, kGelu };  // kGelu: erf form (kGeluOp)
  Kind kind = Kind::kNone;
  float lo = 0.f;  // kClip bounds
  float hi = 0.f;

  bool none() const { return kind == Kind::kNone; }
};

// Reads kFusedActivationAttr (and its params) from `node`; InvalidArgument for an
// unknown value.
absl::StatusOr<FusedActivation> ParseFusedActivation(const Node& node);

// Appends `act` to `ops` as an eltwise post-op (no-op for kNone).
void AppendActivation(const FusedActivation& act, dnnl::post_ops* ops);

// A primitive_attr with `act` as its only post-op.
dnnl::primitive_attr MakeActivationAttr(const FusedActivation& act);

// The CPU computes bf16 dot products natively (oneDNN's avx512_core_bf16 or newer);
// elsewhere oneDNN emulates bf16 at a speed no better than FP32.
bool HasNativeBf16();

// ---- memory descriptors -------------------------------------------------------------

dnnl::memory::dims ToDnnlDims(absl::Span<const int64_t> shape);

// a, ab, abc, ... for ranks 1..12 (format_tag::undef otherwise).
dnnl::memory::format_tag PlainFormatTag(int rank);

// Row-major descriptor of `shape`. A rank-0 shape is described as [1].
dnnl::memory::desc PlainDesc(absl::Span<const int64_t> shape,
                             dnnl::memory::data_type dt = dnnl::memory::data_type::f32);

// Descriptor of a tensor in its own layout: plain, or channels-last (nwc/nhwc/ndhwc).
dnnl::memory::desc ActivationDescOf(const Tensor& t,
                                    dnnl::memory::data_type dt = dnnl::memory::data_type::f32);
dnnl::memory::desc ChannelsLastDesc(absl::Span<const int64_t> shape,
                                    dnnl::memory::data_type dt = dnnl::memory::data_type::f32);

// A descriptor for `dims` whose elements are laid out in the row-major order of the
// permuted dims: `order[i]` is the logical dim stored at position i (outermost first).
// E.g. dims {O, I} with order {1, 0} describes an [I, O] row-major buffer.
dnnl::memory::desc PermutedDesc(
    const dnnl::memory::dims& dims, absl::Span<const int> order,
    dnnl::memory::data_type dt = dnnl::memory::data_type::f32);

// Wraps a tensor's buffer (no copy). oneDNN takes a non-const handle; kernels only
// read input buffers through it.
dnnl::memory WrapTensor(const dnnl::memory::desc& md, const Tensor& t,
                        const dnnl::engine& engine);

// ---- weights packed once --------------------------------------------------------------

// Constant weights reordered into the layouts oneDNN picks (format_tag::any), shared by
// every execution context of a kernel: the packed bytes are stored once per layout, and
// each context wraps them in its own dnnl::memory (memory objects are bound to the
// context's engine). Packing runs on the calling thread with its stream, on first use
// of a layout; thread-safe.
class PackedWeights {
 public:
  // `weights` is the constant in its ONNX layout, described by `user_md`.
  PackedWeights(Tensor weights, dnnl::memory::desc user_md)
      : weights_(std::move(weights)), user_md_(std::move(user_md)),
        bytes_(static_cast<int64_t>(weights_.byte_size())),
        shape_(weights_.shape()), dtype_(weights_.dtype()) {}

  // After the first packing, drop the unpacked copy (later layouts are reordered from a
  // packed one, through a temporary user-layout copy when compensation is involved).
  // For kernels that never read tensor() at run time: halves the weight memory of
  // quantized models.
  void release_unpacked_after_first_pack() { release_unpacked_ = true; }
  // Bytes of the weights in their user layout (valid after the release too).
  int64_t byte_size() const { return bytes_; }

  // The unpacked constant; undefined once released. Kernels that release it read the
  // weights' shape and type from shape()/dtype(), which stay valid.
  const Tensor& tensor() const { return weights_; }
  const Shape& shape() const { return shape_; }
  DataType dtype() const { return dtype_; }
  const dnnl::memory::desc& user_desc() const { return user_md_; }

  // Memory holding the weights in layout `packed_md`, packing them if no plan holds this
  // layout now. Returns the unpacked constant itself when the layouts match. `*owner`
  // receives a reference to the bytes: the caller keeps it as long as it uses the
  // memory. Every packed-layout request drops the layouts nobody else holds any more
  // (plans that went: the precision report's first-choice kernels, a shape cache's
  // evictions); the one requested, and one source for later reorders, always stay.
  // Fails (dnnl::error) when oneDNN cannot reorder into `packed_md`.
  dnnl::memory Get(const dnnl::memory::desc& packed_md, DnnlResources* dnnl,
                   Tensor* owner) const;
  // Bytes held in packed layouts (for tests and accounting).
  int64_t packed_bytes() const;

 private:
  struct Entry {
    dnnl::memory::desc md;
    Tensor buffer;  // owns the packed bytes (64-byte aligned)
  };
  // Erases the entries whose buffer only packed_ holds. Called with mu_ held, once the
  // entry being handed out is held by its caller.
  void DropUnheldLocked() const;
  mutable Tensor weights_;  // guarded by mu_ once packing starts
  dnnl::memory::desc user_md_;
  int64_t bytes_ = 0;
  Shape shape_;
  DataType dtype_;
  bool release_unpacked_ = false;
  mutable bool wrapped_ = false;  // guarded by mu_
  mutable std::mutex mu_;
  mutable std::vector<Entry> packed_;  // guarded by mu_; a handful of layouts at most
};

// Per-shape cache of built primitives, kept in a KernelState. Bounded: when a model
// sees many distinct shapes (dynamic sizes), the cache is cleared rather than growing
// without limit; rebuilding is cheap compared to holding thousands of primitives.
template <typename Key, typename Value>
class ShapeCache {
 public:
  static constexpr size_t kMaxEntries = 64;
  Value* Find(const Key& key) {
    for (auto& e : entries_) {
      if (e.first == key) return e.second.get();
    }
    return nullptr;
  }
  Value* Insert(Key key, std::unique_ptr<Value> value) {
    if (entries_.size() >= kMaxEntries) entries_.clear();
    entries_.emplace_back(std::move(key), std::move(value));
    return entries_.back().second.get();
  }

 private:
  // Linear scan: a context sees one or a few shapes per node, fewer than a hash costs.
  std::vector<std::pair<Key, std::unique_ptr<Value>>> entries_;
};

// ---- spatial geometry (conv / pool) ---------------------------------------------------

enum class AutoPad { kNotSet, kSameUpper, kSameLower, kValid };

// Parses "auto_pad"; InvalidArgument for an unknown value.
absl::StatusOr<AutoPad> ParseAutoPad(const Node& node);

// The sliding-window attributes shared by Conv and the pooling ops, in ONNX terms
// (dilation 1 = dense; pads = [begin_0.., end_0..]).
struct WindowGeometry {
  std::vector<int64_t> kernel;
  std::vector<int64_t> strides;
  std::vector<int64_t> dilations;
  std::vector<int64_t> pads;
  AutoPad auto_pad = AutoPad::kNotSet;
  bool ceil_mode = false;

  int num_spatial() const { return static_cast<int>(kernel.size()); }

  // Output extents for input spatial extents `in` and the pads actually applied.
  // With ceil_mode the last window may run past the end padding; `pad_end` then
  // includes that overhang (so out = (in + pb + pe - ext) / stride + 1 exactly).
  // InvalidArgument when the window does not fit.
  absl::Status Resolve(absl::Span<const int64_t> in, std::vector<int64_t>* out,
                       std::vector<int64_t>* pad_begin,
                       std::vector<int64_t>* pad_end) const;
};

// Reads strides/dilations/pads/auto_pad (and ceil_mode when `allow_ceil_mode`) for a
// window of size `kernel`, validating their lengths and values.
absl::StatusOr<WindowGeometry> ParseWindowGeometry(const Node& node,
                                                   std::vector<int64_t> kernel,
                                                   bool allow_ceil_mode);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_OPS_DNNL_UTIL_H_
