// Quantization arithmetic shared by the int8 kernels and calibration: scale/zero-point
// selection (ONNX Runtime's compute_scale_zp rules), per-channel symmetric s8 weights,
// and the hot per-batch loops of DYNAMIC_RANGE (min/max and f32 -> u8), vectorized with
// AVX-512 where the CPU has it (a scalar min/max costs ~75x more, see
// docs/quantization.md).
#ifndef QUANTSERVE_ENGINE_QUANTIZE_QUANT_MATH_H_
#define QUANTSERVE_ENGINE_QUANTIZE_QUANT_MATH_H_

#include <cstdint>
#include <vector>

#include "engine/tensor.h"

namespace qs {

struct QuantParams {
  float scale = 1.f;
  int32_t zero_point = 0;
};

// u8 asymmetric parameters for the real range [rmin, rmax]: the range is widened to
// include 0 (so 0 is exact, as zero padding needs), scale = (rmax - rmin) / 255 and
// zero_point = round(-rmin / scale) clamped to [0, 255]. A zero range gives scale 1, zp 0.
QuantParams ComputeU8Params(float rmin, float rmax);

// s8 weights, symmetric per output channel: `w` is viewed as [channels, rest] (channel
// axis outermost, as ONNX Conv stores O first); scale[c] = max|w_c| / 127 (1 for an
// all-zero channel); q = clamp(round_half_even(w / scale), -127, 127).
struct QuantizedWeights {
  Tensor values;               // s8 (DataType::kInt8), same shape as the input
  std::vector<float> scales;   // one per channel
};
QuantizedWeights QuantizeWeightsPerChannel(const Tensor& w, int64_t channels);
// The same for weights whose output channel is the LAST axis (MatMul's B [K, N]).
QuantizedWeights QuantizeWeightsPerColumn(const Tensor& w);

// min and max of `n` floats (vectorized). For n == 0 returns {0, 0}.
void MinMax(const float* x, int64_t n, float* min, float* max);

// q[i] = clamp(round_half_even(x[i] / scale) + zp, 0, 255).
void QuantizeU8(const float* x, int64_t n, float scale, int32_t zero_point, uint8_t* q);
// The same for bf16 input (raw bf16 bits, as Tensor stores kBFloat16).
void QuantizeBf16ToU8(const uint16_t* x, int64_t n, float scale, int32_t zero_point,
                      uint8_t* q);
// x[i] = scale * (q[i] - zero_point).
void DequantizeU8(const uint8_t* q, int64_t n, float scale, int32_t zero_point, float* x);

// Signal-to-quantization-noise ratio in dB of `approx` against `ref`:
// 10 log10(sum ref^2 / sum (ref - approx)^2); +inf when they are equal.
double SqnrDb(const float* ref, const float* approx, int64_t n);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_QUANTIZE_QUANT_MATH_H_
