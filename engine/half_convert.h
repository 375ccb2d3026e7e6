// Array conversions between IEEE half precision and float: AVX-512 (16 values per
// instruction) where the CPU has it, F16C (8) otherwise, scalar tails. Round to nearest
// even; the results equal HalfToFloat/FloatToHalf (engine/tensor.h) bit for bit, NaN
// payloads aside (any NaN stays a NaN). Thread-safe, no allocation.
#ifndef QUANTSERVE_ENGINE_HALF_CONVERT_H_
#define QUANTSERVE_ENGINE_HALF_CONVERT_H_

#include <cstdint>

namespace qs {

void HalfToFloatArray(const uint16_t* in, float* out, int64_t n);
void FloatToHalfArray(const float* in, uint16_t* out, int64_t n);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_HALF_CONVERT_H_
