// The ONNX quantization operators, as ONNX Runtime's quantizer writes them into
// pre-quantized models (QDQ, QOperator and dynamic "IntegerOps" formats):
//
//   QuantizeLinear (10, 13)     y = saturate(round_half_even(x / scale) + zp), u8/s8 out,
//                               per tensor or per axis
//   DequantizeLinear (10, 13)   y = (x - zp) * scale from u8/s8/s32, per tensor or axis
//   DynamicQuantizeLinear (11)  u8 with scale/zp from the tensor's own range
//   MatMulInteger (10)          int32 (A - a_zp)(B - b_zp); zps scalar, per row of A,
//                               per column of B
//   ConvInteger (10)            int32 conv(x - x_zp, w - w_zp); w_zp per output channel
//   QLinearMatMul (10)          MatMulInteger, then requantized to u8/s8
//   QLinearConv (10)            ConvInteger + int32 bias, requantized per channel
//
// Integer results are exact (or wrap in 32 bits exactly as the spec allows).
//
// Integer GEMM/conv. oneDNN 2.6 computes u8/s8 x s8 -> s32 but has no u8 weights and no
// weight zero points (docs: reference/quantization.md §3). Weights are therefore shifted
// to s8 (u8 - 128) and kept with a per-output-channel offset d = w_zp (s8) or
// w_zp - 128 (u8), so that w - w_zp == w' - d exactly; then
//   sum (x - x_zp)(w - w_zp) = sum (x - x_zp) w'  -  d * sum (x - x_zp).
// MatMul: oneDNN computes the raw A·B' and we apply the zero-point and d terms with row
// and column sums. Conv: oneDNN applies the (per-tensor, run-time) src zero point, which
// also handles the padding (padded taps are zero_point, i.e. real 0), and when some d is
// non-zero a second conv with all-ones s8 weights gives the window sums of (x - x_zp).
// Requantization (QLinear*) is our own pass over the exact s32 accumulators:
// y = saturate(round_half_even(float(acc + bias) * (s_in * s_w / s_out)) + y_zp), the
// multiplier computed in float as ONNX Runtime does.
//
// oneDNN is exact only with VNNI (vpdpbusd): without it the u8·s8 pairs are summed into
// s16 with saturation (and s8 conv weights are halved), so on such CPUs, and whenever the
// environment sets QS_INT8_REFERENCE=1, plain int32 loops compute the same results.
// Constant weights (the model case) are prepared and packed once per kernel; run-time
// weights (the ONNX node tests) are prepared per call.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>
#include <unordered_map>

#include "engine/layout.h"
#include "engine/ops/dnnl_util.h"
#include "engine/ops/registry.h"
#include "engine/quantize/quant_math.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

using dnnl::memory;
using dt = dnnl::memory::data_type;

bool IsInt8(DataType t) { return t == DataType::kUInt8 || t == DataType::kInt8; }

// Element i of an integer tensor, widened.
int32_t IntAt(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DataType::kUInt8: return t.data<uint8_t>()[i];
    case DataType::kInt8: return t.data<int8_t>()[i];
    case DataType::kInt32: return t.data<int32_t>()[i];
    default: return 0;
  }
}

// True when oneDNN's int8 kernels compute exact s32 results here (see the top comment).
bool UseDnnlInt8() {
  const char* env = std::getenv("QS_INT8_REFERENCE");
  if (env != nullptr && env[0] != '\0' && env[0] != '0') return false;
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto vnni = static_cast<unsigned>(dnnl_cpu_isa_avx512_core_vnni);
  return (isa & vnni) == vnni;
}

// Row-major descriptor of `dims` (any rank oneDNN takes).
memory::desc RowMajorDesc(const memory::dims& dims, dt type) {
  std::vector<int> order(dims.size());
  std::iota(order.begin(), order.end(), 0);
  return PermutedDesc(dims, order, type);
}

// ---------------------------------------------------------------- element loops ----
// Compiled for AVX-512F, AVX2 and the baseline (ifunc dispatch on CPU features; an
// "arch=" clone would dispatch on the CPU model and miss AMD), vectorized by the
// compiler, division and nearbyint included (ONNX specifies x / scale, rounded half to
// even).

