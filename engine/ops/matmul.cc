// MatMul (numpy semantics) and Gemm on dnnl::matmul, FP32.
//
// Constant right-hand sides (the weights of Linear/FC layers) are 2-D in practice: they
// are reordered once into the layout oneDNN picks with format_tag::any (PackedWeights,
// shared by all contexts), and the left-hand side's leading dims are collapsed into M so
// that every batch size runs one brgemm matmul. Other cases (batched or non-constant B)
// use plain layouts with oneDNN's batch broadcasting. Primitives are cached per input
// shape in the per-context state.
//
// MatMul on integer and double tensors (allowed by ONNX, unusual in models) runs a
// plain loop.
#include <algorithm>
#include <memory>
#include <unordered_map>

#include "engine/layout.h"
#include "engine/ops/dnnl_util.h"
#include "engine/ops/registry.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

using dnnl::memory;

// ---------------------------------------------------------------- MatMul shapes ----

// The numpy matmul problem: A [..., M, K] x B [..., K, N] with 1-D operands promoted
// and batch dims broadcast.
struct MatMulShape {
  Shape a, b;      // operands padded to the same rank >= 2
  Shape out_full;  // broadcast batch + [M, N]
  Shape out;       // out_full without the promoted dims
  int64_t m = 0, k = 0, n = 0;
};

absl::StatusOr<MatMulShape> ResolveMatMul(const Shape& a_in, const Shape& b_in) {
  if (a_in.empty() || b_in.empty()) {
    return RunError("MatMul operands must have rank >= 1, got ", ShapeToString(a_in),
                    " and ", ShapeToString(b_in));
  }
  MatMulShape s;
  s.a = a_in;
  s.b = b_in;
  const bool a_vec = a_in.size() == 1, b_vec = b_in.size() == 1;
  if (a_vec) s.a.insert(s.a.begin(), 1);
  if (b_vec) s.b.push_back(1);
  const size_t rank = std::max(s.a.size(), s.b.size());
  s.a.insert(s.a.begin(), rank - s.a.size(), 1);
  s.b.insert(s.b.begin(), rank - s.b.size(), 1);
  s.m = s.a[rank - 2];
  s.k = s.a[rank - 1];
  s.n = s.b[rank - 1];
  if (s.b[rank - 2] != s.k) {
    return RunError("MatMul inner dims differ: ", ShapeToString(a_in), " x ",
                    ShapeToString(b_in));
  }
  for (size_t i = 0; i + 2 < rank; ++i) {
    if (s.a[i] != s.b[i] && s.a[i] != 1 && s.b[i] != 1) {
      return RunError("MatMul batch dims do not broadcast: ", ShapeToString(a_in), " x ",
                      ShapeToString(b_in));
    }
    s.out_full.push_back(s.a[i] == 1 ? s.b[i] : s.a[i]);
  }
  s.out_full.push_back(s.m);
  s.out_full.push_back(s.n);
  // numpy: drop the dims that promotion added, keep the original batch rank.
  const size_t orig_rank = std::max(a_in.size(), b_in.size());
  s.out.assign(s.out_full.end() - (orig_rank < 2 ? 2 : orig_rank), s.out_full.end());
  if (b_vec) s.out.pop_back();
  if (a_vec) s.out.erase(s.out.end() - (b_vec ? 1 : 2));
  return s;
}

// Loop fallback for non-FP32 element types.
template <typename T>
void NaiveMatMul(const MatMulShape& s, const T* a, const T* b, T* y) {
  const size_t rank = s.out_full.size();
  const int64_t batch = NumElements(absl::MakeConstSpan(s.out_full).subspan(0, rank - 2));
  std::vector<int64_t> idx(rank - 2, 0);
  for (int64_t bi = 0; bi < batch; ++bi) {
    // Offsets of this batch element in A and B (broadcast dims stride 0).
    int64_t ao = 0, bo = 0;
    for (size_t d = 0; d + 2 < rank; ++d) {
      ao = ao * s.a[d] + (s.a[d] == 1 ? 0 : idx[d]);
      bo = bo * s.b[d] + (s.b[d] == 1 ? 0 : idx[d]);
    }
    const T* pa = a + ao * s.m * s.k;
    const T* pb = b + bo * s.k * s.n;
    T* py = y + bi * s.m * s.n;
    for (int64_t i = 0; i < s.m; ++i) {
      for (int64_t j = 0; j < s.n; ++j) py[i * s.n + j] = T(0);
      for (int64_t p = 0; p < s.k; ++p) {
        const T av = pa[i * s.k + p];
        for (int64_t j = 0; j < s.n; ++j) py[i * s.n + j] += av * pb[p * s.n + j];
      }
    }
    for (int d = static_cast<int>(rank) - 3; d >= 0; --d) {
      if (++idx[d] < s.out_full[d]) break;
      idx[d] = 0;
    }
  }
}

