// Graph rewrites run by Session::Compile, in this order. Each lives in its own file.
#ifndef QUANTSERVE_ENGINE_PASSES_PASSES_H_
#define QUANTSERVE_ENGINE_PASSES_PASSES_H_

#include "absl/status/status.h"
#include "engine/graph.h"

namespace qs {

// Removes Identity and inference-mode Dropout, rewiring consumers (and graph outputs)
// to the node's input.
absl::Status RemoveIdentityNodes(Graph* graph);

// Evaluates every node whose inputs are all constants (initializers or folded values)
// with the engine's own kernels, and turns its outputs into initializers. Shape
// subgraphs over static shapes fold away here.
absl::Status FoldConstants(Graph* graph);

// Folds BatchNormalization into a preceding Conv whose output has no other consumer.
absl::Status FoldBatchNormIntoConv(Graph* graph);

// Folds a Relu, or a Clip with constant bounds, that follows a Conv whose output has no
// other consumer into the Conv (engine-internal attribute "qs_fused_activation", run
// by the Conv kernel as a oneDNN post-op).
absl::Status FuseConvActivation(Graph* graph);

// Removes nodes whose outputs reach no graph output, and unused initializers.
absl::Status EliminateDeadNodes(Graph* graph);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_PASSES_PASSES_H_
