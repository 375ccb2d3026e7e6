// Element-wise ops with numpy multidirectional broadcasting (opset 7+):
// arithmetic, comparison, logic, Where, the variadic Min/Max/Sum/Mean, Mod,
// BitShift, PRelu and Clip.
//
// Broadcasting is planned once per Run: dims of size 1 are dropped and adjacent
// dims that every input walks the same way (all contiguous or all broadcast)
// are merged, so the innermost loop runs over a contiguous run where each input
// has stride 1 or 0 (a scalar). The row kernels specialise those stride pairs
// so the compiler vectorizes them. float16/bfloat16 are computed in float32 and
// converted back.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "engine/ops/registry.h"
#include "engine/ops/type_dispatch.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

// ---------------------------------------------------------------------------------------
// Broadcast planning.

struct BroadcastPlan {
  Shape out_shape;
  int64_t out_size = 0;
  // Collapsed iteration dims (innermost last, never empty) and, per input, the
  // element stride of each collapsed dim (0 where the input is broadcast).
  std::vector<int64_t> dims;
  std::vector<std::vector<int64_t>> strides;
};

absl::StatusOr<Shape> BroadcastShape(absl::Span<const Shape* const> shapes) {
  size_t rank = 0;
  for (const Shape* s : shapes) rank = std::max(rank, s->size());
  Shape out(rank, 1);
  for (const Shape* s : shapes) {
    const size_t off = rank - s->size();
    for (size_t d = 0; d < s->size(); ++d) {
      const int64_t v = (*s)[d];
      int64_t& o = out[off + d];
      if (v == o || v == 1) continue;
      if (o == 1) {
        o = v;
        continue;
      }
      std::string msg = "shapes are not broadcastable:";
      for (const Shape* t : shapes)
        absl::StrAppend(&msg, " ", ShapeToString(*t));
      return absl::InvalidArgumentError(msg);
    }
  }
  return out;
}

absl::StatusOr<BroadcastPlan> PlanBroadcast(
    absl::Span<const Shape* const> shapes) {
  BroadcastPlan p;
  QS_ASSIGN_OR_RETURN(p.out_shape, BroadcastShape(shapes));
  p.out_size = NumElements(p.out_shape);
  const size_t rank = p.out_shape.size();
  const size_t k = shapes.size();
  // Per input: strides over the full output rank (0 where broadcast or size 1).
  std::vector<std::vector<int64_t>> full(k, std::vector<int64_t>(rank, 0));
  for (size_t j = 0; j < k; ++j) {
    const Shape& s = *shapes[j];
    const size_t off = rank - s.size();
    int64_t stride = 1;
    for (size_t d = s.size(); d-- > 0;) {
      full[j][off + d] = s[d] == 1 ? 0 : stride;
      stride *= s[d];
    }
  }
  p.strides.assign(k, {});
  for (size_t d = 0; d < rank; ++d) {
    const int64_t n = p.out_shape[d];
    if (n == 1) continue;  // contributes nothing to the iteration
    bool merge = !p.dims.empty();
    for (size_t j = 0; merge && j < k; ++j) {
      // The previous dim folds into this one when the input walks both
      // contiguously.
      merge = p.strides[j].back() == full[j][d] * n;
    }
    if (merge) {
      p.dims.back() *= n;
      for (size_t j = 0; j < k; ++j) p.strides[j].back() = full[j][d];
    } else {
      p.dims.push_back(n);
      for (size_t j = 0; j < k; ++j) p.strides[j].push_back(full[j][d]);
    }
  }
  if (p.dims.empty()) {  // every dim is 1: a single element
    p.dims.push_back(1);
    for (auto& s : p.strides) s.push_back(0);
  }
  return p;
}