template <typename T>
__attribute__((always_inline)) inline void QuantizeLoop(const float* x, int64_t n, float scale,
                                                        float zp, T* y) {
  constexpr float lo = static_cast<float>(std::numeric_limits<T>::min());
  constexpr float hi = static_cast<float>(std::numeric_limits<T>::max());
  for (int64_t i = 0; i < n; ++i) {
    float v = std::nearbyint(x[i] / scale) + zp;
    v = std::min(hi, std::max(lo, v));  // NaN -> lo
    y[i] = static_cast<T>(static_cast<int32_t>(v));
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void QuantizeU8Span(
    const float* x, int64_t n, float scale, float zp, uint8_t* y) {
  QuantizeLoop(x, n, scale, zp, y);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void QuantizeS8Span(
    const float* x, int64_t n, float scale, float zp, int8_t* y) {
  QuantizeLoop(x, n, scale, zp, y);
}

template <typename T>
__attribute__((always_inline)) inline void DequantizeLoop(const T* x, int64_t n, float scale,
                                                          float zp, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = (static_cast<float>(x[i]) - zp) * scale;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void DequantizeU8Span(
    const uint8_t* x, int64_t n, float scale, float zp, float* y) {
  DequantizeLoop(x, n, scale, zp, y);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void DequantizeS8Span(
    const int8_t* x, int64_t n, float scale, float zp, float* y) {
  DequantizeLoop(x, n, scale, zp, y);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void DequantizeS32Span(
    const int32_t* x, int64_t n, float scale, float zp, float* y) {
  DequantizeLoop(x, n, scale, zp, y);
}

// y[c] = saturate(round(float(acc[c] + bias[c]) * mult[c]) + zp) over one row of n.
template <typename T>
__attribute__((always_inline)) inline void RequantizeLoop(const int32_t* acc,
                                                          const int32_t* bias,
                                                          const float* mult, int64_t n,
                                                          float zp, T* y) {
  constexpr float lo = static_cast<float>(std::numeric_limits<T>::min());
  constexpr float hi = static_cast<float>(std::numeric_limits<T>::max());
  for (int64_t i = 0; i < n; ++i) {
    const int32_t a = static_cast<int32_t>(static_cast<uint32_t>(acc[i]) +
                                           static_cast<uint32_t>(bias[i]));
    float v = std::nearbyint(static_cast<float>(a) * mult[i]) + zp;
    v = std::min(hi, std::max(lo, v));
    y[i] = static_cast<T>(static_cast<int32_t>(v));
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void RequantizeU8Row(
    const int32_t* acc, const int32_t* bias, const float* mult, int64_t n, float zp,
    uint8_t* y) {
  RequantizeLoop(acc, bias, mult, n, zp, y);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void RequantizeS8Row(
    const int32_t* acc, const int32_t* bias, const float* mult, int64_t n, float zp,
    int8_t* y) {
  RequantizeLoop(acc, bias, mult, n, zp, y);
}

void RequantizeRow(const int32_t* acc, const int32_t* bias, const float* mult, int64_t n,
                   int32_t zp, Tensor* y, int64_t offset) {
  if (y->dtype() == DataType::kUInt8) {
    RequantizeU8Row(acc, bias, mult, n, static_cast<float>(zp), y->data<uint8_t>() + offset);
  } else {
    RequantizeS8Row(acc, bias, mult, n, static_cast<float>(zp), y->data<int8_t>() + offset);
  }
}

// ------------------------------------------------------------ Q / DQ parameters ----

// Scale and zero point of a QuantizeLinear/DequantizeLinear node: one value (per
// tensor) or one per index of `axis`.
struct AxisParams {
  bool per_axis = false;
  int axis = 0;
  std::vector<float> scale;
  std::vector<int32_t> zp;
};

absl::StatusOr<AxisParams> ReadAxisParams(const Tensor& x, const Tensor* scale,
                                          const Tensor* zp, int64_t axis_attr) {
  AxisParams p;
  if (scale == nullptr || scale->dtype() != DataType::kFloat32) {
    return RunError("scale must be an FP32 tensor");
  }
  const int64_t n = scale->num_elements();
  if (zp != nullptr && zp->num_elements() != n) {
    return RunError("zero point ", ShapeToString(zp->shape()), " does not match scale ",
                    ShapeToString(scale->shape()));
  }
  if (scale->rank() > 1 || n == 0) {
    return RunError("scale must be a scalar or 1-D, got ", ShapeToString(scale->shape()));
  }
  if (scale->rank() == 1 && n != 1) {
    QS_ASSIGN_OR_RETURN(p.axis, NormalizeAxis(axis_attr, x.rank()));
    if (x.rank() == 0 || x.dim(p.axis) != n) {
      return RunError("per-axis scale of ", n, " values does not match axis ", axis_attr,
                      " of ", ShapeToString(x.shape()));
    }
    p.per_axis = true;
  }
  p.scale.assign(scale->data<float>(), scale->data<float>() + n);
  p.zp.assign(n, 0);
  if (zp != nullptr) {
    for (int64_t i = 0; i < n; ++i) p.zp[i] = IntAt(*zp, i);
  }
  return p;
}

// The loop structure of `x` in memory for per-axis parameters: outer x channels x
// inner, channel = the parameter index. A channels-last tensor with axis 1 has its
// channels innermost; for any other axis the caller converts it to plain first.
void AxisLoop(const Tensor& x, const AxisParams& p, int64_t* outer, int64_t* channels,
              int64_t* inner) {
  const int64_t n = x.num_elements();
  if (!p.per_axis) {
    *outer = 1;
    *channels = 1;
    *inner = n;
    return;
  }
  *channels = x.dim(p.axis);
  if (x.layout() == Layout::kChannelsLast && p.axis == 1) {
    *inner = 1;
  } else {
    *inner = 1;
    for (int d = p.axis + 1; d < x.rank(); ++d) *inner *= x.dim(d);
  }
  *outer = *channels * *inner == 0 ? 0 : n / (*channels * *inner);
}

// A view of `x` the per-axis loop can walk (see AxisLoop).
Tensor AxisView(const Tensor& x, const AxisParams& p) {
  if (p.per_axis && x.layout() == Layout::kChannelsLast && p.axis != 1) return ToPlain(x);
  return x;
}

// ------------------------------------------------------------ QuantizeLinear -------

class QuantizeLinearKernel : public Kernel {
 public:
  explicit QuantizeLinearKernel(int64_t axis) : axis_(axis) {}
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kAny; }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* xin = ctx.input(0);
    if (xin == nullptr) return RunError("missing input x");
    if (xin->dtype() != DataType::kFloat32 && xin->dtype() != DataType::kInt32) {
      return RunError("x must be FP32 or INT32, got ", DataTypeName(xin->dtype()));
    }
    const Tensor* zp = ctx.input(2);
    const DataType out_type = zp != nullptr ? zp->dtype() : DataType::kUInt8;
    if (!IsInt8(out_type)) {
      return RunError("y_zero_point must be UINT8 or INT8, got ", DataTypeName(out_type));
    }
    QS_ASSIGN_OR_RETURN(AxisParams p, ReadAxisParams(*xin, ctx.input(1), zp, axis_));
    Tensor x = AxisView(*xin, p);
    if (x.dtype() == DataType::kInt32) {
      QS_ASSIGN_OR_RETURN(x, CastTensor(x, DataType::kFloat32));
      x.set_layout(AxisView(*xin, p).layout());
    }
    int64_t outer, channels, inner;
    AxisLoop(x, p, &outer, &channels, &inner);
    Tensor y = Tensor::Uninitialized(out_type, x.shape());
    y.set_layout(x.layout());
    const float* src = x.data<float>();
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t off = (o * channels + c) * inner;
        const float zpf = static_cast<float>(p.zp[p.per_axis ? c : 0]);
        const float s = p.scale[p.per_axis ? c : 0];
        if (out_type == DataType::kUInt8) {
          QuantizeU8Span(src + off, inner, s, zpf, y.data<uint8_t>() + off);
        } else {
          QuantizeS8Span(src + off, inner, s, zpf, y.data<int8_t>() + off);
        }
      }
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  int64_t axis_;
};

// ------------------------------------------------------------ DequantizeLinear -----

class DequantizeLinearKernel : public Kernel {
 public:
  explicit DequantizeLinearKernel(int64_t axis) : axis_(axis) {}
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kAny; }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* xin = ctx.input(0);
    if (xin == nullptr) return RunError("missing input x");
    const DataType type = xin->dtype();
    if (!IsInt8(type) && type != DataType::kInt32) {
      return RunError("x must be UINT8, INT8 or INT32, got ", DataTypeName(type));
    }
    const Tensor* zp = ctx.input(2);
    if (zp != nullptr && zp->dtype() != type) {
      return RunError("x_zero_point is ", DataTypeName(zp->dtype()), ", x is ",
                      DataTypeName(type));
    }
    QS_ASSIGN_OR_RETURN(AxisParams p, ReadAxisParams(*xin, ctx.input(1), zp, axis_));
    const Tensor x = AxisView(*xin, p);
    int64_t outer, channels, inner;
    AxisLoop(x, p, &outer, &channels, &inner);
    Tensor y = Tensor::Uninitialized(DataType::kFloat32, x.shape());
    y.set_layout(x.layout());
    float* dst = y.data<float>();
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t off = (o * channels + c) * inner;
        const float zpf = static_cast<float>(p.zp[p.per_axis ? c : 0]);
        const float s = p.scale[p.per_axis ? c : 0];
        switch (type) {
          case DataType::kUInt8:
            DequantizeU8Span(x.data<uint8_t>() + off, inner, s, zpf, dst + off);
            break;
          case DataType::kInt8:
            DequantizeS8Span(x.data<int8_t>() + off, inner, s, zpf, dst + off);
            break;
          default:
            DequantizeS32Span(x.data<int32_t>() + off, inner, s, zpf, dst + off);
            break;
        }
      }
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  int64_t axis_;
};

// ------------------------------------------------------------ DynamicQuantizeLinear -

class DynamicQuantizeLinearKernel : public Kernel {
 public:
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kAny; }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (x == nullptr || x->dtype() != DataType::kFloat32) {
      return RunError("x must be an FP32 tensor");
    }
    const int64_t n = x->num_elements();
    float mn = 0.f, mx = 0.f;
    MinMax(x->data<float>(), n, &mn, &mx);
    // ONNX: the range is widened to include 0; scale = range / 255 and
    // zp = saturate(round(0 - min / scale)), all in float. An all-zero (or empty)
    // input has no range: scale 1, zp 0 (the spec leaves it undefined; every value
    // then quantizes to 0, which dequantizes to 0 with either scale).
    mn = std::min(mn, 0.f);
    mx = std::max(mx, 0.f);
    float scale = (mx - mn) / 255.f;
    float zpf = 0.f;
    if (!(scale > 0.f) || !std::isfinite(scale)) {
      scale = 1.f;
    } else {
      zpf = std::nearbyint(std::min(255.f, std::max(0.f, 0.f - mn / scale)));
    }
    Tensor y = Tensor::Uninitialized(DataType::kUInt8, x->shape());
    y.set_layout(x->layout());
    QuantizeU8Span(x->data<float>(), n, scale, zpf, y.data<uint8_t>());
    Tensor s(DataType::kFloat32, {});
    s.data<float>()[0] = scale;
    Tensor z(DataType::kUInt8, {});
    z.data<uint8_t>()[0] = static_cast<uint8_t>(zpf);
    (*ctx.outputs)[0] = std::move(y);
    if (ctx.outputs->size() > 1) (*ctx.outputs)[1] = std::move(s);
    if (ctx.outputs->size() > 2) (*ctx.outputs)[2] = std::move(z);
    return absl::OkStatus();
  }
};

// ------------------------------------------------------------ integer GEMM ----------

// The B operand of the integer GEMM: s8 values (u8 shifted by -128) and a per-column
// offset d with B - b_zp == B' - d; plus the column sums of B'.
struct PreparedB {
  int64_t k = 0, n = 0;
  Tensor values;                // s8 [K, N]
  std::vector<int32_t> d;       // [N]
  std::vector<int32_t> colsum;  // [N]
  bool any_d = false;
};

// `b` is [K, N] (u8 or s8) at element offset `offset`; `zp(n)` its zero point.
template <typename ZpFn>
PreparedB PrepareB(const Tensor& b, int64_t offset, int64_t k, int64_t n, ZpFn zp) {
  PreparedB p;
  p.k = k;
  p.n = n;
  p.values = Tensor::Uninitialized(DataType::kInt8, {k, n});
  int8_t* dst = p.values.data<int8_t>();
  const bool u8 = b.dtype() == DataType::kUInt8;
  if (u8) {
    const uint8_t* src = b.data<uint8_t>() + offset;
    for (int64_t i = 0; i < k * n; ++i) dst[i] = static_cast<int8_t>(src[i] - 128);
  } else {
    std::memcpy(dst, b.data<int8_t>() + offset, k * n);
  }
  p.d.resize(n);
  p.colsum.assign(n, 0);
  for (int64_t j = 0; j < n; ++j) {
    p.d[j] = zp(j) - (u8 ? 128 : 0);
    p.any_d |= p.d[j] != 0;
  }
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < n; ++j) p.colsum[j] += dst[i * n + j];
  return p;
}

struct GemmPlan {
  dnnl::matmul prim;
  memory a, b, c;
  Tensor b_owner;  // keeps the packed constant `b` points into
  bool packed = false;
};

struct GemmState : KernelState {
  ShapeCache<Shape, GemmPlan> plans;
};

// out[M, N] = (A - azp[m]) (B' - d[n]) in int32 (wrapping), A u8/s8 row-major [M, K]
// at `a`. `packed` holds B' packed for oneDNN when B is constant (else B' is used
// plain). `azp` has M entries.
void IntGemm(const void* a, DataType a_type, int64_t m, const PreparedB& b,
             const PackedWeights* packed, const int32_t* azp, int32_t* out, bool use_dnnl,
             GemmState* state, DnnlResources* dnnl) {
  const int64_t k = b.k, n = b.n;
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(out, out + m * n, 0);
    return;
  }
  const bool a_u8 = a_type == DataType::kUInt8;
  auto a_at = [&](int64_t r, int64_t c) -> int32_t {
    return a_u8 ? static_cast<const uint8_t*>(a)[r * k + c]
                : static_cast<const int8_t*>(a)[r * k + c];
  };
  if (!use_dnnl) {
    // Exact reference: int16 operands, uint32 (wrapping) accumulation.
    std::vector<int16_t> b16(k * n);
    const int8_t* bv = b.values.data<int8_t>();
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < n; ++j)
        b16[i * n + j] = static_cast<int16_t>(bv[i * n + j] - b.d[j]);
#pragma omp parallel for if (m * n * k > (1 << 20))
    for (int64_t r = 0; r < m; ++r) {
      std::vector<uint32_t> acc(n, 0);
      for (int64_t i = 0; i < k; ++i) {
        const int32_t av = a_at(r, i) - azp[r];
        if (av == 0) continue;
        const int16_t* brow = b16.data() + i * n;
        for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<uint32_t>(av * brow[j]);
      }
      for (int64_t j = 0; j < n; ++j) out[r * n + j] = static_cast<int32_t>(acc[j]);
    }
    return;
  }
  const Shape key = {m, k, n, a_u8 ? 1 : 0, packed != nullptr ? 1 : 0};
  GemmPlan* plan = state->plans.Find(key);
  if (plan == nullptr) {
    auto p = std::make_unique<GemmPlan>();
    const dnnl::engine& eng = dnnl->engine;
    const memory::desc a_md({m, k}, a_u8 ? dt::u8 : dt::s8, memory::format_tag::ab);
    const memory::desc c_md({m, n}, dt::s32, memory::format_tag::ab);
    const memory::desc b_user({k, n}, dt::s8, memory::format_tag::ab);
    const memory::desc b_md =
        packed != nullptr ? memory::desc({k, n}, dt::s8, memory::format_tag::any) : b_user;
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), eng);
    p->prim = dnnl::matmul(pd);
    p->a = memory(a_md, eng, DNNL_MEMORY_NONE);
    p->c = memory(c_md, eng, DNNL_MEMORY_NONE);
    if (packed != nullptr) {
      p->b = packed->Get(pd.weights_desc(), dnnl, &p->b_owner);
      p->packed = true;
    } else {
      p->b = memory(b_user, eng, DNNL_MEMORY_NONE);
    }
    plan = state->plans.Insert(key, std::move(p));
  }
  plan->a.set_data_handle(const_cast<void*>(a));
  plan->c.set_data_handle(out);
  if (!plan->packed) plan->b.set_data_handle(const_cast<void*>(b.values.raw_data()));
  plan->prim.execute(dnnl->stream,
                     {{DNNL_ARG_SRC, plan->a}, {DNNL_ARG_WEIGHTS, plan->b},
                      {DNNL_ARG_DST, plan->c}});
  dnnl->stream.wait();
  // out = A·B' - azp[m]·colsum[n] - d[n]·(rowsum[m] - K·azp[m]), mod 2^32.
  bool any_azp = false;
  for (int64_t r = 0; r < m; ++r) any_azp |= azp[r] != 0;
  if (!any_azp && !b.any_d) return;
