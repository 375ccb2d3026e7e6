// Conv (2-D) and MatMul/Gemm with constant weights at reduced precision, selected by the
// quantization pass (engine/passes/assign_precision.cc) through the node attribute
// kPrecisionAttr:
//
//  "dynamic": DYNAMIC_RANGE. Weights s8, symmetric per output channel, quantized once
//     at creation. Activations u8 per batch: a vectorized min/max gives scale and zero
//     point, our own loop quantizes. The primitive has static per-channel output scales
//     (the weight scales), a run-time src zero point and a binary-mul post-op carrying
//     the activation scale: oneDNN 2.6 keeps that on the brgemm VNNI kernels, whereas
//     run-time output scales would drop it to gemm:jit (2-3x slower). Bias and the fused
//     activation follow as post-ops; the output is f32 (dequantization fused).
//  "static": INT8. As above, but the activation range comes from calibration
//     (kActMinAttr/kActMaxAttr), so scale and zero point are folded into the primitive
//     at creation: output scales = w_scale * act_scale, static zero point. The bias is
//     the primitive's own argument (see BiasArgument).
//  "bf16": BF16. Weights packed as bf16 once; activations converted to bf16 by a
//     oneDNN reorder; f32 accumulation and output (native avx512_bf16 dot products);
//     the bias is the primitive's own argument.
//
// Inputs and outputs are f32, so these kernels drop in anywhere an FP32 one would,
// except inside the chains assign_precision.cc sets up: a static conv then reads u8 or
// bf16 (a BF16 image stem's output) and may write u8 (kOutMinAttr/kOutMaxAttr), and a
// BF16 conv may read and write bf16 (kOutBf16Attr).
// Per-context state caches the primitive and memory objects per input shape; packed
// weights are shared by all contexts (PackedWeights).
#include <algorithm>
#include <cmath>
#include <memory>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/buffer_pool.h"
#include "engine/layout.h"
#include "engine/ops/dnnl_util.h"
#include "engine/ops/impl_autotune.h"
#include "engine/ops/reduced_precision.h"
#include "engine/ops/registry.h"
#include "engine/quantize/quant_math.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

using dnnl::memory;
using dt = dnnl::memory::data_type;

enum class Mode { kDynamic, kStatic, kBf16 };

absl::StatusOr<Mode> ParseMode(const Node& node) {
  const std::string p = node.attrs.GetString(kPrecisionAttr, "");
  if (p == kPrecisionDynamic) return Mode::kDynamic;
  if (p == kPrecisionStatic) return Mode::kStatic;
  if (p == kPrecisionBf16) return Mode::kBf16;
  return NodeError(node, "unknown precision '", p, "'");
}

// Everything the kernels share: mode, activation parameters, fused activation, bias.
struct Common {
  Mode mode = Mode::kDynamic;
  QuantParams act;  // static mode only
  FusedActivation fused;
  bool fused_sum = false;  // conv: input 3 is added to the output before `fused`
  Tensor bias;  // f32 [channels] or undefined
  // Static conv whose consumers are all static-INT8 convs: the output is written as u8
  // in their input quantization (kOutMinAttr/kOutMaxAttr), so they skip quantizing.
  bool u8_out = false;
  QuantParams out;
  bool bf16_out = false;  // BF16 conv whose consumers all take bf16
  // Static conv with a fused residual: the residual's u8 quantization, when its
  // producer writes it as u8 (kResMinAttr/kResMaxAttr).
  bool res_u8 = false;
  QuantParams res;
};

absl::StatusOr<Common> ParseCommon(const Node& node) {
  Common c;
  QS_ASSIGN_OR_RETURN(c.mode, ParseMode(node));
  QS_ASSIGN_OR_RETURN(c.fused, ParseFusedActivation(node));
  c.fused_sum = node.attrs.GetInt(kFusedSumAttr, 0) != 0;
  c.bf16_out = c.mode == Mode::kBf16 && node.attrs.GetInt(kOutBf16Attr, 0) != 0;
  if (c.mode == Mode::kStatic) {
    if (!node.attrs.Has(kActMinAttr) || !node.attrs.Has(kActMaxAttr)) {
      return NodeError(node, "static INT8 needs a calibrated activation range");
    }
    c.act = ComputeU8Params(node.attrs.GetFloat(kActMinAttr, 0.f),
                            node.attrs.GetFloat(kActMaxAttr, 0.f));
    if (c.fused_sum && node.attrs.Has(kResMinAttr) && node.attrs.Has(kResMaxAttr)) {
      c.res_u8 = true;
      c.res = ComputeU8Params(node.attrs.GetFloat(kResMinAttr, 0.f),
                              node.attrs.GetFloat(kResMaxAttr, 0.f));
    }
    if (node.attrs.Has(kOutMinAttr) && node.attrs.Has(kOutMaxAttr)) {
      c.u8_out = true;
      c.out = ComputeU8Params(node.attrs.GetFloat(kOutMinAttr, 0.f),
                              node.attrs.GetFloat(kOutMaxAttr, 0.f));
      // Post-ops run after the output scale, i.e. in units of the u8 output.
      if (c.fused.kind == FusedActivation::Kind::kClip) {
        c.fused.lo /= c.out.scale;
        c.fused.hi /= c.out.scale;
      }
    }
  }
  return c;
}