// Calls row(offsets, out_offset, n) for each innermost run of the output;
// offsets[j] is input j's element offset, its stride along the run is
// plan.strides[j].back().
template <typename RowFn>
void ForEachRow(const BroadcastPlan& p, RowFn&& row) {
  if (p.out_size == 0) return;
  const size_t k = p.strides.size();
  const int r = static_cast<int>(p.dims.size());
  const int64_t n = p.dims[r - 1];
  const int64_t rows = p.out_size / n;
  std::vector<int64_t> idx(r, 0), off(k, 0);
  for (int64_t i = 0; i < rows; ++i) {
    row(off.data(), i * n, n);
    for (int d = r - 2; d >= 0; --d) {
      for (size_t j = 0; j < k; ++j) off[j] += p.strides[j][d];
      if (++idx[d] < p.dims[d]) break;
      for (size_t j = 0; j < k; ++j) off[j] -= p.strides[j][d] * p.dims[d];
      idx[d] = 0;
    }
  }
}

// One run of a binary op; sa/sb are 0 (broadcast scalar) or 1 (contiguous).
template <typename TA, typename TB, typename TO, typename Op>
inline void BinaryRow(const TA* a, int64_t sa, const TB* b, int64_t sb, TO* out,
                      int64_t n, const Op& op) {
  if (sa != 0 && sb != 0) {
    for (int64_t i = 0; i < n; ++i) out[i] = op(a[i], b[i]);
  } else if (sb != 0) {
    const TA av = a[0];
    for (int64_t i = 0; i < n; ++i) out[i] = op(av, b[i]);
  } else if (sa != 0) {
    const TB bv = b[0];
    for (int64_t i = 0; i < n; ++i) out[i] = op(a[i], bv);
  } else {
    const TO v = op(a[0], b[0]);
    for (int64_t i = 0; i < n; ++i) out[i] = v;
  }
}

// out = op(a, b) with broadcasting; `out_dtype` is the result's element type.
template <typename TA, typename TB, typename TO, typename Op>
absl::StatusOr<Tensor> BroadcastBinary(const Tensor& a, const Tensor& b,
                                       DataType out_dtype, const Op& op) {
  const Shape* shapes[] = {&a.shape(), &b.shape()};
  QS_ASSIGN_OR_RETURN(BroadcastPlan p, PlanBroadcast(shapes));
  Tensor out = Tensor::Uninitialized(out_dtype, p.out_shape);
  const TA* pa = a.data<TA>();
  const TB* pb = b.data<TB>();
  TO* po = out.data<TO>();
  const int64_t sa = p.strides[0].back(), sb = p.strides[1].back();
  ForEachRow(p, [&](const int64_t* off, int64_t o, int64_t n) {
    BinaryRow(pa + off[0], sa, pb + off[1], sb, po + o, n, op);
  });
  return out;
}

absl::StatusOr<Tensor> ToFloat(const Tensor& t) {
  return IsHalf(t.dtype()) ? CastTensor(t, DataType::kFloat32)
                           : absl::StatusOr<Tensor>(t);
}

absl::Status TypeError(const Tensor& t) {
  return RunError("unsupported element type ", DataTypeName(t.dtype()));
}

// ---------------------------------------------------------------------------------------
// Operators as functors over one C++ type.

template <typename T>
using Unsigned = std::make_unsigned_t<T>;

// Integer arithmetic wraps (done in unsigned: signed overflow, and uint16 *
// uint16 promoted to int, would be undefined).
template <typename T>
using Wide = std::conditional_t<(sizeof(T) <= 4), uint32_t, uint64_t>;