#pragma omp parallel for if (m * n > (1 << 16))
  for (int64_t r = 0; r < m; ++r) {
    uint32_t rowsum = 0;
    if (b.any_d) {
      for (int64_t i = 0; i < k; ++i) rowsum += static_cast<uint32_t>(a_at(r, i));
    }
    const uint32_t z = static_cast<uint32_t>(azp[r]);
    const uint32_t rs = rowsum - static_cast<uint32_t>(k) * z;
    uint32_t* o = reinterpret_cast<uint32_t*>(out + r * n);
    for (int64_t j = 0; j < n; ++j) {
      o[j] -= z * static_cast<uint32_t>(b.colsum[j]) + static_cast<uint32_t>(b.d[j]) * rs;
    }
  }
}

// A zero point (or scale) of a matmul operand: one value, one per row of A / column of
// B (a 1-D tensor), or one per batch and row/column ([..., M, 1] / [..., 1, N]).
template <typename T>
struct OperandParam {
  std::vector<T> values;
  int64_t batch_stride = 0;  // per batch of the operand (its own batch index)
  int64_t index_stride = 0;  // per row (A) / column (B)
  T at(int64_t batch, int64_t i) const {
    return values[batch * batch_stride + i * index_stride];
  }
  bool batched() const { return batch_stride != 0; }
};

// `t` for an operand of shape `shape`: `row` selects A's form (per row, [..., M, 1])
// over B's (per column, [..., 1, N]).
template <typename T>
absl::StatusOr<OperandParam<T>> ReadOperandParam(const Tensor* t, const Shape& shape,
                                                 bool row, const char* what) {
  OperandParam<T> p;
  if (t == nullptr) {
    p.values = {T(0)};
    return p;
  }
  const int rank = static_cast<int>(shape.size());
  const int64_t len = row ? shape[rank - 2] : shape[rank - 1];
  const int64_t count = t->num_elements();
  auto value = [&](int64_t i) -> T {
    if constexpr (std::is_same_v<T, float>) {
      return t->data<float>()[i];
    } else {
      return IntAt(*t, i);
    }
  };
  for (int64_t i = 0; i < count; ++i) p.values.push_back(value(i));
  if (count == 1) return p;
  if (t->rank() == 1 && count == len) {
    p.index_stride = 1;
    return p;
  }
  if (t->rank() == rank && rank > 2) {
    Shape want = shape;
    want[row ? rank - 1 : rank - 2] = 1;
    if (t->shape() == want) {
      p.index_stride = 1;
      p.batch_stride = len;
      return p;
    }
  }
  return RunError(what, " ", ShapeToString(t->shape()), " must be a scalar or per ",
                  row ? "row" : "column", " of ", ShapeToString(shape));
}

