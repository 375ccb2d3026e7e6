// The inputs a model version is warmed up with before it serves: the config's
// model_warmup entries, or zeros at batch 1 and at max_batch_size (and every preferred
// batch size) when the config has none. Warming builds each worker's oneDNN primitives
// for those shapes, so the first real request does not pay for them.
#ifndef QUANTSERVE_SERVER_REPOSITORY_WARMUP_H_
#define QUANTSERVE_SERVER_REPOSITORY_WARMUP_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tensor.h"
#include "server/repository/loaded_model.h"

namespace qs {

using WarmupSet = std::vector<Tensor>;  // one tensor per session input, in order

// Errors (FailedPrecondition): a model_warmup entry that names an unknown input, misses
// one, has a mismatched type, or a data file of the wrong size.
absl::StatusOr<std::vector<WarmupSet>> BuildWarmupSets(const LoadedModel& model,
                                                       const std::string& model_dir);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_REPOSITORY_WARMUP_H_
