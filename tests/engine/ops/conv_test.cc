// Conv / ConvTranspose kernels and the Conv+activation fusion, checked end to end
// (ModelProto -> Session) against naive loops written here.
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "engine/graph.h"
#include "engine/session.h"
#include "gtest/gtest.h"
#include "tests/engine/ops/model_builder.h"
#include "onnx/onnx_pb.h"

namespace qs {
namespace {

void SetInt(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

// Deterministic small values (exact in float, so sums compare tightly).
Tensor Filled(const Shape& shape, int seed) {
  Tensor t(DataType::kFloat32, shape);
  for (int64_t i = 0; i < t.num_elements(); ++i) {
    t.data<float>()[i] = static_cast<float>(((i * 7 + seed * 13) % 11) - 5) * 0.25f;
  }
  return t;
}

// RunModel that also reports how many kernels the plan kept (fusion checks).
void ExpectNear(const Tensor& got, const Tensor& want) {
  ASSERT_EQ(ShapeToString(got.shape()), ShapeToString(want.shape()));
  for (int64_t i = 0; i < want.num_elements(); ++i) {
    ASSERT_NEAR(got.data<float>()[i], want.data<float>()[i],
                1e-4f + 1e-4f * std::fabs(want.data<float>()[i]))
        << "at flat index " << i;
  }
}

// ---- naive references ----------------------------------------------------------------

struct Conv2dSpec {
  int64_t group = 1;
  int64_t sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t pt = 0, pl = 0, pb = 0, pr = 0;  // top, left, bottom, right
};

// x [N,C,H,W], w [M,C/g,KH,KW], b [M] or undefined.
Tensor NaiveConv2d(const Tensor& x, const Tensor& w, const Tensor* b, const Conv2dSpec& s) {
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), wd = x.dim(3);
  const int64_t m = w.dim(0), cg = w.dim(1), kh = w.dim(2), kw = w.dim(3);
  const int64_t oh = (h + s.pt + s.pb - ((kh - 1) * s.dh + 1)) / s.sh + 1;
  const int64_t ow = (wd + s.pl + s.pr - ((kw - 1) * s.dw + 1)) / s.sw + 1;
  const int64_t mg = m / s.group;
  Tensor y(DataType::kFloat32, {n, m, oh, ow});
  for (int64_t in = 0; in < n; ++in)
    for (int64_t om = 0; om < m; ++om) {
      const int64_t g = om / mg;
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox) {
          double acc = b != nullptr ? b->data<float>()[om] : 0.0;
          for (int64_t ic = 0; ic < cg; ++ic)
            for (int64_t ky = 0; ky < kh; ++ky)
              for (int64_t kx = 0; kx < kw; ++kx) {
                const int64_t iy = oy * s.sh - s.pt + ky * s.dh;
                const int64_t ix = ox * s.sw - s.pl + kx * s.dw;
                if (iy < 0 || iy >= h || ix < 0 || ix >= wd) continue;
                const int64_t cc = g * cg + ic;
                acc += x.data<float>()[((in * c + cc) * h + iy) * wd + ix] *
                       w.data<float>()[((om * cg + ic) * kh + ky) * kw + kx];
              }
          y.data<float>()[((in * m + om) * oh + oy) * ow + ox] = static_cast<float>(acc);
        }
    }
  return y;
}

// x [N,C,H,W], w [C, M/g, KH, KW]: scatter each input pixel through the kernel.
// Output [N, M, OH, OW] with explicit pads (top, left, bottom, right) and output_padding.
Tensor NaiveConvTranspose2d(const Tensor& x, const Tensor& w, const Tensor* b,
                            const Conv2dSpec& s, int64_t oph, int64_t opw) {
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), wd = x.dim(3);
  const int64_t mg = w.dim(1), kh = w.dim(2), kw = w.dim(3);
  const int64_t m = mg * s.group, cg = c / s.group;
  const int64_t full_h = s.sh * (h - 1) + oph + (kh - 1) * s.dh + 1;
  const int64_t full_w = s.sw * (wd - 1) + opw + (kw - 1) * s.dw + 1;
  const int64_t oh = full_h - s.pt - s.pb, ow = full_w - s.pl - s.pr;
  Tensor y(DataType::kFloat32, {n, m, oh, ow});
  for (int64_t in = 0; in < n; ++in)
    for (int64_t om = 0; om < m; ++om)
      for (int64_t oy = 0; oy < oh; ++oy)
        for (int64_t ox = 0; ox < ow; ++ox)
          y.data<float>()[((in * m + om) * oh + oy) * ow + ox] =
              b != nullptr ? b->data<float>()[om] : 0.f;
  for (int64_t in = 0; in < n; ++in)
    for (int64_t ic = 0; ic < c; ++ic) {
      const int64_t g = ic / cg;
      for (int64_t iy = 0; iy < h; ++iy)
        for (int64_t ix = 0; ix < wd; ++ix)
          for (int64_t j = 0; j < mg; ++j)
            for (int64_t ky = 0; ky < kh; ++ky)
              for (int64_t kx = 0; kx < kw; ++kx) {
                const int64_t oy = iy * s.sh + ky * s.dh - s.pt;
                const int64_t ox = ix * s.sw + kx * s.dw - s.pl;
                if (oy < 0 || oy >= oh || ox < 0 || ox >= ow) continue;
                const int64_t om = g * mg + j;
                y.data<float>()[((in * m + om) * oh + oy) * ow + ox] +=
                    x.data<float>()[((in * c + ic) * h + iy) * wd + ix] *
                    w.data<float>()[((ic * mg + j) * kh + ky) * kw + kx];
              }
    }
  return y;
}

