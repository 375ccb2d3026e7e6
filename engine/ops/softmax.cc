// Softmax and LogSoftmax (FP32) on oneDNN softmax_forward / logsoftmax_forward.
//
// Opset < 13 coerces the input to 2-D at `axis` (default 1) and normalizes each row of
// the flattened [outer, inner] matrix; opset >= 13 normalizes along the single `axis`
// (default -1). Both become a plain 3-D problem [outer, axis_dim, inner] with oneDNN's
// softmax axis 1 (2-D when inner == 1, the common last-axis case that oneDNN's JIT
// kernels cover). Primitives are cached per input shape.
#include <memory>

#include "engine/ops/dnnl_util.h"
#include "engine/ops/registry.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

struct SoftmaxPlan {
  bool empty = false;
  dnnl::primitive prim;
  dnnl::memory src, dst;
};

struct SoftmaxState : KernelState {
  ShapeCache<Shape, SoftmaxPlan> plans;
};

class SoftmaxKernel : public Kernel {
 public:
  SoftmaxKernel(bool log, bool coerce_2d, int64_t axis)
      : log_(log), coerce_2d_(coerce_2d), axis_(axis) {}

  std::unique_ptr<KernelState> NewState() const override {
    return std::make_unique<SoftmaxState>();
  }

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (x == nullptr) return RunError("missing input");
    if (x->dtype() != DataType::kFloat32) {
      return RunError("only FP32 is supported, got ", DataTypeName(x->dtype()));
    }
    auto* state = static_cast<SoftmaxState*>(ctx.state);
    SoftmaxPlan* plan = state->plans.Find(x->shape());
    if (plan == nullptr) {
      QS_ASSIGN_OR_RETURN(auto built, BuildPlan(x->shape(), ctx.dnnl));
      plan = state->plans.Insert(x->shape(), std::move(built));
    }
    Tensor y = Tensor::Uninitialized(DataType::kFloat32, x->shape());
    if (!plan->empty) {
      plan->src.set_data_handle(const_cast<void*>(x->raw_data()));
      plan->dst.set_data_handle(y.raw_data());
      plan->prim.execute(ctx.dnnl->stream,
                         {{DNNL_ARG_SRC, plan->src}, {DNNL_ARG_DST, plan->dst}});
      ctx.dnnl->stream.wait();
    }
    (*ctx.outputs)[0] = std::move(y);
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<std::unique_ptr<SoftmaxPlan>> BuildPlan(const Shape& shape,
                                                         DnnlResources* dnnl) const {
    const int rank = static_cast<int>(shape.size());
    auto plan = std::make_unique<SoftmaxPlan>();
    // A scalar is a 1-element row.
    QS_ASSIGN_OR_RETURN(const int axis, NormalizeAxis(axis_, std::max(rank, 1)));
    int64_t outer = 1, dim = 1, inner = 1;
    for (int i = 0; i < rank; ++i) {
      if (i < axis) {
        outer *= shape[i];
      } else if (coerce_2d_ || i == axis) {
        dim *= shape[i];
      } else {
        inner *= shape[i];
      }
    }
    if (outer * dim * inner == 0) {
      plan->empty = true;
      return plan;
    }
    const dnnl::memory::desc md =
        inner == 1 ? PlainDesc({outer, dim}) : PlainDesc({outer, dim, inner});
    const dnnl::engine& eng = dnnl->engine;
    const auto prop = dnnl::prop_kind::forward_inference;
    if (log_) {
      dnnl::logsoftmax_forward::primitive_desc pd(
          dnnl::logsoftmax_forward::desc(prop, md, 1), eng);
      plan->prim = dnnl::logsoftmax_forward(pd);
    } else {
      dnnl::softmax_forward::primitive_desc pd(dnnl::softmax_forward::desc(prop, md, 1),
                                               eng);
      plan->prim = dnnl::softmax_forward(pd);
    }
    plan->src = dnnl::memory(md, eng, DNNL_MEMORY_NONE);
    plan->dst = dnnl::memory(md, eng, DNNL_MEMORY_NONE);
    return plan;
  }

  const bool log_;
  const bool coerce_2d_;
  const int64_t axis_;
};

KernelFactory Softmax(bool log) {
  return [log](const KernelInit& init) -> absl::StatusOr<std::unique_ptr<Kernel>> {
    QS_RETURN_IF_ERROR(CheckAttributes(*init.node, {"axis"}));
    const bool coerce_2d = init.opset < 13;
    const int64_t axis = init.node->attrs.GetInt("axis", coerce_2d ? 1 : -1);
    return std::unique_ptr<Kernel>(new SoftmaxKernel(log, coerce_2d, axis));
  };
}

}  // namespace

void RegisterSoftmaxKernels(KernelRegistry* r) {
  r->Register("Softmax", Softmax(false), 1, 17);
  r->Register("LogSoftmax", Softmax(true), 1, 17);
}

}  // namespace qs