// ---------------------------------------------------------------- plans ------------

struct MatMulPlan {
  Shape out_shape;
  bool skip = false;  // empty output, or K == 0 (output is zeros / bias only)
  dnnl::matmul prim;
  memory src, weights, dst, bias, post_src;
  Tensor weights_owner;  // keeps the packed constant `weights` points into
  bool const_weights = false;
  bool has_bias = false;      // DNNL_ARG_BIAS
  bool has_post_src = false;  // C as the src1 of the binary post-op at `post_index`
  int post_index = 0;
};

struct MatMulState : KernelState {
  ShapeCache<Shape, MatMulPlan> plans;
  Tensor scaled_c;  // Gemm: beta * C for a non-constant C, reused across runs
};

// ---------------------------------------------------------------- MatMul -----------

// Also runs the MatMul that FuseMatMulPostOps extended: a constant bias [N] as
// input 2 and a fused activation, both in the oneDNN primitive (2-D constant B only).
class MatMulKernel : public Kernel {
 public:
  // `perm_a`/`perm_b` (empty: none): the operand arrives untransposed and is read
  // through strides as Transpose(operand, perm) (FoldTransposeIntoMatMul).
  MatMulKernel(const Tensor* const_b, const Tensor* bias, FusedActivation act, float scale,
               bool fused_sum, std::vector<int64_t> perm_a, std::vector<int64_t> perm_b)
      : act_(act),
        scale_(scale),
        fused_sum_(fused_sum),
        perm_a_(std::move(perm_a)),
        perm_b_(std::move(perm_b)) {
    if (bias != nullptr) bias_ = *bias;
    // Only 1-D/2-D constants are packed: that is the FC-weight case, and it has a
    // rank-independent descriptor.
    // (Folded Transposes need 3-D+ operands read through strides: no packing then.)
    if (const_b != nullptr && const_b->dtype() == DataType::kFloat32 &&
        const_b->rank() <= 2 && perm_a_.empty() && perm_b_.empty()) {
      Shape b2 = const_b->shape();
      if (b2.size() == 1) b2.push_back(1);
      packed_ = std::make_unique<PackedWeights>(*const_b, PlainDesc(b2));
      // Only the packed layouts are read at run time (shape and type are kept).
      packed_->release_unpacked_after_first_pack();
    }
  }

