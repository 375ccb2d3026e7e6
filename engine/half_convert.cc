#include "engine/half_convert.h"

// GCC 12 reports a false -Wmaybe-uninitialized inside avx512fintrin.h's conversions (the
// masked builtin's pass-through operand), as in quant_math.cc.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "engine/tensor.h"

namespace qs {
namespace {

bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

bool HasF16c() {
  static const bool has = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx");
  return has;
}

__attribute__((target("avx512f"))) int64_t HalfToFloatAvx512(const uint16_t* in, float* out,
                                                             int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(h));
  }
  return i;
}

__attribute__((target("avx512f"))) int64_t FloatToHalfAvx512(const float* in, uint16_t* out,
                                                             int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), h);
  }
  return i;
}

__attribute__((target("avx,f16c"))) int64_t HalfToFloatF16c(const uint16_t* in, float* out,
                                                            int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(h));
  }
  return i;
}

__attribute__((target("avx,f16c"))) int64_t FloatToHalfF16c(const float* in, uint16_t* out,
                                                            int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
  return i;
}

}  // namespace

void HalfToFloatArray(const uint16_t* in, float* out, int64_t n) {
  int64_t i = 0;
  if (HasAvx512()) {
    i = HalfToFloatAvx512(in, out, n);
  } else if (HasF16c()) {
    i = HalfToFloatF16c(in, out, n);
  }
  for (; i < n; ++i) out[i] = HalfToFloat(in[i]);
}

void FloatToHalfArray(const float* in, uint16_t* out, int64_t n) {
  int64_t i = 0;
  if (HasAvx512()) {
    i = FloatToHalfAvx512(in, out, n);
  } else if (HasF16c()) {
    i = FloatToHalfF16c(in, out, n);
  }
  for (; i < n; ++i) out[i] = FloatToHalf(in[i]);
}

}  // namespace qs
