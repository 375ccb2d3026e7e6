// MaxPool, AveragePool (1-D/2-D/3-D), GlobalAveragePool, GlobalMaxPool.
//
// FP32 MaxPool/AveragePool run on oneDNN pooling_v2_forward (primitive cached per input
// shape), as do u8 and bf16 MaxPool (reduced-precision chains) in either layout. A
// plain loop covers what oneDNN does not express: MaxPool's Indices output, other
// integer and double tensors, and AveragePool with count_include_pad
// and ceil_mode (ONNX counts the explicit pads but not the ceil overhang; oneDNN would
// count both). Global pools are a reduction over each plane: a loop.
#include <algorithm>
#include <limits>
#include <memory>

#include "engine/layout.h"
#include "engine/ops/dnnl_util.h"
#include "engine/ops/registry.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

enum class PoolKind { kMax, kAvg };

struct PoolParams {
  PoolKind kind = PoolKind::kMax;
  WindowGeometry geo;
  bool count_include_pad = false;
  int storage_order = 0;  // Indices: 0 row-major, 1 column-major
  bool want_indices = false;
};

// Geometry of one input shape, spatial dims padded to 3 (D, H, W) with size-1 dims in
// front so that one loop nest serves 1-D, 2-D and 3-D pooling.
struct Geometry3 {
  int64_t planes = 0;  // N * C
  int64_t in[3], out[3], k[3], s[3], d[3], pb[3], pe_decl[3];
};

struct PoolPlan {
  Shape out_shape;
  bool use_dnnl = false;
  bool empty = false;
  Geometry3 g;
  dnnl::pooling_v2_forward prim;
  dnnl::memory src, dst;
};

struct PoolState : KernelState {
  ShapeCache<Shape, PoolPlan> plans;
};

template <typename T>
void MaxPoolLoop(const Geometry3& g, const T* x, T* y, int64_t* indices,
                 int storage_order) {
  const int64_t in_plane = g.in[0] * g.in[1] * g.in[2];
  const int64_t out_plane = g.out[0] * g.out[1] * g.out[2];
#pragma omp parallel for if (g.planes * out_plane > 4096)
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * in_plane;
    int64_t o = p * out_plane;
    for (int64_t od = 0; od < g.out[0]; ++od) {
      for (int64_t oh = 0; oh < g.out[1]; ++oh) {
        for (int64_t ow = 0; ow < g.out[2]; ++ow, ++o) {
          T best = std::numeric_limits<T>::lowest();
          int64_t best_at = -1;
          for (int64_t kd = 0; kd < g.k[0]; ++kd) {
            const int64_t id = od * g.s[0] - g.pb[0] + kd * g.d[0];
            if (id < 0 || id >= g.in[0]) continue;
            for (int64_t kh = 0; kh < g.k[1]; ++kh) {
              const int64_t ih = oh * g.s[1] - g.pb[1] + kh * g.d[1];
              if (ih < 0 || ih >= g.in[1]) continue;
              for (int64_t kw = 0; kw < g.k[2]; ++kw) {
                const int64_t iw = ow * g.s[2] - g.pb[2] + kw * g.d[2];
                if (iw < 0 || iw >= g.in[2]) continue;
                const int64_t at = (id * g.in[1] + ih) * g.in[2] + iw;
                if (best_at < 0 || xp[at] > best) {
                  best = xp[at];
                  best_at = at;
                }
              }
            }
          }
          y[o] = best_at < 0 ? T(0) : best;  // a window entirely in the padding
          if (indices != nullptr) {
            int64_t idx = best_at;
            if (storage_order == 1 && best_at >= 0) {  // column-major within the plane
              const int64_t iw = best_at % g.in[2];
              const int64_t ih = (best_at / g.in[2]) % g.in[1];
              const int64_t id = best_at / (g.in[1] * g.in[2]);
              idx = (iw * g.in[1] + ih) * g.in[0] + id;
            }
            indices[o] = p * in_plane + idx;
          }
        }
      }
    }
  }
}