// One Conv node; weights (and bias) as initializers when `const_weights`.
onnx::ModelProto ConvModel(const std::string& op, const Shape& x_shape, const Tensor& w,
                           const Tensor* b, bool const_weights,
                           const std::function<void(onnx::NodeProto*)>& attrs) {
  ModelBuilder mb;
  mb.Input("x", x_shape);
  std::vector<std::string> ins = {"x", "w"};
  if (const_weights) {
    mb.Constant("w", w);
  } else {
    mb.Input("w", w.shape());
  }
  if (b != nullptr) {
    ins.push_back("b");
    if (const_weights) {
      mb.Constant("b", *b);
    } else {
      mb.Input("b", b->shape());
    }
  }
  attrs(mb.Node(op, ins, {"y"}));
  mb.Output("y");
  return mb.model();
}

std::vector<Tensor> Inputs(const Tensor& x, const Tensor& w, const Tensor* b,
                           bool const_weights) {
  std::vector<Tensor> in = {x};
  if (!const_weights) {
    in.push_back(w);
    if (b != nullptr) in.push_back(*b);
  }
  return in;
}

class ConvTest : public ::testing::TestWithParam<bool> {};  // param: constant weights

TEST_P(ConvTest, Basic3x3WithPadding) {
  const bool cw = GetParam();
  Tensor x = Filled({1, 3, 5, 5}, 1), w = Filled({4, 3, 3, 3}, 2), b = Filled({4}, 3);
  auto model = ConvModel("Conv", x.shape(), w, &b, cw, [](onnx::NodeProto* n) {
    SetInts(n, "kernel_shape", {3, 3});
    SetInts(n, "pads", {1, 1, 1, 1});
  });
  auto out = RunModel(model, Inputs(x, w, &b, cw));
  ASSERT_EQ(out.size(), 1u);
  Conv2dSpec s;
  s.pt = s.pl = s.pb = s.pr = 1;
  ExpectNear(out[0], NaiveConv2d(x, w, &b, s));
}

TEST_P(ConvTest, StridedAsymmetricPaddingDilation) {
  const bool cw = GetParam();
  Tensor x = Filled({2, 2, 9, 8}, 4), w = Filled({3, 2, 3, 2}, 5);
  auto model = ConvModel("Conv", x.shape(), w, nullptr, cw, [](onnx::NodeProto* n) {
    SetInts(n, "strides", {2, 3});
    SetInts(n, "pads", {1, 0, 2, 1});
    SetInts(n, "dilations", {2, 1});
  });
  auto out = RunModel(model, Inputs(x, w, nullptr, cw));
  ASSERT_EQ(out.size(), 1u);
  Conv2dSpec s;
  s.sh = 2;
  s.sw = 3;
  s.dh = 2;
  s.pt = 1;
  s.pl = 0;
  s.pb = 2;
  s.pr = 1;
  ExpectNear(out[0], NaiveConv2d(x, w, nullptr, s));
}

