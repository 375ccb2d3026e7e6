// Indexing ops: Gather, GatherElements, ArgMax/ArgMin, TopK, NonZero, OneHot.
// Tensors are viewed as [outer, axis, inner] so the hot loops copy or compare
// whole contiguous inner rows.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>

#include "engine/ops/registry.h"
#include "engine/ops/type_dispatch.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

using FactoryResult = absl::StatusOr<std::unique_ptr<Kernel>>;

absl::StatusOr<int64_t> NormalizeAxis(int64_t axis, int64_t rank) {
  if (axis < -rank || axis >= rank) {
    return RunError("axis ", axis, " is out of range for rank ", rank);
  }
  return axis < 0 ? axis + rank : axis;
}

// Sizes of the [outer, axis, inner] view of `shape` around `axis`.
struct AxisView {
  int64_t outer = 1, n = 1, inner = 1;
};
AxisView ViewAround(const Shape& shape, int64_t axis) {
  AxisView v;
  for (int64_t d = 0; d < axis; ++d) v.outer *= shape[d];
  v.n = shape[axis];
  for (size_t d = axis + 1; d < shape.size(); ++d) v.inner *= shape[d];
  return v;
}

// Index tensor (int32/int64) -> int64 values in [0, dim), negatives wrapped.
absl::StatusOr<std::vector<int64_t>> ReadIndices(const Tensor& t, int64_t dim) {
  const int64_t n = t.num_elements();
  std::vector<int64_t> v(n);
  if (t.dtype() == DataType::kInt64) {
    std::copy(t.data<int64_t>(), t.data<int64_t>() + n, v.begin());
  } else if (t.dtype() == DataType::kInt32) {
    std::copy(t.data<int32_t>(), t.data<int32_t>() + n, v.begin());
  } else {
    return RunError("indices must be INT64 or INT32, got ",
                    DataTypeName(t.dtype()));
  }
  for (int64_t& i : v) {
    if (i < -dim || i >= dim) {
      return RunError("index ", i, " is out of range for a dimension of ", dim);
    }
    if (i < 0) i += dim;
  }
  return v;
}

