// MaxPool / AveragePool / global pooling kernels, checked end to end
// (ModelProto -> Session) against naive loops written here.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
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

// Distinct values (so that max positions are unique).
Tensor Ramp(const Shape& shape) {
  Tensor t(DataType::kFloat32, shape);
  for (int64_t i = 0; i < t.num_elements(); ++i) {
    t.data<float>()[i] = static_cast<float>((i * 37) % 101) * 0.5f - 20.f;
  }
  return t;
}

void ExpectNear(const Tensor& got, const Tensor& want) {
  ASSERT_EQ(ShapeToString(got.shape()), ShapeToString(want.shape()));
  for (int64_t i = 0; i < want.num_elements(); ++i) {
    ASSERT_NEAR(got.data<float>()[i], want.data<float>()[i],
                1e-5f + 1e-5f * std::fabs(want.data<float>()[i]))
        << "at flat index " << i;
  }
}

// ---- naive 2-D pooling -------------------------------------------------------------

struct Pool2d {
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t pt = 0, pl = 0, pb = 0, pr = 0;
  bool ceil_mode = false;
  bool max = true;
  bool include_pad = false;
};

int64_t OutDim(int64_t in, int64_t k, int64_t s, int64_t d, int64_t p0, int64_t p1,
               bool ceil_mode) {
  const int64_t span = in + p0 + p1 - ((k - 1) * d + 1);
  return (ceil_mode ? (span + s - 1) / s : span / s) + 1;
}

// ONNX semantics: max over in-bounds taps; average over in-bounds taps, or with
// count_include_pad over the window clipped to the declared pads (not to the ceil_mode
// overhang). Also returns row-major flat argmax indices.
Tensor NaivePool2d(const Tensor& x, const Pool2d& p, Tensor* argmax = nullptr) {
  const int64_t n = x.dim(0), c = x.dim(1), h = x.dim(2), w = x.dim(3);
  const int64_t oh = OutDim(h, p.kh, p.sh, p.dh, p.pt, p.pb, p.ceil_mode);
  const int64_t ow = OutDim(w, p.kw, p.sw, p.dw, p.pl, p.pr, p.ceil_mode);
  Tensor y(DataType::kFloat32, {n, c, oh, ow});
  if (argmax != nullptr) *argmax = Tensor(DataType::kInt64, {n, c, oh, ow});
  for (int64_t pl = 0; pl < n * c; ++pl)
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        float best = -std::numeric_limits<float>::infinity();
        int64_t best_at = -1;
        double sum = 0;
        int64_t count = 0;
        for (int64_t ky = 0; ky < p.kh; ++ky)
          for (int64_t kx = 0; kx < p.kw; ++kx) {
            const int64_t iy = oy * p.sh - p.pt + ky * p.dh;
            const int64_t ix = ox * p.sw - p.pl + kx * p.dw;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
            const int64_t at = (pl * h + iy) * w + ix;
            const float v = x.data<float>()[at];
            if (v > best) {
              best = v;
              best_at = at;
            }
            sum += v;
            ++count;
          }
        const int64_t o = (pl * oh + oy) * ow + ox;
        if (p.max) {
          y.data<float>()[o] = best;
          if (argmax != nullptr) argmax->data<int64_t>()[o] = best_at;
        } else {
          int64_t div = count;
          if (p.include_pad) {
            const int64_t y0 = oy * p.sh - p.pt, x0 = ox * p.sw - p.pl;
            const int64_t y1 = std::min(y0 + p.kh, h + p.pb);
            const int64_t x1 = std::min(x0 + p.kw, w + p.pr);
            div = (y1 - y0) * (x1 - x0);
          }
          y.data<float>()[o] = static_cast<float>(sum / div);
        }
      }
  return y;
}

onnx::ModelProto PoolModel(const std::string& op, const Shape& x_shape,
                           const std::function<void(onnx::NodeProto*)>& attrs,
                           bool with_indices = false) {
  ModelBuilder mb(12);
  mb.Input("x", x_shape);
  std::vector<std::string> outs = {"y"};
  if (with_indices) outs.push_back("i");
  attrs(mb.Node(op, {"x"}, outs));
  mb.Output("y");
  if (with_indices) mb.Output("i", onnx::TensorProto::INT64);
  return mb.model();
}