// Broadcast batch iteration of numpy matmul: out batch b -> offsets (in batches) of A
// and B.
struct BatchMap {
  Shape out_batch;
  std::vector<int64_t> a_index, b_index;  // per output batch
};

absl::StatusOr<BatchMap> MapBatches(const Shape& a, const Shape& b) {
  const int ra = static_cast<int>(a.size()) - 2, rb = static_cast<int>(b.size()) - 2;
  const int r = std::max(ra, rb);
  BatchMap m;
  m.out_batch.assign(r, 1);
  for (int i = 0; i < r; ++i) {
    const int64_t da = i - (r - ra) >= 0 ? a[i - (r - ra)] : 1;
    const int64_t db = i - (r - rb) >= 0 ? b[i - (r - rb)] : 1;
    if (da != db && da != 1 && db != 1) {
      return RunError("batch dims of A ", ShapeToString(a), " and B ", ShapeToString(b),
                      " do not broadcast");
    }
    m.out_batch[i] = da == 1 ? db : da;
  }
  const int64_t total = NumElements(m.out_batch);
  for (int64_t ob = 0; ob < total; ++ob) {
    int64_t rem = ob, ia = 0, ib = 0, sa = 1, sb = 1;
    for (int i = r - 1; i >= 0; --i) {
      const int64_t idx = rem % m.out_batch[i];
      rem /= m.out_batch[i];
      const int ja = i - (r - ra), jb = i - (r - rb);
      if (ja >= 0) {
        if (a[ja] != 1) ia += idx * sa;
        sa *= a[ja];
      }
      if (jb >= 0) {
        if (b[jb] != 1) ib += idx * sb;
        sb *= b[jb];
      }
    }
    m.a_index.push_back(ia);
    m.b_index.push_back(ib);
  }
  return m;
}

// A constant B [K, N] (and constant zero point), prepared and packed at creation.
struct ConstB {
  PreparedB prepared;
  std::unique_ptr<PackedWeights> packed;
};

std::unique_ptr<ConstB> MakeConstB(const Tensor& b, const Tensor* zp) {
  if (b.rank() != 2 || !IsInt8(b.dtype())) return nullptr;
  auto p = ReadOperandParam<int32_t>(zp, b.shape(), false, "b_zero_point");
  if (!p.ok()) return nullptr;  // reported at run time
  auto c = std::make_unique<ConstB>();
  const OperandParam<int32_t> bzp = *p;
  c->prepared = PrepareB(b, 0, b.dim(0), b.dim(1), [&](int64_t j) { return bzp.at(0, j); });
  c->packed = std::make_unique<PackedWeights>(
      c->prepared.values, memory::desc({b.dim(0), b.dim(1)}, dt::s8, memory::format_tag::ab));
  return c;
}

// The int32 product of MatMulInteger/QLinearMatMul: [batch..., M, N] (output row r is
// row r % M of its matrix).
struct IntMatMulResult {
  Tensor acc;
  int64_t m = 0, n = 0;
};

absl::StatusOr<IntMatMulResult> RunIntMatMul(const Tensor* a, const Tensor* azp_t,
                                             const Tensor* b, const Tensor* bzp_t,
                                             const ConstB* cb, bool use_dnnl,
                                             GemmState* state, DnnlResources* dnnl) {
  if (a == nullptr || b == nullptr) return RunError("missing A or B");
  if (!IsInt8(a->dtype()) || !IsInt8(b->dtype())) {
    return RunError("A and B must be UINT8 or INT8, got ", DataTypeName(a->dtype()), " and ",
                    DataTypeName(b->dtype()));
  }
  if (a->rank() < 2 || b->rank() < 2) {
    return RunError("A ", ShapeToString(a->shape()), " and B ", ShapeToString(b->shape()),
                    " must have rank >= 2");
  }
  for (const Tensor* z : {azp_t, bzp_t}) {
    if (z != nullptr && !IsInt8(z->dtype())) return RunError("zero points must be 8-bit");
  }
  if (azp_t != nullptr && azp_t->dtype() != a->dtype()) {
    return RunError("a_zero_point type does not match A");
  }
  if (bzp_t != nullptr && bzp_t->dtype() != b->dtype()) {
    return RunError("b_zero_point type does not match B");
  }
  const int64_t m = a->dim(a->rank() - 2), k = a->dim(a->rank() - 1);
  const int64_t kb = b->dim(b->rank() - 2), n = b->dim(b->rank() - 1);
  if (k != kb) {
    return RunError("A ", ShapeToString(a->shape()), " and B ", ShapeToString(b->shape()),
                    " do not match");
  }
  QS_ASSIGN_OR_RETURN(auto azp, ReadOperandParam<int32_t>(azp_t, a->shape(), true,
                                                          "a_zero_point"));
  QS_ASSIGN_OR_RETURN(auto bzp, ReadOperandParam<int32_t>(bzp_t, b->shape(), false,
                                                          "b_zero_point"));
  QS_ASSIGN_OR_RETURN(BatchMap bm, MapBatches(a->shape(), b->shape()));
  IntMatMulResult r;
  r.m = m;
  r.n = n;
  Shape out_shape = bm.out_batch;
  out_shape.push_back(m);
  out_shape.push_back(n);
  r.acc = Tensor::Uninitialized(DataType::kInt32, out_shape);
  const int64_t batches = NumElements(bm.out_batch);
  const size_t esize = 1;
  const char* abase = static_cast<const char*>(a->raw_data());
  if (b->rank() == 2) {
    // One B for every batch: the batches of A are consecutive rows of one GEMM.
    const int64_t nb_a = batches;
    std::vector<int32_t> zrows(nb_a * m);
    for (int64_t bi = 0; bi < nb_a; ++bi)
      for (int64_t i = 0; i < m; ++i) zrows[bi * m + i] = azp.at(bi, i);
    PreparedB local;
    const PreparedB* pb = cb != nullptr ? &cb->prepared : nullptr;
    if (pb == nullptr) {
      local = PrepareB(*b, 0, k, n, [&](int64_t j) { return bzp.at(0, j); });
      pb = &local;
    }
    IntGemm(abase, a->dtype(), nb_a * m, *pb, cb != nullptr ? cb->packed.get() : nullptr,
            zrows.data(), r.acc.data<int32_t>(), use_dnnl, state, dnnl);
    return r;
  }
  std::vector<int32_t> zrows(m);
  for (int64_t ob = 0; ob < batches; ++ob) {
    const int64_t ia = bm.a_index[ob], ib = bm.b_index[ob];
    for (int64_t i = 0; i < m; ++i) zrows[i] = azp.at(azp.batched() ? ia : 0, i);
    PreparedB pb = PrepareB(*b, ib * k * n, k, n,
                            [&](int64_t j) { return bzp.at(bzp.batched() ? ib : 0, j); });
    IntGemm(abase + ia * m * k * esize, a->dtype(), m, pb, nullptr, zrows.data(),
            r.acc.data<int32_t>() + ob * m * n, use_dnnl, state, dnnl);
  }
  return r;
}

// ------------------------------------------------------------ MatMulInteger ---------

class MatMulIntegerKernel : public Kernel {
 public:
  explicit MatMulIntegerKernel(std::unique_ptr<ConstB> cb)
      : cb_(std::move(cb)), use_dnnl_(UseDnnlInt8()) {}
  std::unique_ptr<KernelState> NewState() const override {
    return std::make_unique<GemmState>();
  }
  int64_t weight_bytes() const override {
    return cb_ ? static_cast<int64_t>(cb_->prepared.values.byte_size()) : 0;
  }

