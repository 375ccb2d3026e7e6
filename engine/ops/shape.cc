// Data-movement and shape ops: views (Reshape, Flatten, Squeeze, Unsqueeze,
// Identity, Dropout) share the input buffer; copies (Transpose, Slice, Expand,
// Tile, DepthToSpace, SpaceToDepth) are all one strided copy whose innermost
// run is a memcpy when contiguous; Concat/Split copy contiguous blocks. These
// kernels also run at compile time when shape subgraphs are constant-folded, so
// int64 inputs are common.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>

#include "engine/ops/registry.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

// Reads an int64 or int32 tensor (shape, axes, pads, repeats, ...) as int64
// values.
absl::StatusOr<std::vector<int64_t>> ReadInts(const Tensor& t,
                                              const char* what) {
  const int64_t n = t.num_elements();
  std::vector<int64_t> v(n);
  if (t.dtype() == DataType::kInt64) {
    std::copy(t.data<int64_t>(), t.data<int64_t>() + n, v.begin());
  } else if (t.dtype() == DataType::kInt32) {
    std::copy(t.data<int32_t>(), t.data<int32_t>() + n, v.begin());
  } else {
    return RunError(what, " must be INT64 or INT32, got ",
                    DataTypeName(t.dtype()));
  }
  return v;
}

// Maps axis in [-rank, rank) to [0, rank).
absl::StatusOr<int64_t> NormalizeAxis(int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank) {
    return RunError("axis ", axis, " is out of range for rank ", rank);
  }
  return axis < 0 ? axis + rank : axis;
}

std::vector<int64_t> ContiguousStrides(const Shape& shape) {
  std::vector<int64_t> s(shape.size());
  int64_t stride = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    s[d] = stride;
    stride *= shape[d];
  }
  return s;
}

// A transpose-like copy whose innermost output dim is strided in the source
// while dim `c` is the source-contiguous one: copies 2-D tiles over (c, last)
// so both the source lines and the destination lines of a tile stay in L1.
template <typename T>
void CopyTiled(const T* src, const std::vector<int64_t>& dims,
               const std::vector<int64_t>& strides, int c, T* dst) {
  constexpr int64_t kTile = 32;
  const int r = static_cast<int>(dims.size());
  std::vector<int64_t> out_strides(r);
  int64_t s = 1;
  for (int d = r - 1; d >= 0; --d) {
    out_strides[d] = s;
    s *= dims[d];
  }
  const int64_t nc = dims[c], nl = dims[r - 1];
  const int64_t dc = out_strides[c], sl = strides[r - 1];
  // Odometer over every dim except c and the last.
  std::vector<int> outer;
  for (int d = 0; d < r - 1; ++d) {
    if (d != c) outer.push_back(d);
  }
  std::vector<int64_t> idx(outer.size(), 0);
  int64_t so = 0, dof = 0;
  const int64_t blocks = NumElements(dims) / (nc * nl);
  for (int64_t b = 0; b < blocks; ++b) {
    for (int64_t i0 = 0; i0 < nc; i0 += kTile) {
      const int64_t i1 = std::min(nc, i0 + kTile);
      for (int64_t j0 = 0; j0 < nl; j0 += kTile) {
        const int64_t j1 = std::min(nl, j0 + kTile);
        for (int64_t i = i0; i < i1; ++i) {
          const T* sp = src + so + i;
          T* dp = dst + dof + i * dc;
          for (int64_t j = j0; j < j1; ++j) dp[j] = sp[j * sl];
        }
      }
    }
    for (int k = static_cast<int>(outer.size()) - 1; k >= 0; --k) {
      const int d = outer[k];
      so += strides[d];
      dof += out_strides[d];
      if (++idx[k] < dims[d]) break;
      so -= strides[d] * dims[d];
      dof -= out_strides[d] * dims[d];
      idx[k] = 0;
    }
  }
}

template <typename T>
void CopyRuns(const T* src, const std::vector<int64_t>& dims,
              const std::vector<int64_t>& strides, T* dst) {
  const int r = static_cast<int>(dims.size());
  if (strides[r - 1] != 1 && strides[r - 1] != 0 && dims[r - 1] >= 8) {
    for (int c = r - 2; c >= 0; --c) {
      if (strides[c] == 1 && dims[c] >= 8)
        return CopyTiled(src, dims, strides, c, dst);
    }
  }
  const int64_t n = dims[r - 1];
  const int64_t s = strides[r - 1];
  const int64_t rows = NumElements(dims) / n;
  std::vector<int64_t> idx(r, 0);
  int64_t off = 0;
  for (int64_t row = 0; row < rows; ++row, dst += n) {
    const T* p = src + off;
    if (s == 1) {
      std::memcpy(dst, p, n * sizeof(T));
    } else if (s == 0) {
      std::fill(dst, dst + n, *p);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = p[i * s];
    }
    for (int d = r - 2; d >= 0; --d) {
      off += strides[d];
      if (++idx[d] < dims[d]) break;
      off -= strides[d] * dims[d];
      idx[d] = 0;
    }
  }
}

// Writes the row-major tensor of shape `dims` whose element (i0..ik) is
// src[sum(i_d * strides[d])] (element strides, may be 0 or negative) into
// `dst`. Size-1 dims are dropped and dims the source walks contiguously are
// merged first, so e.g. a transpose that keeps the last axis copies whole rows.
void StridedCopy(const void* src, size_t elem, const Shape& dims,
                 const std::vector<int64_t>& strides, void* dst) {
  if (NumElements(dims) == 0) return;
  std::vector<int64_t> d2, s2;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] == 1) continue;
    if (!d2.empty() && s2.back() == strides[d] * dims[d]) {
      d2.back() *= dims[d];
      s2.back() = strides[d];
    } else {
      d2.push_back(dims[d]);
      s2.push_back(strides[d]);
    }
  }
  if (d2.empty()) {
    d2.push_back(1);
    s2.push_back(1);
  }
  switch (elem) {
    case 1:
      CopyRuns(static_cast<const uint8_t*>(src), d2, s2,
               static_cast<uint8_t*>(dst));
      break;
    case 2:
      CopyRuns(static_cast<const uint16_t*>(src), d2, s2,
               static_cast<uint16_t*>(dst));
      break;
    case 4:
      CopyRuns(static_cast<const uint32_t*>(src), d2, s2,
               static_cast<uint32_t*>(dst));
      break;
    default:
      CopyRuns(static_cast<const uint64_t*>(src), d2, s2,
               static_cast<uint64_t*>(dst));
      break;
  }
}