template <typename F>
class FnKernel : public Kernel {
 public:
  explicit FnKernel(F f) : f_(std::move(f)) {}
  absl::Status Run(KernelRunContext& ctx) const override {
    for (size_t i = 0; i < ctx.num_inputs(); ++i) {
      const Tensor* t = ctx.input(i);
      if (t != nullptr && (t->dtype() == DataType::kString || !t->defined())) {
        return RunError("unsupported element type ", DataTypeName(t->dtype()));
      }
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

#define QS_REQUIRE_INPUT(var, ctx, i) \
  const Tensor* var = (ctx).input(i); \
  if (var == nullptr) return RunError("missing required input ", i)

// ---------------------------------------------------------------------------------------

template <typename T>
void GatherRows(const T* src, const std::vector<int64_t>& idx,
                const AxisView& v, T* dst) {
  const int64_t m = static_cast<int64_t>(idx.size());
  for (int64_t o = 0; o < v.outer; ++o) {
    const T* base = src + o * v.n * v.inner;
    if (v.inner == 1) {
      for (int64_t j = 0; j < m; ++j) dst[j] = base[idx[j]];
    } else {
      for (int64_t j = 0; j < m; ++j) {
        std::memcpy(dst + j * v.inner, base + idx[j] * v.inner,
                    v.inner * sizeof(T));
      }
    }
    dst += m * v.inner;
  }
}

FactoryResult MakeGather(const KernelInit& init) {
  const int64_t axis_attr = init.node->attrs.GetInt("axis", 0);
  return MakeKernel([axis_attr](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(data, ctx, 0);
    QS_REQUIRE_INPUT(indices, ctx, 1);
    QS_ASSIGN_OR_RETURN(int64_t axis, NormalizeAxis(axis_attr, data->rank()));
    const AxisView v = ViewAround(data->shape(), axis);
    QS_ASSIGN_OR_RETURN(std::vector<int64_t> idx, ReadIndices(*indices, v.n));
    Shape out_shape(data->shape().begin(), data->shape().begin() + axis);
    out_shape.insert(out_shape.end(), indices->shape().begin(),
                     indices->shape().end());
    out_shape.insert(out_shape.end(), data->shape().begin() + axis + 1,
                     data->shape().end());
    Tensor out = Tensor::Uninitialized(data->dtype(), out_shape);
    if (out.num_elements() > 0) {
      switch (DataTypeSize(data->dtype())) {
        case 1:
          GatherRows(data->data<uint8_t>(), idx, v, out.data<uint8_t>());
          break;
        case 2:
          GatherRows(data->data<uint16_t>(), idx, v, out.data<uint16_t>());
          break;
        case 4:
          GatherRows(data->data<uint32_t>(), idx, v, out.data<uint32_t>());
          break;
        default:
          GatherRows(data->data<uint64_t>(), idx, v, out.data<uint64_t>());
          break;
      }
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

template <typename T>
void GatherElementsImpl(const Tensor& data, const std::vector<int64_t>& idx,
                        const Shape& idx_shape, int64_t axis, Tensor* out) {
  const int rank = data.rank();
  std::vector<int64_t> dstrides(rank);
  int64_t s = 1;
  for (int d = rank - 1; d >= 0; --d) {
    dstrides[d] = s;
    s *= data.dim(d);
  }
  const T* src = data.data<T>();
  T* dst = out->data<T>();
  const int64_t n = static_cast<int64_t>(idx.size());
  std::vector<int64_t> pos(rank, 0);
  int64_t base = 0;  // data offset of `pos` with the axis coordinate left out
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = src[base + idx[i] * dstrides[axis]];
    for (int d = rank - 1; d >= 0; --d) {
      if (d != axis) base += dstrides[d];
      if (++pos[d] < idx_shape[d]) break;
      if (d != axis) base -= dstrides[d] * idx_shape[d];
      pos[d] = 0;
    }
  }
}

FactoryResult MakeGatherElements(const KernelInit& init) {
  const int64_t axis_attr = init.node->attrs.GetInt("axis", 0);
  return MakeKernel([axis_attr](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(data, ctx, 0);
    QS_REQUIRE_INPUT(indices, ctx, 1);
    const int rank = data->rank();
    QS_ASSIGN_OR_RETURN(int64_t axis, NormalizeAxis(axis_attr, rank));
    if (indices->rank() != rank) {
      return RunError("indices rank ", indices->rank(),
                      " differs from data rank ", rank);
    }
    for (int d = 0; d < rank; ++d) {
      if (d != axis && indices->dim(d) > data->dim(d)) {
        return RunError("indices shape ", ShapeToString(indices->shape()),
                        " exceeds data shape ", ShapeToString(data->shape()));
      }
    }
    QS_ASSIGN_OR_RETURN(
        std::vector<int64_t> idx,
        ReadIndices(*indices, data->dim(static_cast<int>(axis))));
    Tensor out = Tensor::Uninitialized(data->dtype(), indices->shape());
    if (out.num_elements() > 0) {
      switch (DataTypeSize(data->dtype())) {
        case 1:
          GatherElementsImpl<uint8_t>(*data, idx, indices->shape(), axis, &out);
          break;
        case 2:
          GatherElementsImpl<uint16_t>(*data, idx, indices->shape(), axis,
                                       &out);
          break;
        case 4:
          GatherElementsImpl<uint32_t>(*data, idx, indices->shape(), axis,
                                       &out);
          break;
        default:
          GatherElementsImpl<uint64_t>(*data, idx, indices->shape(), axis,
                                       &out);
          break;
      }
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------------------
// ArgMax / ArgMin: walks the axis in the middle loop so the inner loop compares
// whole contiguous rows against the running best.

template <typename T, bool kMax, bool kLast>
void ArgReduce(const T* src, const AxisView& v, int64_t* out) {
  std::vector<T> best(v.inner);
  for (int64_t o = 0; o < v.outer; ++o) {
    const T* base = src + o * v.n * v.inner;
    int64_t* idx = out + o * v.inner;
    std::copy(base, base + v.inner, best.begin());
    std::fill(idx, idx + v.inner, 0);
    for (int64_t k = 1; k < v.n; ++k) {
      const T* row = base + k * v.inner;
      for (int64_t i = 0; i < v.inner; ++i) {
        bool better;
        if constexpr (kMax) {
          better = kLast ? row[i] >= best[i] : row[i] > best[i];
        } else {
          better = kLast ? row[i] <= best[i] : row[i] < best[i];
        }
        if (better) {
          best[i] = row[i];
          idx[i] = k;
        }
      }
    }
  }
}

FactoryResult MakeArg(const KernelInit& init, bool is_max) {
  const Attributes& a = init.node->attrs;
  const int64_t axis_attr = a.GetInt("axis", 0);
  const bool keepdims = a.GetInt("keepdims", 1) != 0;
  const bool last = a.GetInt("select_last_index", 0) != 0;
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x_in, ctx, 0);
    Tensor x = *x_in;
    if (IsHalf(x.dtype())) {
      QS_ASSIGN_OR_RETURN(x, CastTensor(x, DataType::kFloat32));
    }
    QS_ASSIGN_OR_RETURN(int64_t axis, NormalizeAxis(axis_attr, x.rank()));
    const AxisView v = ViewAround(x.shape(), axis);
    if (v.n == 0) return RunError("cannot take the arg of an empty axis");
    Shape out_shape = x.shape();
    if (keepdims) {
      out_shape[axis] = 1;
    } else {
      out_shape.erase(out_shape.begin() + axis);
    }
    Tensor out = Tensor::Uninitialized(DataType::kInt64, out_shape);
    int64_t* po = out.data<int64_t>();
    const bool ok = VisitNumeric(x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* src = x.data<T>();
      if (is_max) {
        last ? ArgReduce<T, true, true>(src, v, po)
             : ArgReduce<T, true, false>(src, v, po);
      } else {
        last ? ArgReduce<T, false, true>(src, v, po)
             : ArgReduce<T, false, false>(src, v, po);
      }
    });
    if (!ok)
      return RunError("unsupported element type ", DataTypeName(x.dtype()));
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------------------
// TopK: per [outer, inner] slice, a partial sort of (value, index) pairs; ties
// keep the lower index first, as ONNX requires.

template <typename T>
void TopKImpl(const T* src, const AxisView& v, int64_t k, bool largest,
              T* values, int64_t* indices) {
  std::vector<std::pair<T, int64_t>> buf(v.n);
  auto cmp = [largest](const std::pair<T, int64_t>& a,
                       const std::pair<T, int64_t>& b) {
    if (a.first != b.first)
      return largest ? a.first > b.first : a.first < b.first;
    return a.second < b.second;
  };
  for (int64_t o = 0; o < v.outer; ++o) {
    for (int64_t i = 0; i < v.inner; ++i) {
      const T* base = src + o * v.n * v.inner + i;
      for (int64_t j = 0; j < v.n; ++j) buf[j] = {base[j * v.inner], j};
      std::partial_sort(buf.begin(), buf.begin() + k, buf.end(), cmp);
      const int64_t out_base = o * k * v.inner + i;
      for (int64_t j = 0; j < k; ++j) {
        values[out_base + j * v.inner] = buf[j].first;
        indices[out_base + j * v.inner] = buf[j].second;
      }
    }
  }
}

FactoryResult MakeTopK(const KernelInit& init) {
  const Attributes& a = init.node->attrs;
  const int64_t axis_attr = a.GetInt("axis", -1);
  const bool largest = a.GetInt("largest", 1) != 0;
  const bool k_from_input = init.opset >= 10;
  const int64_t k_attr = a.GetInt("k", -1);
  // sorted=0 lets us return any order; we always return sorted output.
  return MakeKernel([=](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x_in, ctx, 0);
    int64_t k = k_attr;
    if (k_from_input) {
      QS_REQUIRE_INPUT(kt, ctx, 1);
      if (kt->dtype() != DataType::kInt64 || kt->num_elements() != 1) {
        return RunError("K must be a single INT64");
      }
      k = kt->data<int64_t>()[0];
    }
    const DataType orig = x_in->dtype();
    Tensor x = *x_in;
    if (IsHalf(orig)) {
      QS_ASSIGN_OR_RETURN(x, CastTensor(x, DataType::kFloat32));
    }
    QS_ASSIGN_OR_RETURN(int64_t axis, NormalizeAxis(axis_attr, x.rank()));
    const AxisView v = ViewAround(x.shape(), axis);
    if (k < 0 || k > v.n)
      return RunError("K=", k, " is out of range for axis size ", v.n);
    Shape out_shape = x.shape();
    out_shape[axis] = k;
    Tensor values = Tensor::Uninitialized(x.dtype(), out_shape);
    Tensor indices = Tensor::Uninitialized(DataType::kInt64, out_shape);
    const bool ok = VisitNumeric(x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      TopKImpl(x.data<T>(), v, k, largest, values.data<T>(),
               indices.data<int64_t>());
    });
    if (!ok) return RunError("unsupported element type ", DataTypeName(orig));
    if (IsHalf(orig)) {
      QS_ASSIGN_OR_RETURN(values, CastTensor(values, orig));
    }
    (*ctx.outputs)[0] = std::move(values);
    if (ctx.outputs->size() > 1) (*ctx.outputs)[1] = std::move(indices);
    return absl::OkStatus();
  });
}

// ---------------------------------------------------------------------------------------

FactoryResult MakeNonZero(const KernelInit&) {
  return MakeKernel([](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(x_in, ctx, 0);
    // Compare as values, not bits (-0.0 is zero); bool is uint8.
    Tensor x = *x_in;
    if (IsHalf(x.dtype())) {
      QS_ASSIGN_OR_RETURN(x, CastTensor(x, DataType::kFloat32));
    }
    const DataType t =
        x.dtype() == DataType::kBool ? DataType::kUInt8 : x.dtype();
    const int64_t n = x.num_elements();
    std::vector<int64_t> hits;
    const bool ok = VisitNumeric(t, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* p = x.data<T>();
      for (int64_t i = 0; i < n; ++i) {
        if (p[i] != T(0)) hits.push_back(i);
      }
    });
    if (!ok)
      return RunError("unsupported element type ", DataTypeName(x_in->dtype()));
    const int rank = x.rank();
    const int64_t nnz = static_cast<int64_t>(hits.size());
    Tensor out = Tensor::Uninitialized(DataType::kInt64, {rank, nnz});
    int64_t* po = out.data<int64_t>();
    for (int64_t j = 0; j < nnz; ++j) {
      int64_t flat = hits[j];
      for (int d = rank - 1; d >= 0; --d) {
        po[d * nnz + j] = flat % x.dim(d);
        flat /= x.dim(d);
      }
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

template <typename T>
void OneHotFill(const std::vector<int64_t>& idx, int64_t depth,
                const AxisView& v, T off, T on, T* out) {
  std::fill(out, out + v.outer * depth * v.inner, off);
  for (int64_t o = 0; o < v.outer; ++o) {
    for (int64_t i = 0; i < v.inner; ++i) {
      int64_t k = idx[o * v.inner + i];
      if (k < 0) k += depth;
      if (k < 0 || k >= depth)
        continue;  // out of range: the row stays all "off"
      out[(o * depth + k) * v.inner + i] = on;
    }
  }
}

FactoryResult MakeOneHot(const KernelInit& init) {
  const int64_t axis_attr = init.node->attrs.GetInt("axis", -1);
  return MakeKernel([axis_attr](KernelRunContext& ctx) -> absl::Status {
    QS_REQUIRE_INPUT(indices, ctx, 0);
    QS_REQUIRE_INPUT(depth_t, ctx, 1);
    QS_REQUIRE_INPUT(values, ctx, 2);
    if (depth_t->num_elements() != 1) return RunError("depth must be a scalar");
    if (values->num_elements() != 2)
      return RunError("values must hold [off, on]");
    QS_ASSIGN_OR_RETURN(Tensor depth_d,
                        CastTensor(*depth_t, DataType::kFloat64));
    const int64_t depth = static_cast<int64_t>(depth_d.data<double>()[0]);
    if (depth < 1) return RunError("depth must be positive, got ", depth);
    QS_ASSIGN_OR_RETURN(Tensor idx_t, CastTensor(*indices, DataType::kInt64));
    const std::vector<int64_t> idx(
        idx_t.data<int64_t>(), idx_t.data<int64_t>() + idx_t.num_elements());
    const int64_t out_rank = indices->rank() + 1;
    QS_ASSIGN_OR_RETURN(int64_t axis, NormalizeAxis(axis_attr, out_rank));
    Shape out_shape = indices->shape();
    out_shape.insert(out_shape.begin() + axis, depth);
    const AxisView v = ViewAround(out_shape, axis);
    Tensor out = Tensor::Uninitialized(values->dtype(), out_shape);
    switch (DataTypeSize(values->dtype())) {
      case 1:
        OneHotFill(idx, depth, v, values->data<uint8_t>()[0],
                   values->data<uint8_t>()[1], out.data<uint8_t>());
        break;
      case 2:
        OneHotFill(idx, depth, v, values->data<uint16_t>()[0],
                   values->data<uint16_t>()[1], out.data<uint16_t>());
        break;
      case 4:
        OneHotFill(idx, depth, v, values->data<uint32_t>()[0],
                   values->data<uint32_t>()[1], out.data<uint32_t>());
        break;
      default:
        OneHotFill(idx, depth, v, values->data<uint64_t>()[0],
                   values->data<uint64_t>()[1], out.data<uint64_t>());
        break;
    }
    (*ctx.outputs)[0] = std::move(out);
    return absl::OkStatus();
  });
}

#undef QS_REQUIRE_INPUT

}  // namespace

void RegisterIndexKernels(KernelRegistry* r) {
  r->Register("Gather", MakeGather, 1);
  r->Register("GatherElements", MakeGatherElements, 11);
  r->Register(
      "ArgMax", [](const KernelInit& init) { return MakeArg(init, true); }, 1);
  r->Register(
      "ArgMin", [](const KernelInit& init) { return MakeArg(init, false); }, 1);
  r->Register("TopK", MakeTopK, 1);
  r->Register("NonZero", MakeNonZero, 9);
  r->Register("OneHot", MakeOneHot, 9);
}

}  // namespace qs
