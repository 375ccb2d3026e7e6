// FastestConvolution: whichever implementation it picks computes the same convolution as
// oneDNN's first choice, small problems are left untimed, and a decision is reused.
#include "engine/ops/impl_autotune.h"

#include <cmath>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "gtest/gtest.h"

namespace qs {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// 1x1 convolution with a bias and a fused sum + ReLU (a ResNet block's last conv),
// NHWC, `hw` x `hw` maps.
struct Problem {
  explicit Problem(int64_t n, int64_t c, int64_t oc, int64_t hw)
      : src({n, c, hw, hw}, dt::f32, tag::nhwc),
        dst({n, oc, hw, hw}, dt::f32, tag::nhwc),
        weights_user({oc, c, 1, 1}, dt::f32, tag::oihw),
        bias({oc}, dt::f32, tag::a),
        desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src,
             dnnl::memory::desc({oc, c, 1, 1}, dt::f32, tag::any), bias, dst, {1, 1},
             {0, 0}, {0, 0}, {0, 0}) {
    dnnl::post_ops po;
    po.append_sum(1.f);
    po.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    attr.set_post_ops(po);
  }
  dnnl::memory::desc src, dst, weights_user, bias;
  dnnl::convolution_forward::desc desc;
  dnnl::primitive_attr attr;
};

std::vector<float> Random(const dnnl::memory::desc& md, int seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g;
  std::vector<float> v(md.get_size() / sizeof(float));
  for (float& x : v) x = g(rng);
  return v;
}

// Runs `pd` on fixed random data (residual included) and returns the output.
std::vector<float> Execute(const Problem& p,
                           const dnnl::convolution_forward::primitive_desc& pd,
                           DnnlResources* dnnl) {
  std::vector<float> x = Random(p.src, 1), w = Random(p.weights_user, 2),
                     b = Random(p.bias, 3), y = Random(p.dst, 4);
  const dnnl::engine& eng = dnnl->engine;
  dnnl::memory wu(p.weights_user, eng, w.data()), wp(pd.weights_desc(), eng);
  dnnl::reorder(wu, wp).execute(dnnl->stream, wu, wp);
  dnnl::convolution_forward(pd).execute(
      dnnl->stream, {{DNNL_ARG_SRC, dnnl::memory(p.src, eng, x.data())},
                     {DNNL_ARG_WEIGHTS, wp},
                     {DNNL_ARG_BIAS, dnnl::memory(p.bias, eng, b.data())},
                     {DNNL_ARG_DST, dnnl::memory(p.dst, eng, y.data())}});
  dnnl->stream.wait();
  return y;
}

TEST(FastestConvolutionTest, ChosenKernelComputesTheSameConvolution) {
  DnnlResources dnnl;
  KernelTimingScope timing;
  const Problem p(2, 64, 256, 32);  // 2 MiB output: timed
  const auto chosen = FastestConvolution(p.desc, p.attr, &dnnl, "test 64->256 32x32");
  const dnnl::convolution_forward::primitive_desc first(p.desc, p.attr, dnnl.engine);
  const std::vector<float> got = Execute(p, chosen, &dnnl), want = Execute(p, first, &dnnl);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-4f * (1.f + std::fabs(want[i])))
        << "at " << i << " (" << chosen.impl_info_str() << " vs " << first.impl_info_str()
        << ")";
  }
  EXPECT_EQ(std::string(chosen.impl_info_str()).find("ref"), std::string::npos);
  // The decision is cached: the same key gives the same kernel.
  const auto again = FastestConvolution(p.desc, p.attr, &dnnl, "test 64->256 32x32");
  EXPECT_STREQ(again.impl_info_str(), chosen.impl_info_str());
}

TEST(FastestConvolutionTest, SmallProblemsKeepTheFirstChoice) {
  DnnlResources dnnl;
  KernelTimingScope timing;
  const Problem p(1, 16, 32, 8);  // 8 KiB output
  const auto chosen = FastestConvolution(p.desc, p.attr, &dnnl, "test small");
  const dnnl::convolution_forward::primitive_desc first(p.desc, p.attr, dnnl.engine);
  EXPECT_STREQ(chosen.impl_info_str(), first.impl_info_str());
}

TEST(FastestConvolutionTest, WithoutATimingScopeNothingIsTimedOrRecorded) {
  DnnlResources dnnl;
  const Problem p(2, 64, 256, 32);
  const dnnl::convolution_forward::primitive_desc first(p.desc, p.attr, dnnl.engine);
  // As on a request: the first choice, and the key stays undecided ...
  EXPECT_STREQ(FastestConvolution(p.desc, p.attr, &dnnl, "test request").impl_info_str(),
               first.impl_info_str());
  // ... so a warmup later times it, and afterwards requests use that decision.
  std::string decided;
  {
    KernelTimingScope timing;
    decided = FastestConvolution(p.desc, p.attr, &dnnl, "test request").impl_info_str();
  }
  EXPECT_EQ(FastestConvolution(p.desc, p.attr, &dnnl, "test request").impl_info_str(),
            decided);
}

TEST(FastestConvolutionTest, FirstChoiceScopeKeepsOneDnnsChoiceOnItsThread) {
  DnnlResources dnnl;
  KernelTimingScope timing;
  const Problem p(2, 64, 256, 32);
  const dnnl::convolution_forward::primitive_desc first(p.desc, p.attr, dnnl.engine);
  {
    FirstChoiceScope outer;
    {
      FirstChoiceScope inner;  // scopes nest
    }
    for (int i = 0; i < 2; ++i) {
      const auto chosen = FastestConvolution(p.desc, p.attr, &dnnl, "test scoped");
      EXPECT_STREQ(chosen.impl_info_str(), first.impl_info_str());
    }
  }
  // Outside the scope the key is tuned afresh (nothing was recorded under it): whatever
  // wins computes the same convolution.
  const auto tuned = FastestConvolution(p.desc, p.attr, &dnnl, "test scoped");
  const std::vector<float> got = Execute(p, tuned, &dnnl), want = Execute(p, first, &dnnl);
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-4f * (1.f + std::fabs(want[i]))) << i;
  }
}

}  // namespace
}  // namespace qs