  std::unique_ptr<KernelState> NewState() const override {
    return std::make_unique<MatMulState>();
  }
  bool owns_constant_input(size_t i) const override { return packed_ && i == 1; }
  int64_t weight_bytes() const override { return packed_ ? packed_->byte_size() : 0; }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* a = ctx.input(0);
    // A packed constant B is read from its packed layouts only.
    const Tensor* b = packed_ ? nullptr : ctx.input(1);
    if (a == nullptr || (b == nullptr && !packed_)) return RunError("missing input");
    const DataType b_type = packed_ ? packed_->dtype() : b->dtype();
    if (a->dtype() != b_type) {
      return RunError("A is ", DataTypeName(a->dtype()), " but B is ",
                      DataTypeName(b_type));
    }
    if (a->dtype() != DataType::kFloat32) {  // (never with a packed B: that is FP32)
      if (bias_.defined() || !act_.none() || !perm_a_.empty() || !perm_b_.empty() ||
          scale_ != 1.f || fused_sum_) {
        return RunError("fused MatMul needs FP32");
      }
      return RunLoop(*a, *b, ctx);
    }
    const Shape& b_shape = packed_ ? packed_->shape() : b->shape();
    auto* state = static_cast<MatMulState*>(ctx.state);
    Shape key = a->shape();
    key.push_back(-1);
    key.insert(key.end(), b_shape.begin(), b_shape.end());
    MatMulPlan* plan = state->plans.Find(key);
    if (plan == nullptr) {
      QS_ASSIGN_OR_RETURN(auto built, BuildPlan(a->shape(), b_shape, ctx.dnnl));
      plan = state->plans.Insert(std::move(key), std::move(built));
    }
    if (plan->skip) {
      (*ctx.outputs)[0] = Tensor(DataType::kFloat32, plan->out_shape);  // zeros
      return absl::OkStatus();
    }
    Tensor y;
    if (fused_sum_) {
      QS_ASSIGN_OR_RETURN(y, StartFromResidual(ctx, plan->out_shape));
    } else {
      y = Tensor::Uninitialized(DataType::kFloat32, plan->out_shape);
    }
    plan->src.set_data_handle(const_cast<void*>(a->raw_data()));
    plan->dst.set_data_handle(y.raw_data());
    if (!plan->const_weights)
      plan->weights.set_data_handle(const_cast<void*>(b->raw_data()));
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, plan->src},
                                            {DNNL_ARG_WEIGHTS, plan->weights},
                                            {DNNL_ARG_DST, plan->dst}};
    if (plan->has_bias) args[DNNL_ARG_BIAS] = plan->bias;
    plan->prim.execute(ctx.dnnl->stream, args);
    ctx.dnnl->stream.wait();
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<std::unique_ptr<MatMulPlan>> BuildPlan(const Shape& a_phys,
                                                        const Shape& b_phys,
                                                        DnnlResources* dnnl) const {
    QS_ASSIGN_OR_RETURN(const Shape a, Permuted(a_phys, perm_a_));
    QS_ASSIGN_OR_RETURN(const Shape b, Permuted(b_phys, perm_b_));
    QS_ASSIGN_OR_RETURN(MatMulShape s, ResolveMatMul(a, b));
    const bool permuted = !perm_a_.empty() || !perm_b_.empty();
    if (permuted && (a.size() != b.size() || a.size() < 3)) {
      return RunError("a folded Transpose needs operands of one rank >= 3");
    }
    auto plan = std::make_unique<MatMulPlan>();
    plan->out_shape = s.out;
    const bool fused = bias_.defined() || !act_.none() || scale_ != 1.f || fused_sum_;
    if (bias_.defined() && (b.size() != 2 || bias_.num_elements() != s.n)) {
      return RunError("a fused bias needs a 2-D B and a [N] bias");
    }
    if (s.k == 0 && fused && NumElements(s.out) != 0) {
      return RunError("K = 0 with a fused bias/activation is not supported");
    }
    if (NumElements(s.out) == 0 || s.k == 0) {
      plan->skip = true;
      return plan;
    }
    const dnnl::engine& eng = dnnl->engine;
    memory::desc src_md, w_md, dst_md;
    const bool use_packed = packed_ != nullptr && b.size() <= 2 && !permuted;
    if (b.size() <= 2 && !permuted) {
      // B has no batch dims: fold all of A's leading dims into M (A is contiguous).
      const int64_t rows = NumElements(s.a) / s.k;
      src_md = PlainDesc({rows, s.k});
      dst_md = PlainDesc({rows, s.n});
      w_md = use_packed ? memory::desc({s.k, s.n}, memory::data_type::f32,
                                       memory::format_tag::any)
                        : PlainDesc({s.k, s.n});
    } else {
      // (Without a perm, the operand as padded to the common rank.)
      src_md = perm_a_.empty() ? PlainDesc(s.a) : PermutedStridedDesc(a_phys, perm_a_);
      w_md = perm_b_.empty() ? PlainDesc(s.b) : PermutedStridedDesc(b_phys, perm_b_);
      dst_md = PlainDesc(s.out_full);
    }
    const memory::desc bias_md =
        bias_.defined() ? PlainDesc({1, s.n}) : memory::desc();
    dnnl::primitive_attr attr;
    {
      dnnl::post_ops po;
      if (scale_ != 1.f) po.append_eltwise(1.f, dnnl::algorithm::eltwise_linear, scale_, 0.f);
      if (fused_sum_) po.append_sum(1.f);
      AppendActivation(act_, &po);
      attr.set_post_ops(po);
    }
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src_md, w_md, bias_md, dst_md), attr,
                                    eng);
    plan->prim = dnnl::matmul(pd);
    plan->src = memory(src_md, eng, DNNL_MEMORY_NONE);
    plan->dst = memory(dst_md, eng, DNNL_MEMORY_NONE);
    if (bias_.defined()) {
      plan->has_bias = true;
      plan->bias = memory(bias_md, eng, const_cast<void*>(bias_.raw_data()));
    }
    if (use_packed) {
      plan->weights = packed_->Get(pd.weights_desc(), dnnl, &plan->weights_owner);
      plan->const_weights = true;
    } else {
      plan->weights = memory(w_md, eng, DNNL_MEMORY_NONE);
    }
    return plan;
  }

  absl::Status RunLoop(const Tensor& a, const Tensor& b, KernelRunContext& ctx) const {
    QS_ASSIGN_OR_RETURN(MatMulShape s, ResolveMatMul(a.shape(), b.shape()));
    Tensor y(a.dtype(), s.out);
    switch (a.dtype()) {
      case DataType::kFloat64:
        NaiveMatMul(s, a.data<double>(), b.data<double>(), y.data<double>());
        break;
      case DataType::kInt32:
        NaiveMatMul(s, a.data<int32_t>(), b.data<int32_t>(), y.data<int32_t>());
        break;
      case DataType::kInt64:
        NaiveMatMul(s, a.data<int64_t>(), b.data<int64_t>(), y.data<int64_t>());
        break;
      case DataType::kUInt32:
        NaiveMatMul(s, a.data<uint32_t>(), b.data<uint32_t>(), y.data<uint32_t>());
        break;
      case DataType::kUInt64:
        NaiveMatMul(s, a.data<uint64_t>(), b.data<uint64_t>(), y.data<uint64_t>());
        break;
      default: return RunError("unsupported type ", DataTypeName(a.dtype()));
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

  // The sum post-op accumulates into dst: dst starts as the residual (input 3), in place
  // when the session donates its buffer.
  absl::StatusOr<Tensor> StartFromResidual(KernelRunContext& ctx, const Shape& out) const {
    const Tensor* r = ctx.input(3);
    if (r == nullptr || r->dtype() != DataType::kFloat32 || r->shape() != out) {
      return RunError("the fused residual must be FP32 ", ShapeToString(out));
    }
    return AccumulatorFromInput(ctx, 3, Layout::kPlain);
  }

  // `shape` permuted by `perm` (unchanged for an empty perm).
  static absl::StatusOr<Shape> Permuted(const Shape& shape, const std::vector<int64_t>& perm) {
    if (perm.empty()) return shape;
    if (perm.size() != shape.size()) {
      return RunError("operand ", ShapeToString(shape), " does not match the folded perm");
    }
    Shape out(shape.size());
    for (size_t i = 0; i < perm.size(); ++i) out[i] = shape[perm[i]];
    return out;
  }

  // The descriptor of Transpose(x, perm) over x's own row-major buffer.
  static memory::desc PermutedStridedDesc(const Shape& phys, const std::vector<int64_t>& perm) {
    std::vector<int64_t> phys_strides(phys.size());
    int64_t st = 1;
    for (int i = static_cast<int>(phys.size()) - 1; i >= 0; --i) {
      phys_strides[i] = st;
      st *= phys[i];
    }
    memory::dims dims(perm.size()), strides(perm.size());
    for (size_t i = 0; i < perm.size(); ++i) {
      dims[i] = phys[perm[i]];
      strides[i] = phys_strides[perm[i]];
    }
    return memory::desc(dims, memory::data_type::f32, strides);
  }

  std::unique_ptr<PackedWeights> packed_;
  Tensor bias_;  // [N] or undefined
  const FusedActivation act_;
  const float scale_;       // kMatMulScaleAttr, 1 when absent
  const bool fused_sum_;    // input 3 is added (kFusedSumAttr)
  const std::vector<int64_t> perm_a_, perm_b_;
};

// ---------------------------------------------------------------- Gemm -------------

struct GemmParams {
  float alpha = 1.f;
  float beta = 1.f;
  bool trans_a = false;
  bool trans_b = false;
};

// C broadcast to [M, N]: its (rows, cols), each 1 or the full extent.
absl::StatusOr<std::pair<int64_t, int64_t>> CShape(const Shape& c, int64_t m, int64_t n) {
  int64_t cm = 1, cn = 1;
  if (c.size() > 2) return RunError("C must have rank <= 2, got ", ShapeToString(c));
  if (c.size() >= 1) cn = c.back();
  if (c.size() == 2) cm = c[0];
  if ((cm != 1 && cm != m) || (cn != 1 && cn != n)) {
    return RunError("C ", ShapeToString(c), " does not broadcast to [", m, ",", n, "]");
  }
  return std::make_pair(cm, cn);
}

class GemmKernel : public Kernel {
 public:
  GemmKernel(GemmParams p, const Tensor* const_b, const Tensor* const_c) : p_(p) {
    if (const_b != nullptr && const_b->rank() == 2) {
      const memory::dims dims = {p_.trans_b ? const_b->dim(1) : const_b->dim(0),
                                 p_.trans_b ? const_b->dim(0) : const_b->dim(1)};
      const memory::desc user =
          p_.trans_b ? PermutedDesc(dims, {1, 0}) : PlainDesc(const_b->shape());
      packed_b_ = std::make_unique<PackedWeights>(*const_b, user);
      packed_b_->release_unpacked_after_first_pack();
    }
    if (const_c != nullptr && p_.beta != 0.f) {
      // beta folded in once.
      scaled_c_ = const_c->Clone();
      if (p_.beta != 1.f) {
        float* v = scaled_c_.data<float>();
        for (int64_t i = 0; i < scaled_c_.num_elements(); ++i) v[i] *= p_.beta;
      }
    }
  }

  std::unique_ptr<KernelState> NewState() const override {
    return std::make_unique<MatMulState>();
  }
  bool owns_constant_input(size_t i) const override { return packed_b_ && i == 1; }
  int64_t weight_bytes() const override { return packed_b_ ? packed_b_->byte_size() : 0; }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* a = ctx.input(0);
    const Tensor* b = packed_b_ ? nullptr : ctx.input(1);
    const Tensor* c = p_.beta != 0.f ? ctx.input(2) : nullptr;
    if (a == nullptr || (b == nullptr && !packed_b_)) return RunError("missing A or B input");
    for (const Tensor* t : {a, b, c}) {
      if (t != nullptr && t->dtype() != DataType::kFloat32) {
        return RunError("only FP32 is supported, got ", DataTypeName(t->dtype()));
      }
    }
    if (packed_b_ && packed_b_->dtype() != DataType::kFloat32) {
      return RunError("only FP32 is supported, got ", DataTypeName(packed_b_->dtype()));
    }
    const Shape& b_shape = packed_b_ ? packed_b_->shape() : b->shape();
    if (a->rank() != 2 || b_shape.size() != 2) {
      return RunError("A and B must be 2-D, got ", ShapeToString(a->shape()), " and ",
                      ShapeToString(b_shape));
    }
    auto* state = static_cast<MatMulState*>(ctx.state);
    // C's value: the pre-scaled constant, or beta * C computed now.
    const Tensor* c_val = nullptr;
    if (c != nullptr) {
      if (scaled_c_.defined()) {
        c_val = &scaled_c_;
      } else if (p_.beta == 1.f) {
        c_val = c;
      } else {
        if (state->scaled_c.shape() != c->shape()) {
          state->scaled_c = Tensor::Uninitialized(DataType::kFloat32, c->shape());
        }
        const float* in = c->data<float>();
        float* out = state->scaled_c.data<float>();
        for (int64_t i = 0; i < c->num_elements(); ++i) out[i] = p_.beta * in[i];
        c_val = &state->scaled_c;
      }
    }
    Shape key = a->shape();
    key.push_back(-1);
    key.insert(key.end(), b_shape.begin(), b_shape.end());
    key.push_back(-1);
    if (c_val != nullptr)
      key.insert(key.end(), c_val->shape().begin(), c_val->shape().end());
    key.push_back(c_val != nullptr ? c_val->rank() : -1);
    MatMulPlan* plan = state->plans.Find(key);
    if (plan == nullptr) {
      QS_ASSIGN_OR_RETURN(auto built, BuildPlan(a->shape(), b_shape, c_val, ctx.dnnl));
      plan = state->plans.Insert(std::move(key), std::move(built));
    }
    if (plan->skip) {
      Tensor y(DataType::kFloat32, plan->out_shape);
      if (c_val != nullptr && y.num_elements() > 0) {
        // K == 0: Y = beta * C broadcast.
        const int64_t m = plan->out_shape[0], n = plan->out_shape[1];
        QS_ASSIGN_OR_RETURN(auto cs, CShape(c_val->shape(), m, n));
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j)
            y.data<float>()[i * n + j] =
                c_val->data<float>()[(cs.first == 1 ? 0 : i) * cs.second +
                                     (cs.second == 1 ? 0 : j)];
      }
      (*ctx.outputs)[0] = std::move(y);
      return absl::OkStatus();
    }
    Tensor y = Tensor::Uninitialized(DataType::kFloat32, plan->out_shape);
    plan->src.set_data_handle(const_cast<void*>(a->raw_data()));
    plan->dst.set_data_handle(y.raw_data());
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, plan->src},
                                            {DNNL_ARG_DST, plan->dst}};
    if (!plan->const_weights)
      plan->weights.set_data_handle(const_cast<void*>(b->raw_data()));
    args[DNNL_ARG_WEIGHTS] = plan->weights;
    if (plan->has_bias) {
      plan->bias.set_data_handle(const_cast<void*>(c_val->raw_data()));
      args[DNNL_ARG_BIAS] = plan->bias;
    }
    if (plan->has_post_src) {
      plan->post_src.set_data_handle(const_cast<void*>(c_val->raw_data()));
      args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(plan->post_index) | DNNL_ARG_SRC_1] =
          plan->post_src;
    }
    plan->prim.execute(ctx.dnnl->stream, args);
    ctx.dnnl->stream.wait();
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<std::unique_ptr<MatMulPlan>> BuildPlan(const Shape& a, const Shape& b,
                                                        const Tensor* c,
                                                        DnnlResources* dnnl) const {
    const int64_t m = p_.trans_a ? a[1] : a[0];
    const int64_t k = p_.trans_a ? a[0] : a[1];
    const int64_t kb = p_.trans_b ? b[1] : b[0];
    const int64_t n = p_.trans_b ? b[0] : b[1];
    if (k != kb) {
      return RunError("Gemm inner dims differ: A ", ShapeToString(a), " B ",
                      ShapeToString(b), " transA=", p_.trans_a, " transB=", p_.trans_b);
    }
    auto plan = std::make_unique<MatMulPlan>();
    plan->out_shape = {m, n};
    std::pair<int64_t, int64_t> cs = {1, 1};
    if (c != nullptr) {
      QS_ASSIGN_OR_RETURN(cs, CShape(c->shape(), m, n));
    }
    if (m == 0 || n == 0 || k == 0) {
      plan->skip = true;
      return plan;
    }
    const dnnl::engine& eng = dnnl->engine;
    const memory::desc src_md =
        p_.trans_a ? PermutedDesc({m, k}, {1, 0}) : PlainDesc({m, k});
    const memory::desc user_w_md =
        p_.trans_b ? PermutedDesc({k, n}, {1, 0}) : PlainDesc({k, n});
    const memory::desc w_md =
        packed_b_ ? memory::desc({k, n}, memory::data_type::f32, memory::format_tag::any)
                  : user_w_md;
    const memory::desc dst_md = PlainDesc({m, n});
    // Y = alpha * A'B' + C'. With alpha == 1 a row-vector C' is oneDNN's bias (fused
    // into the brgemm kernel); otherwise alpha is an eltwise post-op and C' a binary
    // post-op (applied after alpha, unlike bias).
    dnnl::primitive_attr attr;
    dnnl::post_ops ops;
    memory::desc c_md;
    if (c != nullptr) c_md = PlainDesc({cs.first, cs.second});
    const bool c_as_bias = c != nullptr && p_.alpha == 1.f && cs.first == 1;
    if (p_.alpha != 1.f)
      ops.append_eltwise(1.f, dnnl::algorithm::eltwise_linear, p_.alpha, 0.f);
    if (c != nullptr && !c_as_bias) {
      plan->post_index = ops.len();
      ops.append_binary(dnnl::algorithm::binary_add, c_md);
      plan->has_post_src = true;
    }
    if (ops.len() > 0) attr.set_post_ops(ops);
    auto desc = c_as_bias ? dnnl::matmul::desc(src_md, w_md, c_md, dst_md)
                          : dnnl::matmul::desc(src_md, w_md, dst_md);
    dnnl::matmul::primitive_desc pd(desc, attr, eng);
    plan->prim = dnnl::matmul(pd);
    plan->src = memory(src_md, eng, DNNL_MEMORY_NONE);
    plan->dst = memory(dst_md, eng, DNNL_MEMORY_NONE);
    if (packed_b_) {
      plan->weights = packed_b_->Get(pd.weights_desc(), dnnl, &plan->weights_owner);
      plan->const_weights = true;
    } else {
      plan->weights = memory(user_w_md, eng, DNNL_MEMORY_NONE);
    }
    if (c_as_bias) {
      plan->has_bias = true;
      plan->bias = memory(c_md, eng, DNNL_MEMORY_NONE);
    }
    if (plan->has_post_src) plan->post_src = memory(c_md, eng, DNNL_MEMORY_NONE);
    return plan;
  }

  const GemmParams p_;
  std::unique_ptr<PackedWeights> packed_b_;
  Tensor scaled_c_;  // beta * C when C is constant
};

