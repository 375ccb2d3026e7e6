// PackedWeights: a constant packed once per layout; after the unpacked copy is released,
// later layouts are reordered from a packed one — through a temporary plain copy when
// either carries the zero-point compensation of an asymmetric source (extra bytes after
// the weights, as a conv reading a signed tensor asks for): oneDNN 2.6 cannot reorder
// between some compensated layouts.
#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "engine/ops/dnnl_util.h"
#include "gtest/gtest.h"

namespace qs {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// The s8 weights layouts INT8 convolution kernels (u8 NHWC src, batch `n`) ask for,
// one per distinct implementation; `src_zero_point` != 0 makes them carry the
// asymmetric-source compensation.
std::vector<dnnl::memory::desc> Int8WeightsLayouts(const dnnl::engine& eng, int64_t n,
                                                   int32_t src_zero_point) {
  const dnnl::memory::desc src({n, 16, 32, 32}, dt::u8, tag::nhwc);
  const dnnl::memory::desc dst({n, 64, 32, 32}, dt::f32, tag::nhwc);
  const dnnl::memory::desc w({64, 16, 3, 3}, dt::s8, tag::any);
  dnnl::primitive_attr attr;
  attr.set_output_scales(0, {0.01f});
  if (src_zero_point != 0) attr.set_zero_points(DNNL_ARG_SRC, 0, {src_zero_point});
  dnnl::convolution_forward::primitive_desc pd(
      dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference,
                                      dnnl::algorithm::convolution_direct, src, w,
                                      dnnl::memory::desc(), dst, {1, 1}, {0, 0}, {1, 1},
                                      {1, 1}),
      attr, eng);
  std::vector<dnnl::memory::desc> layouts;
  do {
    const dnnl::memory::desc md = pd.weights_desc();
    if (std::find(layouts.begin(), layouts.end(), md) == layouts.end()) {
      layouts.push_back(md);
    }
  } while (pd.next_impl());
  return layouts;
}

// `m` reordered back to plain OIHW s8.
std::vector<int8_t> Unpack(dnnl::memory m, DnnlResources* dnnl) {
  std::vector<int8_t> out(64 * 16 * 3 * 3);
  dnnl::memory plain(dnnl::memory::desc({64, 16, 3, 3}, dt::s8, tag::oihw), dnnl->engine,
                     out.data());
  // Extras (compensation) sit after the weights; a reorder to plain reads only these.
  dnnl::reorder(m, plain).execute(dnnl->stream, m, plain);
  dnnl->stream.wait();
  return out;
}

TEST(PackedWeightsTest, EveryLayoutHoldsTheWeightsAfterTheRelease) {
  DnnlResources dnnl;
  Tensor w = Tensor::Uninitialized(DataType::kInt8, {64, 16, 3, 3});
  std::mt19937 rng(5);
  for (int64_t i = 0; i < w.num_elements(); ++i) {
    w.data<int8_t>()[i] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
  }
  const std::vector<int8_t> want(w.data<int8_t>(), w.data<int8_t>() + w.num_elements());
  PackedWeights packed(w, dnnl::memory::desc({64, 16, 3, 3}, dt::s8, tag::oihw));
  packed.release_unpacked_after_first_pack();
  w = Tensor();  // the kernel's copy is the only one

  // Every compensated layout in turn (one per kernel: what another batch size or the
  // autotuner may pick), then plain and uncompensated ones: each must hold the weights.
  std::vector<dnnl::memory::desc> layouts = Int8WeightsLayouts(dnnl.engine, 1, 128);
  ASSERT_NE(layouts.front().data.extra.flags, 0u) << "expected a compensated layout";
  for (const auto& md : Int8WeightsLayouts(dnnl.engine, 8, 0)) layouts.push_back(md);
  layouts.push_back(dnnl::memory::desc({64, 16, 3, 3}, dt::s8, tag::ohwi));
  for (size_t i = 0; i < layouts.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "layout " << i << " flags "
                                      << layouts[i].data.extra.flags);
    dnnl::memory m;
    Tensor owner;
    ASSERT_NO_THROW(m = packed.Get(layouts[i], &dnnl, &owner));
    EXPECT_EQ(Unpack(m, &dnnl), want);
  }
}

// The weights layout of oneDNN's first-choice INT8 kernel for MobileNetV2's features.12
// expansion (1x1, 96 -> 576 channels at 14x14, u8 source with zero point 127, u8
// destination) at batch `n`.
dnnl::memory::desc ExpansionWeightsLayout(const dnnl::engine& eng, int64_t n) {
  const dnnl::memory::desc src({n, 96, 14, 14}, dt::u8, tag::nhwc);
  const dnnl::memory::desc dst({n, 576, 14, 14}, dt::u8, tag::nhwc);
  const dnnl::memory::desc w({576, 96, 1, 1}, dt::s8, tag::any);
  dnnl::primitive_attr attr;
  attr.set_output_scales(0, {0.01f});
  attr.set_zero_points(DNNL_ARG_SRC, 0, {127});
  return dnnl::convolution_forward::primitive_desc(
             dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference,
                                             dnnl::algorithm::convolution_direct, src, w,
                                             dnnl::memory::desc(), dst, {1, 1}, {0, 0},
                                             {0, 0}, {0, 0}),
             attr, eng)
      .weights_desc();
}

