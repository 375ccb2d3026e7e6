// Conversions between the plain (NCHW-style) and channels-last (NHWC-style) memory order
// of a tensor; see Layout in tensor.h.
#ifndef QUANTSERVE_ENGINE_LAYOUT_H_
#define QUANTSERVE_ENGINE_LAYOUT_H_

#include "engine/tensor.h"

namespace qs {

// True when the two orders coincide in memory (rank < 3, one channel, or every spatial
// dim 1), so the tag can be changed without moving data.
bool LayoutIsTrivial(const Shape& shape);

// A plain copy of a channels-last tensor (the tensor itself when already plain or
// trivial).
Tensor ToPlain(const Tensor& t);
// A channels-last copy of a plain tensor of rank >= 3 (itself when already so).
Tensor ToChannelsLast(const Tensor& t);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_LAYOUT_H_
