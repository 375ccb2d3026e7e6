// The vector half <-> float loops (engine/half_convert.h) against the scalar
// conversions: every one of the 65,536 half values widened, and floats narrowed across
// the half range (normal, subnormal, ties, overflow, signed zeros, infinities, NaN), at
// lengths that leave scalar tails.
#include "engine/half_convert.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "engine/tensor.h"
#include "gtest/gtest.h"

namespace qs {
namespace {

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

bool IsHalfNan(uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

TEST(HalfConvertTest, EveryHalfWidensLikeTheScalarConversion) {
  std::vector<uint16_t> in(65536 + 5);  // + a tail
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint16_t>(i);
  std::vector<float> out(in.size());
  HalfToFloatArray(in.data(), out.data(), static_cast<int64_t>(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    const float want = HalfToFloat(in[i]);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(out[i])) << std::hex << in[i];
    } else {
      EXPECT_EQ(Bits(out[i]), Bits(want)) << std::hex << in[i];
    }
  }
}

TEST(HalfConvertTest, FloatsNarrowLikeTheScalarConversion) {
  std::vector<float> in = {0.f, -0.f, 1.f, -1.f, 65504.f, 65519.f, 65520.f, -65520.f,
                           1e9f, 6.1035156e-05f, 6.0975552e-05f, 5.9604645e-08f,
                           2.9802322e-08f, 2.9802326e-08f, 1e-10f,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           std::numeric_limits<float>::quiet_NaN()};
  // Exact ties between adjacent halves in each binade (round to even decides).
  for (int e = -24; e <= 15; ++e) {
    const float step = std::ldexp(1.f, e - 10);
    for (int k : {1, 2, 3, 1023}) in.push_back(std::ldexp(1.f, e) + (k + 0.5f) * step);
  }
  std::mt19937 rng(11);
  std::uniform_int_distribution<uint32_t> bits(0x30000000u, 0x48000000u);  // ~1e-9 .. 131072
  for (int i = 0; i < 100000; ++i) {
    float f;
    const uint32_t b = bits(rng) | (i % 2 ? 0x80000000u : 0);
    std::memcpy(&f, &b, 4);
    in.push_back(f);
  }
  in.push_back(3.f);  // an odd length: a scalar tail
  std::vector<uint16_t> out(in.size());
  FloatToHalfArray(in.data(), out.data(), static_cast<int64_t>(in.size()));
  for (size_t i = 0; i < in.size(); ++i) {
    const uint16_t want = FloatToHalf(in[i]);
    if (IsHalfNan(want)) {
      EXPECT_TRUE(IsHalfNan(out[i])) << in[i];
    } else {
      EXPECT_EQ(out[i], want) << in[i] << " (bits " << std::hex << Bits(in[i]) << ")";
    }
  }
}

}  // namespace
}  // namespace qs