template <typename T>
void AvgPoolLoop(const Geometry3& g, bool include_pad, const T* x, T* y) {
  const int64_t in_plane = g.in[0] * g.in[1] * g.in[2];
  const int64_t out_plane = g.out[0] * g.out[1] * g.out[2];
  // Window extent in one dim when pads count: clipped to the declared pads only.
  auto padded_count = [&](int dim, int64_t start) {
    const int64_t end =
        std::min(start + (g.k[dim] - 1) * g.d[dim] + 1, g.in[dim] + g.pe_decl[dim]);
    return (end - start + g.d[dim] - 1) / g.d[dim];
  };
#pragma omp parallel for if (g.planes * out_plane > 4096)
  for (int64_t p = 0; p < g.planes; ++p) {
    const T* xp = x + p * in_plane;
    T* yp = y + p * out_plane;
    for (int64_t od = 0; od < g.out[0]; ++od) {
      for (int64_t oh = 0; oh < g.out[1]; ++oh) {
        for (int64_t ow = 0; ow < g.out[2]; ++ow) {
          const int64_t sd = od * g.s[0] - g.pb[0], sh = oh * g.s[1] - g.pb[1],
                        sw = ow * g.s[2] - g.pb[2];
          double sum = 0;
          int64_t count = 0;
          for (int64_t kd = 0; kd < g.k[0]; ++kd) {
            const int64_t id = sd + kd * g.d[0];
            if (id < 0 || id >= g.in[0]) continue;
            for (int64_t kh = 0; kh < g.k[1]; ++kh) {
              const int64_t ih = sh + kh * g.d[1];
              if (ih < 0 || ih >= g.in[1]) continue;
              for (int64_t kw = 0; kw < g.k[2]; ++kw) {
                const int64_t iw = sw + kw * g.d[2];
                if (iw < 0 || iw >= g.in[2]) continue;
                sum += xp[(id * g.in[1] + ih) * g.in[2] + iw];
                ++count;
              }
            }
          }
          const int64_t div = include_pad ? padded_count(0, sd) * padded_count(1, sh) *
                                                padded_count(2, sw)
                                          : count;
          yp[(od * g.out[1] + oh) * g.out[2] + ow] =
              div > 0 ? static_cast<T>(sum / static_cast<double>(div)) : T(0);
        }
      }
    }
  }
}

class PoolKernel : public Kernel {
 public:
  explicit PoolKernel(PoolParams p) : p_(std::move(p)) {}

  // oneDNN pooling reads either layout; the loop fallback (indices, other types) needs
  // plain input and converts in Run.
  LayoutPolicy layout_policy() const override {
    return p_.want_indices ? LayoutPolicy::kPlainOnly : LayoutPolicy::kAny;
  }