// Per-shape objects of one primitive.
struct Plan {
  Shape out_shape;
  dnnl::primitive prim;
  memory src, weights, dst, zero_point, act_scale, bias;
  Tensor weights_owner;  // keeps the packed constant `weights` points into
  int bias_post_op = -1;  // index of the bias binary_add post-op, -1 when none
  bool bias_arg = false;  // the bias is the primitive's own DNNL_ARG_BIAS
  int scale_post_op = -1;
  // bf16 only: the src conversion.
  dnnl::reorder to_bf16;
  memory src_f32;
};

struct State : KernelState {
  ShapeCache<Shape, Plan> plans;
  Tensor scratch;  // the thread's scratch (u8 or bf16 activations) during one Run
};

// Builds the attr shared by conv and matmul: output scales over `scale_mask`, the
// src zero point, and the post-ops chain (act scale, bias, activation). `rank` is the
// dst rank; the per-channel axis is 1.
// `residual_u8`: a fused residual arrives as u8 (conv with c.fused_sum only).
// `bias_arg`: the bias goes to the primitive's own bias argument instead of a post-op.
dnnl::primitive_attr MakeAttr(const Common& c, const std::vector<float>& w_scales,
                              int64_t channels, int rank, bool residual_u8, bool bias_arg,
                              Plan* plan) {
  dnnl::primitive_attr attr;
  dnnl::post_ops po;
  int index = 0;
  if (c.mode == Mode::kBf16) {
    // no scales
  } else if (c.mode == Mode::kStatic) {
    std::vector<float> scales(w_scales);
    const float out_scale = c.u8_out ? c.out.scale : 1.f;
    for (float& s : scales) s *= c.act.scale / out_scale;
    attr.set_output_scales(1 << 1, scales);
    attr.set_zero_points(DNNL_ARG_SRC, 0, {c.act.zero_point});
    if (c.u8_out) attr.set_zero_points(DNNL_ARG_DST, 0, {c.out.zero_point});
  } else {
    attr.set_output_scales(1 << 1, w_scales);
    attr.set_zero_points(DNNL_ARG_SRC, 0, {DNNL_RUNTIME_S32_VAL});
    memory::dims one(rank, 1);
    po.append_binary(dnnl::algorithm::binary_mul, memory::desc(one, dt::f32, PlainFormatTag(rank)));
    plan->scale_post_op = index++;
  }
  if (c.bias.defined() && !bias_arg) {
    memory::dims bdims(rank, 1);
    bdims[1] = channels;
    po.append_binary(dnnl::algorithm::binary_add,
                     memory::desc(bdims, dt::f32, PlainFormatTag(rank)));
    plan->bias_post_op = index++;
  }
  if (c.fused_sum) {
    // dst starts as the residual in dst's own type (see ReducedConvKernel::Run). A u8
    // residual in a u8 dst keeps its own quantization: the sum rescales it.
    if (c.u8_out && residual_u8) {
      po.append_sum(c.res.scale / c.out.scale, c.res.zero_point);
    } else if (c.u8_out) {
      po.append_sum(1.f, c.out.zero_point);
    } else {
      po.append_sum(1.f);
    }
  }
  AppendActivation(c.fused, &po);
  attr.set_post_ops(po);
  return attr;
}

// One byte buffer of at least `bytes` per thread, shared by every reduced-precision
// kernel that thread runs: a kernel only needs it during its own Run, and a buffer per
// kernel (or per plan) would hold the whole network's activations once more in u8 or
// bf16 (ResNet-50 INT8 at batch 8: ~50 MB per context; MobileNetV2 BF16: 13 MB).
Tensor ThreadScratch(int64_t bytes) {
  thread_local Tensor shared_scratch;
  if (!shared_scratch.defined() || shared_scratch.num_elements() < bytes) {
    BufferPool::Scope no_pool(nullptr);  // lives with the thread, not with one context
    shared_scratch = Tensor::Uninitialized(DataType::kUInt8, {std::max<int64_t>(bytes, 1)});
  }
  return shared_scratch;
}

