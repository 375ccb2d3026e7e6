// BatchNormalization (inference), InstanceNormalization and LayerNormalization, FP32.
//
// Plain loops: BatchNormalization is one fused multiply-add per element once the
// per-channel scale and shift are known (and is usually folded into the preceding Conv
// by FoldBatchNormIntoConv anyway); the other two are per-row reductions. Statistics
// are accumulated in double so that large rows do not lose precision.
#include <cmath>
#include <memory>

#include "engine/ops/dnnl_util.h"
#include "engine/ops/registry.h"
#include "engine/passes/passes.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

absl::Status CheckF32(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (t != nullptr && t->dtype() != DataType::kFloat32) {
      return RunError("only FP32 is supported, got ", DataTypeName(t->dtype()));
    }
  }
  return absl::OkStatus();
}

// Indices into a tensor of shape `src` for each element of `dst` (row-major) under
// unidirectional broadcasting of src to dst (src right-aligned, dims 1 or equal).
absl::StatusOr<std::vector<int64_t>> BroadcastIndex(const Shape& src, const Shape& dst) {
  if (src.size() > dst.size()) {
    return RunError("cannot broadcast ", ShapeToString(src), " to ", ShapeToString(dst));
  }
  const size_t off = dst.size() - src.size();
  std::vector<int64_t> src_stride(dst.size(), 0);
  int64_t s = 1;
  for (int i = static_cast<int>(src.size()) - 1; i >= 0; --i) {
    if (src[i] != 1 && src[i] != dst[i + off]) {
      return RunError("cannot broadcast ", ShapeToString(src), " to ",
                      ShapeToString(dst));
    }
    src_stride[i + off] = src[i] == 1 ? 0 : s;
    s *= src[i];
  }
  const int64_t n = NumElements(dst);
  std::vector<int64_t> out(n);
  std::vector<int64_t> idx(dst.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t o = 0;
    for (size_t d = 0; d < dst.size(); ++d) o += idx[d] * src_stride[d];
    out[i] = o;
    for (int d = static_cast<int>(dst.size()) - 1; d >= 0; --d) {
      if (++idx[d] < dst[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

// ------------------------------------------------------------ BatchNormalization ---

class BatchNormKernel : public Kernel {
 public:
  explicit BatchNormKernel(float epsilon) : epsilon_(epsilon) {}

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* scale = ctx.input(1);
    const Tensor* bias = ctx.input(2);
    const Tensor* mean = ctx.input(3);
    const Tensor* var = ctx.input(4);
    if (!x || !scale || !bias || !mean || !var) return RunError("missing input");
    QS_RETURN_IF_ERROR(CheckF32({x, scale, bias, mean, var}));
    if (x->rank() < 2) return RunError("X must have rank >= 2");
    const int64_t n = x->dim(0), c = x->dim(1);
    const int64_t inner = n * c == 0 ? 0 : x->num_elements() / (n * c);
    // Per channel (the usual case), or per (channel, position) for spatial=0 (opset 7).
    const int64_t params = scale->num_elements();
    if (params != c && params != c * inner) {
      return RunError("scale ", ShapeToString(scale->shape()), " does not match X ",
                      ShapeToString(x->shape()));
    }
    for (const Tensor* t : {bias, mean, var}) {
      if (t->num_elements() != params) {
        return RunError("B/mean/var must have ", params, " elements, got ",
                        ShapeToString(t->shape()));
      }
    }
    std::vector<float> a(params), b(params);
    for (int64_t i = 0; i < params; ++i) {
      a[i] = scale->data<float>()[i] / std::sqrt(var->data<float>()[i] + epsilon_);
      b[i] = bias->data<float>()[i] - mean->data<float>()[i] * a[i];
    }
    Tensor y = Tensor::Uninitialized(DataType::kFloat32, x->shape());
    const float* in = x->data<float>();
    float* out = y.data<float>();
    const bool per_channel = params == c;
#pragma omp parallel for if (x->num_elements() > 65536)
    for (int64_t p = 0; p < n * c; ++p) {
      const float* xi = in + p * inner;
      float* yi = out + p * inner;
      const int64_t ch = p % c;
      if (per_channel) {
        const float av = a[ch], bv = b[ch];
        for (int64_t i = 0; i < inner; ++i) yi[i] = xi[i] * av + bv;
      } else {
        const float* ap = a.data() + ch * inner;
        const float* bp = b.data() + ch * inner;
        for (int64_t i = 0; i < inner; ++i) yi[i] = xi[i] * ap[i] + bp[i];
      }
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  const float epsilon_;
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeBatchNorm(const KernelInit& init) {
  const Node& node = *init.node;
  QS_RETURN_IF_ERROR(
      CheckAttributes(node, {"epsilon", "momentum", "spatial", "training_mode"}));
  if (node.attrs.GetInt("training_mode", 0) != 0) {
    return NodeError(node, "training_mode=1 is not supported (inference only)");
  }
  if (node.inputs.size() != 5) return NodeError(node, "needs 5 inputs");
  for (size_t i = 1; i < node.outputs.size(); ++i) {
    if (!node.outputs[i].empty()) {
      return NodeError(node,
                       "the running statistics outputs are training-only and "
                       "not supported");
    }
  }
  return std::unique_ptr<Kernel>(
      new BatchNormKernel(node.attrs.GetFloat("epsilon", 1e-5f)));
}

// ------------------------------------------------------------ InstanceNormalization -

class InstanceNormKernel : public Kernel {
 public:
  explicit InstanceNormKernel(float epsilon) : epsilon_(epsilon) {}

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* scale = ctx.input(1);
    const Tensor* bias = ctx.input(2);
    if (!x || !scale || !bias) return RunError("missing input");
    QS_RETURN_IF_ERROR(CheckF32({x, scale, bias}));
    if (x->rank() < 3) return RunError("X must have rank >= 3");
    const int64_t n = x->dim(0), c = x->dim(1);
    if (scale->num_elements() != c || bias->num_elements() != c) {
      return RunError("scale and B must have ", c, " elements");
    }
    const int64_t inner = n * c == 0 ? 0 : x->num_elements() / (n * c);
    Tensor y = Tensor::Uninitialized(DataType::kFloat32, x->shape());
    const float* in = x->data<float>();
    float* out = y.data<float>();
    const float* sc = scale->data<float>();
    const float* bi = bias->data<float>();
#pragma omp parallel for if (x->num_elements() > 65536)
    for (int64_t p = 0; p < n * c; ++p) {
      const float* xi = in + p * inner;
      float* yi = out + p * inner;
      double sum = 0, sq = 0;
      for (int64_t i = 0; i < inner; ++i) sum += xi[i];
      const double mean = inner > 0 ? sum / inner : 0;
      for (int64_t i = 0; i < inner; ++i) sq += (xi[i] - mean) * (xi[i] - mean);
      const double var = inner > 0 ? sq / inner : 0;
      const float a = static_cast<float>(sc[p % c] / std::sqrt(var + epsilon_));
      const float b = static_cast<float>(bi[p % c] - mean * a);
      for (int64_t i = 0; i < inner; ++i) yi[i] = xi[i] * a + b;
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  const float epsilon_;
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeInstanceNorm(const KernelInit& init) {
  const Node& node = *init.node;
  QS_RETURN_IF_ERROR(CheckAttributes(node, {"epsilon"}));
  if (node.inputs.size() != 3) return NodeError(node, "needs 3 inputs");
  return std::unique_ptr<Kernel>(
      new InstanceNormKernel(node.attrs.GetFloat("epsilon", 1e-5f)));
}

// ------------------------------------------------------------ LayerNormalization ---

class LayerNormKernel : public Kernel {
 public:
  LayerNormKernel(int64_t axis, float epsilon) : axis_(axis), epsilon_(epsilon) {}

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    const Tensor* scale = ctx.input(1);
    const Tensor* bias = ctx.input(2);
    if (!x || !scale) return RunError("missing input");
    QS_RETURN_IF_ERROR(CheckF32({x, scale, bias}));
    QS_ASSIGN_OR_RETURN(const int axis, NormalizeAxis(axis_, x->rank()));
    const Shape norm_shape(x->shape().begin() + axis, x->shape().end());
    const int64_t inner = NumElements(norm_shape);
    const int64_t outer = inner == 0 ? 0 : x->num_elements() / inner;
    // Scale/B normally have exactly the normalized shape; anything else is broadcast
    // to it once here, so that the row loop below is a plain (vectorized) multiply-add.
    const float* sc = scale->data<float>();
    const float* bi = bias != nullptr ? bias->data<float>() : nullptr;
    std::vector<float> sc_full, bi_full;
    if (scale->shape() != norm_shape) {
      QS_ASSIGN_OR_RETURN(const std::vector<int64_t> idx,
                          BroadcastIndex(scale->shape(), norm_shape));
      for (int64_t i : idx) sc_full.push_back(sc[i]);
      sc = sc_full.data();
    }
    if (bias != nullptr && bias->shape() != norm_shape) {
      QS_ASSIGN_OR_RETURN(const std::vector<int64_t> idx,
                          BroadcastIndex(bias->shape(), norm_shape));
      for (int64_t i : idx) bi_full.push_back(bi[i]);
      bi = bi_full.data();
    }
    Tensor y = Tensor::Uninitialized(DataType::kFloat32, x->shape());
    Shape stat_shape(x->shape().begin(), x->shape().begin() + axis);
    stat_shape.resize(x->rank(), 1);
    const bool want_mean = ctx.outputs->size() > 1;
    const bool want_inv = ctx.outputs->size() > 2;
    Tensor mean_t, inv_t;
    if (want_mean) mean_t = Tensor::Uninitialized(DataType::kFloat32, stat_shape);
    if (want_inv) inv_t = Tensor::Uninitialized(DataType::kFloat32, stat_shape);
    const float* in = x->data<float>();
    float* out = y.data<float>();
#pragma omp parallel for if (x->num_elements() > 65536)
    for (int64_t r = 0; r < outer; ++r) {
      const float* xi = in + r * inner;
      float* yi = out + r * inner;
      // Double sums and two passes (no E[x^2] - mean^2 cancellation) keep rows with a
      // large mean accurate. `simd` lets the compiler spread each sum over vector
      // lanes, which it does not do by itself because that reorders the additions.
      double sum = 0, sq = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < inner; ++i) sum += xi[i];
      const double mean = sum / inner;
#pragma omp simd reduction(+ : sq)
      for (int64_t i = 0; i < inner; ++i) {
        const double c = xi[i] - mean;
        sq += c * c;
      }
      const float inv = static_cast<float>(1.0 / std::sqrt(sq / inner + epsilon_));
      const float m = static_cast<float>(mean);
      if (bi != nullptr) {
        for (int64_t i = 0; i < inner; ++i) yi[i] = (xi[i] - m) * inv * sc[i] + bi[i];
      } else {
        for (int64_t i = 0; i < inner; ++i) yi[i] = (xi[i] - m) * inv * sc[i];
      }
      if (want_mean) mean_t.data<float>()[r] = m;
      if (want_inv) inv_t.data<float>()[r] = inv;
    }
    (*ctx.outputs)[0] = std::move(y);
    if (want_mean) (*ctx.outputs)[1] = std::move(mean_t);
    if (want_inv) (*ctx.outputs)[2] = std::move(inv_t);
    return absl::OkStatus();
  }

 private:
  const int64_t axis_;
  const float epsilon_;
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeLayerNorm(const KernelInit& init) {
  const Node& node = *init.node;
  QS_RETURN_IF_ERROR(CheckAttributes(node, {"axis", "epsilon", "stash_type"}));
  if (node.inputs.size() < 2) return NodeError(node, "needs inputs X and Scale");
  return std::unique_ptr<Kernel>(new LayerNormKernel(
      node.attrs.GetInt("axis", -1), node.attrs.GetFloat("epsilon", 1e-5f)));
}

}  // namespace

void RegisterNormKernels(KernelRegistry* r) {
  r->Register("BatchNormalization", MakeBatchNorm, 7, 17);
  r->Register("InstanceNormalization", MakeInstanceNorm, 6, 17);
  r->Register("LayerNormalization", MakeLayerNorm, 17, 17);
  // What FuseLayerNorm makes of the decomposed form older opsets export.
  r->Register(kLayerNormOp, MakeLayerNorm, 1, 17);
}

}  // namespace qs