  std::unique_ptr<KernelState> NewState() const override {
    return std::make_unique<PoolState>();
  }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (x == nullptr) return RunError("missing input");
    Tensor plain_x;
    // u8 and bf16 max pooling (an INT8 chain, or a BF16 image stem feeding one, through
    // MaxPool) runs on oneDNN in either layout.
    const bool narrow_max = IsNarrowMax(x->dtype());
    if (x->layout() == Layout::kChannelsLast && x->dtype() != DataType::kFloat32 &&
        !narrow_max) {
      plain_x = ToPlain(*x);
      x = &plain_x;
    }
    auto* state = static_cast<PoolState*>(ctx.state);
    Shape key = x->shape();
    key.push_back(static_cast<int64_t>(x->dtype()));
    key.push_back(static_cast<int64_t>(x->layout()));
    PoolPlan* plan = state->plans.Find(key);
    if (plan == nullptr) {
      QS_ASSIGN_OR_RETURN(auto built, BuildPlan(*x, ctx.dnnl));
      plan = state->plans.Insert(std::move(key), std::move(built));
    }
    Tensor y = Tensor::Uninitialized(x->dtype(), plan->out_shape);
    Tensor indices;
    if (p_.want_indices)
      indices = Tensor::Uninitialized(DataType::kInt64, plan->out_shape);
    if (plan->empty) {
      y.set_layout(x->layout());  // nothing to compute; a narrow chain reads it as is
    } else if (plan->use_dnnl) {
      plan->src.set_data_handle(const_cast<void*>(x->raw_data()));
      plan->dst.set_data_handle(y.raw_data());
      plan->prim.execute(ctx.dnnl->stream,
                         {{DNNL_ARG_SRC, plan->src}, {DNNL_ARG_DST, plan->dst}});
      ctx.dnnl->stream.wait();
      y.set_layout(x->layout());
    } else {
      Tensor px = ToPlain(*x);
      QS_RETURN_IF_ERROR(RunLoop(px, plan->g, &y, p_.want_indices ? &indices : nullptr));
    }
    (*ctx.outputs)[0] = std::move(y);
    if (p_.want_indices) (*ctx.outputs)[1] = std::move(indices);
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<std::unique_ptr<PoolPlan>> BuildPlan(const Tensor& x,
                                                      DnnlResources* dnnl) const {
    const WindowGeometry& geo = p_.geo;
    const int sp = geo.num_spatial();
    if (x.rank() != sp + 2) {
      return RunError("input ", ShapeToString(x.shape()), " does not match the ", sp,
                      "-D kernel_shape");
    }
    if (sp < 1 || sp > 3) return RunError("only 1-D, 2-D and 3-D pooling is supported");
    const std::vector<int64_t> in_sp(x.shape().begin() + 2, x.shape().end());
    std::vector<int64_t> out_sp, pb, pe;
    QS_RETURN_IF_ERROR(geo.Resolve(in_sp, &out_sp, &pb, &pe));
    auto plan = std::make_unique<PoolPlan>();
    plan->out_shape = {x.dim(0), x.dim(1)};
    plan->out_shape.insert(plan->out_shape.end(), out_sp.begin(), out_sp.end());
    plan->empty = NumElements(plan->out_shape) == 0;

    Geometry3& g = plan->g;
    g.planes = x.dim(0) * x.dim(1);
    bool overhang = false;  // ceil_mode windows past the declared end pads
    for (int i = 0; i < 3; ++i) {
      const int j = i - (3 - sp);  // spatial index, < 0 for the padding dims
      g.in[i] = j < 0 ? 1 : in_sp[j];
      g.out[i] = j < 0 ? 1 : out_sp[j];
      g.k[i] = j < 0 ? 1 : geo.kernel[j];
      g.s[i] = j < 0 ? 1 : geo.strides[j];
      g.d[i] = j < 0 ? 1 : geo.dilations[j];
      g.pb[i] = j < 0 ? 0 : pb[j];
      const int64_t declared =
          j < 0 ? 0 : (geo.auto_pad == AutoPad::kNotSet ? geo.pads[j + sp] : pe[j]);
      g.pe_decl[i] = declared;
      if (j >= 0 && pe[j] > declared) overhang = true;
    }
    const bool avg_include = p_.kind == PoolKind::kAvg && p_.count_include_pad;
    const bool narrow_max = IsNarrowMax(x.dtype());
    plan->use_dnnl = (x.dtype() == DataType::kFloat32 || narrow_max) && !p_.want_indices &&
                     !(avg_include && overhang) && !plan->empty;
    if (!plan->use_dnnl) return plan;

    const dnnl::engine& eng = dnnl->engine;
    const auto dt = x.dtype() == DataType::kUInt8      ? dnnl::memory::data_type::u8
                    : x.dtype() == DataType::kBFloat16 ? dnnl::memory::data_type::bf16
                                                       : dnnl::memory::data_type::f32;
    const dnnl::memory::desc src_md = ActivationDescOf(x, dt);
    const dnnl::memory::desc dst_md = x.layout() == Layout::kChannelsLast
                                          ? ChannelsLastDesc(plan->out_shape, dt)
                                          : PlainDesc(plan->out_shape, dt);
    const dnnl::algorithm alg = p_.kind == PoolKind::kMax ? dnnl::algorithm::pooling_max
                                : avg_include
                                    ? dnnl::algorithm::pooling_avg_include_padding
                                    : dnnl::algorithm::pooling_avg_exclude_padding;
    dnnl::memory::dims strides(geo.strides.begin(), geo.strides.end());
    dnnl::memory::dims kernel(geo.kernel.begin(), geo.kernel.end());
    dnnl::memory::dims dil(sp), pad_l(pb.begin(), pb.end()), pad_r(pe.begin(), pe.end());
    for (int i = 0; i < sp; ++i) dil[i] = geo.dilations[i] - 1;
    dnnl::pooling_v2_forward::desc desc(dnnl::prop_kind::forward_inference, alg, src_md,
                                        dst_md, strides, kernel, dil, pad_l, pad_r);
    dnnl::pooling_v2_forward::primitive_desc pd(desc, eng);
    plan->prim = dnnl::pooling_v2_forward(pd);
    plan->src = dnnl::memory(src_md, eng, DNNL_MEMORY_NONE);
    plan->dst = dnnl::memory(dst_md, eng, DNNL_MEMORY_NONE);
    return plan;
  }