struct AddOp {
  template <typename T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      return static_cast<T>(static_cast<Wide<T>>(a) + static_cast<Wide<T>>(b));
    } else {
      return a + b;
    }
  }
};
struct SubOp {
  template <typename T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      return static_cast<T>(static_cast<Wide<T>>(a) - static_cast<Wide<T>>(b));
    } else {
      return a - b;
    }
  }
};
struct MulOp {
  template <typename T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T>) {
      return static_cast<T>(static_cast<Wide<T>>(a) * static_cast<Wide<T>>(b));
    } else {
      return a * b;
    }
  }
};
// Integer division truncates toward zero; the caller rejects zero divisors and
// MIN / -1 wraps instead of trapping.
struct DivOp {
  template <typename T>
  T operator()(T a, T b) const {
    if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
      if (b == -1)
        return static_cast<T>(Unsigned<T>(0) - static_cast<Unsigned<T>>(a));
    }
    return static_cast<T>(a / b);
  }
};
struct MinOp {
  template <typename T>
  T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isnan(a) || std::isnan(b))
        return std::numeric_limits<T>::quiet_NaN();
    }
    return b < a ? b : a;
  }
};
struct MaxOp {
  template <typename T>
  T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      if (std::isnan(a) || std::isnan(b))
        return std::numeric_limits<T>::quiet_NaN();
    }
    return a < b ? b : a;
  }
};
struct EqualOp {
  template <typename T>
  uint8_t operator()(T a, T b) const {
    return a == b;
  }
};
struct LessOp {
  template <typename T>
  uint8_t operator()(T a, T b) const {
    return a < b;
  }
};
struct GreaterOp {
  template <typename T>
  uint8_t operator()(T a, T b) const {
    return a > b;
  }
};
struct LessEqualOp {
  template <typename T>
  uint8_t operator()(T a, T b) const {
    return a <= b;
  }
};
struct GreaterEqualOp {
  template <typename T>
  uint8_t operator()(T a, T b) const {
    return a >= b;
  }
};
struct AndOp {
  uint8_t operator()(uint8_t a, uint8_t b) const { return (a != 0) & (b != 0); }
};
struct OrOp {
  uint8_t operator()(uint8_t a, uint8_t b) const { return (a != 0) | (b != 0); }
};
struct XorOp {
  uint8_t operator()(uint8_t a, uint8_t b) const { return (a != 0) ^ (b != 0); }
};

// Mod: fmod=1 keeps the dividend's sign (C fmod / %), fmod=0 the divisor's
// (Python).
struct ModOp {
  bool fmod;
  template <typename T>
  T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      T r = std::fmod(a, b);
      if (!fmod && r != 0 && ((r < 0) != (b < 0))) r += b;
      return r;
    } else if constexpr (std::is_signed_v<T>) {
      if (b == -1) return 0;  // MIN % -1 would trap
      T r = static_cast<T>(a % b);
      if (!fmod && r != 0 && ((r < 0) != (b < 0))) r = static_cast<T>(r + b);
      return r;
    } else {
      return static_cast<T>(a % b);
    }
  }
};

struct ShiftOp {
  bool left;
  template <typename T>
  T operator()(T a, T b) const {
    static_assert(std::is_unsigned_v<T>);
    // Shifting by the type's width or more is undefined in C++; the result is
    // 0.
    if (b >= static_cast<T>(sizeof(T) * 8)) return 0;
    return left ? static_cast<T>(a << b) : static_cast<T>(a >> b);
  }
};

struct PowOp {
  template <typename T>
  T operator()(T a, T b) const {
    if constexpr (std::is_floating_point_v<T>) {
      return std::pow(a, b);
    } else {
      return static_cast<T>(
          std::pow(static_cast<double>(a), static_cast<double>(b)));
    }
  }
};

struct PReluOp {
  template <typename T>
  T operator()(T x, T slope) const {
    if constexpr (std::is_unsigned_v<T>) {
      return x;
    } else {
      return x < T(0) ? MulOp()(x, slope) : x;
    }
  }
};

// ---------------------------------------------------------------------------------------
// Kernels.

enum TypeSet { kArith, kUnsigned, kCompare, kEqual, kLogic };

bool HasZero(const Tensor& t) {
  bool zero = false;
  VisitNumeric(t.dtype(), false, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_integral_v<T>) {
      const T* p = t.data<T>();
      const int64_t n = t.num_elements();
      for (int64_t i = 0; i < n; ++i) zero |= p[i] == 0;
    }
  });
  return zero;
}

