// Reductions: ReduceSum/Mean/Max/Min/Prod/L2/SumSquare/LogSumExp.
//
// The input's dims are collapsed into alternating kept/reduced groups (size-1
// dims dropped, neighbours with the same role merged). Each reduced group is
// then removed in one pass over an [outer, n, inner] view, innermost group
// first; when inner > 1 the pass accumulates whole contiguous rows, which
// vectorizes. Every reduction here composes across passes (LogSumExp of partial
// LogSumExps is exact), so multi-axis reductions need no transpose.
// float16/bfloat16 are computed in float32; Mean, L2 and LogSumExp of integers
// are computed in double and cast back.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "engine/ops/registry.h"
#include "engine/ops/type_dispatch.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

enum class ReduceKind {
  kSum,
  kMean,
  kMax,
  kMin,
  kProd,
  kL2,
  kSumSquare,
  kLogSumExp
};

// What one pass accumulates.
enum class Acc { kSum, kSumSquare, kMax, kMin, kProd, kLogSumExp };

template <typename T>
T Lowest() {
  if constexpr (std::numeric_limits<T>::has_infinity) {
    return -std::numeric_limits<T>::infinity();
  } else {
    return std::numeric_limits<T>::lowest();
  }
}
template <typename T>
T Highest() {
  if constexpr (std::numeric_limits<T>::has_infinity) {
    return std::numeric_limits<T>::infinity();
  } else {
    return std::numeric_limits<T>::max();
  }
}

template <typename T, Acc kAcc>
T Init() {
  if constexpr (kAcc == Acc::kMax) return Lowest<T>();
  if constexpr (kAcc == Acc::kMin) return Highest<T>();
  if constexpr (kAcc == Acc::kProd) return T(1);
  return T(0);
}

template <typename T, Acc kAcc>
inline T Combine(T acc, T v) {
  if constexpr (kAcc == Acc::kSum) return static_cast<T>(acc + v);
  if constexpr (kAcc == Acc::kSumSquare) return static_cast<T>(acc + v * v);
  if constexpr (kAcc == Acc::kMax) return v > acc ? v : acc;
  if constexpr (kAcc == Acc::kMin) return v < acc ? v : acc;
  return static_cast<T>(acc * v);  // kProd
}

// dst[o, i] = reduce_k src[o, k, i] for the [outer, n, inner] view.
template <typename T, Acc kAcc>
void Pass(const T* src, int64_t outer, int64_t n, int64_t inner, T* dst) {
  for (int64_t o = 0; o < outer; ++o) {
    const T* s = src + o * n * inner;
    T* d = dst + o * inner;
    if (inner == 1) {
      // Four partial accumulators break the dependency chain of a contiguous
      // reduction.
      T a0 = Init<T, kAcc>(), a1 = a0, a2 = a0, a3 = a0;
      int64_t k = 0;
      for (; k + 4 <= n; k += 4) {
        a0 = Combine<T, kAcc>(a0, s[k]);
        a1 = Combine<T, kAcc>(a1, s[k + 1]);
        a2 = Combine<T, kAcc>(a2, s[k + 2]);
        a3 = Combine<T, kAcc>(a3, s[k + 3]);
      }
      for (; k < n; ++k) a0 = Combine<T, kAcc>(a0, s[k]);
      // Partials merge with the plain operation (squares are already taken).
      constexpr Acc kMerge = kAcc == Acc::kSumSquare ? Acc::kSum : kAcc;
      d[0] = Combine<T, kMerge>(Combine<T, kMerge>(a0, a1),
                                Combine<T, kMerge>(a2, a3));
    } else {
      std::fill(d, d + inner, Init<T, kAcc>());
      for (int64_t k = 0; k < n; ++k) {
        const T* row = s + k * inner;
        for (int64_t i = 0; i < inner; ++i)
          d[i] = Combine<T, kAcc>(d[i], row[i]);
      }
    }
  }
}

// Numerically stable log(sum(exp(x))) over the [outer, n, inner] view (floats
// only).
template <typename T>
void LogSumExpPass(const T* src, int64_t outer, int64_t n, int64_t inner,
                   T* dst) {
  std::vector<T> mx(inner), sum(inner);
  for (int64_t o = 0; o < outer; ++o) {
    const T* s = src + o * n * inner;
    std::fill(mx.begin(), mx.end(), Lowest<T>());
    std::fill(sum.begin(), sum.end(), T(0));
    for (int64_t k = 0; k < n; ++k) {
      for (int64_t i = 0; i < inner; ++i)
        mx[i] = std::max(mx[i], s[k * inner + i]);
    }
    for (int64_t k = 0; k < n; ++k) {
      for (int64_t i = 0; i < inner; ++i)
        sum[i] += std::exp(s[k * inner + i] - mx[i]);
    }
    for (int64_t i = 0; i < inner; ++i) {
      // All -inf (or n == 0): the sum of exps is 0, log is -inf.
      dst[o * inner + i] =
          std::isinf(mx[i]) && mx[i] < 0 ? mx[i] : mx[i] + std::log(sum[i]);
    }
  }
}