// Quantizes `x` (f32, or bf16 for static INT8) into the thread's scratch buffer as u8,
// or for BF16 provides that buffer for Execute's conversion (chained u8 and bf16 inputs
// pass through), and returns the dynamic parameters (unused in the other modes).
QuantParams PrepareSource(const Common& c, const Tensor& x, State* state) {
  const int64_t n = x.num_elements();
  QuantParams p = c.act;
  if (x.dtype() == DataType::kUInt8) return p;  // chained
  if (c.mode == Mode::kBf16) {
    if (x.dtype() != DataType::kBFloat16) state->scratch = ThreadScratch(2 * n);
    return p;
  }
  state->scratch = ThreadScratch(n);
  if (c.mode == Mode::kDynamic) {
    float lo, hi;
    MinMax(x.data<float>(), n, &lo, &hi);
    p = ComputeU8Params(lo, hi);
  }
  if (x.dtype() == DataType::kBFloat16) {  // static only (see ReducedConvKernel::Run)
    QuantizeBf16ToU8(x.data<uint16_t>(), n, p.scale, p.zero_point,
                     state->scratch.data<uint8_t>());
  } else {
    QuantizeU8(x.data<float>(), n, p.scale, p.zero_point, state->scratch.data<uint8_t>());
  }
  return p;
}

void Execute(const Common& c, Plan* plan, const Tensor& x, const QuantParams& p,
             State* state, Tensor* y, DnnlResources* dnnl) {
  std::unordered_map<int, memory> args;
  if (c.mode == Mode::kBf16 && x.dtype() == DataType::kBFloat16) {
    plan->src.set_data_handle(const_cast<void*>(x.raw_data()));  // chained: already bf16
  } else if (c.mode == Mode::kBf16) {
    plan->src_f32.set_data_handle(const_cast<void*>(x.raw_data()));
    plan->src.set_data_handle(state->scratch.raw_data());
    plan->to_bf16.execute(dnnl->stream, plan->src_f32, plan->src);
  } else if (x.dtype() == DataType::kUInt8) {
    plan->src.set_data_handle(const_cast<void*>(x.raw_data()));
  } else {
    plan->src.set_data_handle(state->scratch.raw_data());
  }
  plan->dst.set_data_handle(y->raw_data());
  args[DNNL_ARG_SRC] = plan->src;
  args[DNNL_ARG_WEIGHTS] = plan->weights;
  args[DNNL_ARG_DST] = plan->dst;
  if (c.mode == Mode::kDynamic) {
    *static_cast<int32_t*>(plan->zero_point.get_data_handle()) = p.zero_point;
    *static_cast<float*>(plan->act_scale.get_data_handle()) = p.scale;
    args[DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC] = plan->zero_point;
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(plan->scale_post_op) | DNNL_ARG_SRC_1] =
        plan->act_scale;
  }
  if (plan->bias_post_op >= 0) {
    args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(plan->bias_post_op) | DNNL_ARG_SRC_1] = plan->bias;
  } else if (plan->bias_arg) {
    args[DNNL_ARG_BIAS] = plan->bias;
  }
  plan->prim.execute(dnnl->stream, args);
  dnnl->stream.wait();
  // The thread's scratch may grow for a later kernel: holding it here would keep the
  // smaller buffer alive.
  state->scratch = Tensor();
}

// Memory objects a plan owns outright (zero point and scale scalars, the bias post-op's
// view; a bias argument's view is made in Build).
void MakeScalars(const Common& c, int rank, int64_t channels, const dnnl::engine& eng,
                 Plan* plan) {
  if (c.mode == Mode::kDynamic) {
    plan->zero_point = memory({{1}, dt::s32, memory::format_tag::a}, eng);
    memory::dims one(rank, 1);
    plan->act_scale = memory({one, dt::f32, PlainFormatTag(rank)}, eng);
  }
  if (c.bias.defined()) {
    memory::dims bdims(rank, 1);
    bdims[1] = channels;
    plan->bias = memory({bdims, dt::f32, PlainFormatTag(rank)}, eng,
                        const_cast<void*>(c.bias.raw_data()));
  }
}