// Batch 8 and batch 1 want differently blocked compensated layouts (oc blocks of 64 and
// 48 on AVX-512 VNNI), and oneDNN 2.6 has no reorder from the one to the other: after
// the unpacked copy is released, the second comes through a temporary plain copy.
// Before, it failed to pack, and MobileNetV2 INT8 did not run at batch 1 after batch 8.
TEST(PackedWeightsTest, CompensatedLayoutsOfDifferentBlocking) {
  DnnlResources dnnl;
  const dnnl::memory::dims dims = {576, 96, 1, 1};
  Tensor w = Tensor::Uninitialized(DataType::kInt8, {576, 96, 1, 1});
  std::mt19937 rng(7);
  for (int64_t i = 0; i < w.num_elements(); ++i) {
    w.data<int8_t>()[i] = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
  }
  const dnnl::memory::desc user(dims, dt::s8, tag::oihw);
  const std::vector<int8_t> want(w.data<int8_t>(), w.data<int8_t>() + w.num_elements());
  PackedWeights packed(w, user);
  packed.release_unpacked_after_first_pack();
  w = Tensor();
  auto unpack = [&](dnnl::memory m) {
    std::vector<int8_t> out(want.size());
    dnnl::memory plain(user, dnnl.engine, out.data());
    dnnl::reorder(m, plain).execute(dnnl.stream, m, plain);
    dnnl.stream.wait();
    return out;
  };
  const dnnl::memory::desc b8 = ExpansionWeightsLayout(dnnl.engine, 8);
  const dnnl::memory::desc b1 = ExpansionWeightsLayout(dnnl.engine, 1);
  ASSERT_NE(b8.data.extra.flags, 0u);
  ASSERT_NE(b1.data.extra.flags, 0u);
  ASSERT_NE(b8, b1);
  Tensor o8, o1, o_plain, o8b;
  dnnl::memory m8 = packed.Get(b8, &dnnl, &o8);
  EXPECT_FALSE(packed.tensor().defined());  // released after the first packing
  dnnl::memory m1;
  ASSERT_NO_THROW(m1 = packed.Get(b1, &dnnl, &o1));
  EXPECT_EQ(unpack(m8), want);
  EXPECT_EQ(unpack(m1), want);
  EXPECT_EQ(packed.packed_bytes(),
            static_cast<int64_t>(b8.get_size() + b1.get_size()));  // no plain copy kept
  // From a compensated source to a plain layout and back to another compensated one.
  o8 = Tensor();
  dnnl::memory m_plain = packed.Get(dnnl::memory::desc(dims, dt::s8, tag::iohw), &dnnl,
                                    &o_plain);  // (iohw: at 1x1 ohwi would be oihw itself)
  EXPECT_EQ(unpack(m_plain), want);
  o1 = Tensor();
  dnnl::memory m8b;
  ASSERT_NO_THROW(m8b = packed.Get(b8, &dnnl, &o8b));
  EXPECT_EQ(unpack(m8b), want);
}

// A layout stays while a plan holds it, is shared by every plan asking for it, and goes
// at the next request once nobody holds it (the report's first-choice kernels and the
// warmup's timed ones may want different layouts of the same weights).
TEST(PackedWeightsTest, LayoutsNobodyHoldsAreDroppedWhenAnotherIsPacked) {
  DnnlResources dnnl;
  Tensor w = Tensor::Uninitialized(DataType::kInt8, {64, 16, 3, 3});
  for (int64_t i = 0; i < w.num_elements(); ++i) {
    w.data<int8_t>()[i] = static_cast<int8_t>(i % 251 - 125);
  }
  const std::vector<int8_t> want(w.data<int8_t>(), w.data<int8_t>() + w.num_elements());
  PackedWeights packed(w, dnnl::memory::desc({64, 16, 3, 3}, dt::s8, tag::oihw));
  packed.release_unpacked_after_first_pack();
  w = Tensor();
  const dnnl::memory::desc a({64, 16, 3, 3}, dt::s8, tag::ohwi);
  const dnnl::memory::desc b({64, 16, 3, 3}, dt::s8, tag::hwio);
  const dnnl::memory::desc c({64, 16, 3, 3}, dt::s8, tag::iohw);
  const int64_t one = 64 * 16 * 3 * 3;

  Tensor report_owner, plan1, plan2;
  dnnl::memory m_a = packed.Get(a, &dnnl, &report_owner);  // the report's plan
  dnnl::memory m_b = packed.Get(b, &dnnl, &plan1);         // a serving plan
  EXPECT_EQ(packed.packed_bytes(), 2 * one);               // both held
  dnnl::memory m_b2 = packed.Get(b, &dnnl, &plan2);        // shared, not packed again
  EXPECT_EQ(m_b2.get_data_handle(), m_b.get_data_handle());
  EXPECT_EQ(packed.packed_bytes(), 2 * one);

  report_owner = Tensor();  // the report's plan is gone
  Tensor plan2b;
  packed.Get(b, &dnnl, &plan2b);              // a lookup also drops what nobody holds
  EXPECT_EQ(packed.packed_bytes(), one);      // b only
  Tensor plan3;
  dnnl::memory m_c = packed.Get(c, &dnnl, &plan3);  // reordered from b
  EXPECT_EQ(packed.packed_bytes(), 2 * one);        // b and c
  EXPECT_EQ(Unpack(m_b, &dnnl), want);
  EXPECT_EQ(Unpack(m_c, &dnnl), want);

  plan1 = Tensor();
  plan2 = Tensor();
  plan2b = Tensor();
  plan3 = Tensor();
  Tensor plan4;
  dnnl::memory m_a2 = packed.Get(a, &dnnl, &plan4);  // from a dropped layout: kept one
  EXPECT_EQ(packed.packed_bytes(), one);
  EXPECT_EQ(Unpack(m_a2, &dnnl), want);
}

}  // namespace
}  // namespace qs