// Strided view of `x` copied into a new tensor of shape `out_shape`; `offset`
// is the element offset of the first element.
Tensor GatherStrided(const Tensor& x, const Shape& out_shape,
                     const std::vector<int64_t>& strides, int64_t offset = 0) {
  Tensor out = Tensor::Uninitialized(x.dtype(), out_shape);
  const size_t elem = DataTypeSize(x.dtype());
  StridedCopy(static_cast<const char*>(x.raw_data()) + offset * elem, elem,
              out_shape, strides, out.raw_data());
  return out;
}

absl::Status CheckSupportedType(const Tensor& t) {
  if (t.dtype() == DataType::kString || !t.defined()) {
    return RunError("unsupported element type ", DataTypeName(t.dtype()));
  }
  return absl::OkStatus();
}

// A kernel defined by a lambda over the run context.
template <typename F>
class FnKernel : public Kernel {
 public:
  explicit FnKernel(F f) : f_(std::move(f)) {}
  absl::Status Run(KernelRunContext& ctx) const override {
    for (size_t i = 0; i < ctx.num_inputs(); ++i) {
      if (ctx.input(i) != nullptr)
        QS_RETURN_IF_ERROR(CheckSupportedType(*ctx.input(i)));
    }
    return f_(ctx);
  }

 private:
  F f_;
};

template <typename F>
std::unique_ptr<Kernel> MakeKernel(F f) {
  return std::make_unique<FnKernel<F>>(std::move(f));
}

using FactoryResult = absl::StatusOr<std::unique_ptr<Kernel>>;

#define QS_REQUIRE_INPUT(var, ctx, i) \
  const Tensor* var = (ctx).input(i); \
  if (var == nullptr) return RunError("missing required input ", i)

// ---------------------------------------------------------------------------------------
// Views.

FactoryResult MakeFlatten(const KernelInit& init) {
  const int64_t axis = init.node->attrs.GetInt("axis", 1);
  return MakeKernel([axis](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    const int64_t rank = x->rank();
    if (axis < -rank || axis > rank) {
      return RunError("axis ", axis, " is out of range for rank ", rank);
    }
    const int64_t a = axis < 0 ? axis + rank : axis;
    int64_t outer = 1;
    for (int64_t d = 0; d < a; ++d) outer *= x->dim(d);
    int64_t inner = 1;
    for (int64_t d = a; d < rank; ++d) inner *= x->dim(d);
    (*ctx.outputs)[0] = x->Reshaped({outer, inner});
    return absl::OkStatus();
  });
}

FactoryResult MakeReshape(const KernelInit& init) {
  const bool allowzero = init.node->attrs.GetInt("allowzero", 0) != 0;
  return MakeKernel([allowzero](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    QS_REQUIRE_INPUT(s, ctx, 1);
    QS_ASSIGN_OR_RETURN(std::vector<int64_t> shape, ReadInts(*s, "shape"));
    int infer = -1;
    int64_t known = 1;
    for (size_t i = 0; i < shape.size(); ++i) {
      if (shape[i] == 0 && !allowzero) {
        if (i >= x->shape().size()) {
          return RunError("shape ", ShapeToString(shape), " copies dim ", i,
                          " that the input ", ShapeToString(x->shape()),
                          " lacks");
        }
        shape[i] = x->dim(static_cast<int>(i));
      }
      if (shape[i] == -1) {
        if (infer >= 0)
          return RunError("shape ", ShapeToString(shape), " has two -1");
        infer = static_cast<int>(i);
      } else if (shape[i] < 0) {
        return RunError("invalid shape ", ShapeToString(shape));
      } else {
        known *= shape[i];
      }
    }
    const int64_t n = x->num_elements();
    if (infer >= 0) {
      if (known == 0 || n % known != 0) {
        return RunError("cannot reshape ", ShapeToString(x->shape()), " to ",
                        ShapeToString(shape));
      }
      shape[infer] = n / known;
    } else if (known != n) {
      return RunError("cannot reshape ", ShapeToString(x->shape()), " to ",
                      ShapeToString(shape));
    }
    (*ctx.outputs)[0] = x->Reshaped(std::move(shape));
    return absl::OkStatus();
  });
}

// Axes of Squeeze/Unsqueeze: attribute before opset 13, optional input from 13.
absl::StatusOr<std::optional<std::vector<int64_t>>> AxesFrom(
    const KernelRunContext& ctx, bool from_input, bool has_attr,
    const std::vector<int64_t>& attr) {
  if (!from_input) {
    if (!has_attr) return std::optional<std::vector<int64_t>>();
    return std::optional<std::vector<int64_t>>(attr);
  }
  if (ctx.input(1) == nullptr) return std::optional<std::vector<int64_t>>();
  QS_ASSIGN_OR_RETURN(std::vector<int64_t> v, ReadInts(*ctx.input(1), "axes"));
  return std::optional<std::vector<int64_t>>(std::move(v));
}

