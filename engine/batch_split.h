// Running the first layers of a CNN one sample at a time.
//
// At batch 8 the early layers of a CNN handle activations of tens of MB (ResNet-50's
// 56x56x256 f32 maps: 25.7 MB), which no cache holds, and turn memory-bound; one sample's
// maps (3.2 MB) stay in cache from one layer to the next. Measured on ResNet-50 FP32 (2
// threads, `quantserve-bench --profile`): stem to layer2 take 7.76 ms per image at batch
// 1 and 8.90 at batch 8, while layer3-4 take 10.82 and 9.78 (their weights, not their
// activations, dominate, and a batch reuses them). So the session runs a leading run of
// sample-separable nodes per sample and the rest on the whole batch, for batches of 4
// and more (Session::Run; QS_BATCH_SPLIT=0 turns it off).
//
// INT8 and DYNAMIC_RANGE plans run their prefix per sample only on a single thread (a
// batch shard, session.h): their u8 maps are a quarter of the size and already stay in
// cache, so the split saves them no time, and on a 2-thread team per-sample primitives
// lost (ResNet-50 INT8 b8 43.5 vs 42.5 ms, MobileNetV2 9.4 vs 8.0). Within a shard it
// costs 0-1 % and holds one sample's early maps instead of the shard's: ResNet-50 INT8
// at batch 8 peaks at 6.4 MB of activations instead of 17.7, MobileNetV2 at 4.5.
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
// INT8/DYNAMIC_RANGE nodes when the prefix holds none of them.
size_t BatchSplitEnd(const Graph& graph, size_t min_sample_bytes = size_t{1} << 20);

// Whether any of the first `end` nodes runs at INT8 or DYNAMIC_RANGE.
bool HasIntegerNodes(const Graph& graph, size_t end);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_BATCH_SPLIT_H_
