// Op type -> kernel factory. Each ops file exposes a Register*Kernels function that
// registry.cc calls (explicit registration: static initializers in a static library
// would be dropped by the linker).
#ifndef QUANTSERVE_ENGINE_OPS_REGISTRY_H_
#define QUANTSERVE_ENGINE_OPS_REGISTRY_H_

#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/ops/kernel.h"

namespace qs {

class KernelRegistry {
 public:
  // `min_opset`..`max_opset`: the default-domain opsets this factory implements.
  void Register(const std::string& op_type, KernelFactory factory,
                int64_t min_opset = 1, int64_t max_opset = 17);
  // Unimplemented "unsupported op X (node 'n', opset K)" when not registered.
  absl::StatusOr<std::unique_ptr<Kernel>> Create(const KernelInit& init) const;
  bool Supports(const std::string& op_type) const;
  std::vector<std::string> OpTypes() const;

 private:
  struct Entry {
    KernelFactory factory;
    int64_t min_opset;
    int64_t max_opset;
  };
  absl::flat_hash_map<std::string, std::vector<Entry>> entries_;
};

// The registry with every built-in kernel. Thread-safe (built once).
const KernelRegistry& DefaultKernelRegistry();

// One per ops file.
void RegisterElementwiseKernels(KernelRegistry* r);
void RegisterBinaryKernels(KernelRegistry* r);
void RegisterShapeKernels(KernelRegistry* r);
void RegisterReduceKernels(KernelRegistry* r);
void RegisterConvKernels(KernelRegistry* r);
void RegisterMatMulKernels(KernelRegistry* r);
void RegisterPoolKernels(KernelRegistry* r);
void RegisterNormKernels(KernelRegistry* r);
void RegisterSoftmaxKernels(KernelRegistry* r);
void RegisterIndexKernels(KernelRegistry* r);
void RegisterResizeKernels(KernelRegistry* r);
void RegisterReducedPrecisionKernels(KernelRegistry* r);
void RegisterQuantizeOpsKernels(KernelRegistry* r);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_OPS_REGISTRY_H_
