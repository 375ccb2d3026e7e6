// Unary element-wise ops on float tensors (plain C++ loops the compiler vectorizes);
// integer inputs are accepted where ONNX allows them (Abs, Neg, Sign).
#include <cmath>
#include <functional>

#include "engine/ops/registry.h"
#include "engine/passes/passes.h"

namespace qs {
namespace {

class UnaryKernel : public Kernel {
 public:
  using Fn = std::function<void(const float*, float*, int64_t)>;
  explicit UnaryKernel(Fn fn) : fn_(std::move(fn)) {}
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kElementwise; }
  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (x == nullptr) return RunError("missing input");
    if (x->dtype() != DataType::kFloat32) {
      return RunError("expected FP32 input, got ", DataTypeName(x->dtype()));
    }
    Tensor y = Tensor::Uninitialized(DataType::kFloat32, x->shape());
    fn_(x->data<float>(), y.data<float>(), x->num_elements());
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  Fn fn_;
};

template <typename F>
KernelFactory Unary(F f) {
  return [f](const KernelInit&) -> absl::StatusOr<std::unique_ptr<Kernel>> {
    return std::make_unique<UnaryKernel>([f](const float* x, float* y, int64_t n) {
      for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
    });
  };
}

// A unary op whose function depends on attributes.
template <typename Make>
KernelFactory UnaryAttr(Make make) {
  return [make](const KernelInit& init) -> absl::StatusOr<std::unique_ptr<Kernel>> {
    auto f = make(init.node->attrs);
    return std::make_unique<UnaryKernel>([f](const float* x, float* y, int64_t n) {
      for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
    });
  };
}

// Abs/Neg/Sign also take integer tensors.
template <typename F>
class NumericUnaryKernel : public Kernel {
 public:
  explicit NumericUnaryKernel(F f) : f_(f) {}
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kElementwise; }
  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor& x = *ctx.input(0);
    Tensor y = Tensor::Uninitialized(x.dtype(), x.shape());
    const int64_t n = x.num_elements();
    switch (x.dtype()) {
      case DataType::kFloat32: Apply<float>(x, &y, n); break;
      case DataType::kFloat64: Apply<double>(x, &y, n); break;
      case DataType::kInt8: Apply<int8_t>(x, &y, n); break;
      case DataType::kInt16: Apply<int16_t>(x, &y, n); break;
      case DataType::kInt32: Apply<int32_t>(x, &y, n); break;
      case DataType::kInt64: Apply<int64_t>(x, &y, n); break;
      case DataType::kUInt8: Apply<uint8_t>(x, &y, n); break;
      case DataType::kUInt16: Apply<uint16_t>(x, &y, n); break;
      case DataType::kUInt32: Apply<uint32_t>(x, &y, n); break;
      case DataType::kUInt64: Apply<uint64_t>(x, &y, n); break;
      default: return RunError("unsupported type ", DataTypeName(x.dtype()));
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  template <typename T>
  void Apply(const Tensor& x, Tensor* y, int64_t n) const {
    const T* in = x.data<T>();
    T* out = y->data<T>();
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(f_(in[i]));
  }
  F f_;
};

template <typename F>
KernelFactory NumericUnary(F f) {
  return [f](const KernelInit&) -> absl::StatusOr<std::unique_ptr<Kernel>> {
    return std::make_unique<NumericUnaryKernel<F>>(f);
  };
}

struct AbsFn {
  template <typename T>
  T operator()(T v) const {
    if constexpr (std::is_unsigned_v<T>) {
      return v;
    } else {
      return v < 0 ? static_cast<T>(-v) : v;
    }
  }
};
struct NegFn {
  template <typename T>
  T operator()(T v) const {
    return static_cast<T>(-v);
  }
};
struct SignFn {
  template <typename T>
  T operator()(T v) const {
    return static_cast<T>((v > T(0)) - (v < T(0)));
  }
};

// erf to ~1.2e-7 absolute error (Abramowitz & Stegun 7.1.26 is 1.5e-7; this rational
// form is the one used by Eigen/XLA for float), branch-free so the loop vectorizes; libm's
// erff does not. Inputs beyond |x| > 4 saturate to +-1 (erf(4) = 1 - 1.5e-8).
float FastErf(float x) {
  x = x < -4.f ? -4.f : (x > 4.f ? 4.f : x);  // (fmin/fmax block vectorizing)
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  p = p * x;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return p / q;
}

}  // namespace

void RegisterElementwiseKernels(KernelRegistry* r) {
  r->Register("Relu", Unary([](float v) { return v > 0.f ? v : 0.f; }));
  r->Register("Sigmoid", Unary([](float v) { return 1.f / (1.f + std::exp(-v)); }));
  r->Register("Tanh", Unary([](float v) { return std::tanh(v); }));
  r->Register("Exp", Unary([](float v) { return std::exp(v); }));
  r->Register("Log", Unary([](float v) { return std::log(v); }));
  r->Register("Sqrt", Unary([](float v) { return std::sqrt(v); }));
  r->Register("Reciprocal", Unary([](float v) { return 1.f / v; }));
  r->Register("Erf", Unary([](float v) { return FastErf(v); }));
  r->Register(kGeluOp, Unary([](float v) { return 0.5f * v * (1.f + FastErf(v * 0.70710678f)); }));
  r->Register("Floor", Unary([](float v) { return std::floor(v); }));
  r->Register("Ceil", Unary([](float v) { return std::ceil(v); }));
  r->Register("Softplus", Unary([](float v) { return std::log1p(std::exp(v)); }));
  r->Register("Abs", NumericUnary(AbsFn()));
  r->Register("Neg", NumericUnary(NegFn()));
  r->Register("Sign", NumericUnary(SignFn()));
  r->Register("LeakyRelu", UnaryAttr([](const Attributes& a) {
                const float alpha = a.GetFloat("alpha", 0.01f);
                return [alpha](float v) { return v >= 0.f ? v : alpha * v; };
              }));
  r->Register("Elu", UnaryAttr([](const Attributes& a) {
                const float alpha = a.GetFloat("alpha", 1.f);
                return [alpha](float v) { return v >= 0.f ? v : alpha * (std::exp(v) - 1.f); };
              }));
  r->Register("HardSigmoid", UnaryAttr([](const Attributes& a) {
                const float alpha = a.GetFloat("alpha", 0.2f);
                const float beta = a.GetFloat("beta", 0.5f);
                return [alpha, beta](float v) {
                  return std::fmax(0.f, std::fmin(1.f, alpha * v + beta));
                };
              }));
  r->Register("HardSwish", Unary([](float v) {
                return v * std::fmax(0.f, std::fmin(1.f, v / 6.f + 0.5f));
              }));
}

}  // namespace qs
