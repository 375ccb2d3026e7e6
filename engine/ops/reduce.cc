#include "engine/ops/registry.h"

namespace qs {

void RegisterReduceKernels(KernelRegistry* r) {}

}  // namespace qs