TEST(PoolTest, MaxPoolCeilMode) {
  Tensor x = Ramp({1, 2, 6, 7});
  auto model = PoolModel("MaxPool", x.shape(), [](onnx::NodeProto* n) {
    SetInts(n, "kernel_shape", {3, 3});
    SetInts(n, "strides", {2, 2});
    SetInt(n, "ceil_mode", 1);
  });
  auto out = RunModel(model, {x});
  ASSERT_EQ(out.size(), 1u);
  Pool2d p;
  p.kh = p.kw = 3;
  p.sh = p.sw = 2;
  p.ceil_mode = true;
  Tensor want = NaivePool2d(x, p);
  EXPECT_EQ(ShapeToString(want.shape()), "[1,2,3,3]");  // floor mode would give 2x3
  ExpectNear(out[0], want);
}

TEST(PoolTest, MaxPoolPadsStridesDilations) {
  Tensor x = Ramp({2, 3, 8, 9});
  auto model = PoolModel("MaxPool", x.shape(), [](onnx::NodeProto* n) {
    SetInts(n, "kernel_shape", {3, 2});
    SetInts(n, "strides", {2, 3});
    SetInts(n, "pads", {1, 0, 1, 1});
    SetInts(n, "dilations", {2, 2});
  });
  auto out = RunModel(model, {x});
  ASSERT_EQ(out.size(), 1u);
  Pool2d p;
  p.kh = 3;
  p.kw = 2;
  p.sh = 2;
  p.sw = 3;
  p.dh = p.dw = 2;
  p.pt = 1;
  p.pb = 1;
  p.pr = 1;
  ExpectNear(out[0], NaivePool2d(x, p));
}

TEST(PoolTest, MaxPoolIndices) {
  Tensor x = Ramp({2, 2, 5, 5});
  auto model = PoolModel(
      "MaxPool", x.shape(),
      [](onnx::NodeProto* n) {
        SetInts(n, "kernel_shape", {2, 2});
        SetInts(n, "strides", {2, 2});
        SetInts(n, "pads", {0, 0, 1, 1});
      },
      /*with_indices=*/true);
  auto out = RunModel(model, {x});
  ASSERT_EQ(out.size(), 2u);
  Pool2d p;
  p.kh = p.kw = 2;
  p.sh = p.sw = 2;
  p.pb = p.pr = 1;
  Tensor argmax;
  ExpectNear(out[0], NaivePool2d(x, p, &argmax));
  ASSERT_EQ(out[1].dtype(), DataType::kInt64);
  for (int64_t i = 0; i < argmax.num_elements(); ++i) {
    EXPECT_EQ(out[1].data<int64_t>()[i], argmax.data<int64_t>()[i]) << i;
  }
}

TEST(PoolTest, AveragePoolExcludeAndIncludePad) {
  Tensor x = Ramp({1, 2, 5, 6});
  for (int include : {0, 1}) {
    auto model = PoolModel("AveragePool", x.shape(), [include](onnx::NodeProto* n) {
      SetInts(n, "kernel_shape", {3, 3});
      SetInts(n, "pads", {1, 2, 2, 1});
      SetInts(n, "strides", {2, 1});
      SetInt(n, "count_include_pad", include);
    });
    auto out = RunModel(model, {x});
    ASSERT_EQ(out.size(), 1u);
    Pool2d p;
    p.max = false;
    p.include_pad = include != 0;
    p.kh = p.kw = 3;
    p.sh = 2;
    p.pt = 1;
    p.pl = 2;
    p.pb = 2;
    p.pr = 1;
    ExpectNear(out[0], NaivePool2d(x, p));
  }
}

TEST(PoolTest, AveragePoolCeilModeIncludePadDoesNotCountOverhang) {
  Tensor x = Ramp({1, 1, 6, 6});
  auto model = PoolModel("AveragePool", x.shape(), [](onnx::NodeProto* n) {
    SetInts(n, "kernel_shape", {3, 3});
    SetInts(n, "strides", {2, 2});
    SetInts(n, "pads", {1, 1, 1, 1});
    SetInt(n, "ceil_mode", 1);
    SetInt(n, "count_include_pad", 1);
  });
  auto out = RunModel(model, {x});
  ASSERT_EQ(out.size(), 1u);
  Pool2d p;
  p.max = false;
  p.include_pad = true;
  p.ceil_mode = true;
  p.kh = p.kw = 3;
  p.sh = p.sw = 2;
  p.pt = p.pl = p.pb = p.pr = 1;
  Tensor want = NaivePool2d(x, p);
  EXPECT_EQ(ShapeToString(want.shape()), "[1,1,4,4]");
  ExpectNear(out[0], want);
}