  absl::Status Run(KernelRunContext& ctx) const override {
    QS_ASSIGN_OR_RETURN(
        IntMatMulResult r,
        RunIntMatMul(ctx.input(0), ctx.input(2), ctx.input(1), ctx.input(3), cb_.get(),
                     use_dnnl_, static_cast<GemmState*>(ctx.state), ctx.dnnl));
    (*ctx.outputs)[0] = std::move(r.acc);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<ConstB> cb_;
  bool use_dnnl_;
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeMatMulInteger(const KernelInit& init) {
  const Node& node = *init.node;
  QS_RETURN_IF_ERROR(CheckAttributes(node, {}));
  if (node.inputs.size() < 2) return NodeError(node, "needs inputs A and B");
  std::unique_ptr<ConstB> cb;
  const bool bzp_const = node.inputs.size() <= 3 || node.inputs[3].empty() ||
                         init.constant(3) != nullptr;
  if (init.constant(1) != nullptr && bzp_const) {
    cb = MakeConstB(*init.constant(1), init.constant(3));
  }
  return std::unique_ptr<Kernel>(new MatMulIntegerKernel(std::move(cb)));
}

// ------------------------------------------------------------ QLinearMatMul ---------

class QLinearMatMulKernel : public Kernel {
 public:
  explicit QLinearMatMulKernel(std::unique_ptr<ConstB> cb)
      : cb_(std::move(cb)), use_dnnl_(UseDnnlInt8()) {}
  std::unique_ptr<KernelState> NewState() const override {
    return std::make_unique<GemmState>();
  }
  int64_t weight_bytes() const override {
    return cb_ ? static_cast<int64_t>(cb_->prepared.values.byte_size()) : 0;
  }

  absl::Status Run(KernelRunContext& ctx) const override {
    // a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point
    const Tensor* a = ctx.input(0);
    const Tensor* b = ctx.input(3);
    const Tensor* yzp_t = ctx.input(7);
    for (int i : {1, 4, 6}) {
      const Tensor* s = ctx.input(i);
      if (s == nullptr || s->dtype() != DataType::kFloat32) {
        return RunError("input ", i, " (a scale) must be FP32");
      }
    }
    if (yzp_t == nullptr || !IsInt8(yzp_t->dtype())) {
      return RunError("y_zero_point must be UINT8 or INT8");
    }
    QS_ASSIGN_OR_RETURN(
        IntMatMulResult r,
        RunIntMatMul(a, ctx.input(2), b, ctx.input(5), cb_.get(), use_dnnl_,
                     static_cast<GemmState*>(ctx.state), ctx.dnnl));
    QS_ASSIGN_OR_RETURN(auto as, ReadOperandParam<float>(ctx.input(1), a->shape(), true,
                                                         "a_scale"));
    QS_ASSIGN_OR_RETURN(auto bs, ReadOperandParam<float>(ctx.input(4), b->shape(), false,
                                                         "b_scale"));
    Shape y_rows = r.acc.shape();  // y's scale and zero point follow A's rows
    QS_ASSIGN_OR_RETURN(auto ys, ReadOperandParam<float>(ctx.input(6), y_rows, true,
                                                         "y_scale"));
    QS_ASSIGN_OR_RETURN(auto yzp, ReadOperandParam<int32_t>(yzp_t, y_rows, true,
                                                            "y_zero_point"));
    if (as.batched() || bs.batched() || ys.batched() || yzp.batched()) {
      return RunError("QLinearMatMul scales and zero points must be scalars or 1-D");
    }
    Tensor y = Tensor::Uninitialized(yzp_t->dtype(), r.acc.shape());
    const int64_t m = r.m, n = r.n;
    const int64_t rows = m == 0 ? 0 : r.acc.num_elements() / std::max<int64_t>(1, n);
    const std::vector<int32_t> zero_bias(n, 0);
    std::vector<float> mult(n);
    int64_t mult_row = -1;
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t i = row % m;
      const int64_t key = (as.index_stride || ys.index_stride) ? i : 0;
      if (key != mult_row) {
        for (int64_t j = 0; j < n; ++j) mult[j] = as.at(0, i) * bs.at(0, j) / ys.at(0, i);
        mult_row = key;
      }
      RequantizeRow(r.acc.data<int32_t>() + row * n, zero_bias.data(), mult.data(), n,
                    yzp.at(0, i), &y, row * n);
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<ConstB> cb_;
  bool use_dnnl_;
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeQLinearMatMul(const KernelInit& init) {
  const Node& node = *init.node;
  QS_RETURN_IF_ERROR(CheckAttributes(node, {}));
  if (node.inputs.size() != 8) return NodeError(node, "needs 8 inputs");
  std::unique_ptr<ConstB> cb;
  if (init.constant(3) != nullptr && init.constant(5) != nullptr) {
    cb = MakeConstB(*init.constant(3), init.constant(5));
  }
  return std::unique_ptr<Kernel>(new QLinearMatMulKernel(std::move(cb)));
}

// ------------------------------------------------------------ integer conv ----------

// Conv weights [M, C/G, k...] as s8 (u8 shifted by -128) with per-channel offsets d
// (w - w_zp == w' - d), and the all-ones weights that give window sums when some d != 0.
struct PreparedW {
  Shape shape;
  Tensor values;  // s8, ONNX layout
  std::vector<int32_t> d;
  bool any_d = false;
};

absl::StatusOr<PreparedW> PrepareW(const Tensor& w, const Tensor* zp) {
  if (!IsInt8(w.dtype())) {
    return RunError("w must be UINT8 or INT8, got ", DataTypeName(w.dtype()));
  }
  if (w.rank() < 3 || w.rank() > 5) {
    return RunError("w must have rank 3, 4 or 5, got ", ShapeToString(w.shape()));
  }
  const int64_t m = w.dim(0);
  if (zp != nullptr) {
    if (zp->dtype() != w.dtype()) return RunError("w_zero_point type does not match w");
    if (zp->num_elements() != 1 && !(zp->rank() == 1 && zp->dim(0) == m)) {
      return RunError("w_zero_point ", ShapeToString(zp->shape()),
                      " must be a scalar or have ", m, " values");
    }
  }
  PreparedW p;
  p.shape = w.shape();
  const bool u8 = w.dtype() == DataType::kUInt8;
  p.values = Tensor::Uninitialized(DataType::kInt8, w.shape());
  const int64_t count = w.num_elements();
  if (u8) {
    for (int64_t i = 0; i < count; ++i)
      p.values.data<int8_t>()[i] = static_cast<int8_t>(w.data<uint8_t>()[i] - 128);
  } else {
    std::memcpy(p.values.raw_data(), w.raw_data(), count);
  }
  p.d.resize(m);
  for (int64_t i = 0; i < m; ++i) {
    const int32_t z = zp == nullptr ? 0 : IntAt(*zp, zp->num_elements() == 1 ? 0 : i);
    p.d[i] = z - (u8 ? 128 : 0);
    p.any_d |= p.d[i] != 0;
  }
  return p;
}

// Weight dims in oneDNN's order ([G,] O, I, k...), matching the ONNX buffer row-major.
memory::dims WeightDims(const Shape& w, int64_t group, bool ones) {
  memory::dims dims;
  if (group > 1) dims.push_back(group);
  if (ones) {
    dims.push_back(1);
  } else {
    dims.push_back(group > 1 ? w[0] / group : w[0]);
  }
  dims.push_back(w[1]);
  for (size_t i = 2; i < w.size(); ++i) dims.push_back(w[i]);
  return dims;
}

struct ConvAttrs {
  int64_t group = 1;
  std::vector<int64_t> kernel_shape, strides, dilations, pads;
  AutoPad auto_pad = AutoPad::kNotSet;
};

absl::StatusOr<ConvAttrs> ParseConvAttrs(const Node& node) {
  QS_RETURN_IF_ERROR(CheckAttributes(
      node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}));
  ConvAttrs a;
  a.group = node.attrs.GetInt("group", 1);
  if (a.group < 1) return NodeError(node, "group must be >= 1");
  a.kernel_shape = node.attrs.GetInts("kernel_shape");
  a.strides = node.attrs.GetInts("strides");
  a.dilations = node.attrs.GetInts("dilations");
  a.pads = node.attrs.GetInts("pads");
  QS_ASSIGN_OR_RETURN(a.auto_pad, ParseAutoPad(node));
  for (int64_t v : a.strides)
    if (v < 1) return NodeError(node, "strides must be >= 1");
  for (int64_t v : a.dilations)
    if (v < 1) return NodeError(node, "dilations must be >= 1");
  for (int64_t v : a.pads)
    if (v < 0) return NodeError(node, "negative pads are not supported");
  return a;
}

struct ConvPlan {
  Shape out_shape;
  bool empty = false;
  // Geometry (3 spatial dims, leading ones for 1-D/2-D) for the reference loop.
  int64_t in_sp[3], out_sp[3], ker[3], stride[3], dil[3], pad[3];
  dnnl::primitive prim, prim_sum;
  memory src, weights, dst, zp, ones, sums;
  Tensor weights_owner;    // keeps the packed constant `weights` points into
  Tensor ones_w, sum_buf;  // all-ones weights and window sums (when some d != 0)
  bool const_weights = false;
};

struct ConvState : KernelState {
  ShapeCache<Shape, ConvPlan> plans;
};

// Computes the int32 accumulators conv(x - x_zp, w - w_zp) (channels-last output).
class IntConv {
 public:
  IntConv(ConvAttrs attrs, std::unique_ptr<PreparedW> const_w)
      : attrs_(std::move(attrs)), const_w_(std::move(const_w)), use_dnnl_(UseDnnlInt8()) {
    if (const_w_) {
      packed_ = std::make_unique<PackedWeights>(
          const_w_->values,
          RowMajorDesc(WeightDims(const_w_->shape, attrs_.group, false), dt::s8));
    }
  }

  int64_t weight_bytes() const {
    return const_w_ ? static_cast<int64_t>(const_w_->values.byte_size()) : 0;
  }
  const PreparedW* const_weights() const { return const_w_.get(); }

  // `x` is channels-last (or rank-3..5 trivial); returns acc [N, M, out...] tagged
  // channels-last. `w_out` receives the weights used (for the caller's per-channel
  // parameters).
  absl::StatusOr<Tensor> Run(const Tensor& x, int32_t x_zp, const Tensor* w,
                             const Tensor* w_zp, ConvState* state, DnnlResources* dnnl,
                             const PreparedW** w_used, PreparedW* local) const {
    const PreparedW* pw = const_w_.get();
    if (pw == nullptr) {
      if (w == nullptr) return RunError("missing input w");
      QS_ASSIGN_OR_RETURN(*local, PrepareW(*w, w_zp));
      pw = local;
    }
    *w_used = pw;
    const Shape& ws = pw->shape;
    if (x.rank() != static_cast<int>(ws.size())) {
      return RunError("x ", ShapeToString(x.shape()), " does not match w ",
                      ShapeToString(ws));
    }
    const int64_t g = attrs_.group;
    if (ws[1] * g != x.dim(1) || ws[0] % g != 0) {
      return RunError("x has ", x.dim(1), " channels but w ", ShapeToString(ws),
                      " with group ", g, " expects ", ws[1] * g);
    }
    Shape key = x.shape();
    key.push_back(x.dtype() == DataType::kUInt8 ? 1 : 0);
    key.insert(key.end(), ws.begin(), ws.end());
    key.push_back(pw->any_d ? 1 : 0);
    ConvPlan* plan = state->plans.Find(key);
    if (plan == nullptr) {
      QS_ASSIGN_OR_RETURN(auto built, Build(x, *pw, dnnl));
      plan = state->plans.Insert(std::move(key), std::move(built));
    }
    if (plan->empty) {
      Tensor zeros(DataType::kInt32, plan->out_shape);
      zeros.set_layout(Layout::kChannelsLast);
      return zeros;
    }
    Tensor acc = Tensor::Uninitialized(DataType::kInt32, plan->out_shape);
    acc.set_layout(Layout::kChannelsLast);
    if (use_dnnl_) {
      RunDnnl(x, x_zp, *pw, plan, &acc, dnnl);
    } else {
      RunReference(x, x_zp, *pw, *plan, &acc);
    }
    return acc;
  }

 private:
  absl::StatusOr<std::unique_ptr<ConvPlan>> Build(const Tensor& x, const PreparedW& w,
                                                  DnnlResources* dnnl) const {
    const int sp = x.rank() - 2;
    std::vector<int64_t> kernel(w.shape.begin() + 2, w.shape.end());
    if (!attrs_.kernel_shape.empty() && attrs_.kernel_shape != kernel) {
      return RunError("kernel_shape ", ShapeToString(attrs_.kernel_shape),
                      " does not match w ", ShapeToString(w.shape));
    }
    WindowGeometry geo;
    geo.kernel = kernel;
    geo.strides = attrs_.strides.empty() ? std::vector<int64_t>(sp, 1) : attrs_.strides;
    geo.dilations = attrs_.dilations.empty() ? std::vector<int64_t>(sp, 1) : attrs_.dilations;
    geo.pads = attrs_.pads.empty() ? std::vector<int64_t>(2 * sp, 0) : attrs_.pads;
    geo.auto_pad = attrs_.auto_pad;
    if (static_cast<int>(geo.strides.size()) != sp ||
        static_cast<int>(geo.dilations.size()) != sp ||
        static_cast<int>(geo.pads.size()) != 2 * sp) {
      return RunError("strides/dilations/pads do not match ", sp, " spatial dims");
    }
    std::vector<int64_t> out_sp, pb, pe;
    const std::vector<int64_t> in_sp(x.shape().begin() + 2, x.shape().end());
    QS_RETURN_IF_ERROR(geo.Resolve(in_sp, &out_sp, &pb, &pe));
    auto plan = std::make_unique<ConvPlan>();
    const int64_t oc = w.shape[0];
    plan->out_shape = {x.dim(0), oc};
    plan->out_shape.insert(plan->out_shape.end(), out_sp.begin(), out_sp.end());
    for (int i = 0; i < 3; ++i) {
      const int j = i - (3 - sp);
      plan->in_sp[i] = j >= 0 ? in_sp[j] : 1;
      plan->out_sp[i] = j >= 0 ? out_sp[j] : 1;
      plan->ker[i] = j >= 0 ? kernel[j] : 1;
      plan->stride[i] = j >= 0 ? geo.strides[j] : 1;
      plan->dil[i] = j >= 0 ? geo.dilations[j] : 1;
      plan->pad[i] = j >= 0 ? pb[j] : 0;
    }
    if (NumElements(plan->out_shape) == 0 || x.num_elements() == 0) {
      plan->empty = true;
      return plan;
    }
    if (!use_dnnl_) return plan;

    const dnnl::engine& eng = dnnl->engine;
    const dt src_dt = x.dtype() == DataType::kUInt8 ? dt::u8 : dt::s8;
    const memory::desc src_md = ChannelsLastDesc(x.shape(), src_dt);
    const memory::desc dst_md = ChannelsLastDesc(plan->out_shape, dt::s32);
    const int64_t g = attrs_.group;
    const memory::dims wdims = WeightDims(w.shape, g, false);
    const memory::desc w_user = RowMajorDesc(wdims, dt::s8);
    const memory::desc w_md =
        const_w_ ? memory::desc(wdims, dt::s8, memory::format_tag::any) : w_user;
    const memory::dims strides(geo.strides.begin(), geo.strides.end());
    memory::dims dil(sp), pad_l(pb.begin(), pb.end()), pad_r(pe.begin(), pe.end());
    for (int i = 0; i < sp; ++i) dil[i] = geo.dilations[i] - 1;
    dnnl::primitive_attr attr;
    attr.set_zero_points(DNNL_ARG_SRC, 0, {DNNL_RUNTIME_S32_VAL});
    const auto prop = dnnl::prop_kind::forward_inference;
    dnnl::convolution_forward::primitive_desc pd(
        dnnl::convolution_forward::desc(prop, dnnl::algorithm::convolution_direct, src_md,
                                        w_md, memory::desc(), dst_md, strides, dil, pad_l,
                                        pad_r),
        attr, eng);
    plan->prim = dnnl::convolution_forward(pd);
    plan->src = memory(src_md, eng, DNNL_MEMORY_NONE);
    plan->dst = memory(dst_md, eng, DNNL_MEMORY_NONE);
    plan->zp = memory({{1}, dt::s32, memory::format_tag::a}, eng);
    if (const_w_) {
      plan->weights = packed_->Get(pd.weights_desc(), dnnl, &plan->weights_owner);
      plan->const_weights = true;
    } else {
      plan->weights = memory(w_user, eng, DNNL_MEMORY_NONE);
    }
    if (w.any_d) {
      // Window sums of (x - x_zp) per group: a conv with one all-ones filter per group.
      Shape ones_shape = w.shape;
      ones_shape[0] = g;
      plan->ones_w = Tensor::Uninitialized(DataType::kInt8, ones_shape);
      std::memset(plan->ones_w.raw_data(), 1, plan->ones_w.byte_size());
      const memory::dims ones_dims = WeightDims(ones_shape, g, true);
      const memory::desc ones_md = RowMajorDesc(ones_dims, dt::s8);
      Shape sum_shape = plan->out_shape;
      sum_shape[1] = g;
      const memory::desc sum_md = ChannelsLastDesc(sum_shape, dt::s32);
      dnnl::convolution_forward::primitive_desc spd(
          dnnl::convolution_forward::desc(
              prop, dnnl::algorithm::convolution_direct, src_md,
              memory::desc(ones_dims, dt::s8, memory::format_tag::any), memory::desc(),
              sum_md, strides, dil, pad_l, pad_r),
          attr, eng);
      plan->prim_sum = dnnl::convolution_forward(spd);
      plan->sum_buf = Tensor::Uninitialized(DataType::kInt32, sum_shape);
      plan->ones = memory(spd.weights_desc(), eng);
      dnnl::memory ones_user(ones_md, eng, plan->ones_w.raw_data());
      dnnl::reorder(ones_user, plan->ones).execute(dnnl->stream, ones_user, plan->ones);
      dnnl->stream.wait();
      plan->sums = memory(sum_md, eng, plan->sum_buf.raw_data());
    }
    return plan;
  }

  void RunDnnl(const Tensor& x, int32_t x_zp, const PreparedW& w, ConvPlan* plan,
               Tensor* acc, DnnlResources* dnnl) const {
    plan->src.set_data_handle(const_cast<void*>(x.raw_data()));
    plan->dst.set_data_handle(acc->raw_data());
    if (!plan->const_weights) {
      plan->weights.set_data_handle(const_cast<void*>(w.values.raw_data()));
    }
    *static_cast<int32_t*>(plan->zp.get_data_handle()) = x_zp;
    plan->prim.execute(dnnl->stream, {{DNNL_ARG_SRC, plan->src},
                                      {DNNL_ARG_WEIGHTS, plan->weights},
                                      {DNNL_ARG_DST, plan->dst},
                                      {DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, plan->zp}});
    if (w.any_d) {
      plan->prim_sum.execute(dnnl->stream,
                             {{DNNL_ARG_SRC, plan->src},
                              {DNNL_ARG_WEIGHTS, plan->ones},
                              {DNNL_ARG_DST, plan->sums},
                              {DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, plan->zp}});
    }
    dnnl->stream.wait();
    if (!w.any_d) return;
    // acc[p, m] -= d[m] * sums[p, m / (M / G)]
    const int64_t m = w.shape[0], g = attrs_.group, mg = m / g;
    const int64_t positions = acc->num_elements() / m;
    uint32_t* a = reinterpret_cast<uint32_t*>(acc->data<int32_t>());
    const int32_t* s = plan->sum_buf.data<int32_t>();
#pragma omp parallel for if (positions * m > (1 << 16))
    for (int64_t p = 0; p < positions; ++p) {
      for (int64_t c = 0; c < m; ++c) {
        a[p * m + c] -= static_cast<uint32_t>(w.d[c]) * static_cast<uint32_t>(s[p * g + c / mg]);
      }
    }
  }

  // Direct loop on channels-last x: acc[n, o, m] = sum (x - x_zp) (w' - d).
  void RunReference(const Tensor& x, int32_t x_zp, const PreparedW& w, const ConvPlan& plan,
                    Tensor* acc) const {
    const int64_t n = x.dim(0), c = x.dim(1), m = w.shape[0], g = attrs_.group;
    const int64_t cg = c / g, mg = m / g;
    const int64_t* K = plan.ker;
    const int64_t taps = K[0] * K[1] * K[2];
    // w16[tap][g][c][mo] = w'[g*mg + mo][c][tap] - d
    std::vector<int16_t> w16(taps * g * cg * mg);
    const int8_t* wv = w.values.data<int8_t>();
    for (int64_t oc = 0; oc < m; ++oc)
      for (int64_t ci = 0; ci < cg; ++ci)
        for (int64_t t = 0; t < taps; ++t) {
          const int64_t gi = oc / mg, mo = oc % mg;
          w16[((t * g + gi) * cg + ci) * mg + mo] =
              static_cast<int16_t>(wv[(oc * cg + ci) * taps + t] - w.d[oc]);
        }
    const bool u8 = x.dtype() == DataType::kUInt8;
    const int64_t* I = plan.in_sp;
    const int64_t* O = plan.out_sp;
    const int64_t out_positions = O[0] * O[1] * O[2];
    uint32_t* out = reinterpret_cast<uint32_t*>(acc->data<int32_t>());
#pragma omp parallel for collapse(2) if (n * out_positions * taps * c * mg > (1 << 20))
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t op = 0; op < out_positions; ++op) {
        const int64_t od = op / (O[1] * O[2]), oh = (op / O[2]) % O[1], ow = op % O[2];
        uint32_t* o = out + (b * out_positions + op) * m;
        std::fill(o, o + m, 0u);
        for (int64_t kd = 0; kd < K[0]; ++kd) {
          const int64_t id = od * plan.stride[0] - plan.pad[0] + kd * plan.dil[0];
          if (id < 0 || id >= I[0]) continue;
          for (int64_t kh = 0; kh < K[1]; ++kh) {
            const int64_t ih = oh * plan.stride[1] - plan.pad[1] + kh * plan.dil[1];
            if (ih < 0 || ih >= I[1]) continue;
            for (int64_t kw = 0; kw < K[2]; ++kw) {
              const int64_t iw = ow * plan.stride[2] - plan.pad[2] + kw * plan.dil[2];
              if (iw < 0 || iw >= I[2]) continue;
              const int64_t t = (kd * K[1] + kh) * K[2] + kw;
              const int64_t xoff = (((b * I[0] + id) * I[1] + ih) * I[2] + iw) * c;
              for (int64_t gi = 0; gi < g; ++gi) {
                for (int64_t ci = 0; ci < cg; ++ci) {
                  const int64_t xi = xoff + gi * cg + ci;
                  const int32_t xv =
                      (u8 ? x.data<uint8_t>()[xi] : x.data<int8_t>()[xi]) - x_zp;
                  if (xv == 0) continue;
                  const int16_t* wr = w16.data() + ((t * g + gi) * cg + ci) * mg;
                  uint32_t* og = o + gi * mg;
                  for (int64_t mo = 0; mo < mg; ++mo) og[mo] += static_cast<uint32_t>(xv * wr[mo]);
                }
              }
            }
          }
        }
      }
    }
  }

  ConvAttrs attrs_;
  std::unique_ptr<PreparedW> const_w_;
  std::unique_ptr<PackedWeights> packed_;
  bool use_dnnl_;
};

// Channels-last view of a conv input (plain rank-3..5 inputs are converted).
absl::StatusOr<Tensor> ConvInput(const Tensor* x) {
  if (x == nullptr) return RunError("missing input x");
  if (!IsInt8(x->dtype())) {
    return RunError("x must be UINT8 or INT8, got ", DataTypeName(x->dtype()));
  }
  if (x->rank() < 3 || x->rank() > 5) {
    return RunError("x must have rank 3, 4 or 5, got ", ShapeToString(x->shape()));
  }
  return ToChannelsLast(*x);
}

absl::StatusOr<int32_t> ScalarZeroPoint(const Tensor* zp, DataType type, const char* what) {
  if (zp == nullptr) return 0;
  if (zp->dtype() != type) return RunError(what, " type does not match its input");
  if (zp->num_elements() != 1) {
    return RunError(what, " must be a scalar, got ", ShapeToString(zp->shape()));
  }
  return IntAt(*zp, 0);
}

std::unique_ptr<PreparedW> ConstWeights(const KernelInit& init, size_t w_index,
                                        size_t zp_index) {
  const Node& node = *init.node;
  const Tensor* w = init.constant(w_index);
  const bool zp_const = node.inputs.size() <= zp_index || node.inputs[zp_index].empty() ||
                        init.constant(zp_index) != nullptr;
  if (w == nullptr || !zp_const) return nullptr;
  auto p = PrepareW(*w, init.constant(zp_index));
  if (!p.ok()) return nullptr;  // reported at run time
  return std::make_unique<PreparedW>(std::move(*p));
}

// The shell ConvInteger and QLinearConv share: one IntConv (prepared weights, per-shape
// primitives in a ConvState), channels-last activations.
class IntConvKernel : public Kernel {
 public:
  IntConvKernel(ConvAttrs attrs, std::unique_ptr<PreparedW> w)
      : conv_(std::move(attrs), std::move(w)) {}
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kAny; }
  std::unique_ptr<KernelState> NewState() const override {
    return std::make_unique<ConvState>();
  }
  int64_t weight_bytes() const override { return conv_.weight_bytes(); }