struct Group {
  int64_t size;
  bool reduced;
};

template <typename T>
void RunPass(Acc acc, const T* src, int64_t outer, int64_t n, int64_t inner,
             T* dst) {
  switch (acc) {
    case Acc::kSum:
      Pass<T, Acc::kSum>(src, outer, n, inner, dst);
      break;
    case Acc::kSumSquare:
      Pass<T, Acc::kSumSquare>(src, outer, n, inner, dst);
      break;
    case Acc::kMax:
      Pass<T, Acc::kMax>(src, outer, n, inner, dst);
      break;
    case Acc::kMin:
      Pass<T, Acc::kMin>(src, outer, n, inner, dst);
      break;
    case Acc::kProd:
      Pass<T, Acc::kProd>(src, outer, n, inner, dst);
      break;
    case Acc::kLogSumExp:
      if constexpr (std::is_floating_point_v<T>)
        LogSumExpPass(src, outer, n, inner, dst);
      break;
  }
}

// Reduces `src` (described by `groups`) into `out`, one reduced group per pass.
template <typename T>
void ReduceGroups(const T* src, std::vector<Group> groups, ReduceKind kind,
                  T* out) {
  std::vector<T> cur, next;
  const T* in = src;
  bool first = true;
  while (true) {
    int g = -1;
    for (int i = static_cast<int>(groups.size()) - 1; i >= 0; --i) {
      if (groups[i].reduced) {
        g = i;
        break;
      }
    }
    if (g < 0) break;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < g; ++i) outer *= groups[i].size;
    for (size_t i = g + 1; i < groups.size(); ++i) inner *= groups[i].size;
    const int64_t n = groups[g].size;
    Acc acc;
    switch (kind) {
      case ReduceKind::kSum:
      case ReduceKind::kMean:
        acc = Acc::kSum;
        break;
      case ReduceKind::kL2:
      case ReduceKind::kSumSquare:
        acc = first ? Acc::kSumSquare : Acc::kSum;
        break;
      case ReduceKind::kMax:
        acc = Acc::kMax;
        break;
      case ReduceKind::kMin:
        acc = Acc::kMin;
        break;
      case ReduceKind::kProd:
        acc = Acc::kProd;
        break;
      default:
        acc = Acc::kLogSumExp;
        break;
    }
    groups.erase(groups.begin() + g);
    bool last = true;
    for (const Group& gr : groups) last = last && !gr.reduced;
    T* dst = out;
    if (!last) {
      next.resize(outer * inner);
      dst = next.data();
    }
    RunPass<T>(acc, in, outer, n, inner, dst);
    if (last) break;
    cur.swap(next);
    in = cur.data();
    first = false;
  }
}

class ReduceKernel : public Kernel {
 public:
  ReduceKernel(ReduceKind kind, bool keepdims, bool noop_with_empty_axes,
               bool axes_input, std::vector<int64_t> axes_attr)
      : kind_(kind),
        keepdims_(keepdims),
        noop_(noop_with_empty_axes),
        axes_input_(axes_input),
        axes_attr_(std::move(axes_attr)) {}

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x_in = ctx.input(0);
    if (x_in == nullptr) return RunError("missing input");
    std::vector<int64_t> axes = axes_attr_;
    if (axes_input_ && ctx.input(1) != nullptr) {
      const Tensor& a = *ctx.input(1);
      if (a.dtype() != DataType::kInt64) return RunError("axes must be INT64");
      axes.assign(a.data<int64_t>(), a.data<int64_t>() + a.num_elements());
    }
    if (axes.empty() && noop_) {
      (*ctx.outputs)[0] = *x_in;
      return absl::OkStatus();
    }
    const int rank = x_in->rank();
    std::vector<bool> reduced(rank, axes.empty());
    for (int64_t a : axes) {
      if (a < -rank || a >= rank) {
        return RunError("axis ", a, " is out of range for rank ", rank);
      }
      reduced[a < 0 ? a + rank : a] = true;
    }
    Shape out_shape;
    std::vector<Group> groups;
    int64_t count = 1;
    for (int d = 0; d < rank; ++d) {
      const int64_t n = x_in->dim(d);
      if (reduced[d]) count *= n;
      if (!reduced[d] || keepdims_) out_shape.push_back(reduced[d] ? 1 : n);
      if (n == 1) continue;
      if (!groups.empty() && groups.back().reduced == reduced[d]) {
        groups.back().size *= n;
      } else {
        groups.push_back({n, reduced[d]});
      }
    }
    // Only size-1 dims reduced: still one pass, so per-element transforms
    // (square, log-sum-exp) apply.
    if (std::none_of(groups.begin(), groups.end(),
                     [](const Group& g) { return g.reduced; })) {
      groups.push_back({1, true});
    }

