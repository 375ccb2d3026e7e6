#include "engine/quantize/quant_math.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "engine/quantize/calibration.h"
#include "gtest/gtest.h"

namespace qs {
namespace {

// ONNX DynamicQuantizeLinear's definition, computed independently in double.
TEST(QuantMathTest, U8ParamsFollowDynamicQuantizeLinear) {
  const float lo = -1.25f, hi = 3.5f;
  QuantParams p = ComputeU8Params(lo, hi);
  const double scale = (3.5 + 1.25) / 255.0;
  EXPECT_FLOAT_EQ(p.scale, static_cast<float>(scale));
  EXPECT_EQ(p.zero_point, static_cast<int>(std::nearbyint(1.25 / scale)));
  // A positive-only range still includes zero exactly.
  QuantParams pos = ComputeU8Params(2.f, 4.f);
  EXPECT_EQ(pos.zero_point, 0);
  EXPECT_FLOAT_EQ(pos.scale, 4.f / 255.f);
  // All-zero input: no division by zero.
  QuantParams zero = ComputeU8Params(0.f, 0.f);
  EXPECT_EQ(zero.scale, 1.f);
  EXPECT_EQ(zero.zero_point, 0);
}

TEST(QuantMathTest, QuantizeU8MatchesScalarReferenceIncludingTies) {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uni(-3.f, 3.f);
  std::vector<float> x(1037);
  for (float& v : x) v = uni(rng);
  x[0] = 0.5f;   // tie -> 0 (even) with scale 1
  x[1] = 1.5f;   // tie -> 2
  x[2] = 2.5f;   // tie -> 2
  x[3] = -300.f;  // saturates
  std::vector<uint8_t> q(x.size());
  QuantizeU8(x.data(), static_cast<int64_t>(x.size()), 1.f, 10, q.data());
  EXPECT_EQ(q[0], 10);
  EXPECT_EQ(q[1], 12);
  EXPECT_EQ(q[2], 12);
  EXPECT_EQ(q[3], 0);
  for (size_t i = 4; i < x.size(); ++i) {
    const double r = std::nearbyint(static_cast<double>(x[i])) + 10;
    EXPECT_EQ(q[i], static_cast<uint8_t>(std::clamp(r, 0.0, 255.0))) << i;
  }
}

TEST(QuantMathTest, QuantizeBf16ToU8MatchesQuantizingTheWidenedValues) {
  // Large enough to split across threads, with a tail that is not a multiple of 16.
  omp_set_num_threads(2);
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.f, 4.f);
  std::vector<uint16_t> b(100003);
  for (uint16_t& v : b) v = FloatToBFloat16(g(rng));
  b[0] = FloatToBFloat16(2.5f);    // a tie with scale 1 -> 2 (even)
  b[1] = FloatToBFloat16(-500.f);  // saturates low
  b[2] = FloatToBFloat16(900.f);   // saturates high
  std::vector<float> widened(b.size());
  for (size_t i = 0; i < b.size(); ++i) widened[i] = BFloat16ToFloat(b[i]);
  for (float scale : {1.f, 0.037f}) {
    std::vector<uint8_t> want(b.size()), got(b.size());
    QuantizeU8(widened.data(), static_cast<int64_t>(b.size()), scale, 17, want.data());
    QuantizeBf16ToU8(b.data(), static_cast<int64_t>(b.size()), scale, 17, got.data());
    EXPECT_EQ(got, want) << "scale " << scale;
  }
  std::vector<uint8_t> q(3);
  QuantizeBf16ToU8(b.data(), 3, 1.f, 10, q.data());
  EXPECT_EQ(q, (std::vector<uint8_t>{12, 0, 255}));
}

TEST(QuantMathTest, MinMaxMatchesStdOnOddLengths) {
  std::mt19937 rng(2);
  std::normal_distribution<float> g(0.f, 5.f);
  for (int n : {1, 15, 16, 17, 33, 1000, 4099}) {
    std::vector<float> x(n);
    for (float& v : x) v = g(rng);
    float lo, hi;
    MinMax(x.data(), n, &lo, &hi);
    EXPECT_EQ(lo, *std::min_element(x.begin(), x.end())) << n;
    EXPECT_EQ(hi, *std::max_element(x.begin(), x.end())) << n;
  }
}

TEST(QuantMathTest, LargeInputsSplitAcrossThreadsMatchOneThread) {
  // Above 64K elements MinMax and QuantizeU8 split the work across OpenMP threads; the
  // extremes sit in the last chunk and past its cache-line boundary.
  omp_set_num_threads(2);
  const int64_t n = 200003;
  std::mt19937 rng(4);
  std::normal_distribution<float> g(0.f, 3.f);
  std::vector<float> x(n);
  for (float& v : x) v = g(rng);
  x[n - 2] = -40.f;
  x[n - 1] = 50.f;
  float lo, hi;
  MinMax(x.data(), n, &lo, &hi);
  EXPECT_EQ(lo, -40.f);
  EXPECT_EQ(hi, 50.f);
  const QuantParams p = ComputeU8Params(lo, hi);
  std::vector<uint8_t> q(n);
  QuantizeU8(x.data(), n, p.scale, p.zero_point, q.data());
  for (int64_t i = 0; i < n; ++i) {
    const int want = std::clamp(
        static_cast<int>(std::nearbyint(x[i] * (1.f / p.scale))) + p.zero_point, 0, 255);
    ASSERT_EQ(q[i], want) << "at " << i;
  }
}

TEST(QuantMathTest, PerChannelWeightsRoundTripWithinHalfAStep) {
  Tensor w(DataType::kFloat32, {3, 2, 2});
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.f, 1.f);
  for (int64_t i = 0; i < w.num_elements(); ++i) w.data<float>()[i] = g(rng) * (1 + i / 4);
  for (int i = 8; i < 12; ++i) w.data<float>()[i] = 0.f;  // an all-zero channel
  QuantizedWeights q = QuantizeWeightsPerChannel(w, 3);
  ASSERT_EQ(q.scales.size(), 3u);
  EXPECT_EQ(q.scales[2], 1.f);
  for (int c = 0; c < 3; ++c) {
    float absmax = 0;
    for (int i = 0; i < 4; ++i) absmax = std::max(absmax, std::fabs(w.data<float>()[c * 4 + i]));
    if (absmax > 0) {
      EXPECT_FLOAT_EQ(q.scales[c], absmax / 127.f);
    }
    for (int i = 0; i < 4; ++i) {
      const float back = q.values.data<int8_t>()[c * 4 + i] * q.scales[c];
      EXPECT_LE(std::fabs(back - w.data<float>()[c * 4 + i]), q.scales[c] / 2 + 1e-6f);
    }
  }
}

