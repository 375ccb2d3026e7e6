#include "engine/ops/registry.h"

#include <algorithm>

#include "engine/ops/reduced_precision.h"

namespace qs {

void KernelRegistry::Register(const std::string& op_type, KernelFactory factory,
                              int64_t min_opset, int64_t max_opset) {
  entries_[op_type].push_back({std::move(factory), min_opset, max_opset});
}

bool KernelRegistry::Supports(const std::string& op_type) const {
  return entries_.count(op_type) > 0;
}

std::vector<std::string> KernelRegistry::OpTypes() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : entries_) {
    // Not the internal variants and ops (reduced precision, fused patterns).
    if (k.find('@') == std::string::npos && k.rfind("Qs", 0) != 0) out.push_back(k);
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::unique_ptr<Kernel>> KernelRegistry::Create(
    const KernelInit& init) const {
  const Node& node = *init.node;
  if (!node.domain.empty()) {
    return absl::UnimplementedError(absl::StrCat(
        "unsupported op ", node.domain, ".", node.op_type, " (node '", node.name,
        "'): only the default ONNX domain is supported"));
  }
  // The precision pass marks nodes that run at reduced precision.
  const std::string key =
      node.attrs.Has(kPrecisionAttr) ? ReducedPrecisionKey(node.op_type) : node.op_type;
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    for (const Entry& e : it->second) {
      if (init.opset >= e.min_opset && init.opset <= e.max_opset) {
        return e.factory(init);
      }
    }
  }
  return absl::UnimplementedError(absl::StrCat("unsupported op ", node.op_type,
                                               " (node '", node.name,
                                               "', opset ", init.opset, ")"));
}

const KernelRegistry& DefaultKernelRegistry() {
  static const KernelRegistry* registry = [] {
    auto* r = new KernelRegistry();
    RegisterElementwiseKernels(r);
    RegisterBinaryKernels(r);
    RegisterShapeKernels(r);
    RegisterReduceKernels(r);
    RegisterConvKernels(r);
    RegisterMatMulKernels(r);
    RegisterPoolKernels(r);
    RegisterNormKernels(r);
    RegisterSoftmaxKernels(r);
    RegisterIndexKernels(r);
    RegisterResizeKernels(r);
    RegisterReducedPrecisionKernels(r);
    RegisterQuantizeOpsKernels(r);
    return r;
  }();
  return *registry;
}

}  // namespace qs
