#include "engine/ops/registry.h"

namespace qs {

void RegisterNormKernels(KernelRegistry* r) {}

}  // namespace qs