// The bias in the form a conv primitive's own bias argument takes, or an undefined
// tensor when it has to stay a binary_add post-op. oneDNN 2.6 adds that argument to
// the s32 accumulator before the output scales (y = oscale * (acc + b)), whereas
// c.bias is in the units after them, so static INT8 divides by the per-channel output
// scale; BF16 has no scales. The argument is the faster path: the binary post-op cost
// 3-8 % on ResNet-50's 1x1 INT8 convs (docs/performance.md, session 4). DYNAMIC_RANGE
// keeps the post-op: its activation scale, known only at run time, comes before it.
// `c.bias` is the model's own (f32 output units); a u8 output rescales the whole sum by
// 1 / out_scale, which the output scales carry.
Tensor BiasArgument(const Common& c, const std::vector<float>& w_scales) {
  if (!c.bias.defined() || c.mode == Mode::kDynamic) return Tensor();
  if (c.mode == Mode::kBf16) return c.bias;
  Tensor b = c.bias.Clone();
  float* v = b.data<float>();
  for (int64_t i = 0; i < b.num_elements(); ++i) {
    v[i] /= w_scales[i] * c.act.scale;
    if (!std::isfinite(v[i])) return Tensor();  // tiny scales: keep the exact post-op
  }
  return b;
}

// The bias for the binary_add post-op, which runs after the output scales: in units of
// the u8 output when there is one.
Tensor BiasPostOp(const Common& c) {
  if (!c.bias.defined() || !c.u8_out) return c.bias;
  Tensor b = c.bias.Clone();
  for (int64_t i = 0; i < b.num_elements(); ++i) b.data<float>()[i] /= c.out.scale;
  return b;
}

// Holds the model's bias once, in the form it is used in: returns BiasArgument (and
// clears c->bias), or leaves c->bias as the post-op's operand and returns undefined.
Tensor TakeBiasArgument(Common* c, const std::vector<float>& w_scales) {
  Tensor arg = BiasArgument(*c, w_scales);
  c->bias = arg.defined() ? Tensor() : BiasPostOp(*c);
  return arg;
}

// ------------------------------------------------------------------ Conv ----------

class ReducedConvKernel : public Kernel {
 public:
  ReducedConvKernel(Common c, WindowGeometry geo, int64_t group, const Tensor& w)
      : c_(std::move(c)), geo_(std::move(geo)), group_(group), w_shape_(w.shape()) {
    const int64_t o = w.dim(0);
    memory::dims dims;
    if (group_ > 1) dims = {group_, o / group_, w.dim(1), w.dim(2), w.dim(3)};
    else dims = {o, w.dim(1), w.dim(2), w.dim(3)};
    const auto tag = group_ > 1 ? memory::format_tag::goihw : memory::format_tag::oihw;
    if (c_.mode == Mode::kBf16) {
      Tensor wb = Tensor::Uninitialized(DataType::kBFloat16, w.shape());
      for (int64_t i = 0; i < w.num_elements(); ++i)
        wb.data<uint16_t>()[i] = FloatToBFloat16(w.data<float>()[i]);
      packed_ = std::make_unique<PackedWeights>(wb, memory::desc(dims, dt::bf16, tag));
    } else {
      QuantizedWeights q = QuantizeWeightsPerChannel(w, o);
      scales_ = std::move(q.scales);
      packed_ = std::make_unique<PackedWeights>(q.values, memory::desc(dims, dt::s8, tag));
    }
    packed_->release_unpacked_after_first_pack();
    bias_arg_ = TakeBiasArgument(&c_, scales_);
  }