// Applies `op` to two tensors of the same dtype. kArith: numeric result of the
// input type; kUnsigned: like kArith for unsigned integers only;
// kCompare/kEqual: bool result (kEqual also accepts bool inputs); kLogic: bool
// inputs and result. `int_divisor_check` rejects a zero integer divisor, which
// would trap.
template <TypeSet kTypes, typename Op>
absl::StatusOr<Tensor> ApplyBinary(const Tensor& a_in, const Tensor& b_in,
                                   const Op& op,
                                   bool int_divisor_check = false) {
  if (a_in.dtype() != b_in.dtype()) {
    return RunError("input types differ: ", DataTypeName(a_in.dtype()), " vs ",
                    DataTypeName(b_in.dtype()));
  }
  const DataType orig = a_in.dtype();
  if constexpr (kTypes == kLogic) {
    if (orig != DataType::kBool) return TypeError(a_in);
    return BroadcastBinary<uint8_t, uint8_t, uint8_t>(a_in, b_in,
                                                      DataType::kBool, op);
  } else {
    QS_ASSIGN_OR_RETURN(Tensor a, ToFloat(a_in));
    QS_ASSIGN_OR_RETURN(Tensor b, ToFloat(b_in));
    if (int_divisor_check && HasZero(b))
      return RunError("integer division by zero");
    absl::StatusOr<Tensor> out = TypeError(a_in);
    // Unsigned-only ops never see bool: uint8_t stands for both.
    if (kTypes == kUnsigned && orig == DataType::kBool) return TypeError(a_in);
    VisitNumeric(a.dtype(), kTypes == kEqual, [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (kTypes == kUnsigned) {
        if constexpr (std::is_unsigned_v<T>) {
          out = BroadcastBinary<T, T, T>(a, b, a.dtype(), op);
        }
      } else if constexpr (kTypes == kArith) {
        out = BroadcastBinary<T, T, T>(a, b, a.dtype(), op);
      } else {
        out = BroadcastBinary<T, T, uint8_t>(a, b, DataType::kBool, op);
      }
    });
    if (kTypes == kArith && out.ok() && IsHalf(orig))
      return CastTensor(*out, orig);
    return out;
  }
}

template <TypeSet kTypes, typename Op>
class BinaryKernel : public Kernel {
 public:
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kElementwise; }
  explicit BinaryKernel(Op op, bool int_divisor_check = false)
      : op_(op), int_divisor_check_(int_divisor_check) {}
  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* a = ctx.input(0);
    const Tensor* b = ctx.input(1);
    if (a == nullptr || b == nullptr) return RunError("missing input");
    QS_ASSIGN_OR_RETURN((*ctx.outputs)[0],
                        ApplyBinary<kTypes>(*a, *b, op_, int_divisor_check_));
    return absl::OkStatus();
  }

 private:
  Op op_;
  bool int_divisor_check_;
};

template <TypeSet kTypes, typename Op>
KernelFactory Binary(Op op) {
  return
      [op](const KernelInit& init) -> absl::StatusOr<std::unique_ptr<Kernel>> {
        if (init.node->attrs.Has("broadcast") || init.node->attrs.Has("axis")) {
          return NodeError(
              *init.node,
              "legacy 'broadcast'/'axis' attributes are not supported");
        }
        return std::make_unique<BinaryKernel<kTypes, Op>>(op);
      };
}

class NotKernel : public Kernel {
 public:
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kElementwise; }
  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (x == nullptr) return RunError("missing input");
    if (x->dtype() != DataType::kBool) return TypeError(*x);
    Tensor y = Tensor::Uninitialized(DataType::kBool, x->shape());
    const uint8_t* in = x->data<uint8_t>();
    uint8_t* out = y.data<uint8_t>();
    const int64_t n = x->num_elements();
    for (int64_t i = 0; i < n; ++i) out[i] = in[i] == 0;
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }
};