 protected:
  IntConv conv_;
};

// ------------------------------------------------------------ ConvInteger -----------

class ConvIntegerKernel : public IntConvKernel {
 public:
  using IntConvKernel::IntConvKernel;

  absl::Status Run(KernelRunContext& ctx) const override {
    // x, w, x_zero_point, w_zero_point
    QS_ASSIGN_OR_RETURN(Tensor x, ConvInput(ctx.input(0)));
    QS_ASSIGN_OR_RETURN(int32_t x_zp, ScalarZeroPoint(ctx.input(2), x.dtype(), "x_zero_point"));
    const PreparedW* used = nullptr;
    PreparedW local;
    QS_ASSIGN_OR_RETURN(Tensor acc,
                        conv_.Run(x, x_zp, ctx.input(1), ctx.input(3),
                                  static_cast<ConvState*>(ctx.state), ctx.dnnl, &used, &local));
    (*ctx.outputs)[0] = std::move(acc);
    return absl::OkStatus();
  }
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeConvInteger(const KernelInit& init) {
  const Node& node = *init.node;
  if (node.inputs.size() < 2 || node.inputs[0].empty() || node.inputs[1].empty()) {
    return NodeError(node, "needs inputs x and w");
  }
  QS_ASSIGN_OR_RETURN(ConvAttrs attrs, ParseConvAttrs(node));
  return std::unique_ptr<Kernel>(new ConvIntegerKernel(std::move(attrs), ConstWeights(init, 1, 3)));
}

// ------------------------------------------------------------ QLinearConv -----------

class QLinearConvKernel : public IntConvKernel {
 public:
  using IntConvKernel::IntConvKernel;