TEST_P(ConvTest, GroupedConv) {
  const bool cw = GetParam();
  Tensor x = Filled({1, 4, 6, 6}, 6), w = Filled({6, 2, 3, 3}, 7), b = Filled({6}, 8);
  auto model = ConvModel("Conv", x.shape(), w, &b, cw, [](onnx::NodeProto* n) {
    SetInt(n, "group", 2);
  });
  auto out = RunModel(model, Inputs(x, w, &b, cw));
  ASSERT_EQ(out.size(), 1u);
  Conv2dSpec s;
  s.group = 2;
  ExpectNear(out[0], NaiveConv2d(x, w, &b, s));
}

TEST_P(ConvTest, DepthwiseConv) {
  const bool cw = GetParam();
  Tensor x = Filled({2, 3, 7, 5}, 9), w = Filled({3, 1, 3, 3}, 10);
  auto model = ConvModel("Conv", x.shape(), w, nullptr, cw, [](onnx::NodeProto* n) {
    SetInt(n, "group", 3);
    SetInts(n, "pads", {1, 1, 1, 1});
    SetInts(n, "strides", {2, 2});
  });
  auto out = RunModel(model, Inputs(x, w, nullptr, cw));
  ASSERT_EQ(out.size(), 1u);
  Conv2dSpec s;
  s.group = 3;
  s.sh = s.sw = 2;
  s.pt = s.pl = s.pb = s.pr = 1;
  ExpectNear(out[0], NaiveConv2d(x, w, nullptr, s));
}

TEST_P(ConvTest, AutoPadSameUpperAndLower) {
  const bool cw = GetParam();
  Tensor x = Filled({1, 1, 6, 5}, 11), w = Filled({2, 1, 4, 3}, 12);
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER"}) {
    auto model = ConvModel("Conv", x.shape(), w, nullptr, cw, [mode](onnx::NodeProto* n) {
      SetString(n, "auto_pad", mode);
      SetInts(n, "strides", {2, 2});
    });
    auto out = RunModel(model, Inputs(x, w, nullptr, cw));
    ASSERT_EQ(out.size(), 1u);
    // out = ceil(in / stride): H 3, W 3. Total pad H = 2*2+4-6 = 2, W = 2*2+3-5 = 2.
    Conv2dSpec s;
    s.sh = s.sw = 2;
    s.pt = s.pb = 1;
    s.pl = s.pr = 1;
    ExpectNear(out[0], NaiveConv2d(x, w, nullptr, s));
  }
  // Odd total padding: H total = 2*2+3-6 = 1 goes to the end for SAME_UPPER and to
  // the beginning for SAME_LOWER.
  Tensor w3 = Filled({2, 1, 3, 3}, 13);
  for (const char* mode : {"SAME_UPPER", "SAME_LOWER"}) {
    auto model = ConvModel("Conv", x.shape(), w3, nullptr, cw, [mode](onnx::NodeProto* n) {
      SetString(n, "auto_pad", mode);
      SetInts(n, "strides", {2, 2});
    });
    auto out = RunModel(model, Inputs(x, w3, nullptr, cw));
    ASSERT_EQ(out.size(), 1u);
    Conv2dSpec s;
    s.sh = s.sw = 2;
    const bool upper = std::string(mode) == "SAME_UPPER";
    s.pt = upper ? 0 : 1;
    s.pb = upper ? 1 : 0;
    s.pl = s.pr = 1;  // W total = 2*2+3-5 = 2
    ExpectNear(out[0], NaiveConv2d(x, w3, nullptr, s));
  }
}

TEST_P(ConvTest, Conv1d) {
  const bool cw = GetParam();
  Tensor x = Filled({2, 3, 10}, 14), w = Filled({4, 3, 3}, 15), b = Filled({4}, 16);
  auto model = ConvModel("Conv", x.shape(), w, &b, cw, [](onnx::NodeProto* n) {
    SetInts(n, "strides", {2});
    SetInts(n, "pads", {1, 2});
  });
  auto out = RunModel(model, Inputs(x, w, &b, cw));
  ASSERT_EQ(out.size(), 1u);
  // A 1-D conv is a 2-D conv over a height-1 image.
  Conv2dSpec s;
  s.sw = 2;
  s.pl = 1;
  s.pr = 2;
  Tensor want = NaiveConv2d(x.Reshaped({2, 3, 1, 10}), w.Reshaped({4, 3, 1, 3}), &b, s);
  ExpectNear(out[0], want.Reshaped({2, 4, want.dim(3)}));
}

