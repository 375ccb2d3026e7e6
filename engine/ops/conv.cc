// Conv and ConvTranspose (1-D, 2-D, 3-D; FP32) on oneDNN convolution_forward and
// deconvolution_forward.
//
// Weights. A constant weight input is kept as the plain ONNX tensor at kernel creation
// and reordered into the layout oneDNN picks for format_tag::any the first time a
// context builds a primitive that asks for that layout. The packed bytes live in the
// kernel (PackedWeights) and are shared by all contexts and all input shapes that map
// to the same layout: packing happens once per layout, not once per context. We cannot
// pack at creation because the layout depends on the primitive, and primitives are
// created on the executing thread (kernel.h). Non-constant weights are passed to oneDNN
// in their plain ONNX layout, which avoids a reorder per call.
//
// Activations are plain (NCW/NCHW/NCDHW) for now: src and dst descriptors come from
// ActivationDesc() below, the one place a layout-aware variant (blocked/NHWC chained
// between layers) has to change, together with the per-shape plan key.
//
// Per-context state caches, per input shape, the primitive and the memory objects it
// runs with; Run() only swaps data handles.
#include <algorithm>
#include <memory>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/layout.h"
#include "engine/ops/impl_autotune.h"
#include "engine/ops/dnnl_util.h"
#include "engine/ops/registry.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

enum class ConvKind { kConv, kTranspose };

// The node's attributes, validated at creation. Geometry that depends on the input
// shape (auto_pad, output_shape) is resolved per shape in BuildPlan.
struct ConvParams {
  ConvKind kind = ConvKind::kConv;
  int64_t group = 1;
  std::vector<int64_t> kernel_shape;              // empty: taken from the weights
  std::vector<int64_t> strides, dilations, pads;  // empty: defaults for the rank
  std::vector<int64_t> output_padding, output_shape;
  AutoPad auto_pad = AutoPad::kNotSet;
  FusedActivation act;
  bool fused_sum = false;  // input 3 is added to the output (sum post-op)
};

// Everything needed to run one input shape.
struct ConvPlan {
  Shape out_shape;
  bool empty = false;  // zero-sized output: nothing to compute
  dnnl::primitive prim;
  dnnl::memory src, weights, bias, dst;
  Tensor weights_owner;  // keeps the packed constant `weights` points into
  bool has_bias = false;
  bool const_weights = false;  // `weights` already holds the packed constant
};

struct ConvState : KernelState {
  ShapeCache<Shape, ConvPlan> plans;
};

// Part of an autotuning key: the fused activation and its bounds.
std::string ActivationKey(const FusedActivation& act) {
  return absl::StrCat(static_cast<int>(act.kind), ":", act.lo, ":", act.hi);
}

// Layout hook: the memory descriptor used for activations of `shape` (channels-last).
dnnl::memory::desc ActivationDesc(const Shape& shape) { return ChannelsLastDesc(shape); }

// Weight dims as oneDNN expects them ([G,] O, I, k...) and the order in which the
// ONNX buffer stores those dims. Conv weights are ONNX [O, I/G, k...]; ConvTranspose
// weights are ONNX [I, O/G, k...].
void WeightLayout(ConvKind kind, const Shape& w, int64_t group, dnnl::memory::dims* dims,
                  std::vector<int>* order) {
  const int sp = static_cast<int>(w.size()) - 2;
  dims->clear();
  order->clear();
  if (kind == ConvKind::kConv) {
    if (group > 1) dims->push_back(group);
    dims->push_back(group > 1 ? w[0] / group : w[0]);
    dims->push_back(w[1]);
  } else {
    if (group > 1) dims->push_back(group);
    dims->push_back(w[1]);                             // O per group
    dims->push_back(group > 1 ? w[0] / group : w[0]);  // I per group
  }
  for (int i = 0; i < sp; ++i) dims->push_back(w[2 + i]);
  const int g = group > 1 ? 1 : 0;
  for (int i = 0; i < g; ++i) order->push_back(i);
  if (kind == ConvKind::kConv) {
    order->push_back(g);
    order->push_back(g + 1);
  } else {  // I is stored before O
    order->push_back(g + 1);
    order->push_back(g);
  }
  for (int i = 0; i < sp; ++i) order->push_back(g + 2 + i);
}

dnnl::memory::desc UserWeightDesc(ConvKind kind, const Shape& w, int64_t group) {
  dnnl::memory::dims dims;
  std::vector<int> order;
  WeightLayout(kind, w, group, &dims, &order);
  return PermutedDesc(dims, order);
}