  LayoutPolicy layout_policy() const override { return LayoutPolicy::kAny; }
  std::unique_ptr<KernelState> NewState() const override { return std::make_unique<State>(); }
  int64_t weight_bytes() const override {
    return static_cast<int64_t>(packed_->byte_size() + scales_.size() * 4 +
                                (c_.bias.defined() ? c_.bias.byte_size() : 0) +
                                (bias_arg_.defined() ? bias_arg_.byte_size() : 0));
  }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* xin = ctx.input(0);
    // (A 1x1-spatial u8 tensor may be tagged plain: the bytes are the same.)
    const bool chained = xin != nullptr && xin->dtype() == DataType::kUInt8 &&
                         c_.mode == Mode::kStatic &&
                         (xin->layout() == Layout::kChannelsLast || LayoutIsTrivial(xin->shape()));
    // bf16 input: a BF16 chain, or (static INT8) a BF16 image stem's output, quantized
    // from bf16 here.
    const bool chained_bf16 = xin != nullptr && xin->dtype() == DataType::kBFloat16 &&
                              (c_.mode == Mode::kBf16 || c_.mode == Mode::kStatic) &&
                              (xin->layout() == Layout::kChannelsLast ||
                               LayoutIsTrivial(xin->shape()));
    if (xin == nullptr ||
        (xin->dtype() != DataType::kFloat32 && !chained && !chained_bf16) ||
        xin->rank() != 4) {
      return RunError("expected an FP32 (or chained u8/bf16) rank-4 input");
    }
    if (xin->dim(1) != w_shape_[1] * group_) {
      return RunError("X has ", xin->dim(1), " channels, W expects ", w_shape_[1] * group_);
    }
    const Tensor x = ToChannelsLast(*xin);
    auto* state = static_cast<State*>(ctx.state);
    const Tensor* r = c_.fused_sum ? ctx.input(3) : nullptr;
    const bool residual_u8 = r != nullptr && r->dtype() == DataType::kUInt8;
    if (c_.fused_sum &&
        (r == nullptr ||
         !(r->dtype() == DataType::kFloat32 || (residual_u8 && c_.res_u8) ||
           (r->dtype() == DataType::kBFloat16 && c_.mode != Mode::kDynamic)))) {
      return RunError("fused residual must be FP32", c_.res_u8 ? ", u8" : "",
                      c_.mode != Mode::kDynamic ? " or BF16" : "");
    }
    Shape key = x.shape();
    key.push_back(static_cast<int64_t>(x.dtype()));
    key.push_back(residual_u8 ? 1 : 0);
    Plan* plan = state->plans.Find(key);
    if (plan == nullptr) {
      QS_ASSIGN_OR_RETURN(auto built, Build(x.shape(), residual_u8, ctx.dnnl));
      plan = state->plans.Insert(std::move(key), std::move(built));
    }
    const QuantParams p = PrepareSource(c_, x, state);
    Tensor y;
    if (c_.fused_sum) {
      if (r->shape() != plan->out_shape) {
        return RunError("fused residual ", ShapeToString(r->shape()),
                        " does not match the output ", ShapeToString(plan->out_shape));
      }
      QS_ASSIGN_OR_RETURN(y, StartFromResidual(ctx, *r));
    } else {
      y = Tensor::Uninitialized(c_.u8_out     ? DataType::kUInt8
                                : c_.bf16_out ? DataType::kBFloat16
                                              : DataType::kFloat32,
                                plan->out_shape);
    }
    y.set_layout(Layout::kChannelsLast);
    Execute(c_, plan, x, p, state, &y, ctx.dnnl);
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  // The sum post-op accumulates into dst: dst starts as the residual `r`, in dst's
  // type. The residual's buffer is reused when the session donates it and its type
  // matches; otherwise it is copied, converting (u8: (de)quantizing) when the types
  // differ.
  absl::StatusOr<Tensor> StartFromResidual(KernelRunContext& ctx, const Tensor& r) const {
    const DataType dst_type = c_.u8_out     ? DataType::kUInt8
                              : c_.bf16_out ? DataType::kBFloat16
                                            : DataType::kFloat32;
    if (r.dtype() == dst_type) return AccumulatorFromInput(ctx, 3, Layout::kChannelsLast);
    const Tensor src = ToChannelsLast(r);
    const int64_t n = r.num_elements();
    if (dst_type == DataType::kUInt8) {  // from f32, or bf16 (a BF16 stem's output)
      Tensor y = Tensor::Uninitialized(dst_type, r.shape());
      if (r.dtype() == DataType::kBFloat16) {
        QuantizeBf16ToU8(src.data<uint16_t>(), n, c_.out.scale, c_.out.zero_point,
                         y.data<uint8_t>());
      } else {
        QuantizeU8(src.data<float>(), n, c_.out.scale, c_.out.zero_point, y.data<uint8_t>());
      }
      return y;
    }
    if (r.dtype() != DataType::kUInt8) return CastTensor(src, dst_type);  // f32 <-> bf16
    Tensor y = Tensor::Uninitialized(dst_type, r.shape());
    DequantizeU8(src.data<uint8_t>(), n, c_.res.scale, c_.res.zero_point, y.data<float>());
    return y;
  }