TEST(QuantMathTest, PerColumnUsesLastAxis) {
  Tensor w(DataType::kFloat32, {2, 3});
  const float v[] = {1, -2, 0.5f, -4, 1, 0.25f};
  std::copy(v, v + 6, w.data<float>());
  QuantizedWeights q = QuantizeWeightsPerColumn(w);
  ASSERT_EQ(q.scales.size(), 3u);
  EXPECT_FLOAT_EQ(q.scales[0], 4.f / 127);
  EXPECT_FLOAT_EQ(q.scales[1], 2.f / 127);
  EXPECT_FLOAT_EQ(q.scales[2], 0.5f / 127);
  EXPECT_EQ(q.values.data<int8_t>()[3], -127);
}

TEST(QuantMathTest, SqnrOfKnownNoise) {
  std::vector<float> ref = {1, -1, 1, -1}, approx = {1.1f, -1.1f, 1.1f, -1.1f};
  // signal 4, noise 4 * 0.01 -> 20 dB
  EXPECT_NEAR(SqnrDb(ref.data(), approx.data(), 4), 20.0, 1e-4);
  EXPECT_TRUE(std::isinf(SqnrDb(ref.data(), ref.data(), 4)));
}

TEST(CalibrationTest, MinMaxIsExact) {
  RangeCollector c;
  std::vector<float> a = {-1, 2, 3}, b = {-5, 0.5f};
  c.ObserveRange(a.data(), 3);
  c.ObserveRange(b.data(), 2);
  float lo, hi;
  c.Range(CalibrationMethod::kMinMax, 0, &lo, &hi);
  EXPECT_EQ(lo, -5.f);
  EXPECT_EQ(hi, 3.f);
}

TEST(CalibrationTest, PercentileClipsOutliers) {
  // 100000 values uniform in [0, 1) plus one outlier at 100: the 99.9th percentile of
  // |x| is ~0.999, far below the outlier.
  std::vector<float> x(100000);
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> uni(0.f, 1.f);
  for (float& v : x) v = uni(rng);
  x[0] = 100.f;
  RangeCollector c;
  c.ObserveRange(x.data(), static_cast<int64_t>(x.size()));
  c.ObserveHistogram(x.data(), static_cast<int64_t>(x.size()));
  float lo, hi;
  c.Range(CalibrationMethod::kPercentile, 99.9, &lo, &hi);
  EXPECT_GT(hi, 0.95f);
  EXPECT_LT(hi, 1.1f);  // one 100/2048 bin above the true percentile at most
}

TEST(CalibrationTest, EntropyClipsLongGaussianTail) {
  // A Gaussian with a few far outliers: the KL threshold lands well inside the observed
  // max and well outside one standard deviation.
  std::vector<float> x(200000);
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.f, 1.f);
  for (float& v : x) v = g(rng);
  x[0] = 40.f;
  RangeCollector c;
  c.ObserveRange(x.data(), static_cast<int64_t>(x.size()));
  c.ObserveHistogram(x.data(), static_cast<int64_t>(x.size()));
  float lo, hi;
  c.Range(CalibrationMethod::kEntropy, 0, &lo, &hi);
  EXPECT_LT(hi, 20.f);
  EXPECT_GT(hi, 2.f);
  EXPECT_LT(lo, -2.f);
}

}  // namespace
}  // namespace qs