TEST_P(ConvTest, ConvTransposeStridedWithOutputPaddingAndPads) {
  const bool cw = GetParam();
  Tensor x = Filled({1, 2, 3, 4}, 17), w = Filled({2, 3, 3, 3}, 18), b = Filled({3}, 19);
  auto model = ConvModel("ConvTranspose", x.shape(), w, &b, cw, [](onnx::NodeProto* n) {
    SetInts(n, "strides", {2, 3});
    SetInts(n, "pads", {1, 0, 0, 1});
    SetInts(n, "output_padding", {1, 1});
  });
  auto out = RunModel(model, Inputs(x, w, &b, cw));
  ASSERT_EQ(out.size(), 1u);
  Conv2dSpec s;
  s.sh = 2;
  s.sw = 3;
  s.pt = 1;
  s.pl = 0;
  s.pb = 0;
  s.pr = 1;
  ExpectNear(out[0], NaiveConvTranspose2d(x, w, &b, s, 1, 1));
}

TEST_P(ConvTest, ConvTransposeGroupedDilated) {
  const bool cw = GetParam();
  Tensor x = Filled({2, 4, 3, 3}, 20), w = Filled({4, 1, 2, 2}, 21);
  auto model = ConvModel("ConvTranspose", x.shape(), w, nullptr, cw,
                         [](onnx::NodeProto* n) {
                           SetInt(n, "group", 2);
                           SetInts(n, "dilations", {2, 2});
                         });
  auto out = RunModel(model, Inputs(x, w, nullptr, cw));
  ASSERT_EQ(out.size(), 1u);
  Conv2dSpec s;
  s.group = 2;
  s.dh = s.dw = 2;
  ExpectNear(out[0], NaiveConvTranspose2d(x, w, nullptr, s, 0, 0));
}

TEST_P(ConvTest, ConvTransposeOutputShape) {
  const bool cw = GetParam();
  // Full result is 9x7; output_shape 10x8 extends it with zero rows/cols at the end.
  Tensor x = Filled({1, 1, 3, 3}, 22), w = Filled({1, 2, 3, 3}, 23);
  auto model = ConvModel("ConvTranspose", x.shape(), w, nullptr, cw,
                         [](onnx::NodeProto* n) {
                           SetInts(n, "strides", {3, 2});
                           SetInts(n, "output_shape", {10, 8});
                         });
  auto out = RunModel(model, Inputs(x, w, nullptr, cw));
  ASSERT_EQ(out.size(), 1u);
  Conv2dSpec s;
  s.sh = 3;
  s.sw = 2;
  ExpectNear(out[0], NaiveConvTranspose2d(x, w, nullptr, s, 1, 1));
}

INSTANTIATE_TEST_SUITE_P(Weights, ConvTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Constant")
                                             : std::string("Input");
                         });

// ---- fusion ------------------------------------------------------------------------

Tensor Clipped(const Tensor& t, float lo, float hi) {
  Tensor out = t.Clone();
  for (int64_t i = 0; i < out.num_elements(); ++i) {
    out.data<float>()[i] = std::min(std::max(out.data<float>()[i], lo), hi);
  }
  return out;
}

TEST(ConvFusionTest, ReluIsFoldedIntoConv) {
  Tensor x = Filled({1, 2, 5, 5}, 24), w = Filled({3, 2, 3, 3}, 25), b = Filled({3}, 26);
  ModelBuilder mb;
  mb.Input("x", x.shape());
  mb.Constant("w", w);
  mb.Constant("b", b);
  mb.Node("Conv", {"x", "w", "b"}, {"c"});
  mb.Node("Relu", {"c"}, {"y"});
  mb.Output("y");
  int64_t nodes = 0;
  auto out = RunCountingNodes(mb.model(), {x}, &nodes);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(nodes, 1);
  ExpectNear(out[0], Clipped(NaiveConv2d(x, w, &b, Conv2dSpec()), 0.f, INFINITY));
}

TEST(ConvFusionTest, Relu6ClipIsFoldedIntoConv) {
  Tensor x = Filled({1, 2, 5, 5}, 27), w = Filled({3, 2, 3, 3}, 28);
  // Scale up so that some outputs exceed 6.
  for (int64_t i = 0; i < w.num_elements(); ++i) w.data<float>()[i] *= 4.f;
  ModelBuilder mb;
  mb.Input("x", x.shape());
  mb.Constant("w", w);
  mb.Constant("lo", Scalar(0.f));
  mb.Constant("hi", Scalar(6.f));
  mb.Node("Conv", {"x", "w"}, {"c"});
  mb.Node("Clip", {"c", "lo", "hi"}, {"y"});
  mb.Output("y");
  int64_t nodes = 0;
  auto out = RunCountingNodes(mb.model(), {x}, &nodes);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(nodes, 1);
  Tensor want = Clipped(NaiveConv2d(x, w, nullptr, Conv2dSpec()), 0.f, 6.f);
  bool saturated = false;
  for (int64_t i = 0; i < want.num_elements(); ++i) saturated |= want.data<float>()[i] == 6.f;
  EXPECT_TRUE(saturated) << "test data should exercise the upper bound";
  ExpectNear(out[0], want);
}