  bool IsNarrowMax(DataType t) const {
    return p_.kind == PoolKind::kMax && (t == DataType::kUInt8 || t == DataType::kBFloat16);
  }

  absl::Status RunLoop(const Tensor& x, const Geometry3& g, Tensor* y,
                       Tensor* indices) const {
    int64_t* idx = indices != nullptr ? indices->data<int64_t>() : nullptr;
    if (p_.kind == PoolKind::kMax) {
      switch (x.dtype()) {
        case DataType::kFloat32:
          MaxPoolLoop(g, x.data<float>(), y->data<float>(), idx, p_.storage_order);
          return absl::OkStatus();
        case DataType::kFloat64:
          MaxPoolLoop(g, x.data<double>(), y->data<double>(), idx, p_.storage_order);
          return absl::OkStatus();
        case DataType::kInt8:
          MaxPoolLoop(g, x.data<int8_t>(), y->data<int8_t>(), idx, p_.storage_order);
          return absl::OkStatus();
        case DataType::kUInt8:
          MaxPoolLoop(g, x.data<uint8_t>(), y->data<uint8_t>(), idx, p_.storage_order);
          return absl::OkStatus();
        default: break;
      }
    } else {
      switch (x.dtype()) {
        case DataType::kFloat32:
          AvgPoolLoop(g, p_.count_include_pad, x.data<float>(), y->data<float>());
          return absl::OkStatus();
        case DataType::kFloat64:
          AvgPoolLoop(g, p_.count_include_pad, x.data<double>(), y->data<double>());
          return absl::OkStatus();
        default: break;
      }
    }
    return RunError("unsupported type ", DataTypeName(x.dtype()));
  }

  const PoolParams p_;
};

absl::StatusOr<std::unique_ptr<Kernel>> MakePool(const KernelInit& init, PoolKind kind) {
  const Node& node = *init.node;
  if (kind == PoolKind::kMax) {
    QS_RETURN_IF_ERROR(
        CheckAttributes(node, {"auto_pad", "ceil_mode", "dilations", "kernel_shape",
                               "pads", "storage_order", "strides"}));
  } else {
    QS_RETURN_IF_ERROR(
        CheckAttributes(node, {"auto_pad", "ceil_mode", "count_include_pad",
                               "kernel_shape", "pads", "strides"}));
  }
  if (!node.attrs.Has("kernel_shape")) {
    return NodeError(node, "attribute 'kernel_shape' is required");
  }
  PoolParams p;
  p.kind = kind;
  QS_ASSIGN_OR_RETURN(p.geo, ParseWindowGeometry(node, node.attrs.GetInts("kernel_shape"),
                                                 /*allow_ceil_mode=*/true));
  if (p.geo.num_spatial() < 1 || p.geo.num_spatial() > 3) {
    return NodeError(node, "only 1-D, 2-D and 3-D pooling is supported");
  }
  p.count_include_pad = node.attrs.GetInt("count_include_pad", 0) != 0;
  p.storage_order = static_cast<int>(node.attrs.GetInt("storage_order", 0));
  if (p.storage_order != 0 && p.storage_order != 1) {
    return NodeError(node, "storage_order must be 0 or 1");
  }
  p.want_indices =
      kind == PoolKind::kMax && node.outputs.size() > 1 && !node.outputs[1].empty();
  return std::unique_ptr<Kernel>(new PoolKernel(std::move(p)));
}