// Pow: the exponent may have a different type than the base (opset 12+); the
// result has the base's type. Same-type float32/float64 stays in that type;
// every other combination is computed in double (exact for integer results
// below 2^53).
class PowKernel : public Kernel {
 public:
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kElementwise; }
  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* a = ctx.input(0);
    const Tensor* b = ctx.input(1);
    if (a == nullptr || b == nullptr) return RunError("missing input");
    const DataType t = a->dtype();
    // x^2 (LayerNorm's variance) and x^0.5 dominate in exported models; std::pow costs
    // ~15 ns per element, a multiply well under one.
    if (t == DataType::kFloat32 && b->num_elements() == 1 &&
        (b->dtype() == DataType::kFloat32 || b->dtype() == DataType::kFloat64)) {
      const double e = b->dtype() == DataType::kFloat32 ? b->data<float>()[0]
                                                        : b->data<double>()[0];
      if (e == 2.0 || e == 1.0 || e == 0.5 || e == 3.0) {
        Tensor y = Tensor::Uninitialized(DataType::kFloat32, a->shape());
        const float* x = a->data<float>();
        float* o = y.data<float>();
        const int64_t n = a->num_elements();
        if (e == 2.0) {
          for (int64_t i = 0; i < n; ++i) o[i] = x[i] * x[i];
        } else if (e == 3.0) {
          for (int64_t i = 0; i < n; ++i) o[i] = x[i] * x[i] * x[i];
        } else if (e == 1.0) {
          for (int64_t i = 0; i < n; ++i) o[i] = x[i];
        } else {
          for (int64_t i = 0; i < n; ++i) o[i] = std::sqrt(x[i]);
        }
        (*ctx.outputs)[0] = std::move(y);
        return absl::OkStatus();
      }
    }
    if (t == b->dtype() &&
        (t == DataType::kFloat32 || t == DataType::kFloat64)) {
      QS_ASSIGN_OR_RETURN((*ctx.outputs)[0],
                          ApplyBinary<kArith>(*a, *b, PowOp()));
      return absl::OkStatus();
    }
    if (t == DataType::kBool || b->dtype() == DataType::kBool)
      return TypeError(*a);
    QS_ASSIGN_OR_RETURN(Tensor ad, CastTensor(*a, DataType::kFloat64));
    QS_ASSIGN_OR_RETURN(Tensor bd, CastTensor(*b, DataType::kFloat64));
    QS_ASSIGN_OR_RETURN(Tensor out, ApplyBinary<kArith>(ad, bd, PowOp()));
    QS_ASSIGN_OR_RETURN((*ctx.outputs)[0], CastTensor(out, t));
    return absl::OkStatus();
  }
};

// Variadic Min/Max/Sum/Mean: a left fold of the broadcasting binary op.
template <typename Op>
class VariadicKernel : public Kernel {
 public:
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kElementwise; }
  VariadicKernel(Op op, bool mean) : op_(op), mean_(mean) {}
  absl::Status Run(KernelRunContext& ctx) const override {
    if (ctx.num_inputs() == 0 || ctx.input(0) == nullptr)
      return RunError("missing input");
    Tensor acc = *ctx.input(0);
    for (size_t i = 1; i < ctx.num_inputs(); ++i) {
      if (ctx.input(i) == nullptr) return RunError("missing input ", i);
      QS_ASSIGN_OR_RETURN(acc, ApplyBinary<kArith>(acc, *ctx.input(i), op_));
    }
    if (mean_ && ctx.num_inputs() > 1) {
      const DataType orig = acc.dtype();
      // acc is a fresh result here (more than one input), so scaling in place
      // is safe.
      QS_ASSIGN_OR_RETURN(Tensor f, ToFloat(acc));
      const int64_t n = f.num_elements();
      const double count = static_cast<double>(ctx.num_inputs());
      if (f.dtype() == DataType::kFloat32) {
        float* p = f.data<float>();
        const float inv = static_cast<float>(1.0 / count);
        for (int64_t i = 0; i < n; ++i) p[i] *= inv;
      } else if (f.dtype() == DataType::kFloat64) {
        double* p = f.data<double>();
        for (int64_t i = 0; i < n; ++i) p[i] /= count;
      } else {
        return TypeError(acc);
      }
      QS_ASSIGN_OR_RETURN(acc, CastTensor(f, orig));
    }
    (*ctx.outputs)[0] = std::move(acc);
    return absl::OkStatus();
  }

 private:
  Op op_;
  bool mean_;
};