FactoryResult MakeSqueeze(const KernelInit& init) {
  const bool from_input = init.opset >= 13;
  const bool has_attr = init.node->attrs.Has("axes");
  const std::vector<int64_t> attr = init.node->attrs.GetInts("axes");
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    QS_ASSIGN_OR_RETURN(auto axes, AxesFrom(ctx, from_input, has_attr, attr));
    const int64_t rank = x->rank();
    std::vector<bool> drop(rank, false);
    if (axes.has_value()) {
      for (int64_t a : *axes) {
        QS_ASSIGN_OR_RETURN(int64_t n, NormalizeAxis(a, rank));
        if (x->dim(static_cast<int>(n)) != 1) {
          return RunError("cannot squeeze axis ", a, " of shape ",
                          ShapeToString(x->shape()));
        }
        drop[n] = true;
      }
    } else {
      for (int64_t d = 0; d < rank; ++d)
        drop[d] = x->dim(static_cast<int>(d)) == 1;
    }
    Shape out;
    for (int64_t d = 0; d < rank; ++d) {
      if (!drop[d]) out.push_back(x->dim(static_cast<int>(d)));
    }
    (*ctx.outputs)[0] = x->Reshaped(std::move(out));
    return absl::OkStatus();
  });
}

FactoryResult MakeUnsqueeze(const KernelInit& init) {
  const bool from_input = init.opset >= 13;
  const bool has_attr = init.node->attrs.Has("axes");
  const std::vector<int64_t> attr = init.node->attrs.GetInts("axes");
  if (!from_input && !has_attr)
    return NodeError(*init.node, "missing 'axes' attribute");
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    QS_ASSIGN_OR_RETURN(auto axes, AxesFrom(ctx, from_input, has_attr, attr));
    if (!axes.has_value()) return RunError("missing axes");
    const int64_t out_rank = x->rank() + static_cast<int64_t>(axes->size());
    std::vector<bool> inserted(out_rank, false);
    for (int64_t a : *axes) {
      QS_ASSIGN_OR_RETURN(int64_t n, NormalizeAxis(a, out_rank));
      if (inserted[n]) return RunError("axis ", a, " is repeated");
      inserted[n] = true;
    }
    Shape out;
    int src = 0;
    for (int64_t d = 0; d < out_rank; ++d) {
      out.push_back(inserted[d] ? 1 : x->dim(src++));
    }
    (*ctx.outputs)[0] = x->Reshaped(std::move(out));
    return absl::OkStatus();
  });
}

// Identity and inference-mode Dropout.
FactoryResult MakeIdentity(const KernelInit&) {
  return MakeKernel([](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    (*ctx.outputs)[0] = *x;
    return absl::OkStatus();
  });
}

FactoryResult MakeDropout(const KernelInit& init) {
  // Before opset 10 the mask has the data's type; from 10 it is bool.
  const bool bool_mask = init.opset >= 10;
  const bool inputs_form = init.opset >= 12;
  const float attr_ratio = init.node->attrs.GetFloat("ratio", 0.5f);
  if (init.node->attrs.Has("is_test")) {
    return NodeError(*init.node, "legacy 'is_test' attribute is not supported");
  }
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    if (inputs_form && ctx.input(2) != nullptr) {
      const Tensor& training = *ctx.input(2);
      if (training.dtype() != DataType::kBool || training.num_elements() != 1) {
        return RunError("training_mode must be a bool scalar");
      }
      float ratio = attr_ratio;
      if (ctx.input(1) != nullptr) {
        QS_ASSIGN_OR_RETURN(Tensor r,
                            CastTensor(*ctx.input(1), DataType::kFloat32));
        if (r.num_elements() != 1) return RunError("ratio must be a scalar");
        ratio = r.data<float>()[0];
      }
      // Training-mode dropout is random; only the degenerate ratio 0 is
      // supported.
      if (training.data<uint8_t>()[0] != 0 && ratio != 0.f) {
        return RunError("training_mode=true with ratio ", ratio,
                        " is not supported (inference engine)");
      }
    }
    (*ctx.outputs)[0] = *x;
    if (ctx.outputs->size() > 1) {
      Tensor mask = Tensor::Uninitialized(DataType::kBool, x->shape());
      std::memset(mask.raw_data(), 1, mask.byte_size());
      if (!bool_mask) {
        QS_ASSIGN_OR_RETURN(mask, CastTensor(mask, x->dtype()));
      }
      (*ctx.outputs)[1] = std::move(mask);
    }
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------------------
// Copies.

FactoryResult MakeTranspose(const KernelInit& init) {
  const bool has_perm = init.node->attrs.Has("perm");
  const std::vector<int64_t> perm_attr = init.node->attrs.GetInts("perm");
  std::vector<int64_t> sorted = perm_attr;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (sorted[i] != static_cast<int64_t>(i)) {
      return NodeError(*init.node, "perm ", ShapeToString(perm_attr),
                       " is not a permutation");
    }
  }
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    const int rank = x->rank();
    std::vector<int64_t> perm = perm_attr;
    if (!has_perm) {
      perm.resize(rank);
      for (int d = 0; d < rank; ++d) perm[d] = rank - 1 - d;
    }
    if (static_cast<int>(perm.size()) != rank) {
      return RunError("perm has ", perm.size(), " entries for rank ", rank);
    }
    std::vector<bool> seen(rank, false);
    const std::vector<int64_t> in_strides = ContiguousStrides(x->shape());
    Shape out_shape(rank);
    std::vector<int64_t> strides(rank);
    for (int d = 0; d < rank; ++d) {
      QS_ASSIGN_OR_RETURN(int64_t p, NormalizeAxis(perm[d], rank));
      if (seen[p]) return RunError("perm is not a permutation");
      seen[p] = true;
      out_shape[d] = x->dim(static_cast<int>(p));
      strides[d] = in_strides[p];
    }
    (*ctx.outputs)[0] = GatherStrided(*x, out_shape, strides);
    return absl::OkStatus();
  });
}

