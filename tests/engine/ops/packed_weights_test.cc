// PackedWeights: a constant packed once per layout; after the unpacked copy is released,
// later layouts are reordered from the first packed one — including when that one is an
// INT8 layout carrying the zero-point compensation of an asymmetric source (extra bytes
// after the weights), as a conv reading a signed tensor asks for.
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
    ASSERT_NO_THROW(m = packed.Get(layouts[i], &dnnl));
    EXPECT_EQ(Unpack(m, &dnnl), want);
  }
}

}  // namespace
}  // namespace qs