  absl::StatusOr<std::unique_ptr<Plan>> Build(const Shape& x, bool residual_u8,
                                              DnnlResources* dnnl) const {
    std::vector<int64_t> out_sp, pb, pe;
    QS_RETURN_IF_ERROR(geo_.Resolve({x[2], x[3]}, &out_sp, &pb, &pe));
    auto plan = std::make_unique<Plan>();
    const int64_t oc = w_shape_[0];
    plan->out_shape = {x[0], oc, out_sp[0], out_sp[1]};
    const dt src_dt = c_.mode == Mode::kBf16 ? dt::bf16 : dt::u8;
    const dt w_dt = c_.mode == Mode::kBf16 ? dt::bf16 : dt::s8;
    const memory::desc src_md = ChannelsLastDesc(x, src_dt);
    const memory::desc dst_md =
        ChannelsLastDesc(plan->out_shape, c_.u8_out ? dt::u8 : c_.bf16_out ? dt::bf16 : dt::f32);
    memory::dims wdims;
    if (group_ > 1) wdims = {group_, oc / group_, w_shape_[1], w_shape_[2], w_shape_[3]};
    else wdims = {oc, w_shape_[1], w_shape_[2], w_shape_[3]};
    const memory::desc w_md(wdims, w_dt, memory::format_tag::any);
    const bool bias_arg = bias_arg_.defined();
    const memory::desc bias_md({oc}, dt::f32, memory::format_tag::a);
    const dnnl::primitive_attr attr =
        MakeAttr(c_, scales_, oc, 4, residual_u8, bias_arg, plan.get());
    const memory::dims strides(geo_.strides.begin(), geo_.strides.end());
    memory::dims dil = {geo_.dilations[0] - 1, geo_.dilations[1] - 1};
    const memory::dims pad_l(pb.begin(), pb.end()), pad_r(pe.begin(), pe.end());
    const dnnl::engine& eng = dnnl->engine;
    const dnnl::convolution_forward::desc desc(
        dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src_md,
        w_md, bias_arg ? bias_md : memory::desc(), dst_md, strides, dil, pad_l, pad_r);
    // The fastest kernel for the shape (impl_autotune.h). Not at DYNAMIC_RANGE: its
    // run-time zero point has no size the primitive reports, and its kernels are
    // chosen for that zero point's speed already (onednn-and-build.md, B.5).
    std::vector<int> extra_args;
    if (plan->bias_post_op >= 0) {
      extra_args.push_back(DNNL_ARG_ATTR_MULTIPLE_POST_OP(plan->bias_post_op) |
                           DNNL_ARG_SRC_1);
    }
    const dnnl::convolution_forward::primitive_desc pd =
        c_.mode == Mode::kDynamic
            ? dnnl::convolution_forward::primitive_desc(desc, attr, eng)
            : FastestConvolution(
                  desc, attr, dnnl,
                  absl::StrCat("rconv m", static_cast<int>(c_.mode), " x",
                               ShapeToString(x), " w", ShapeToString(w_shape_), " g",
                               group_, " s", absl::StrJoin(geo_.strides, ","), " d",
                               absl::StrJoin(geo_.dilations, ","), " p",
                               absl::StrJoin(pad_l, ","), "/", absl::StrJoin(pad_r, ","),
                               " out", c_.u8_out, c_.bf16_out, " zp", c_.act.zero_point != 0,
                               c_.u8_out && c_.out.zero_point != 0, " sum", c_.fused_sum,
                               residual_u8, " b", c_.bias.defined(), bias_arg_.defined(), " act",
                               static_cast<int>(c_.fused.kind), ":", c_.fused.lo, ":",
                               c_.fused.hi),
                  extra_args);
    plan->prim = dnnl::convolution_forward(pd);
    plan->weights = packed_->Get(pd.weights_desc(), dnnl, &plan->weights_owner);
    plan->src = memory(src_md, eng, DNNL_MEMORY_NONE);
    plan->dst = memory(dst_md, eng, DNNL_MEMORY_NONE);
    if (c_.mode == Mode::kBf16) {  // converts into the thread's scratch (PrepareSource)
      plan->src_f32 = memory(ChannelsLastDesc(x, dt::f32), eng, DNNL_MEMORY_NONE);
      plan->to_bf16 = dnnl::reorder(plan->src_f32, plan->src);
    }
    MakeScalars(c_, 4, oc, eng, plan.get());
    if (bias_arg) {
      plan->bias_arg = true;
      plan->bias = memory(bias_md, eng, const_cast<void*>(bias_arg_.raw_data()));
    }
    return plan;
  }