FactoryResult MakeConcat(const KernelInit& init) {
  if (!init.node->attrs.Has("axis"))
    return NodeError(*init.node, "missing 'axis'");
  const int64_t axis_attr = init.node->attrs.GetInt("axis", 0);
  return MakeKernel([axis_attr](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(first, ctx, 0);
    const int rank = first->rank();
    QS_ASSIGN_OR_RETURN(int64_t axis, NormalizeAxis(axis_attr, rank));
    Shape out_shape = first->shape();
    out_shape[axis] = 0;
    for (size_t i = 0; i < ctx.num_inputs(); ++i) {
      const Tensor* t = ctx.input(i);
      if (t == nullptr) return RunError("missing input ", i);
      bool ok = t->dtype() == first->dtype() && t->rank() == rank;
      for (int d = 0; ok && d < rank; ++d) {
        ok = d == axis || t->dim(d) == first->dim(d);
      }
      if (!ok) {
        return RunError("input ", i, " (", DataTypeName(t->dtype()), " ",
                        ShapeToString(t->shape()), ") does not match input 0 (",
                        DataTypeName(first->dtype()), " ",
                        ShapeToString(first->shape()), ") outside axis ", axis);
      }
      out_shape[axis] += t->dim(static_cast<int>(axis));
    }
    Tensor out = Tensor::Uninitialized(first->dtype(), out_shape);
    const size_t elem = DataTypeSize(first->dtype());
    int64_t outer = 1;
    for (int64_t d = 0; d < axis; ++d) outer *= out_shape[d];
    int64_t inner = 1;
    for (int64_t d = axis + 1; d < rank; ++d) inner *= out_shape[d];
    const size_t out_row = static_cast<size_t>(out_shape[axis] * inner) * elem;
    char* dst = static_cast<char*>(out.raw_data());
    size_t col = 0;
    for (size_t i = 0; i < ctx.num_inputs(); ++i) {
      const Tensor* t = ctx.input(i);
      const size_t row =
          static_cast<size_t>(t->dim(static_cast<int>(axis)) * inner) * elem;
      if (row == 0) continue;
      const char* src = static_cast<const char*>(t->raw_data());
      for (int64_t o = 0; o < outer; ++o) {
        std::memcpy(dst + o * out_row + col, src + o * row, row);
      }
      col += row;
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

FactoryResult MakeSplit(const KernelInit& init) {
  const int64_t axis_attr = init.node->attrs.GetInt("axis", 0);
  const bool from_input = init.opset >= 13;
  const std::vector<int64_t> split_attr = init.node->attrs.GetInts("split");
  if (init.node->attrs.Has("num_outputs")) {
    return NodeError(*init.node, "'num_outputs' (opset 18) is not supported");
  }
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    const int rank = x->rank();
    QS_ASSIGN_OR_RETURN(int64_t axis, NormalizeAxis(axis_attr, rank));
    const int64_t n_out = static_cast<int64_t>(ctx.outputs->size());
    const int64_t dim = x->dim(static_cast<int>(axis));
    std::vector<int64_t> split = split_attr;
    if (from_input && ctx.input(1) != nullptr) {
      QS_ASSIGN_OR_RETURN(split, ReadInts(*ctx.input(1), "split"));
    }
    if (split.empty()) {
      if (dim % n_out != 0) {
        return RunError("dim ", dim, " does not split into ", n_out,
                        " equal parts");
      }
      split.assign(n_out, dim / n_out);
    }
    int64_t total = 0;
    for (int64_t s : split) {
      if (s < 0) return RunError("negative split size ", s);
      total += s;
    }
    if (static_cast<int64_t>(split.size()) != n_out || total != dim) {
      return RunError("split ", ShapeToString(split), " does not cover dim ",
                      dim, " with ", n_out, " outputs");
    }
    const size_t elem = DataTypeSize(x->dtype());
    int64_t outer = 1;
    for (int64_t d = 0; d < axis; ++d) outer *= x->dim(static_cast<int>(d));
    int64_t inner = 1;
    for (int d = static_cast<int>(axis) + 1; d < rank; ++d) inner *= x->dim(d);
    const size_t in_row = static_cast<size_t>(dim * inner) * elem;
    const char* src = static_cast<const char*>(x->raw_data());
    size_t col = 0;
    for (int64_t i = 0; i < n_out; ++i) {
      Shape shape = x->shape();
      shape[axis] = split[i];
      Tensor out = Tensor::Uninitialized(x->dtype(), shape);
      const size_t row = static_cast<size_t>(split[i] * inner) * elem;
      char* dst = static_cast<char*>(out.raw_data());
      if (row > 0) {
        for (int64_t o = 0; o < outer; ++o) {
          std::memcpy(dst + o * row, src + o * in_row + col, row);
        }
      }
      col += row;
      (*ctx.outputs)[i] = std::move(out);
    }
    return absl::OkStatus();
  });
}

FactoryResult MakeSlice(const KernelInit& init) {
  const bool from_inputs = init.opset >= 10;
  const Attributes& a = init.node->attrs;
  const std::vector<int64_t> starts_attr = a.GetInts("starts");
  const std::vector<int64_t> ends_attr = a.GetInts("ends");
  const std::vector<int64_t> axes_attr = a.GetInts("axes");
  const bool has_axes_attr = a.Has("axes");
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    std::vector<int64_t> starts = starts_attr, ends = ends_attr,
                         axes = axes_attr, steps;
    bool has_axes = has_axes_attr;
    if (from_inputs) {
      QS_REQUIRE_INPUT(st, ctx, 1);
      QS_REQUIRE_INPUT(en, ctx, 2);
      QS_ASSIGN_OR_RETURN(starts, ReadInts(*st, "starts"));
      QS_ASSIGN_OR_RETURN(ends, ReadInts(*en, "ends"));
      has_axes = ctx.input(3) != nullptr;
      if (has_axes) {
        QS_ASSIGN_OR_RETURN(axes, ReadInts(*ctx.input(3), "axes"));
      }
      if (ctx.input(4) != nullptr) {
        QS_ASSIGN_OR_RETURN(steps, ReadInts(*ctx.input(4), "steps"));
      }
    }
    const int rank = x->rank();
    if (!has_axes) {
      axes.resize(starts.size());
      for (size_t i = 0; i < axes.size(); ++i)
        axes[i] = static_cast<int64_t>(i);
    }
    if (steps.empty()) steps.assign(starts.size(), 1);
    if (ends.size() != starts.size() || axes.size() != starts.size() ||
        steps.size() != starts.size()) {
      return RunError("starts, ends, axes and steps differ in length");
    }
    const std::vector<int64_t> in_strides = ContiguousStrides(x->shape());
    Shape out_shape = x->shape();
    std::vector<int64_t> strides = in_strides;
    std::vector<bool> seen(rank, false);
    int64_t offset = 0;
    for (size_t i = 0; i < starts.size(); ++i) {
      QS_ASSIGN_OR_RETURN(int64_t axis, NormalizeAxis(axes[i], rank));
      if (seen[axis]) return RunError("axis ", axes[i], " is repeated");
      seen[axis] = true;
      const int64_t dim = x->dim(static_cast<int>(axis));
      const int64_t step = steps[i];
      if (step == 0) return RunError("step must not be 0");
      int64_t start = starts[i], end = ends[i];
      if (start < 0) start += dim;
      if (end < 0) end += dim;
      int64_t count;
      if (dim == 0) {
        count = 0;
      } else if (step > 0) {
        start = std::clamp<int64_t>(start, 0, dim);
        end = std::clamp<int64_t>(end, 0, dim);
        count = end > start ? (end - start - 1) / step + 1 : 0;
      } else {
        start = std::clamp<int64_t>(start, 0, dim - 1);
        end = std::clamp<int64_t>(end, -1, dim - 1);
        // |step| as unsigned: -INT64_MIN does not fit in int64.
        const uint64_t mag = uint64_t{0} - static_cast<uint64_t>(step);
        count = start > end
                    ? static_cast<int64_t>(
                          static_cast<uint64_t>(start - end - 1) / mag) +
                          1
                    : 0;
      }
      out_shape[axis] = count;
      if (count > 0) offset += start * in_strides[axis];
      // A single element never steps (and a huge step times the stride could
      // overflow).
      strides[axis] = count > 1 ? in_strides[axis] * step : in_strides[axis];
    }
    if (NumElements(out_shape) == 0) offset = 0;
    (*ctx.outputs)[0] = GatherStrided(*x, out_shape, strides, offset);
    return absl::OkStatus();
  });
}

