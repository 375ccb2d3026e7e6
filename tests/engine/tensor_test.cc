#include "engine/tensor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gtest/gtest.h"

namespace qs {
namespace {

TEST(TensorTest, AllocatesAlignedZeroedBuffer) {
  Tensor t(DataType::kFloat32, {2, 3});
  EXPECT_EQ(t.num_elements(), 6);
  EXPECT_EQ(t.byte_size(), 24u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(t.data<float>()[i], 0.f);
}

TEST(TensorTest, CopiesShareBufferCloneDoesNot) {
  Tensor a(DataType::kInt32, {4});
  Tensor b = a;
  Tensor c = a.Clone();
  a.data<int32_t>()[0] = 7;
  EXPECT_EQ(b.data<int32_t>()[0], 7);
  EXPECT_EQ(c.data<int32_t>()[0], 0);
}

TEST(TensorTest, DatatypeNamesRoundTrip) {
  for (auto t : {DataType::kFloat32, DataType::kFloat16, DataType::kBFloat16,
                 DataType::kInt64, DataType::kUInt8, DataType::kBool}) {
    auto back = DataTypeFromName(DataTypeName(t));
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, t);
  }
  EXPECT_FALSE(DataTypeFromName("FLOAT").ok());
}

// Half conversion checked exhaustively against the bit-level definition of binary16:
// every half value converts to float and back unchanged.
TEST(TensorTest, HalfRoundTripsEveryFiniteValue) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const uint16_t bits = static_cast<uint16_t>(h);
    if ((bits & 0x7c00) == 0x7c00) continue;  // inf/nan
    EXPECT_EQ(FloatToHalf(HalfToFloat(bits)), bits) << std::hex << h;
  }
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(FloatToHalf(65520.f), 0x7c00);                // rounds to inf
  // Ties to even: 1 + 2^-11 lies halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
}

TEST(TensorTest, BFloat16RoundsToNearestEven) {
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(BFloat16ToFloat(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even mantissa (1.0).
  EXPECT_EQ(FloatToBFloat16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
}

TEST(TensorTest, CastConvertsNumericTypes) {
  Tensor f(DataType::kFloat32, {3});
  f.data<float>()[0] = 1.5f;
  f.data<float>()[1] = -2.0f;
  f.data<float>()[2] = 0.0f;
  auto i = CastTensor(f, DataType::kInt64);
  ASSERT_TRUE(i.ok());
  EXPECT_EQ(i->data<int64_t>()[0], 1);
  EXPECT_EQ(i->data<int64_t>()[1], -2);
  auto b = CastTensor(f, DataType::kBool);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->data<uint8_t>()[2], 0);
  EXPECT_EQ(b->data<uint8_t>()[0], 1);
}

}  // namespace
}  // namespace qs