// Where(cond, x, y): a three-way broadcast; elements are moved as raw bits, so
// it works for every element type of the same size.
class WhereKernel : public Kernel {
 public:
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kElementwise; }
  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* c = ctx.input(0);
    const Tensor* x = ctx.input(1);
    const Tensor* y = ctx.input(2);
    if (c == nullptr || x == nullptr || y == nullptr)
      return RunError("missing input");
    if (c->dtype() != DataType::kBool)
      return RunError("condition must be BOOL");
    if (x->dtype() != y->dtype()) return RunError("X and Y types differ");
    const Shape* shapes[] = {&c->shape(), &x->shape(), &y->shape()};
    QS_ASSIGN_OR_RETURN(BroadcastPlan p, PlanBroadcast(shapes));
    Tensor out = Tensor::Uninitialized(x->dtype(), p.out_shape);
    switch (DataTypeSize(x->dtype())) {
      case 1:
        Select<uint8_t>(p, *c, *x, *y, &out);
        break;
      case 2:
        Select<uint16_t>(p, *c, *x, *y, &out);
        break;
      case 4:
        Select<uint32_t>(p, *c, *x, *y, &out);
        break;
      case 8:
        Select<uint64_t>(p, *c, *x, *y, &out);
        break;
      default:
        return TypeError(*x);
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  }

 private:
  template <typename T>
  static void Select(const BroadcastPlan& p, const Tensor& c, const Tensor& x,
                     const Tensor& y, Tensor* out) {
    const uint8_t* pc = c.data<uint8_t>();
    const T* px = x.data<T>();
    const T* py = y.data<T>();
    T* po = out->data<T>();
    const int64_t sc = p.strides[0].back(), sx = p.strides[1].back(),
                  sy = p.strides[2].back();
    ForEachRow(p, [&](const int64_t* off, int64_t o, int64_t n) {
      const uint8_t* cc = pc + off[0];
      const T* xx = px + off[1];
      const T* yy = py + off[2];
      T* oo = po + o;
      if (sc != 0 && sx != 0 && sy != 0) {
        for (int64_t i = 0; i < n; ++i) oo[i] = cc[i] ? xx[i] : yy[i];
      } else {
        for (int64_t i = 0; i < n; ++i)
          oo[i] = cc[i * sc] ? xx[i * sx] : yy[i * sy];
      }
    });
  }
};

// Clip: bounds from attributes (opset 6-10) or optional scalar inputs (11+); an
// absent bound is the type's limit.
class ClipKernel : public Kernel {
 public:
  LayoutPolicy layout_policy() const override { return LayoutPolicy::kElementwise; }
  ClipKernel(bool from_attrs, float min, float max)
      : from_attrs_(from_attrs), min_(min), max_(max) {}

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x_in = ctx.input(0);
    if (x_in == nullptr) return RunError("missing input");
    const DataType orig = x_in->dtype();
    QS_ASSIGN_OR_RETURN(Tensor x, ToFloat(*x_in));
    absl::Status st = TypeError(*x_in);
    Tensor y = Tensor::Uninitialized(x.dtype(), x.shape());
    VisitNumeric(x.dtype(), false, [&](auto tag) {
      using T = typename decltype(tag)::type;
      T lo = std::numeric_limits<T>::lowest();
      T hi = std::numeric_limits<T>::max();
      if (from_attrs_) {
        lo = static_cast<T>(min_);
        hi = static_cast<T>(max_);
      } else {
        st = Bound<T>(ctx.input(1), orig, &lo);
        if (st.ok()) st = Bound<T>(ctx.input(2), orig, &hi);
        if (!st.ok()) return;
      }
      const T* in = x.data<T>();
      T* out = y.data<T>();
      const int64_t n = x.num_elements();
      for (int64_t i = 0; i < n; ++i) {
        const T v = in[i] < lo ? lo : in[i];
        out[i] = v > hi ? hi : v;
      }
      st = absl::OkStatus();
    });
    QS_RETURN_IF_ERROR(st);
    if (IsHalf(orig)) {
      QS_ASSIGN_OR_RETURN(y, CastTensor(y, orig));
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  template <typename T>
  static absl::Status Bound(const Tensor* t, DataType want, T* v) {
    if (t == nullptr) return absl::OkStatus();
    if (t->dtype() != want)
      return RunError("min/max type differs from the input's");
    if (t->num_elements() != 1) return RunError("min/max must be scalars");
    QS_ASSIGN_OR_RETURN(Tensor f, ToFloat(*t));
    *v = f.data<T>()[0];
    return absl::OkStatus();
  }

  bool from_attrs_;
  float min_, max_;
};

template <typename Op>
KernelFactory Variadic(Op op, bool mean = false) {
  return
      [op, mean](const KernelInit&) -> absl::StatusOr<std::unique_ptr<Kernel>> {
        return std::make_unique<VariadicKernel<Op>>(op, mean);
      };
}

template <typename K>
KernelFactory Simple() {
  return [](const KernelInit&) -> absl::StatusOr<std::unique_ptr<Kernel>> {
    return std::make_unique<K>();
  };
}

}  // namespace