// Broadcasts `shape` against `target` (numpy rules, both directions) for
// Expand.
absl::StatusOr<Shape> BroadcastShapes(const Shape& a, const Shape& b) {
  const size_t rank = std::max(a.size(), b.size());
  Shape out(rank);
  for (size_t d = 0; d < rank; ++d) {
    const int64_t x = d + a.size() >= rank ? a[d + a.size() - rank] : 1;
    const int64_t y = d + b.size() >= rank ? b[d + b.size() - rank] : 1;
    if (x != y && x != 1 && y != 1) {
      return RunError("cannot broadcast ", ShapeToString(a), " to ",
                      ShapeToString(b));
    }
    out[d] = x == 1 ? y : x;
  }
  return out;
}

FactoryResult MakeExpand(const KernelInit&) {
  return MakeKernel([](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    QS_REQUIRE_INPUT(s, ctx, 1);
    QS_ASSIGN_OR_RETURN(std::vector<int64_t> shape, ReadInts(*s, "shape"));
    QS_ASSIGN_OR_RETURN(Shape out_shape, BroadcastShapes(x->shape(), shape));
    const std::vector<int64_t> in_strides = ContiguousStrides(x->shape());
    const size_t rank = out_shape.size();
    const size_t off = rank - x->shape().size();
    std::vector<int64_t> strides(rank, 0);
    for (size_t d = off; d < rank; ++d) {
      strides[d] = x->shape()[d - off] == 1 ? 0 : in_strides[d - off];
    }
    (*ctx.outputs)[0] = GatherStrided(*x, out_shape, strides);
    return absl::OkStatus();
  });
}

