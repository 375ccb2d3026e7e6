// Running the first layers of a CNN one sample at a time.
//
// At batch 8 the early layers of a CNN handle activations of tens of MB (ResNet-50's
// 56x56x256 f32 maps: 25.7 MB), which no cache holds, and turn memory-bound; one sample's
// maps (3.2 MB) stay in cache from one layer to the next. Measured on ResNet-50 FP32 (2
// threads, `quantserve-bench --profile`): stem to layer2 take 7.76 ms per image at batch
// 1 and 8.90 at batch 8, while layer3-4 take 10.82 and 9.78 (their weights, not their
// activations, dominate, and a batch reuses them). So the session runs a leading run of
// sample-separable nodes per sample and the rest on the whole batch, for batches of 4
// and more (Session::Run; QS_BATCH_SPLIT=0 turns it off). Not for INT8 and
// DYNAMIC_RANGE plans: their u8 maps are a quarter of the size, already stay in cache,
// and per-sample runs only added primitive launches (ResNet-50 INT8 b8 43.5 vs 42.5 ms).
#ifndef QUANTSERVE_ENGINE_BATCH_SPLIT_H_
#define QUANTSERVE_ENGINE_BATCH_SPLIT_H_

#include <cstddef>

#include "engine/graph.h"

namespace qs {

// How many leading nodes of `graph` (in its order) to run per sample: the longest
// prefix of nodes in which each output row depends only on the same input row (Conv,
// pooling, element-wise ops with per-sample operands) and that ends at the last node
// whose per-sample output is at least `min_sample_bytes` (estimated at 4 bytes per
// element from shape inference). Every graph input the prefix reads must have a free
// leading (batch) dimension. 0 when there is no such prefix, and for graphs with
// INT8/DYNAMIC_RANGE nodes (see above).
size_t BatchSplitEnd(const Graph& graph, size_t min_sample_bytes = size_t{1} << 20);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_BATCH_SPLIT_H_