void RegisterBinaryKernels(KernelRegistry* r) {
  // Opsets below 7 used 'broadcast'/'axis' attributes instead of numpy
  // broadcasting.
  r->Register("Add", Binary<kArith>(AddOp()), 7);
  r->Register("Sub", Binary<kArith>(SubOp()), 7);
  r->Register("Mul", Binary<kArith>(MulOp()), 7);
  r->Register(
      "Div",
      [](const KernelInit&) -> absl::StatusOr<std::unique_ptr<Kernel>> {
        return std::make_unique<BinaryKernel<kArith, DivOp>>(
            DivOp(), /*int_divisor_check=*/true);
      },
      7);
  r->Register("Pow", Simple<PowKernel>(), 7);
  r->Register("PRelu", Binary<kArith>(PReluOp()), 7);
  r->Register("Equal", Binary<kEqual>(EqualOp()), 7);
  r->Register("Less", Binary<kCompare>(LessOp()), 7);
  r->Register("Greater", Binary<kCompare>(GreaterOp()), 7);
  r->Register("LessOrEqual", Binary<kCompare>(LessEqualOp()), 12);
  r->Register("GreaterOrEqual", Binary<kCompare>(GreaterEqualOp()), 12);
  r->Register("And", Binary<kLogic>(AndOp()), 7);
  r->Register("Or", Binary<kLogic>(OrOp()), 7);
  r->Register("Xor", Binary<kLogic>(XorOp()), 7);
  r->Register("Not", Simple<NotKernel>(), 1);
  r->Register("Where", Simple<WhereKernel>(), 9);
  // Opsets 6-7 of the variadic ops had no broadcasting; broadcasting is a
  // superset.
  r->Register("Min", Variadic(MinOp()), 6);
  r->Register("Max", Variadic(MaxOp()), 6);
  r->Register("Sum", Variadic(AddOp()), 6);
  r->Register("Mean", Variadic(AddOp(), /*mean=*/true), 6);
  r->Register(
      "Mod",
      [](const KernelInit& init) -> absl::StatusOr<std::unique_ptr<Kernel>> {
        const int64_t fmod = init.node->attrs.GetInt("fmod", 0);
        if (fmod != 0 && fmod != 1) {
          return NodeError(*init.node, "fmod must be 0 or 1, got ", fmod);
        }
        return std::make_unique<BinaryKernel<kArith, ModOp>>(
            ModOp{fmod == 1},
            /*int_divisor_check=*/true);
      },
      10);
  r->Register(
      "BitShift",
      [](const KernelInit& init) -> absl::StatusOr<std::unique_ptr<Kernel>> {
        const std::string dir = init.node->attrs.GetString("direction", "");
        if (dir != "LEFT" && dir != "RIGHT") {
          return NodeError(*init.node, "direction must be LEFT or RIGHT, got '",
                           dir, "'");
        }
        return std::make_unique<BinaryKernel<kUnsigned, ShiftOp>>(
            ShiftOp{dir == "LEFT"});
      },
      11);
  r->Register(
      "Clip",
      [](const KernelInit& init) -> absl::StatusOr<std::unique_ptr<Kernel>> {
        const Attributes& a = init.node->attrs;
        if (init.opset < 11) {
          return std::make_unique<ClipKernel>(
              true, a.GetFloat("min", std::numeric_limits<float>::lowest()),
              a.GetFloat("max", std::numeric_limits<float>::max()));
        }
        if (a.Has("min") || a.Has("max")) {
          return NodeError(*init.node,
                           "min/max are inputs since opset 11, not attributes");
        }
        return std::make_unique<ClipKernel>(false, 0.f, 0.f);
      },
      6);
}

}  // namespace qs