  Common c_;
  WindowGeometry geo_;
  int64_t group_;
  Shape w_shape_;
  std::vector<float> scales_;
  std::unique_ptr<PackedWeights> packed_;
  Tensor bias_arg_;  // TakeBiasArgument; undefined: bias in a post-op, or none
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeReducedConv(const KernelInit& init) {
  const Node& node = *init.node;
  const Tensor* w = init.constant(1);
  if (w == nullptr || w->rank() != 4 || w->dtype() != DataType::kFloat32) {
    return NodeError(node, "reduced precision needs constant FP32 2-D conv weights");
  }
  QS_ASSIGN_OR_RETURN(Common c, ParseCommon(node));
  const Tensor* b = init.constant(2);
  if (node.inputs.size() > 2 && !node.inputs[2].empty() && b == nullptr) {
    return NodeError(node, "reduced precision needs a constant bias");
  }
  if (b != nullptr) {
    if (b->rank() != 1 || b->dim(0) != w->dim(0) || b->dtype() != DataType::kFloat32) {
      return NodeError(node, "bias ", ShapeToString(b->shape()), " does not match the ",
                       w->dim(0), " output channels");
    }
    c.bias = *b;  // in the form the kernel uses it (BiasArgument / BiasPostOp)
  }
  const int64_t group = node.attrs.GetInt("group", 1);
  QS_ASSIGN_OR_RETURN(WindowGeometry geo,
                      ParseWindowGeometry(node, {w->dim(2), w->dim(3)}, false));
  return std::unique_ptr<Kernel>(new ReducedConvKernel(std::move(c), std::move(geo), group, *w));
}

// ---------------------------------------------------------------- MatMul / Gemm ----

// y = A[..., K] x W[K, N] (+ bias[N]); A's leading dims collapse into M.
class ReducedMatMulKernel : public Kernel {
 public:
  // `w` is [K, N]; `transposed` when the constant is stored [N, K] (Gemm transB=1).
  ReducedMatMulKernel(Common c, const Tensor& w, bool transposed)
      : c_(std::move(c)),
        k_(transposed ? w.dim(1) : w.dim(0)),
        n_(transposed ? w.dim(0) : w.dim(1)) {
    const auto tag = transposed ? memory::format_tag::ba : memory::format_tag::ab;
    if (c_.mode == Mode::kBf16) {
      Tensor wb = Tensor::Uninitialized(DataType::kBFloat16, w.shape());
      for (int64_t i = 0; i < w.num_elements(); ++i)
        wb.data<uint16_t>()[i] = FloatToBFloat16(w.data<float>()[i]);
      packed_ = std::make_unique<PackedWeights>(wb, memory::desc({k_, n_}, dt::bf16, tag));
    } else {
      QuantizedWeights q = transposed ? QuantizeWeightsPerChannel(w, n_)
                                      : QuantizeWeightsPerColumn(w);
      scales_ = std::move(q.scales);
      packed_ = std::make_unique<PackedWeights>(q.values, memory::desc({k_, n_}, dt::s8, tag));
    }
    packed_->release_unpacked_after_first_pack();
    // As for convs: oneDNN 2.6's matmul also adds the bias argument before the scales.
    bias_arg_ = TakeBiasArgument(&c_, scales_);
  }

