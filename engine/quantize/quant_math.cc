#include "engine/quantize/quant_math.h"

// GCC 12 reports a false -Wmaybe-uninitialized inside avx512fintrin.h's
// _mm512_min_ps/_mm512_max_ps (the masked builtin's pass-through operand).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace qs {
namespace {

bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has;
}

__attribute__((target("avx512f,avx512bw"))) void MinMaxAvx512(const float* x, int64_t n,
                                                              float* mn, float* mx) {
  __m512 lo0 = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 hi0 = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 lo1 = lo0, hi1 = hi0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {  // two accumulators hide the min/max latency
    __m512 a = _mm512_loadu_ps(x + i);
    __m512 b = _mm512_loadu_ps(x + i + 16);
    lo0 = _mm512_min_ps(lo0, a);
    hi0 = _mm512_max_ps(hi0, a);
    lo1 = _mm512_min_ps(lo1, b);
    hi1 = _mm512_max_ps(hi1, b);
  }
  for (; i + 16 <= n; i += 16) {
    __m512 a = _mm512_loadu_ps(x + i);
    lo0 = _mm512_min_ps(lo0, a);
    hi0 = _mm512_max_ps(hi0, a);
  }
  // (GCC 12's _mm512_reduce_*_ps trips -Wmaybe-uninitialized; reduce by hand.)
  alignas(64) float l[16], h[16];
  _mm512_store_ps(l, _mm512_min_ps(lo0, lo1));
  _mm512_store_ps(h, _mm512_max_ps(hi0, hi1));
  float lo = l[0], hi = h[0];
  for (int k = 1; k < 16; ++k) {
    lo = std::min(lo, l[k]);
    hi = std::max(hi, h[k]);
  }
  for (; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  *mn = lo;
  *mx = hi;
}

// One value quantized to u8 (`inv` = 1 / scale): clamp(round_half_even(x * inv) + zp,
// 0, 255), as the vector loop below computes it.
inline uint8_t QuantizeOneU8(float x, float inv, int32_t zp) {
  return static_cast<uint8_t>(
      std::clamp(static_cast<int32_t>(std::nearbyint(x * inv)) + zp, 0, 255));
}

// 16 floats loaded by `load(i)` (a __m512) and the scalar tail by `scalar(i)` (a float),
// quantized to u8: clamp(round_half_even(x / scale) + zp, 0, 255).
template <typename Load, typename Scalar>
__attribute__((target("avx512f,avx512bw"), always_inline)) inline void QuantizeU8Avx512(
    int64_t n, float scale, int32_t zp, uint8_t* q, Load load, Scalar scalar) {
  const __m512 inv = _mm512_set1_ps(1.f / scale);
  const __m512i zpv = _mm512_set1_epi32(zp);
  const __m512i lo = _mm512_setzero_si512();
  const __m512i hi = _mm512_set1_epi32(255);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    // cvtps rounds with MXCSR: round-to-nearest-even by default, as ONNX specifies.
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(load(i), inv));
    v = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(v, zpv), lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(v));
  }
  for (; i < n; ++i) q[i] = QuantizeOneU8(scalar(i), 1.f / scale, zp);
}

__attribute__((target("avx512f,avx512bw"))) void QuantizeF32U8Avx512(const float* x, int64_t n,
                                                                     float scale, int32_t zp,
                                                                     uint8_t* q) {
  QuantizeU8Avx512(
      n, scale, zp, q,
      [x](int64_t i) __attribute__((target("avx512f"))) { return _mm512_loadu_ps(x + i); },
      [x](int64_t i) { return x[i]; });
}

// bf16 is the upper half of an f32's bits.
__attribute__((target("avx512f,avx512bw"))) void QuantizeBf16U8Avx512(const uint16_t* x,
                                                                      int64_t n, float scale,
                                                                      int32_t zp, uint8_t* q) {
  QuantizeU8Avx512(
      n, scale, zp, q,
      [x](int64_t i) __attribute__((target("avx512f"))) {
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
      },
      [x](int64_t i) { return BFloat16ToFloat(x[i]); });
}

}  // namespace

QuantParams ComputeU8Params(float rmin, float rmax) {
  rmin = std::min(rmin, 0.f);
  rmax = std::max(rmax, 0.f);
  QuantParams p;
  const double scale = (static_cast<double>(rmax) - rmin) / 255.0;
  if (!(scale > std::numeric_limits<float>::min()) || !std::isfinite(scale)) return p;
  p.scale = static_cast<float>(scale);
  p.zero_point = static_cast<int32_t>(
      std::clamp(std::nearbyint(-static_cast<double>(rmin) / scale), 0.0, 255.0));
  return p;
}

namespace {

QuantizedWeights QuantizeStrided(const Tensor& w, int64_t channels, int64_t outer,
                                 int64_t inner) {
  // Element (o, c, i) at o*channels*inner + c*inner + i; channel c gets one scale.
  QuantizedWeights out;
  out.values = Tensor::Uninitialized(DataType::kInt8, w.shape());
  out.scales.assign(channels, 0.f);
  const float* src = w.data<float>();
  int8_t* dst = out.values.data<int8_t>();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < inner; ++i)
        out.scales[c] = std::max(out.scales[c], std::fabs(src[(o * channels + c) * inner + i]));
  for (float& s : out.scales) s = s > 0.f ? s / 127.f : 1.f;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t c = 0; c < channels; ++c) {
      const float inv = 1.f / out.scales[c];
      for (int64_t i = 0; i < inner; ++i) {
        const int64_t k = (o * channels + c) * inner + i;
        dst[k] = static_cast<int8_t>(std::clamp(std::nearbyint(src[k] * inv), -127.f, 127.f));
      }
    }
  return out;
}

}  // namespace

