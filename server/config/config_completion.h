// Completes a model's config from its ONNX graph, as Triton's auto-complete does, and
// checks what the config states against the graph.
#ifndef QUANTSERVE_SERVER_CONFIG_CONFIG_COMPLETION_H_
#define QUANTSERVE_SERVER_CONFIG_CONFIG_COMPLETION_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/graph.h"
#include "model_config.pb.h"

namespace qs {

struct CompletionOptions {
  std::string model_name;          // the folder name; config.name must match if set
  int default_max_batch_size = 4;  // used when the config states neither IO nor batching
};

// Fills missing inputs/outputs (data_type, dims) from `graph_inputs`/`graph_outputs`,
// chooses max_batch_size when the config is silent and every tensor has a variable
// leading dimension (then also enables dynamic_batching), sets name and platform.
// Errors (FailedPrecondition, naming the tensor): a config tensor the model lacks, a
// data_type or dims that contradict the graph, batching over a fixed first dimension.
absl::Status CompleteModelConfig(const std::vector<ValueInfo>& graph_inputs,
                                 const std::vector<ValueInfo>& graph_outputs,
                                 const CompletionOptions& options,
                                 inference::ModelConfig* config);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_CONFIG_CONFIG_COMPLETION_H_