absl::StatusOr<std::unique_ptr<Kernel>> MakeMatMul(const KernelInit& init) {
  const Node& node = *init.node;
  QS_RETURN_IF_ERROR(CheckAttributes(node, {kFusedActivationAttr, kFusedActivationParamsAttr,
                                            kPermAAttr, kPermBAttr, kMatMulScaleAttr,
                                            kFusedSumAttr}));
  // Inputs 2 (bias) and 3 (residual) are what FuseMatMulPostOps folded in.
  const bool fused_sum = node.attrs.GetInt(kFusedSumAttr, 0) != 0;
  if (node.inputs.size() != (fused_sum ? 4u : 2u) && !(node.inputs.size() == 3 && !fused_sum)) {
    return NodeError(node, "needs 2 inputs");
  }
  const Tensor* bias = nullptr;
  if (node.inputs.size() >= 3 && !node.inputs[2].empty()) {
    bias = init.constant(2);
    if (bias == nullptr || bias->dtype() != DataType::kFloat32 || bias->rank() != 1) {
      return NodeError(node, "a fused bias must be a constant FP32 [N]");
    }
  }
  QS_ASSIGN_OR_RETURN(FusedActivation act, ParseFusedActivation(node));
  std::vector<int64_t> perm_a = node.attrs.GetInts(kPermAAttr);
  std::vector<int64_t> perm_b = node.attrs.GetInts(kPermBAttr);
  for (const auto* perm : {&perm_a, &perm_b}) {
    std::vector<int64_t> sorted = *perm;
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size(); ++i) {
      if (sorted[i] != static_cast<int64_t>(i)) return NodeError(node, "invalid folded perm");
    }
  }
  return std::unique_ptr<Kernel>(new MatMulKernel(
      init.constant(1), bias, act, node.attrs.GetFloat(kMatMulScaleAttr, 1.f), fused_sum,
      std::move(perm_a), std::move(perm_b)));
}