QuantizedWeights QuantizeWeightsPerChannel(const Tensor& w, int64_t channels) {
  return QuantizeStrided(w, channels, 1, w.num_elements() / std::max<int64_t>(1, channels));
}

QuantizedWeights QuantizeWeightsPerColumn(const Tensor& w) {
  const int64_t n = w.rank() == 0 ? 1 : w.dim(w.rank() - 1);
  return QuantizeStrided(w, n, w.num_elements() / std::max<int64_t>(1, n), 1);
}

namespace {

// Runs fn(begin, end, chunk_index) over [0, n) in one contiguous chunk per OpenMP thread
// (the caller's thread budget) when n is large enough for the fork to pay off: the
// DYNAMIC_RANGE min/max and quantize passes sit on every quantized MatMul's critical
// path, between two multi-threaded oneDNN primitives. Returns the chunk count.
template <typename Fn>
int ForChunks(int64_t n, Fn fn) {
  constexpr int64_t kParallelMin = int64_t{1} << 16;
  const int threads = n >= kParallelMin ? std::max(1, omp_get_max_threads()) : 1;
  if (threads == 1) {
    fn(int64_t{0}, n, 0);
    return 1;
  }
  // Chunks of whole cache lines of floats.
  const int64_t chunk = ((n + threads - 1) / threads + 15) / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static, 1)
  for (int t = 0; t < threads; ++t) {
    const int64_t begin = std::min(n, t * chunk), end = std::min(n, begin + chunk);
    fn(begin, end, t);
  }
  return threads;
}

void MinMaxSerial(const float* x, int64_t n, float* mn, float* mx) {
  if (n <= 0) {
    *mn = std::numeric_limits<float>::infinity();
    *mx = -std::numeric_limits<float>::infinity();
    return;
  }
  if (HasAvx512()) {
    MinMaxAvx512(x, n, mn, mx);
    return;
  }
  auto [lo, hi] = std::minmax_element(x, x + n);
  *mn = *lo;
  *mx = *hi;
}

void QuantizeU8Serial(const float* x, int64_t n, float scale, int32_t zero_point,
                      uint8_t* q) {
  if (HasAvx512()) {
    QuantizeF32U8Avx512(x, n, scale, zero_point, q);
    return;
  }
  const float inv = 1.f / scale;
  for (int64_t i = 0; i < n; ++i) q[i] = QuantizeOneU8(x[i], inv, zero_point);
}

}  // namespace

void MinMax(const float* x, int64_t n, float* mn, float* mx) {
  if (n <= 0) {
    *mn = *mx = 0.f;
    return;
  }
  constexpr int kMaxChunks = 256;
  float lo[kMaxChunks], hi[kMaxChunks];
  const int chunks = ForChunks(n, [&](int64_t begin, int64_t end, int t) {
    if (t < kMaxChunks) MinMaxSerial(x + begin, end - begin, &lo[t], &hi[t]);
  });
  *mn = lo[0];
  *mx = hi[0];
  for (int t = 1; t < std::min(chunks, kMaxChunks); ++t) {
    *mn = std::min(*mn, lo[t]);
    *mx = std::max(*mx, hi[t]);
  }
  if (chunks > kMaxChunks) MinMaxSerial(x, n, mn, mx);  // (more threads than slots)
}

void QuantizeU8(const float* x, int64_t n, float scale, int32_t zero_point, uint8_t* q) {
  ForChunks(n, [&](int64_t begin, int64_t end, int) {
    QuantizeU8Serial(x + begin, end - begin, scale, zero_point, q + begin);
  });
}

void QuantizeBf16ToU8(const uint16_t* x, int64_t n, float scale, int32_t zero_point,
                      uint8_t* q) {
  ForChunks(n, [&](int64_t begin, int64_t end, int) {
    if (HasAvx512()) {
      QuantizeBf16U8Avx512(x + begin, end - begin, scale, zero_point, q + begin);
      return;
    }
    const float inv = 1.f / scale;
    for (int64_t i = begin; i < end; ++i) {
      q[i] = QuantizeOneU8(BFloat16ToFloat(x[i]), inv, zero_point);
    }
  });
}

void DequantizeU8(const uint8_t* q, int64_t n, float scale, int32_t zero_point, float* x) {
  for (int64_t i = 0; i < n; ++i) x[i] = scale * static_cast<float>(q[i] - zero_point);
}

double SqnrDb(const float* ref, const float* approx, int64_t n) {
  double signal = 0, noise = 0;
  for (int64_t i = 0; i < n; ++i) {
    signal += static_cast<double>(ref[i]) * ref[i];
    const double d = static_cast<double>(ref[i]) - approx[i];
    noise += d * d;
  }
  if (noise == 0) return std::numeric_limits<double>::infinity();
  if (signal == 0) return -std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal / noise);
}

}  // namespace qs