// Tile as a strided copy: output viewed as [r0, d0, r1, d1, ...] reads the
// input with stride 0 along each repeat dim.
FactoryResult MakeTile(const KernelInit&) {
  return MakeKernel([](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    QS_REQUIRE_INPUT(r, ctx, 1);
    QS_ASSIGN_OR_RETURN(std::vector<int64_t> reps, ReadInts(*r, "repeats"));
    const int rank = x->rank();
    if (static_cast<int>(reps.size()) != rank) {
      return RunError("repeats has ", reps.size(), " entries for rank ", rank);
    }
    const std::vector<int64_t> in_strides = ContiguousStrides(x->shape());
    Shape view, out_shape;
    std::vector<int64_t> strides;
    for (int d = 0; d < rank; ++d) {
      if (reps[d] < 0) return RunError("negative repeat ", reps[d]);
      view.push_back(reps[d]);
      strides.push_back(0);
      view.push_back(x->dim(d));
      strides.push_back(in_strides[d]);
      out_shape.push_back(reps[d] * x->dim(d));
    }
    Tensor out = Tensor::Uninitialized(x->dtype(), out_shape);
    const size_t elem = DataTypeSize(x->dtype());
    StridedCopy(x->raw_data(), elem, view, strides, out.raw_data());
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

// DepthToSpace / SpaceToDepth: a 6-D transpose of a reshaped NCHW input.
FactoryResult MakeDepthToSpace(const KernelInit& init) {
  const int64_t b = init.node->attrs.GetInt("blocksize", 0);
  const std::string mode = init.node->attrs.GetString("mode", "DCR");
  if (b <= 0)
    return NodeError(*init.node, "blocksize must be positive, got ", b);
  if (mode != "DCR" && mode != "CRD") {
    return NodeError(*init.node, "unsupported mode '", mode, "'");
  }
  const bool dcr = mode == "DCR";
  return MakeKernel([b, dcr](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    if (x->rank() != 4 || x->dim(1) % (b * b) != 0) {
      return RunError("input ", ShapeToString(x->shape()),
                      " is not NCHW with C divisible by ", b * b);
    }
    const int64_t n = x->dim(0), c = x->dim(1) / (b * b), h = x->dim(2),
                  w = x->dim(3);
    const int64_t hw = h * w;
    // Strides of the input viewed as [N, b1, b2, C', H, W] (DCR) or [N, C', b1,
    // b2, H, W].
    const int64_t sn = x->dim(1) * hw;
    const int64_t sc = dcr ? hw : b * b * hw;
    const int64_t sb1 = dcr ? b * c * hw : b * hw;
    const int64_t sb2 = dcr ? c * hw : hw;
    const Shape view = {n, c, h, b, w, b};
    const std::vector<int64_t> strides = {sn, sc, w, sb1, 1, sb2};
    Tensor out = GatherStrided(*x, view, strides);
    (*ctx.outputs)[0] = out.Reshaped({n, c, h * b, w * b});
    return absl::OkStatus();
  });
}

FactoryResult MakeSpaceToDepth(const KernelInit& init) {
  const int64_t b = init.node->attrs.GetInt("blocksize", 0);
  if (b <= 0)
    return NodeError(*init.node, "blocksize must be positive, got ", b);
  return MakeKernel([b](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    if (x->rank() != 4 || x->dim(2) % b != 0 || x->dim(3) % b != 0) {
      return RunError("input ", ShapeToString(x->shape()),
                      " is not NCHW with H and W divisible by ", b);
    }
    const int64_t n = x->dim(0), c = x->dim(1), h = x->dim(2), w = x->dim(3);
    // Input viewed as [N, C, H/b, b1, W/b, b2], output order [N, b1, b2, C,
    // H/b, W/b].
    const Shape view = {n, b, b, c, h / b, w / b};
    const std::vector<int64_t> strides = {c * h * w, w, 1, h * w, b * w, b};
    Tensor out = GatherStrided(*x, view, strides);
    (*ctx.outputs)[0] = out.Reshaped({n, c * b * b, h / b, w / b});
    return absl::OkStatus();
  });
}

// Pad: each output index maps to an input index per dim (or to the constant),
// so negative pads (crops) and every mode share one loop; the in-bounds middle
// of each innermost row is a memcpy.
enum class PadMode { kConstant, kReflect, kEdge };

template <typename T>
void PadRows(const Tensor& x, const Shape& out_shape,
             const std::vector<int64_t>& pads, PadMode mode, T value,
             Tensor* out) {
  const int rank = x.rank();
  const std::vector<int64_t> in_strides = ContiguousStrides(x.shape());
  // map[d][o]: input index for output index o along d, -1 for the constant.
  std::vector<std::vector<int64_t>> map(rank);
  for (int d = 0; d < rank; ++d) {
    const int64_t n = x.dim(d);
    map[d].resize(out_shape[d]);
    for (int64_t o = 0; o < out_shape[d]; ++o) {
      int64_t i = o - pads[d];
      if (i < 0 || i >= n) {
        if (mode == PadMode::kConstant) {
          i = -1;
        } else if (mode == PadMode::kEdge) {
          i = std::clamp<int64_t>(i, 0, n - 1);
        } else if (n == 1) {
          i = 0;
        } else {  // reflect without repeating the edge, period 2(n-1)
          const int64_t period = 2 * (n - 1);
          i %= period;
          if (i < 0) i += period;
          if (i >= n) i = period - i;
        }
      }
      map[d][o] = i;
    }
  }
  const T* src = x.data<T>();
  T* dst = out->data<T>();
  const int64_t n_last = out_shape[rank - 1];
  const int64_t in_last = x.dim(rank - 1);
  const int64_t lo = std::max<int64_t>(pads[rank - 1], 0);
  const int64_t hi = std::min<int64_t>(pads[rank - 1] + in_last, n_last);
  const std::vector<int64_t>& last = map[rank - 1];
  const int64_t rows = n_last == 0 ? 0 : NumElements(out_shape) / n_last;
  std::vector<int64_t> idx(rank, 0);
  for (int64_t row = 0; row < rows; ++row, dst += n_last) {
    bool inside = true;
    int64_t off = 0;
    for (int d = 0; d < rank - 1; ++d) {
      const int64_t i = map[d][idx[d]];
      if (i < 0) {
        inside = false;
        break;
      }
      off += i * in_strides[d];
    }
    if (!inside) {
      std::fill(dst, dst + n_last, value);
    } else {
      const T* s = src + off;
      for (int64_t o = 0; o < std::min(lo, n_last); ++o) {
        dst[o] = last[o] < 0 ? value : s[last[o]];
      }
      if (hi > lo)
        std::memcpy(dst + lo, s + (lo - pads[rank - 1]), (hi - lo) * sizeof(T));
      for (int64_t o = std::max(hi, lo); o < n_last; ++o) {
        dst[o] = last[o] < 0 ? value : s[last[o]];
      }
    }
    for (int d = rank - 2; d >= 0; --d) {
      if (++idx[d] < out_shape[d]) break;
      idx[d] = 0;
    }
  }
}

FactoryResult MakePad(const KernelInit& init) {
  const Attributes& a = init.node->attrs;
  const std::string mode_name = a.GetString("mode", "constant");
  PadMode mode;
  if (mode_name == "constant") {
    mode = PadMode::kConstant;
  } else if (mode_name == "reflect") {
    mode = PadMode::kReflect;
  } else if (mode_name == "edge") {
    mode = PadMode::kEdge;
  } else {
    return NodeError(*init.node, "unsupported mode '", mode_name, "'");
  }
  const bool from_inputs = init.opset >= 11;
  const std::vector<int64_t> pads_attr = a.GetInts("pads");
  const float value_attr = a.GetFloat("value", 0.f);
  if (!from_inputs && !a.Has("pads"))
    return NodeError(*init.node, "missing 'pads'");
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    std::vector<int64_t> pads = pads_attr;
    Tensor value;  // one element of x's type
    if (from_inputs) {
      QS_REQUIRE_INPUT(p, ctx, 1);
      QS_ASSIGN_OR_RETURN(pads, ReadInts(*p, "pads"));
      if (ctx.input(3) != nullptr)
        return RunError("the 'axes' input is not supported");
      if (ctx.input(2) != nullptr) {
        if (ctx.input(2)->dtype() != x->dtype() ||
            ctx.input(2)->num_elements() != 1) {
          return RunError(
              "constant_value must be a scalar of the input's type");
        }
        value = *ctx.input(2);
      }
    }
    if (!value.defined()) {
      Tensor f(DataType::kFloat32, {});
      f.data<float>()[0] = value_attr;
      QS_ASSIGN_OR_RETURN(value, CastTensor(f, x->dtype()));
    }
    const int rank = x->rank();
    if (static_cast<int>(pads.size()) != 2 * rank) {
      return RunError("pads has ", pads.size(), " entries for rank ", rank);
    }
    if (rank == 0) {
      (*ctx.outputs)[0] = *x;
      return absl::OkStatus();
    }
    Shape out_shape(rank);
    for (int d = 0; d < rank; ++d) {
      out_shape[d] = x->dim(d) + pads[d] + pads[d + rank];
      if (out_shape[d] < 0)
        return RunError("pads ", ShapeToString(pads), " crop below 0");
      if (mode != PadMode::kConstant && x->dim(d) == 0 && out_shape[d] > 0) {
        return RunError("cannot ", mode_name, "-pad an empty dimension");
      }
    }
    Tensor out = Tensor::Uninitialized(x->dtype(), out_shape);
    switch (DataTypeSize(x->dtype())) {
      case 1:
        PadRows(*x, out_shape, pads, mode, value.data<uint8_t>()[0], &out);
        break;
      case 2:
        PadRows(*x, out_shape, pads, mode, value.data<uint16_t>()[0], &out);
        break;
      case 4:
        PadRows(*x, out_shape, pads, mode, value.data<uint32_t>()[0], &out);
        break;
      default:
        PadRows(*x, out_shape, pads, mode, value.data<uint64_t>()[0], &out);
        break;
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------------------
// Shape queries, constants and casts.

FactoryResult MakeShape(const KernelInit& init) {
  const int64_t start_attr = init.node->attrs.GetInt("start", 0);
  const bool has_end = init.node->attrs.Has("end");
  const int64_t end_attr = init.node->attrs.GetInt("end", 0);
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    const int64_t rank = x->rank();
    auto clamp = [rank](int64_t v) {
      if (v < 0) v += rank;
      return std::clamp<int64_t>(v, 0, rank);
    };
    const int64_t start = clamp(start_attr);
    const int64_t end = has_end ? clamp(end_attr) : rank;
    const int64_t n = std::max<int64_t>(end - start, 0);
    Tensor out = Tensor::Uninitialized(DataType::kInt64, {n});
    for (int64_t i = 0; i < n; ++i) {
      out.data<int64_t>()[i] = x->dim(static_cast<int>(start + i));
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

FactoryResult MakeSize(const KernelInit&) {
  return MakeKernel([](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    Tensor out = Tensor::Uninitialized(DataType::kInt64, {});
    out.data<int64_t>()[0] = x->num_elements();
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

FactoryResult MakeConstant(const KernelInit& init) {
  const Attributes& a = init.node->attrs;
  Tensor value;
  if (const onnx::TensorProto* t = a.GetTensor("value")) {
    auto v = TensorFromProto(*t);
    if (!v.ok())
      return NodeError(*init.node, "'value': ", v.status().message());
    value = *std::move(v);
  } else if (a.Has("value_float")) {
    value = Tensor(DataType::kFloat32, {});
    value.data<float>()[0] = a.GetFloat("value_float", 0.f);
  } else if (a.Has("value_floats")) {
    const std::vector<float> v = a.GetFloats("value_floats");
    value = Tensor(DataType::kFloat32, {static_cast<int64_t>(v.size())});
    std::copy(v.begin(), v.end(), value.data<float>());
  } else if (a.Has("value_int")) {
    value = Tensor(DataType::kInt64, {});
    value.data<int64_t>()[0] = a.GetInt("value_int", 0);
  } else if (a.Has("value_ints")) {
    const std::vector<int64_t> v = a.GetInts("value_ints");
    value = Tensor(DataType::kInt64, {static_cast<int64_t>(v.size())});
    std::copy(v.begin(), v.end(), value.data<int64_t>());
  } else {
    const std::vector<std::string> names = a.Names();
    return NodeError(*init.node, "unsupported value attribute '",
                     names.empty() ? "" : names[0],
                     "' (string and sparse constants "
                     "are not supported)");
  }
  return MakeKernel([value](KernelRunContext& ctx) -> absl::Status {
    (*ctx.outputs)[0] = value;
    return absl::OkStatus();
  });
}

FactoryResult MakeConstantOfShape(const KernelInit& init) {
  Tensor value(DataType::kFloat32, {1});
  if (const onnx::TensorProto* t = init.node->attrs.GetTensor("value")) {
    auto v = TensorFromProto(*t);
    if (!v.ok())
      return NodeError(*init.node, "'value': ", v.status().message());
    if (v->num_elements() != 1) {
      return NodeError(*init.node, "'value' must hold one element, has ",
                       v->num_elements());
    }
    value = *std::move(v);
  }
  return MakeKernel([value](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(s, ctx, 0);
    QS_ASSIGN_OR_RETURN(std::vector<int64_t> shape, ReadInts(*s, "shape"));
    for (int64_t d : shape) {
      if (d < 0)
        return RunError("negative dimension in ", ShapeToString(shape));
    }
    Tensor out = Tensor::Uninitialized(value.dtype(), shape);
    const int64_t n = out.num_elements();
    switch (DataTypeSize(value.dtype())) {
      case 1:
        std::fill_n(out.data<uint8_t>(), n, value.data<uint8_t>()[0]);
        break;
      case 2:
        std::fill_n(out.data<uint16_t>(), n, value.data<uint16_t>()[0]);
        break;
      case 4:
        std::fill_n(out.data<uint32_t>(), n, value.data<uint32_t>()[0]);
        break;
      default:
        std::fill_n(out.data<uint64_t>(), n, value.data<uint64_t>()[0]);
        break;
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

FactoryResult MakeCast(const KernelInit& init) {
  if (!init.node->attrs.Has("to")) return NodeError(*init.node, "missing 'to'");
  const int64_t to_onnx = init.node->attrs.GetInt("to", 0);
  auto to = DataTypeFromOnnx(static_cast<int32_t>(to_onnx));
  if (!to.ok() || *to == DataType::kString) {
    return NodeError(*init.node, "unsupported target type to=", to_onnx);
  }
  const DataType target = *to;
  return MakeKernel([target](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    QS_ASSIGN_OR_RETURN((*ctx.outputs)[0], CastTensor(*x, target));
    return absl::OkStatus();
  });
}

FactoryResult MakeCastLike(const KernelInit&) {
  return MakeKernel([](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x, ctx, 0);
    QS_REQUIRE_INPUT(like, ctx, 1);
    QS_ASSIGN_OR_RETURN((*ctx.outputs)[0], CastTensor(*x, like->dtype()));
    return absl::OkStatus();
  });
}

template <typename T>
absl::Status FillRange(const Tensor& start_t, const Tensor& limit_t,
                       const Tensor& delta_t, Tensor* out) {
  const T start = start_t.data<T>()[0];
  const T limit = limit_t.data<T>()[0];
  const T delta = delta_t.data<T>()[0];
  if (delta == 0) return RunError("delta must not be 0");
  int64_t n;
  if constexpr (std::is_floating_point_v<T>) {
    n = static_cast<int64_t>(
        std::ceil((static_cast<double>(limit) - start) / delta));
  } else {
    const int64_t span =
        static_cast<int64_t>(limit) - static_cast<int64_t>(start);
    const int64_t d = static_cast<int64_t>(delta);
    // Ceiling division that is exact for both signs.
    n = span / d + ((span % d != 0) && ((span > 0) == (d > 0)) ? 1 : 0);
  }
  n = std::max<int64_t>(n, 0);
  *out = Tensor::Uninitialized(start_t.dtype(), {n});
  T* p = out->data<T>();
  for (int64_t i = 0; i < n; ++i)
    p[i] = static_cast<T>(start + static_cast<T>(i) * delta);
  return absl::OkStatus();
}

FactoryResult MakeRange(const KernelInit&) {
  return MakeKernel([](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(start, ctx, 0);
    QS_REQUIRE_INPUT(limit, ctx, 1);
    QS_REQUIRE_INPUT(delta, ctx, 2);
    const DataType t = start->dtype();
    if (limit->dtype() != t || delta->dtype() != t ||
        start->num_elements() != 1 || limit->num_elements() != 1 ||
        delta->num_elements() != 1) {
      return RunError("start, limit and delta must be scalars of one type");
    }
    Tensor out;
    switch (t) {
      case DataType::kFloat32:
        QS_RETURN_IF_ERROR(FillRange<float>(*start, *limit, *delta, &out));
        break;
      case DataType::kFloat64:
        QS_RETURN_IF_ERROR(FillRange<double>(*start, *limit, *delta, &out));
        break;
      case DataType::kInt16:
        QS_RETURN_IF_ERROR(FillRange<int16_t>(*start, *limit, *delta, &out));
        break;
      case DataType::kInt32:
        QS_RETURN_IF_ERROR(FillRange<int32_t>(*start, *limit, *delta, &out));
        break;
      case DataType::kInt64:
        QS_RETURN_IF_ERROR(FillRange<int64_t>(*start, *limit, *delta, &out));
        break;
      default:
        return RunError("unsupported element type ", DataTypeName(t));
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

#undef QS_REQUIRE_INPUT

}  // namespace

void RegisterShapeKernels(KernelRegistry* r) {
  r->Register("Flatten", MakeFlatten, 1);
  r->Register("Reshape", MakeReshape,
              5);  // opset 1-4 took the shape as an attribute
  r->Register("Transpose", MakeTranspose, 1);
  r->Register("Squeeze", MakeSqueeze, 1);
  r->Register("Unsqueeze", MakeUnsqueeze, 1);
  r->Register("Concat", MakeConcat, 4);
  r->Register("Split", MakeSplit, 2);
  r->Register("Slice", MakeSlice, 1);
  r->Register("Shape", MakeShape, 1);
  r->Register("Size", MakeSize, 1);
  r->Register("Constant", MakeConstant, 1);
  r->Register("ConstantOfShape", MakeConstantOfShape, 9);
  r->Register("Cast", MakeCast, 6);  // opset 1-5 named the type with a string
  r->Register("CastLike", MakeCastLike, 15);
  r->Register("Expand", MakeExpand, 8);
  r->Register("Tile", MakeTile, 6);
  r->Register("Range", MakeRange, 11);
  r->Register("Pad", MakePad, 2);
  r->Register("Identity", MakeIdentity, 1);
  r->Register("Dropout", MakeDropout, 7);
  r->Register("DepthToSpace", MakeDepthToSpace, 1);
  r->Register("SpaceToDepth", MakeSpaceToDepth, 1);
}

}  // namespace qs