  absl::Status Run(KernelRunContext& ctx) const override {
    // x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B
    QS_ASSIGN_OR_RETURN(Tensor x, ConvInput(ctx.input(0)));
    QS_ASSIGN_OR_RETURN(int32_t x_zp, ScalarZeroPoint(ctx.input(2), x.dtype(), "x_zero_point"));
    const Tensor* yzp_t = ctx.input(7);
    if (yzp_t != nullptr && !IsInt8(yzp_t->dtype())) {
      return RunError("y_zero_point must be UINT8 or INT8");
    }
    const DataType out_type = yzp_t != nullptr ? yzp_t->dtype() : DataType::kUInt8;
    QS_ASSIGN_OR_RETURN(int32_t y_zp, ScalarZeroPoint(yzp_t, out_type, "y_zero_point"));
    for (int i : {1, 4, 6}) {
      const Tensor* s = ctx.input(i);
      if (s == nullptr || s->dtype() != DataType::kFloat32 || s->num_elements() == 0) {
        return RunError("input ", i, " (a scale) must be a non-empty FP32 tensor");
      }
    }
    if (ctx.input(1)->num_elements() != 1 || ctx.input(6)->num_elements() != 1) {
      return RunError("x_scale and y_scale must be scalars");
    }
    const PreparedW* w = nullptr;
    PreparedW local;
    QS_ASSIGN_OR_RETURN(Tensor acc,
                        conv_.Run(x, x_zp, ctx.input(3), ctx.input(5),
                                  static_cast<ConvState*>(ctx.state), ctx.dnnl, &w, &local));
    const int64_t m = w->shape[0];
    const Tensor* ws = ctx.input(4);
    if (ws->num_elements() != 1 && ws->num_elements() != m) {
      return RunError("w_scale ", ShapeToString(ws->shape()), " must have 1 or ", m,
                      " values");
    }
    const Tensor* b = ctx.input(8);
    std::vector<int32_t> bias(m, 0);
    if (b != nullptr) {
      if (b->dtype() != DataType::kInt32 || b->num_elements() != m) {
        return RunError("B must be INT32 [", m, "], got ", DataTypeName(b->dtype()), " ",
                        ShapeToString(b->shape()));
      }
      std::copy(b->data<int32_t>(), b->data<int32_t>() + m, bias.begin());
    }
    const float xs = ctx.input(1)->data<float>()[0];
    const float ys = ctx.input(6)->data<float>()[0];
    std::vector<float> mult(m);
    for (int64_t c = 0; c < m; ++c) {
      mult[c] = xs * ws->data<float>()[ws->num_elements() == 1 ? 0 : c] / ys;
    }
    Tensor y = Tensor::Uninitialized(out_type, acc.shape());
    y.set_layout(Layout::kChannelsLast);
    const int64_t positions = m == 0 ? 0 : acc.num_elements() / m;
#pragma omp parallel for if (positions * m > (1 << 16))
    for (int64_t p = 0; p < positions; ++p) {
      RequantizeRow(acc.data<int32_t>() + p * m, bias.data(), mult.data(), m, y_zp, &y,
                    p * m);
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

};

absl::StatusOr<std::unique_ptr<Kernel>> MakeQLinearConv(const KernelInit& init) {
  const Node& node = *init.node;
  if (node.inputs.size() < 8) return NodeError(node, "needs at least 8 inputs");
  QS_ASSIGN_OR_RETURN(ConvAttrs attrs, ParseConvAttrs(node));
  return std::unique_ptr<Kernel>(new QLinearConvKernel(std::move(attrs), ConstWeights(init, 3, 5)));
}

// ------------------------------------------------------------ factories -------------

absl::StatusOr<std::unique_ptr<Kernel>> MakeQuantizeLinear(const KernelInit& init) {
  QS_RETURN_IF_ERROR(CheckAttributes(*init.node, {"axis"}));
  return std::unique_ptr<Kernel>(
      new QuantizeLinearKernel(init.node->attrs.GetInt("axis", 1)));
}

absl::StatusOr<std::unique_ptr<Kernel>> MakeDequantizeLinear(const KernelInit& init) {
  QS_RETURN_IF_ERROR(CheckAttributes(*init.node, {"axis"}));
  return std::unique_ptr<Kernel>(
      new DequantizeLinearKernel(init.node->attrs.GetInt("axis", 1)));
}

absl::StatusOr<std::unique_ptr<Kernel>> MakeDynamicQuantizeLinear(const KernelInit& init) {
  QS_RETURN_IF_ERROR(CheckAttributes(*init.node, {}));
  return std::unique_ptr<Kernel>(new DynamicQuantizeLinearKernel());
}

}  // namespace

void RegisterQuantizeOpsKernels(KernelRegistry* r) {
  r->Register("QuantizeLinear", MakeQuantizeLinear, 10, 17);
  r->Register("DequantizeLinear", MakeDequantizeLinear, 10, 17);
  r->Register("DynamicQuantizeLinear", MakeDynamicQuantizeLinear, 11, 17);
  r->Register("MatMulInteger", MakeMatMulInteger, 10, 17);
  r->Register("ConvInteger", MakeConvInteger, 10, 17);
  r->Register("QLinearMatMul", MakeQLinearMatMul, 10, 17);
  r->Register("QLinearConv", MakeQLinearConv, 10, 17);
}

}  // namespace qs