    // Compute type: float for halfs; double for integer Mean/L2/LogSumExp.
    const DataType orig = x_in->dtype();
    DataType compute = orig;
    if (orig == DataType::kFloat16 || orig == DataType::kBFloat16) {
      compute = DataType::kFloat32;
    } else if (orig != DataType::kFloat32 && orig != DataType::kFloat64 &&
               (kind_ == ReduceKind::kMean || kind_ == ReduceKind::kL2 ||
                kind_ == ReduceKind::kLogSumExp)) {
      compute = DataType::kFloat64;
    }
    if (orig == DataType::kBool || orig == DataType::kString) {
      return RunError("unsupported element type ", DataTypeName(orig));
    }
    QS_ASSIGN_OR_RETURN(Tensor x, CastTensor(*x_in, compute));
    Tensor out = Tensor::Uninitialized(compute, out_shape);
    const bool ok = VisitNumeric(compute, [&](auto tag) {
      using T = typename decltype(tag)::type;
      ReduceGroups<T>(x.data<T>(), groups, kind_, out.data<T>());
      T* p = out.data<T>();
      const int64_t m = out.num_elements();
      if (kind_ == ReduceKind::kMean) {
        const T c = static_cast<T>(count);
        for (int64_t i = 0; i < m; ++i)
          p[i] = count == 0 ? p[i] : static_cast<T>(p[i] / c);
      } else if (kind_ == ReduceKind::kL2) {
        if constexpr (std::is_floating_point_v<T>) {
          for (int64_t i = 0; i < m; ++i) p[i] = std::sqrt(p[i]);
        }
      }
    });
    if (!ok) return RunError("unsupported element type ", DataTypeName(orig));
    if (compute != orig) {
      QS_ASSIGN_OR_RETURN(out, CastTensor(out, orig));
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  }

 private:
  ReduceKind kind_;
  bool keepdims_;
  bool noop_;
  bool axes_input_;
  std::vector<int64_t> axes_attr_;
};

KernelFactory Reduce(ReduceKind kind) {
  return [kind](const KernelInit& init)
             -> absl::StatusOr<std::unique_ptr<Kernel>> {
    const Attributes& a = init.node->attrs;
    // ReduceSum takes axes as an input from opset 13 (the others from 18).
    const bool axes_input = kind == ReduceKind::kSum && init.opset >= 13;
    if (axes_input && a.Has("axes")) {
      return NodeError(*init.node,
                       "'axes' is an input since opset 13, not an attribute");
    }
    const int64_t keepdims = a.GetInt("keepdims", 1);
    const int64_t noop = a.GetInt("noop_with_empty_axes", 0);
    if ((keepdims != 0 && keepdims != 1) || (noop != 0 && noop != 1)) {
      return NodeError(*init.node,
                       "keepdims and noop_with_empty_axes must be 0 or 1");
    }
    return std::make_unique<ReduceKernel>(kind, keepdims == 1, noop == 1,
                                          axes_input, a.GetInts("axes"));
  };
}

}  // namespace

void RegisterReduceKernels(KernelRegistry* r) {
  r->Register("ReduceSum", Reduce(ReduceKind::kSum), 1);
  r->Register("ReduceMean", Reduce(ReduceKind::kMean), 1);
  r->Register("ReduceMax", Reduce(ReduceKind::kMax), 1);
  r->Register("ReduceMin", Reduce(ReduceKind::kMin), 1);
  r->Register("ReduceProd", Reduce(ReduceKind::kProd), 1);
  r->Register("ReduceL2", Reduce(ReduceKind::kL2), 1);
  r->Register("ReduceSumSquare", Reduce(ReduceKind::kSumSquare), 1);
  r->Register("ReduceLogSumExp", Reduce(ReduceKind::kLogSumExp), 1);
}

}  // namespace qs