TEST(ConvFusionTest, NotFusedWhenConvOutputIsAlsoAGraphOutput) {
  Tensor x = Filled({1, 1, 4, 4}, 29), w = Filled({2, 1, 3, 3}, 30);
  ModelBuilder mb;
  mb.Input("x", x.shape());
  mb.Constant("w", w);
  mb.Node("Conv", {"x", "w"}, {"c"});
  mb.Node("Relu", {"c"}, {"y"});
  mb.Output("c");
  mb.Output("y");
  int64_t nodes = 0;
  auto out = RunCountingNodes(mb.model(), {x}, &nodes);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(nodes, 2);
  Tensor conv = NaiveConv2d(x, w, nullptr, Conv2dSpec());
  ExpectNear(out[0], conv);
  ExpectNear(out[1], Clipped(conv, 0.f, INFINITY));
}

// ---- plans, contexts, errors ----------------------------------------------------------

TEST(ConvKernelTest, ContextsShareWeightsAndCachePlansPerShape) {
  Tensor w = Filled({8, 4, 3, 3}, 31), b = Filled({8}, 32);
  ModelBuilder mb;
  mb.Input("x", {-1, 4, 6, 6});
  mb.Constant("w", w);
  mb.Constant("b", b);
  auto* n = mb.Node("Conv", {"x", "w", "b"}, {"y"});
  SetInts(n, "pads", {1, 1, 1, 1});
  mb.Output("y");
  auto session = Session::Compile(mb.model(), CompileOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  // W is held once, by the kernel that packs it (the plan drops the unpacked copy); B
  // stays a plan constant.
  EXPECT_EQ((*session)->stats().weight_bytes, (w.num_elements() + b.num_elements()) * 4);
  Conv2dSpec s;
  s.pt = s.pl = s.pb = s.pr = 1;
  // Two threads with their own contexts, each alternating batch sizes.
  std::vector<std::thread> threads;
  std::vector<std::string> errors(2);
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      auto ctx = (*session)->NewContext();
      for (int iter = 0; iter < 6; ++iter) {
        const int64_t batch = 1 + (iter + t) % 3;
        Tensor x = Filled({batch, 4, 6, 6}, 40 + iter);
        std::vector<Tensor> out;
        absl::Status st = (*session)->Run(ctx.get(), {x}, &out);
        if (!st.ok()) {
          errors[t] = std::string(st.message());
          return;
        }
        Tensor want = NaiveConv2d(x, w, &b, s);
        for (int64_t i = 0; i < want.num_elements(); ++i) {
          if (std::fabs(out[0].data<float>()[i] - want.data<float>()[i]) > 1e-3f) {
            errors[t] = "mismatch at batch " + std::to_string(batch);
            return;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
}

TEST(ConvKernelTest, UnsupportedAttributeFailsAtCompile) {
  Tensor w = Filled({2, 1, 3, 3}, 33);
  ModelBuilder mb;
  mb.Input("x", {1, 1, 5, 5});
  mb.Constant("w", w);
  auto* n = mb.Node("Conv", {"x", "w"}, {"y"});
  SetInt(n, "frobnicate", 1);
  mb.Output("y");
  auto session = Session::Compile(mb.model(), CompileOptions());
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(session.status().message().find("frobnicate"), absl::string_view::npos)
      << session.status();
}

TEST(ConvKernelTest, ChannelMismatchIsARunError) {
  Tensor w = Filled({2, 3, 3, 3}, 34);
  ModelBuilder mb;
  mb.Input("x", {1, -1, 5, 5});
  mb.Constant("w", w);
  mb.Node("Conv", {"x", "w"}, {"y"});
  mb.Output("y");
  auto session = Session::Compile(mb.model(), CompileOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  auto ctx = (*session)->NewContext();
  std::vector<Tensor> out;
  absl::Status st = (*session)->Run(ctx.get(), {Filled({1, 2, 5, 5}, 35)}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
}

}  // namespace
}  // namespace qs