  std::unique_ptr<KernelState> NewState() const override { return std::make_unique<State>(); }
  int64_t weight_bytes() const override {
    return static_cast<int64_t>(packed_->byte_size() + scales_.size() * 4 +
                                (c_.bias.defined() ? c_.bias.byte_size() : 0) +
                                (bias_arg_.defined() ? bias_arg_.byte_size() : 0));
  }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    // Rows of K: a 1-D A (numpy's vector times matrix) is one row, and its output
    // keeps rank 1 ([N]) as MatMul's does.
    if (x == nullptr || x->dtype() != DataType::kFloat32 || x->rank() < 1 ||
        x->dim(x->rank() - 1) != k_) {
      return RunError("expected an FP32 input [..., ", k_, "]");
    }
    const int64_t m = x->num_elements() / k_;
    auto* state = static_cast<State*>(ctx.state);
    const Shape key = {m};
    Plan* plan = state->plans.Find(key);
    if (plan == nullptr) {
      QS_ASSIGN_OR_RETURN(auto built, Build(m, ctx.dnnl));
      plan = state->plans.Insert(key, std::move(built));
    }
    const QuantParams p = PrepareSource(c_, *x, state);
    Shape out = x->shape();
    out.back() = n_;
    Tensor y;
    if (c_.fused_sum) {  // dst starts as the residual (input 3), in place when donated
      const Tensor* r = ctx.input(3);
      if (r == nullptr || r->dtype() != DataType::kFloat32 || r->shape() != out) {
        return RunError("the fused residual must be FP32 ", ShapeToString(out));
      }
      y = AccumulatorFromInput(ctx, 3, Layout::kPlain);
    } else {
      y = Tensor::Uninitialized(DataType::kFloat32, out);
    }
    if (m > 0) Execute(c_, plan, *x, p, state, &y, ctx.dnnl);
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<std::unique_ptr<Plan>> Build(int64_t m, DnnlResources* dnnl) const {
    auto plan = std::make_unique<Plan>();
    if (m == 0) return plan;
    const dt src_dt = c_.mode == Mode::kBf16 ? dt::bf16 : dt::u8;
    const dt w_dt = c_.mode == Mode::kBf16 ? dt::bf16 : dt::s8;
    const memory::desc src_md({m, k_}, src_dt, memory::format_tag::ab);
    const memory::desc dst_md({m, n_}, dt::f32, memory::format_tag::ab);
    const memory::desc w_md({k_, n_}, w_dt, memory::format_tag::any);
    const bool bias_arg = bias_arg_.defined();
    const dnnl::primitive_attr attr = MakeAttr(c_, scales_, n_, 2, false, bias_arg, plan.get());
    const dnnl::engine& eng = dnnl->engine;
    const memory::desc bias_md({1, n_}, dt::f32, memory::format_tag::ab);
    dnnl::matmul::primitive_desc pd(
        bias_arg ? dnnl::matmul::desc(src_md, w_md, bias_md, dst_md)
                 : dnnl::matmul::desc(src_md, w_md, dst_md),
        attr, eng);
    plan->prim = dnnl::matmul(pd);
    plan->weights = packed_->Get(pd.weights_desc(), dnnl, &plan->weights_owner);
    plan->src = memory(src_md, eng, DNNL_MEMORY_NONE);
    plan->dst = memory(dst_md, eng, DNNL_MEMORY_NONE);
    if (c_.mode == Mode::kBf16) {  // converts into the thread's scratch (PrepareSource)
      plan->src_f32 = memory({{m, k_}, dt::f32, memory::format_tag::ab}, eng, DNNL_MEMORY_NONE);
      plan->to_bf16 = dnnl::reorder(plan->src_f32, plan->src);
    }
    MakeScalars(c_, 2, n_, eng, plan.get());
    if (bias_arg) {
      plan->bias_arg = true;
      plan->bias = memory(bias_md, eng, const_cast<void*>(bias_arg_.raw_data()));
    }
    return plan;
  }

  Common c_;
  int64_t k_, n_;
  std::vector<float> scales_;
  std::unique_ptr<PackedWeights> packed_;
  Tensor bias_arg_;  // TakeBiasArgument; undefined: bias in a post-op, or none
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeReducedMatMul(const KernelInit& init) {
  const Node& node = *init.node;
  const Tensor* w = init.constant(1);
  if (w == nullptr || w->rank() != 2 || w->dtype() != DataType::kFloat32) {
    return NodeError(node, "reduced precision needs a constant FP32 2-D weight");
  }
  QS_ASSIGN_OR_RETURN(Common c, ParseCommon(node));
  bool transposed = false;
  if (node.op_type == "MatMul" && node.inputs.size() > 2 &&
      !node.inputs[2].empty()) {  // FuseMatMulPostOps
    const Tensor* b = init.constant(2);
    if (b == nullptr || b->dtype() != DataType::kFloat32 || b->num_elements() != w->dim(1)) {
      return NodeError(node, "a fused bias must be a constant FP32 [N]");
    }
    c.bias = *b;
  }
  if (node.op_type == "Gemm") {
    if (node.attrs.GetInt("transA", 0) != 0 || node.attrs.GetFloat("alpha", 1.f) != 1.f) {
      return NodeError(node, "reduced-precision Gemm needs transA=0 and alpha=1");
    }
    transposed = node.attrs.GetInt("transB", 0) != 0;
    const Tensor* cin = init.constant(2);
    if (node.inputs.size() > 2 && !node.inputs[2].empty()) {
      const int64_t n = transposed ? w->dim(0) : w->dim(1);
      if (cin == nullptr || cin->dtype() != DataType::kFloat32 || cin->num_elements() != n) {
        return NodeError(node, "reduced-precision Gemm needs a constant [N] C");
      }
      const float beta = node.attrs.GetFloat("beta", 1.f);
      c.bias = Tensor(DataType::kFloat32, {n});
      for (int64_t i = 0; i < n; ++i) c.bias.data<float>()[i] = beta * cin->data<float>()[i];
    }
  }
  return std::unique_ptr<Kernel>(new ReducedMatMulKernel(std::move(c), *w, transposed));
}

}  // namespace

void RegisterReducedPrecisionKernels(KernelRegistry* r) {
  r->Register(ReducedPrecisionKey("Conv"), MakeReducedConv);
  r->Register(ReducedPrecisionKey("MatMul"), MakeReducedMatMul);
  r->Register(ReducedPrecisionKey("Gemm"), MakeReducedMatMul);
}

}  // namespace qs