// GlobalAveragePool / GlobalMaxPool: one value per (n, c) plane.
class GlobalPoolKernel : public Kernel {
 public:
  explicit GlobalPoolKernel(PoolKind kind) : kind_(kind) {}
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kAny; }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (x == nullptr) return RunError("missing input");
    if (x->dtype() != DataType::kFloat32) {
      return RunError("only FP32 is supported, got ", DataTypeName(x->dtype()));
    }
    if (x->rank() < 2) return RunError("input must have rank >= 2");
    Shape out_shape = {x->dim(0), x->dim(1)};
    out_shape.resize(x->rank(), 1);
    const int64_t planes = x->dim(0) * x->dim(1);
    const int64_t size = planes == 0 ? 0 : x->num_elements() / planes;
    Tensor y = Tensor::Uninitialized(DataType::kFloat32, out_shape);
    const float* in = x->data<float>();
    float* out = y.data<float>();
    if (x->layout() == Layout::kChannelsLast) {
      // [N, S, C]: reduce over S with C contiguous (vectorizes over channels). The
      // [N, C, 1...] result is the same bytes in either layout.
      const int64_t n = x->dim(0), c = x->dim(1);
#pragma omp parallel for if (x->num_elements() > 65536)
      for (int64_t b = 0; b < n; ++b) {
        float* o = out + b * c;
        const float* v = in + b * size * c;
        if (kind_ == PoolKind::kMax) {
          for (int64_t k = 0; k < c; ++k) o[k] = size > 0 ? v[k] : 0.f;
          for (int64_t s = 1; s < size; ++s)
            for (int64_t k = 0; k < c; ++k) o[k] = std::max(o[k], v[s * c + k]);
        } else {
          for (int64_t k = 0; k < c; ++k) o[k] = 0.f;
          for (int64_t s = 0; s < size; ++s)
            for (int64_t k = 0; k < c; ++k) o[k] += v[s * c + k];
          const float inv = size > 0 ? 1.f / static_cast<float>(size) : 0.f;
          for (int64_t k = 0; k < c; ++k) o[k] *= inv;
        }
      }
      (*ctx.outputs)[0] = std::move(y);
      return absl::OkStatus();
    }
#pragma omp parallel for if (x->num_elements() > 65536)
    for (int64_t p = 0; p < planes; ++p) {
      const float* v = in + p * size;
      if (kind_ == PoolKind::kMax) {
        float m = size > 0 ? v[0] : 0.f;
        for (int64_t i = 1; i < size; ++i) m = std::max(m, v[i]);
        out[p] = m;
      } else {
        double s = 0;
        for (int64_t i = 0; i < size; ++i) s += v[i];
        out[p] = size > 0 ? static_cast<float>(s / static_cast<double>(size)) : 0.f;
      }
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  const PoolKind kind_;
};

KernelFactory GlobalPool(PoolKind kind) {
  return [kind](const KernelInit& init) -> absl::StatusOr<std::unique_ptr<Kernel>> {
    QS_RETURN_IF_ERROR(CheckAttributes(*init.node, {}));
    return std::unique_ptr<Kernel>(new GlobalPoolKernel(kind));
  };
}

}  // namespace

void RegisterPoolKernels(KernelRegistry* r) {
  r->Register(
      "MaxPool", [](const KernelInit& init) { return MakePool(init, PoolKind::kMax); }, 1,
      17);
  r->Register(
      "AveragePool",
      [](const KernelInit& init) { return MakePool(init, PoolKind::kAvg); }, 1, 17);
  r->Register("GlobalAveragePool", GlobalPool(PoolKind::kAvg), 1, 17);
  r->Register("GlobalMaxPool", GlobalPool(PoolKind::kMax), 1, 17);
}

}  // namespace qs