absl::StatusOr<std::unique_ptr<Kernel>> MakeGemm(const KernelInit& init) {
  const Node& node = *init.node;
  QS_RETURN_IF_ERROR(CheckAttributes(node, {"alpha", "beta", "transA", "transB"}));
  if (node.inputs.size() < 2) return NodeError(node, "needs inputs A and B");
  if (init.opset < 11 && (node.inputs.size() < 3 || node.inputs[2].empty())) {
    return NodeError(node, "input C is required before opset 11");
  }
  GemmParams p;
  p.alpha = node.attrs.GetFloat("alpha", 1.f);
  p.beta = node.attrs.GetFloat("beta", 1.f);
  p.trans_a = node.attrs.GetInt("transA", 0) != 0;
  p.trans_b = node.attrs.GetInt("transB", 0) != 0;
  const Tensor* b = init.constant(1);
  const Tensor* c = init.constant(2);
  for (const Tensor* t : {b, c}) {
    if (t != nullptr && t->dtype() != DataType::kFloat32) {
      return NodeError(node, "only FP32 is supported, got ", DataTypeName(t->dtype()));
    }
  }
  if (b != nullptr && b->rank() != 2) {
    return NodeError(node, "B must be 2-D, got ", ShapeToString(b->shape()));
  }
  if (c != nullptr && c->rank() > 2) {
    return NodeError(node, "C must have rank <= 2, got ", ShapeToString(c->shape()));
  }
  return std::unique_ptr<Kernel>(new GemmKernel(p, b, c));
}

}  // namespace

void RegisterMatMulKernels(KernelRegistry* r) {
  r->Register("MatMul", MakeMatMul, 1, 17);
  r->Register("Gemm", MakeGemm, 7, 17);
}

}  // namespace qs