class ConvKernel : public Kernel {
 public:
  ConvKernel(ConvParams params, const Tensor* const_weights)
      : params_(std::move(params)) {
    if (const_weights != nullptr) {
      packed_ = std::make_unique<PackedWeights>(
          *const_weights,
          UserWeightDesc(params_.kind, const_weights->shape(), params_.group));
      // Only the packed layouts are read at run time (shape and type are kept).
      packed_->release_unpacked_after_first_pack();
    }
  }

  bool owns_constant_input(size_t i) const override { return packed_ && i == 1; }
  int64_t weight_bytes() const override { return packed_ ? packed_->byte_size() : 0; }

  std::unique_ptr<KernelState> NewState() const override {
    return std::make_unique<ConvState>();
  }

  // Activations run channels-last (oneDNN's brgconv kernels read and write NHWC; a
  // plain NCHW src sends it to the 2-4x slower gemm:jit path): a plain input is
  // converted here, and the output stays channels-last for the next layer.
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kAny; }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* w = packed_ ? nullptr : ctx.input(1);
    const Tensor* b = ctx.input(2);
    if (x == nullptr || (w == nullptr && !packed_)) return RunError("missing X or W input");
    Tensor x_cl;
    if (x->layout() != Layout::kChannelsLast && x->rank() >= 3 && x->rank() <= 5) {
      x_cl = ToChannelsLast(*x);
      x = &x_cl;
    }
    for (const Tensor* t : {x, w, b}) {
      if (t != nullptr && t->dtype() != DataType::kFloat32) {
        return RunError("only FP32 is supported, got ", DataTypeName(t->dtype()));
      }
    }
    const Shape& w_shape = packed_ ? packed_->shape() : w->shape();
    auto* state = static_cast<ConvState*>(ctx.state);
    Shape key = x->shape();
    if (!packed_) {  // non-constant weights: their shape selects the plan too
      key.push_back(-1);
      key.insert(key.end(), w_shape.begin(), w_shape.end());
    }
    key.push_back(b != nullptr ? 1 : 0);
    ConvPlan* plan = state->plans.Find(key);
    if (plan == nullptr) {
      QS_ASSIGN_OR_RETURN(auto built, BuildPlan(*x, w_shape, b, ctx.dnnl));
      plan = state->plans.Insert(std::move(key), std::move(built));
    }
    // The plan validated the B it was built with; a later B of another size would be
    // read out of bounds.
    if (b != nullptr && b->num_elements() != plan->out_shape[1]) {
      return RunError("B ", ShapeToString(b->shape()), " must be [", plan->out_shape[1],
                      "]");
    }
    Tensor y;
    if (params_.fused_sum) {
      // The sum post-op accumulates into dst: start it as the other addend.
      const Tensor* r = ctx.input(3);
      if (r == nullptr || r->shape() != plan->out_shape || r->dtype() != DataType::kFloat32) {
        return RunError("fused residual does not match the output ",
                        ShapeToString(plan->out_shape));
      }
      y = AccumulatorFromInput(ctx, 3, Layout::kChannelsLast);
    } else {
      y = Tensor::Uninitialized(DataType::kFloat32, plan->out_shape);
      y.set_layout(Layout::kChannelsLast);
    }
    if (!plan->empty) {
      plan->src.set_data_handle(const_cast<void*>(x->raw_data()));
      plan->dst.set_data_handle(y.raw_data());
      std::unordered_map<int, dnnl::memory> args = {{DNNL_ARG_SRC, plan->src},
                                                    {DNNL_ARG_DST, plan->dst}};
      if (!plan->const_weights) {
        plan->weights.set_data_handle(const_cast<void*>(w->raw_data()));
      }
      args[DNNL_ARG_WEIGHTS] = plan->weights;
      if (plan->has_bias) {
        plan->bias.set_data_handle(const_cast<void*>(b->raw_data()));
        args[DNNL_ARG_BIAS] = plan->bias;
      }
      plan->prim.execute(ctx.dnnl->stream, args);
      ctx.dnnl->stream.wait();
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  // Validates shapes, resolves the geometry and creates the primitive for one shape.
  absl::StatusOr<std::unique_ptr<ConvPlan>> BuildPlan(const Tensor& x, const Shape& w_shape,
                                                      const Tensor* b,
                                                      DnnlResources* dnnl) const {
    const int w_rank = static_cast<int>(w_shape.size());
    const bool transpose = params_.kind == ConvKind::kTranspose;
    const int rank = x.rank();
    const int sp = rank - 2;
    if (rank < 3 || rank > 5) {
      return RunError("X must have rank 3, 4 or 5, got ", ShapeToString(x.shape()));
    }
    if (w_rank != rank) {
      return RunError("W ", ShapeToString(w_shape), " does not match X ",
                      ShapeToString(x.shape()));
    }
    const int64_t g = params_.group;
    const int64_t c = x.dim(1);
    int64_t oc;
    if (!transpose) {
      if (w_shape[1] * g != c || w_shape[0] % g != 0) {
        return RunError("X has ", c, " channels but W ", ShapeToString(w_shape),
                        " with group ", g, " expects ", w_shape[1] * g);
      }
      oc = w_shape[0];
    } else {
      if (w_shape[0] != c || c % g != 0) {
        return RunError("X has ", c, " channels but W ", ShapeToString(w_shape),
                        " with group ", g, " expects ", w_shape[0]);
      }
      oc = w_shape[1] * g;
    }
    if (b != nullptr && (b->rank() != 1 || b->dim(0) != oc)) {
      return RunError("B ", ShapeToString(b->shape()), " must be [", oc, "]");
    }
    std::vector<int64_t> kernel(w_shape.begin() + 2, w_shape.end());
    if (!params_.kernel_shape.empty() && params_.kernel_shape != kernel) {
      return RunError("kernel_shape ", ShapeToString(params_.kernel_shape),
                      " does not match W ", ShapeToString(w_shape));
    }
    auto or_default = [](const std::vector<int64_t>& v, size_t n, int64_t def) {
      return v.empty() ? std::vector<int64_t>(n, def) : v;
    };
    const std::vector<int64_t> strides = or_default(params_.strides, sp, 1);
    const std::vector<int64_t> dilations = or_default(params_.dilations, sp, 1);
    const std::vector<int64_t> pads = or_default(params_.pads, 2 * sp, 0);
    if (static_cast<int>(strides.size()) != sp ||
        static_cast<int>(dilations.size()) != sp ||
        static_cast<int>(pads.size()) != 2 * sp) {
      return RunError("strides/dilations/pads do not match ", sp, " spatial dims");
    }

    auto plan = std::make_unique<ConvPlan>();
    Shape out_shape = {x.dim(0), oc};
    dnnl::memory::dims pad_l(sp), pad_r(sp), dil(sp);
    const std::vector<int64_t> in_sp(x.shape().begin() + 2, x.shape().end());
    if (!transpose) {
      WindowGeometry geo;
      geo.kernel = kernel;
      geo.strides = strides;
      geo.dilations = dilations;
      geo.pads = pads;
      geo.auto_pad = params_.auto_pad;
      std::vector<int64_t> out_sp, pb, pe;
      QS_RETURN_IF_ERROR(geo.Resolve(in_sp, &out_sp, &pb, &pe));
      out_shape.insert(out_shape.end(), out_sp.begin(), out_sp.end());
      for (int i = 0; i < sp; ++i) {
        pad_l[i] = pb[i];
        pad_r[i] = pe[i];
      }
    } else {
      QS_RETURN_IF_ERROR(ResolveTranspose(in_sp, kernel, strides, dilations, pads,
                                          &out_shape, &pad_l, &pad_r));
    }
    for (int i = 0; i < sp; ++i) dil[i] = dilations[i] - 1;
    plan->out_shape = out_shape;
    if (NumElements(out_shape) == 0 || x.num_elements() == 0) {
      // oneDNN rejects some zero-sized problems; an empty output needs no compute. (A
      // non-empty output from an empty input would be bias only: not worth a path.)
      if (NumElements(out_shape) != 0) return RunError("empty input, non-empty output");
      plan->empty = true;
      return plan;
    }

    const dnnl::engine& eng = dnnl->engine;
    const dnnl::memory::desc src_md = ActivationDesc(x.shape());
    const dnnl::memory::desc dst_md = ActivationDesc(out_shape);
    const dnnl::memory::desc user_w_md = UserWeightDesc(params_.kind, w_shape, g);
    const dnnl::memory::desc w_md =
        packed_ ? dnnl::memory::desc(user_w_md.dims(), dnnl::memory::data_type::f32,
                                     dnnl::memory::format_tag::any)
                : user_w_md;
    const dnnl::memory::desc b_md =
        b != nullptr ? PlainDesc(b->shape()) : dnnl::memory::desc();
    const dnnl::memory::dims st(strides.begin(), strides.end());
    dnnl::primitive_attr attr;
    {
      dnnl::post_ops po;
      if (params_.fused_sum) po.append_sum(1.f);
      AppendActivation(params_.act, &po);
      attr.set_post_ops(po);
    }
    const auto prop = dnnl::prop_kind::forward_inference;
    dnnl::memory::desc packed_w_md;
    // A zero bias descriptor (no B input) means "no bias" to oneDNN.
    if (!transpose) {
      const dnnl::convolution_forward::desc desc(prop, dnnl::algorithm::convolution_direct,
                                                 src_md, w_md, b_md, dst_md, st, dil,
                                                 pad_l, pad_r);
      // Constant weights are packed for whichever implementation wins; plain
      // run-time weights keep oneDNN's first choice.
      const dnnl::convolution_forward::primitive_desc pd =
          packed_ ? FastestConvolution(desc, attr, dnnl,
                                       absl::StrCat("conv x", ShapeToString(x.shape()), " w",
                                                    ShapeToString(w_shape), " g", g, " s",
                                                    absl::StrJoin(strides, ","), " d",
                                                    absl::StrJoin(dilations, ","), " p",
                                                    absl::StrJoin(pad_l, ","), "/",
                                                    absl::StrJoin(pad_r, ","), " b",
                                                    b != nullptr, " sum", params_.fused_sum,
                                                    " act", ActivationKey(params_.act)))
                  : dnnl::convolution_forward::primitive_desc(desc, attr, eng);
      packed_w_md = pd.weights_desc();
      plan->prim = dnnl::convolution_forward(pd);
    } else {
      dnnl::deconvolution_forward::primitive_desc pd(
          dnnl::deconvolution_forward::desc(prop, dnnl::algorithm::deconvolution_direct,
                                            src_md, w_md, b_md, dst_md, st, dil, pad_l,
                                            pad_r),
          attr, eng);
      packed_w_md = pd.weights_desc();
      plan->prim = dnnl::deconvolution_forward(pd);
    }
    plan->src = dnnl::memory(src_md, eng, DNNL_MEMORY_NONE);
    plan->dst = dnnl::memory(dst_md, eng, DNNL_MEMORY_NONE);
    if (packed_) {
      plan->weights = packed_->Get(packed_w_md, dnnl, &plan->weights_owner);
      plan->const_weights = true;
    } else {
      plan->weights = dnnl::memory(user_w_md, eng, DNNL_MEMORY_NONE);
    }
    if (b != nullptr) {
      plan->has_bias = true;
      plan->bias = dnnl::memory(b_md, eng, DNNL_MEMORY_NONE);
    }
    return plan;
  }

  // ConvTranspose output extents and oneDNN paddings. ONNX: out = s*(in-1) +
  // output_padding + ext - pad_begin - pad_end; with output_shape (or SAME auto_pad)
  // the pads are derived from the requested output. A negative total (output_shape
  // larger than the full result) leaves the extra rows at the end, which oneDNN
  // expresses as a negative right padding.
  absl::Status ResolveTranspose(const std::vector<int64_t>& in,
                                const std::vector<int64_t>& kernel,
                                const std::vector<int64_t>& strides,
                                const std::vector<int64_t>& dilations,
                                const std::vector<int64_t>& pads, Shape* out_shape,
                                dnnl::memory::dims* pad_l,
                                dnnl::memory::dims* pad_r) const {
    const int sp = static_cast<int>(in.size());
    std::vector<int64_t> out_pad = params_.output_padding.empty()
                                       ? std::vector<int64_t>(sp, 0)
                                       : params_.output_padding;
    if (static_cast<int>(out_pad.size()) != sp) {
      return RunError("output_padding has ", out_pad.size(), " values for ", sp,
                      " spatial dims");
    }
    std::vector<int64_t> requested;
    if (!params_.output_shape.empty()) {
      requested = params_.output_shape;
      // Some exporters give the full N,C,spatial shape.
      if (static_cast<int>(requested.size()) == sp + 2) {
        requested.erase(requested.begin(), requested.begin() + 2);
      }
      if (static_cast<int>(requested.size()) != sp) {
        return RunError("output_shape ", ShapeToString(params_.output_shape),
                        " does not match ", sp, " spatial dims");
      }
    }
    for (int i = 0; i < sp; ++i) {
      const int64_t ext = (kernel[i] - 1) * dilations[i] + 1;
      const int64_t full = strides[i] * (in[i] - 1) + out_pad[i] + ext;
      int64_t out, pb;
      if (!requested.empty() || params_.auto_pad == AutoPad::kSameUpper ||
          params_.auto_pad == AutoPad::kSameLower) {
        out = !requested.empty() ? requested[i] : in[i] * strides[i];
        const int64_t total = std::max<int64_t>(0, full - out);
        // As the ONNX spec and its backend tests: SAME_UPPER puts the odd pad at the
        // end, otherwise at the beginning.
        pb = params_.auto_pad == AutoPad::kSameUpper ? total / 2 : total - total / 2;
      } else if (params_.auto_pad == AutoPad::kValid) {
        out = full;
        pb = 0;
      } else {
        pb = pads[i];
        out = full - pads[i] - pads[i + sp];
      }
      if (out < 0) return RunError("ConvTranspose output dim ", i, " is negative");
      out_shape->push_back(out);
      (*pad_l)[i] = pb;
      // oneDNN: out = s*(in-1) + ext - pl - pr.
      (*pad_r)[i] = strides[i] * (in[i] - 1) + ext - pb - out;
    }
    return absl::OkStatus();
  }

  const ConvParams params_;
  std::unique_ptr<PackedWeights> packed_;
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeConv(const KernelInit& init, ConvKind kind) {
  const Node& node = *init.node;
  if (kind == ConvKind::kConv) {
    QS_RETURN_IF_ERROR(CheckAttributes(
        node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides",
               kFusedActivationAttr, kFusedActivationParamsAttr, kFusedSumAttr}));
  } else {
    QS_RETURN_IF_ERROR(
        CheckAttributes(node, {"auto_pad", "dilations", "group", "kernel_shape",
                               "output_padding", "output_shape", "pads", "strides"}));
  }
  if (node.inputs.size() < 2 || node.inputs[0].empty() || node.inputs[1].empty()) {
    return NodeError(node, "needs inputs X and W");
  }
  ConvParams p;
  p.kind = kind;
  p.group = node.attrs.GetInt("group", 1);
  if (p.group < 1) return NodeError(node, "group must be >= 1, got ", p.group);
  p.kernel_shape = node.attrs.GetInts("kernel_shape");
  p.strides = node.attrs.GetInts("strides");
  p.dilations = node.attrs.GetInts("dilations");
  p.pads = node.attrs.GetInts("pads");
  p.output_padding = node.attrs.GetInts("output_padding");
  p.output_shape = node.attrs.GetInts("output_shape");
  QS_ASSIGN_OR_RETURN(p.auto_pad, ParseAutoPad(node));
  QS_ASSIGN_OR_RETURN(p.act, ParseFusedActivation(node));
  p.fused_sum = node.attrs.GetInt(kFusedSumAttr, 0) != 0;
  for (int64_t v : p.strides) {
    if (v < 1) return NodeError(node, "strides must be >= 1");
  }
  for (int64_t v : p.dilations) {
    if (v < 1) return NodeError(node, "dilations must be >= 1");
  }
  for (int64_t v : p.pads) {
    if (v < 0) return NodeError(node, "negative pads are not supported");
  }
  if (!p.pads.empty() && p.auto_pad != AutoPad::kNotSet) {
    bool all_zero =
        std::all_of(p.pads.begin(), p.pads.end(), [](int64_t v) { return v == 0; });
    if (!all_zero) return NodeError(node, "pads and auto_pad are both set");
  }
  for (int64_t v : p.output_padding) {
    if (v < 0) return NodeError(node, "output_padding must be >= 0");
  }
  const Tensor* w = init.constant(1);
  if (w != nullptr) {
    if (w->dtype() != DataType::kFloat32) {
      return NodeError(node, "only FP32 weights are supported, got ",
                       DataTypeName(w->dtype()));
    }
    if (w->rank() < 3 || w->rank() > 5) {
      return NodeError(node, "W must have rank 3, 4 or 5, got ",
                       ShapeToString(w->shape()));
    }
    // Conv: W is [M, C/group, k...]; ConvTranspose: [C, M/group, k...].
    if (w->dim(0) % p.group != 0) {
      return NodeError(node, "W dim 0 (", w->dim(0), ") is not divisible by group ",
                       p.group);
    }
  }
  return std::unique_ptr<Kernel>(new ConvKernel(std::move(p), w));
}

}  // namespace

void RegisterConvKernels(KernelRegistry* r) {
  // Conv-1 and Conv-11 differ only in schema details the kernel handles identically.
  r->Register(
      "Conv", [](const KernelInit& init) { return MakeConv(init, ConvKind::kConv); }, 1,
      17);
  r->Register(
      "ConvTranspose",
      [](const KernelInit& init) { return MakeConv(init, ConvKind::kTranspose); }, 1, 17);
}

}  // namespace qs