TEST(PoolTest, AutoPadSameUpper) {
  Tensor x = Ramp({1, 1, 5, 5});
  auto model = PoolModel("MaxPool", x.shape(), [](onnx::NodeProto* n) {
    SetInts(n, "kernel_shape", {2, 2});
    SetString(n, "auto_pad", "SAME_UPPER");
  });
  auto out = RunModel(model, {x});
  ASSERT_EQ(out.size(), 1u);
  Pool2d p;  // total pad 1 per dim, at the end
  p.kh = p.kw = 2;
  p.pb = p.pr = 1;
  ExpectNear(out[0], NaivePool2d(x, p));
}

TEST(PoolTest, MaxPoolUint8) {
  Tensor x(DataType::kUInt8, {1, 1, 4, 4});
  for (int i = 0; i < 16; ++i) x.data<uint8_t>()[i] = static_cast<uint8_t>((i * 53) % 251);
  ModelBuilder mb(12);
  mb.Input("x", x.shape(), onnx::TensorProto::UINT8);
  auto* n = mb.Node("MaxPool", {"x"}, {"y"});
  SetInts(n, "kernel_shape", {2, 2});
  SetInts(n, "strides", {2, 2});
  mb.Output("y", onnx::TensorProto::UINT8);
  auto out = RunModel(mb.model(), {x});
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].dtype(), DataType::kUInt8);
  for (int oy = 0; oy < 2; ++oy)
    for (int ox = 0; ox < 2; ++ox) {
      uint8_t m = 0;
      for (int ky = 0; ky < 2; ++ky)
        for (int kx = 0; kx < 2; ++kx)
          m = std::max(m, x.data<uint8_t>()[(oy * 2 + ky) * 4 + ox * 2 + kx]);
      EXPECT_EQ(out[0].data<uint8_t>()[oy * 2 + ox], m);
    }
}

TEST(PoolTest, MaxPool1dAnd3d) {
  {
    Tensor x = Ramp({1, 2, 9});
    auto model = PoolModel("MaxPool", x.shape(), [](onnx::NodeProto* n) {
      SetInts(n, "kernel_shape", {3});
      SetInts(n, "strides", {2});
    });
    auto out = RunModel(model, {x});
    ASSERT_EQ(out.size(), 1u);
    Pool2d p;
    p.kw = 3;
    p.sw = 2;
    Tensor want = NaivePool2d(x.Reshaped({1, 2, 1, 9}), p);
    ExpectNear(out[0], want.Reshaped({1, 2, 4}));
  }
  {
    // A 3-D pool with a depth-1 window equals a 2-D pool of each depth slice.
    Tensor x = Ramp({1, 1, 2, 4, 4});
    auto model = PoolModel("MaxPool", x.shape(), [](onnx::NodeProto* n) {
      SetInts(n, "kernel_shape", {1, 2, 2});
      SetInts(n, "strides", {1, 2, 2});
    });
    auto out = RunModel(model, {x});
    ASSERT_EQ(out.size(), 1u);
    Pool2d p;
    p.kh = p.kw = 2;
    p.sh = p.sw = 2;
    Tensor want = NaivePool2d(x.Reshaped({1, 2, 4, 4}), p);
    ExpectNear(out[0], want.Reshaped({1, 1, 2, 2, 2}));
  }
}

TEST(PoolTest, GlobalPools) {
  Tensor x = Ramp({2, 3, 4, 5});
  for (const char* op : {"GlobalAveragePool", "GlobalMaxPool"}) {
    ModelBuilder mb(12);
    mb.Input("x", x.shape());
    mb.Node(op, {"x"}, {"y"});
    mb.Output("y");
    auto out = RunModel(mb.model(), {x});
    ASSERT_EQ(out.size(), 1u);
    ASSERT_EQ(ShapeToString(out[0].shape()), "[2,3,1,1]");
    const bool is_max = std::string(op) == "GlobalMaxPool";
    for (int64_t pl = 0; pl < 6; ++pl) {
      float m = -1e30f;
      double s = 0;
      for (int64_t i = 0; i < 20; ++i) {
        m = std::max(m, x.data<float>()[pl * 20 + i]);
        s += x.data<float>()[pl * 20 + i];
      }
      EXPECT_NEAR(out[0].data<float>()[pl], is_max ? m : static_cast<float>(s / 20),
                  1e-5f)
          << op;
    }
  }
}

TEST(PoolTest, UnsupportedAttributeFailsAtCompile) {
  auto model = PoolModel("AveragePool", {1, 1, 4, 4}, [](onnx::NodeProto* n) {
    SetInts(n, "kernel_shape", {2, 2});
    SetInts(n, "dilations", {2, 2});  // AveragePool has no dilations before opset 19
  });
  auto out = TryRun(model, {Ramp({1, 1, 4, 4})});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("dilations"), absl::string_view::npos)
      << out.status();
}

}  // namespace
}  // namespace qs
