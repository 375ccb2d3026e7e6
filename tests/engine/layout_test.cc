// ToChannelsLast / ToPlain against the index formula, for every channel count the
// converter special-cases (3, 4: images) and the general tiled path, at each element
// size and rank 3-5.
#include <cstdint>
#include <cstring>
#include <string>

#include "engine/layout.h"
#include "engine/tensor.h"
#include "gtest/gtest.h"

namespace qs {
namespace {

struct Case {
  DataType dtype;
  Shape shape;
};

// Element i of a plain tensor holds a value derived from i, truncated to the element size.
Tensor Numbered(DataType dtype, const Shape& shape) {
  Tensor t(dtype, shape);
  const size_t e = DataTypeSize(dtype);
  auto* bytes = static_cast<uint8_t*>(t.raw_data());
  for (int64_t i = 0; i < t.num_elements(); ++i) {
    const uint64_t v = static_cast<uint64_t>(i) * 2654435761u + 17;
    std::memcpy(bytes + i * e, &v, e);
  }
  return t;
}

uint64_t At(const Tensor& t, int64_t i) {
  uint64_t v = 0;
  const size_t e = DataTypeSize(t.dtype());
  std::memcpy(&v, static_cast<const uint8_t*>(t.raw_data()) + i * e, e);
  return v;
}

class LayoutTest : public ::testing::TestWithParam<Case> {};

TEST_P(LayoutTest, ChannelsLastMovesEveryElementAndRoundTrips) {
  const Case& c = GetParam();
  const Tensor plain = Numbered(c.dtype, c.shape);
  const Tensor cl = ToChannelsLast(plain);
  ASSERT_EQ(cl.layout(), Layout::kChannelsLast);
  ASSERT_EQ(cl.shape(), c.shape);
  const int64_t n = c.shape[0], ch = c.shape[1];
  const int64_t s = plain.num_elements() / (n * ch);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t k = 0; k < ch; ++k)
      for (int64_t p = 0; p < s; ++p) {
        ASSERT_EQ(At(cl, (b * s + p) * ch + k), At(plain, (b * ch + k) * s + p))
            << "n " << b << " c " << k << " spatial " << p;
      }
  const Tensor back = ToPlain(cl);
  ASSERT_EQ(back.layout(), Layout::kPlain);
  ASSERT_EQ(std::memcmp(back.raw_data(), plain.raw_data(), plain.byte_size()), 0);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LayoutTest,
    ::testing::Values(Case{DataType::kFloat32, {2, 3, 9, 7}},     // RGB image
                      Case{DataType::kFloat32, {2, 3, 64, 64}},   // > 16K elements: threads
                      Case{DataType::kUInt8, {1, 3, 33, 35}},
                      Case{DataType::kFloat32, {2, 4, 5, 5, 3}},  // RGBA, 3-D
                      Case{DataType::kUInt16, {3, 4, 70}},        // rank 3
                      Case{DataType::kInt64, {2, 3, 11}},
                      Case{DataType::kFloat32, {2, 2, 6, 6}},     // tiled path
                      Case{DataType::kFloat32, {2, 37, 13, 11}},
                      Case{DataType::kUInt8, {1, 70, 40, 3}}),
    [](const ::testing::TestParamInfo<Case>& info) {
      std::string name = std::string(DataTypeName(info.param.dtype)) + "_";
      for (int64_t d : info.param.shape) name += std::to_string(d) + "x";
      name.pop_back();
      return name;
    });

}  // namespace
}  // namespace qs
