// MatMul and Gemm kernels, checked end to end (ModelProto -> Session) against naive
// loops written here.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "dnnl.hpp"
#include "engine/graph.h"
#include "engine/onnx_import.h"
#include "engine/session.h"
#include "gtest/gtest.h"
#include "tests/engine/ops/model_builder.h"
#include "onnx/onnx_pb.h"

namespace qs {
namespace {

void SetFloat(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}

Tensor Filled(const Shape& shape, int seed) {
  Tensor t(DataType::kFloat32, shape);
  for (int64_t i = 0; i < t.num_elements(); ++i) {
    t.data<float>()[i] = static_cast<float>(((i * 7 + seed * 13) % 11) - 5) * 0.25f;
  }
  return t;
}

void ExpectNear(const Tensor& got, const Tensor& want) {
  ASSERT_EQ(ShapeToString(got.shape()), ShapeToString(want.shape()));
  for (int64_t i = 0; i < want.num_elements(); ++i) {
    ASSERT_NEAR(got.data<float>()[i], want.data<float>()[i],
                1e-4f + 1e-4f * std::fabs(want.data<float>()[i]))
        << "at flat index " << i;
  }
}

// ---- naive references ----------------------------------------------------------------

// numpy matmul for operands of rank >= 2 (batch dims broadcast).
Tensor NaiveBatchedMatMul(const Tensor& a, const Tensor& b) {
  const int ra = a.rank(), rb = b.rank(), r = std::max(ra, rb);
  Shape pa(r - ra, 1), pb(r - rb, 1);
  pa.insert(pa.end(), a.shape().begin(), a.shape().end());
  pb.insert(pb.end(), b.shape().begin(), b.shape().end());
  const int64_t m = pa[r - 2], k = pa[r - 1], n = pb[r - 1];
  Shape out_shape;
  for (int i = 0; i < r - 2; ++i) out_shape.push_back(std::max(pa[i], pb[i]));
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor y(DataType::kFloat32, out_shape);
  const int64_t batch = NumElements(out_shape) / (m * n);
  for (int64_t bi = 0; bi < batch; ++bi) {
    // Unravel bi over the output batch dims, then ravel into A's and B's.
    int64_t rem = bi, ao = 0, bo = 0, astride = 1, bstride = 1;
    for (int d = r - 3; d >= 0; --d) {
      const int64_t idx = rem % out_shape[d];
      rem /= out_shape[d];
      ao += (pa[d] == 1 ? 0 : idx) * astride;
      bo += (pb[d] == 1 ? 0 : idx) * bstride;
      astride *= pa[d];
      bstride *= pb[d];
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p) {
          acc += a.data<float>()[ao * m * k + i * k + p] *
                 b.data<float>()[bo * k * n + p * n + j];
        }
        y.data<float>()[bi * m * n + i * n + j] = static_cast<float>(acc);
      }
  }
  return y;
}

// Gemm: alpha * op(A) op(B) + beta * C (C broadcast from rank <= 2).
Tensor NaiveGemm(const Tensor& a, const Tensor& b, const Tensor* c, bool ta, bool tb,
                 float alpha, float beta) {
  const int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
  const int64_t n = tb ? b.dim(0) : b.dim(1);
  Tensor y(DataType::kFloat32, {m, n});
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t p = 0; p < k; ++p) {
        const float av = ta ? a.data<float>()[p * m + i] : a.data<float>()[i * k + p];
        const float bv = tb ? b.data<float>()[j * k + p] : b.data<float>()[p * n + j];
        acc += av * bv;
      }
      double cv = 0;
      if (c != nullptr) {
        const int64_t cm = c->rank() == 2 ? c->dim(0) : 1;
        const int64_t cn = c->rank() >= 1 ? c->shape().back() : 1;
        cv = c->data<float>()[(cm == 1 ? 0 : i) * cn + (cn == 1 ? 0 : j)];
      }
      y.data<float>()[i * n + j] = static_cast<float>(alpha * acc + beta * cv);
    }
  return y;
}

// ---- MatMul ------------------------------------------------------------------------

TEST(MatMulTest, ConstantWeightsWithBatchedActivations) {
  // The FC-layer case: B is packed once, A's leading dims fold into M.
  Tensor a = Filled({2, 3, 5}, 1), b = Filled({5, 7}, 2);
  ModelBuilder mb;
  mb.Input("a", a.shape());
  mb.Constant("b", b);
  mb.Node("MatMul", {"a", "b"}, {"y"});
  mb.Output("y");
  auto out = RunModel(mb.model(), {a});
  ASSERT_EQ(out.size(), 1u);
  ExpectNear(out[0], NaiveBatchedMatMul(a, b));
}

// a @ w + bias (bias [N] or [1, N], broadcast over rows), then `act`.
Tensor NaiveDense(const Tensor& a, const Tensor& w, const Tensor& bias,
                  float (*act)(float)) {
  Tensor y = NaiveBatchedMatMul(a, w);
  const int64_t n = w.dim(1);
  for (int64_t i = 0; i < y.num_elements(); ++i) {
    y.data<float>()[i] = act(y.data<float>()[i] + bias.data<float>()[i % n]);
  }
  return y;
}

TEST(MatMulFusionTest, BiasAndErfGeluFoldIntoTheMatMul) {
  Tensor a = Filled({2, 3, 5}, 1), w = Filled({5, 7}, 2), bias = Filled({7}, 3);
  ModelBuilder mb;
  mb.Input("a", a.shape());
  mb.Constant("w", w);
  mb.Constant("bias", bias);
  mb.Constant("sqrt2", Scalar(std::sqrt(2.f)));
  mb.Constant("one", Scalar(1.f));
  mb.Constant("half", Scalar(0.5f));
  mb.Node("MatMul", {"a", "w"}, {"mm"});
  mb.Node("Add", {"mm", "bias"}, {"x"});
  mb.Node("Div", {"x", "sqrt2"}, {"d"});  // the erf-GELU as PyTorch exports it
  mb.Node("Erf", {"d"}, {"e"});
  mb.Node("Add", {"e", "one"}, {"e1"});
  mb.Node("Mul", {"x", "e1"}, {"m"});
  mb.Node("Mul", {"m", "half"}, {"y"});
  mb.Output("y");
  int64_t nodes = 0;
  auto out = RunCountingNodes(mb.model(), {a}, &nodes);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(nodes, 1);
  ExpectNear(out[0], NaiveDense(a, w, bias, [](float v) {
               return 0.5f * v * (1.f + std::erf(v / std::sqrt(2.f)));
             }));
}

TEST(MatMulFusionTest, ActivationStaysSeparateWhenTheSumIsAlsoAnOutput) {
  Tensor a = Filled({4, 6}, 7), w = Filled({6, 3}, 8), bias = Filled({3}, 9);
  ModelBuilder mb;
  mb.Input("a", a.shape());
  mb.Constant("w", w);
  mb.Constant("bias", bias);
  mb.Node("MatMul", {"a", "w"}, {"mm"});
  mb.Node("Add", {"mm", "bias"}, {"x"});
  mb.Node("Relu", {"x"}, {"y"});
  mb.Output("x");
  mb.Output("y");
  int64_t nodes = 0;
  auto out = RunCountingNodes(mb.model(), {a}, &nodes);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(nodes, 2);  // MatMul+bias, Relu
  ExpectNear(out[0], NaiveDense(a, w, bias, [](float v) { return v; }));
  ExpectNear(out[1], NaiveDense(a, w, bias, [](float v) { return std::max(v, 0.f); }));
}

// Transpose(x, perm) computed with index loops.
Tensor NaiveTranspose(const Tensor& x, const std::vector<int64_t>& perm) {
  Shape out_shape;
  for (int64_t p : perm) out_shape.push_back(x.dim(p));
  Tensor y(DataType::kFloat32, out_shape);
  const int r = x.rank();
  std::vector<int64_t> in_strides(r, 1);
  for (int i = r - 2; i >= 0; --i) in_strides[i] = in_strides[i + 1] * x.dim(i + 1);
  std::vector<int64_t> idx(r, 0);
  for (int64_t o = 0; o < y.num_elements(); ++o) {
    int64_t src = 0;
    for (int i = 0; i < r; ++i) src += idx[i] * in_strides[perm[i]];
    y.data<float>()[o] = x.data<float>()[src];
    for (int i = r - 1; i >= 0; --i) {
      if (++idx[i] < out_shape[i]) break;
      idx[i] = 0;
    }
  }
  return y;
}

// The builder's model parsed from bytes, as a model file is: that runs shape inference,
// which the fusions that check operand shapes need. `y_shape`: the one output's shape.
absl::StatusOr<onnx::ModelProto> Parsed(const ModelBuilder& mb, const Shape& y_shape) {
  onnx::ModelProto model = mb.model();
  model.mutable_graph()->set_name("fusion");
  auto* shape = model.mutable_graph()->mutable_output(0)->mutable_type()
                    ->mutable_tensor_type()->mutable_shape();
  for (int64_t d : y_shape) shape->add_dim()->set_dim_value(d);
  return ParseOnnxModel(model.SerializeAsString(), "fusion");
}

TEST(MatMulFusionTest, RowBiasFirstOperandAndRelu) {
  Tensor a = Filled({4, 6}, 4), w = Filled({6, 3}, 5), bias = Filled({1, 3}, 6);
  ModelBuilder mb;
  mb.Input("a", a.shape());
  mb.Constant("w", w);
  mb.Constant("bias", bias);
  mb.Node("MatMul", {"a", "w"}, {"mm"});
  mb.Node("Add", {"bias", "mm"}, {"x"});
  mb.Node("Relu", {"x"}, {"y"});
  mb.Output("y");
  auto parsed = Parsed(mb, {4, 3});  // shape inference: the bias does not raise the rank
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  int64_t nodes = 0;
  auto out = RunCountingNodes(*parsed, {a}, &nodes);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(nodes, 1);
  ExpectNear(out[0], NaiveDense(a, w, bias, [](float v) { return std::max(v, 0.f); }));
}

TEST(MatMulFusionTest, ScoresScaleAndResidualFoldIntoTheMatMul) {
  // relu(a @ b / 2 + r), a and b both activations.
  Tensor a = Filled({2, 3, 4}, 13), b = Filled({2, 4, 5}, 14), r = Filled({2, 3, 5}, 15);
  ModelBuilder mb;
  mb.Input("a", a.shape());
  mb.Input("b", b.shape());
  mb.Input("r", r.shape());
  mb.Constant("two", Scalar(2.f));
  mb.Node("MatMul", {"a", "b"}, {"mm"});
  mb.Node("Div", {"mm", "two"}, {"s"});
  mb.Node("Add", {"r", "s"}, {"x"});
  mb.Node("Relu", {"x"}, {"y"});
  mb.Output("y");
  auto parsed = Parsed(mb, {2, 3, 5});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  int64_t nodes = 0;
  auto out = RunCountingNodes(*parsed, {a, b, r}, &nodes);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(nodes, 1);
  Tensor want = NaiveBatchedMatMul(a, b);
  for (int64_t i = 0; i < want.num_elements(); ++i) {
    want.data<float>()[i] = std::max(want.data<float>()[i] / 2.f + r.data<float>()[i], 0.f);
  }
  ExpectNear(out[0], want);
  // The caller's residual is not the accumulator (it is not donated).
  ExpectNear(r, Filled({2, 3, 5}, 15));
}

TEST(MatMulFusionTest, ProjectionBiasAndResidualFoldAtEveryPrecision) {
  // x @ w + bias + x (a transformer's output projection and residual).
  Tensor x = Filled({2, 4, 8}, 16), w = Filled({8, 8}, 17), bias = Filled({8}, 18);
  ModelBuilder mb;
  mb.Input("x", x.shape());
  mb.Constant("w", w);
  mb.Constant("bias", bias);
  mb.Node("MatMul", {"x", "w"}, {"mm"});
  mb.Node("Add", {"bias", "mm"}, {"p"});
  mb.Node("Add", {"x", "p"}, {"y"});
  mb.Output("y");
  auto parsed = Parsed(mb, {2, 4, 8});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  Tensor want = NaiveDense(x, w, bias, [](float v) { return v; });
  for (int64_t i = 0; i < want.num_elements(); ++i) want.data<float>()[i] += x.data<float>()[i];
  int64_t nodes = 0;
  auto out = RunCountingNodes(*parsed, {x}, &nodes);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(nodes, 1);
  ExpectNear(out[0], want);
  // The MatMul is the graph's head: without disable_default_exclusions it would stay
  // FP32. INT8 and BF16 take the bias as the primitive's argument (INT8 divided by the
  // output scales), DYNAMIC_RANGE as a post-op.
  for (Precision p : {Precision::kDynamicRange, Precision::kBF16, Precision::kInt8}) {
    CompileOptions o;
    o.precision = p;
    o.disable_default_exclusions = true;
    o.calibration = {{x}};
    auto s = Session::Compile(*parsed, o);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ((*s)->stats().num_nodes, 1);
    EXPECT_NE((*s)->precision_report()[0].precision, "FP32") << PrecisionName(p);
    auto ctx = (*s)->NewContext();
    std::vector<Tensor> got;
    ASSERT_TRUE((*s)->Run(ctx.get(), {x}, &got).ok());
    double err = 0, scale = 0;
    for (int64_t i = 0; i < want.num_elements(); ++i) {
      err = std::max(err, double(std::fabs(got[0].data<float>()[i] - want.data<float>()[i])));
      scale = std::max(scale, double(std::fabs(want.data<float>()[i])));
    }
    EXPECT_LE(err, 0.02 * scale) << PrecisionName(p);  // int8/bf16 rounding of x @ w only
  }
}

TEST(MatMulFusionTest, AFusedMatMulIsNotFusedAgain) {
  // relu(x @ w) + x: the Relu folds in; the Add after it must stay outside it (the
  // kernel applies the sum before the activation).
  Tensor x = Filled({2, 4, 8}, 19), w = Filled({8, 8}, 20);
  ModelBuilder mb;
  mb.Input("x", x.shape());
  mb.Constant("w", w);
  mb.Node("MatMul", {"x", "w"}, {"mm"});
  mb.Node("Relu", {"mm"}, {"r"});
  mb.Node("Add", {"r", "x"}, {"y"});
  mb.Output("y");
  auto parsed = Parsed(mb, {2, 4, 8});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  int64_t nodes = 0;
  auto out = RunCountingNodes(*parsed, {x}, &nodes);
  ASSERT_EQ(out.size(), 1u);
  Tensor zero(DataType::kFloat32, {8});
  Tensor want = NaiveDense(x, w, zero, [](float v) { return std::max(v, 0.f); });
  for (int64_t i = 0; i < want.num_elements(); ++i) want.data<float>()[i] += x.data<float>()[i];
  ExpectNear(out[0], want);
}

TEST(MatMulFusionTest, TwoMatMulsSummedKeepTheirProducers) {
  // relu(x @ w1 + h @ w2) (an RNN cell's shape): one MatMul takes the other's output as
  // its residual; the other must not then absorb the same, already rewritten, Add.
  Tensor x = Filled({3, 8}, 21), h = Filled({3, 8}, 22), w1 = Filled({8, 8}, 23),
         w2 = Filled({8, 8}, 24);
  ModelBuilder mb;
  mb.Input("x", x.shape());
  mb.Input("h", h.shape());
  mb.Constant("w1", w1);
  mb.Constant("w2", w2);
  mb.Node("MatMul", {"x", "w1"}, {"a"});
  mb.Node("MatMul", {"h", "w2"}, {"b"});
  mb.Node("Add", {"a", "b"}, {"s"});
  mb.Node("Relu", {"s"}, {"y"});
  mb.Output("y");
  auto parsed = Parsed(mb, {3, 8});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  int64_t nodes = 0;
  auto out = RunCountingNodes(*parsed, {x, h}, &nodes);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(nodes, 2);
  Tensor want = NaiveBatchedMatMul(x, w1);
  const Tensor hb = NaiveBatchedMatMul(h, w2);
  for (int64_t i = 0; i < want.num_elements(); ++i) {
    want.data<float>()[i] = std::max(want.data<float>()[i] + hb.data<float>()[i], 0.f);
  }
  ExpectNear(out[0], want);
}

TEST(MatMulFusionTest, TransposedActivationsAreReadThroughStrides) {
  // Attention: Q [B,S,H,D] -> [B,H,S,D]; K [B,S,H,D] -> [B,H,D,S]; scores = Q K^T.
  Tensor q = Filled({2, 5, 3, 4}, 11), k = Filled({2, 5, 3, 4}, 12);
  ModelBuilder mb;
  mb.Input("q", q.shape());
  mb.Input("k", k.shape());
  SetInts(mb.Node("Transpose", {"q"}, {"qt"}), "perm", {0, 2, 1, 3});
  SetInts(mb.Node("Transpose", {"k"}, {"kt"}), "perm", {0, 2, 3, 1});
  mb.Node("MatMul", {"qt", "kt"}, {"y"});
  mb.Output("y");
  auto parsed = Parsed(mb, {2, 3, 5, 5});
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  int64_t nodes = 0;
  auto out = RunCountingNodes(*parsed, {q, k}, &nodes);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(nodes, 1);
  ExpectNear(out[0], NaiveBatchedMatMul(NaiveTranspose(q, {0, 2, 1, 3}),
                                        NaiveTranspose(k, {0, 2, 3, 1})));
}

TEST(MatMulTest, BatchedBroadcast) {
  Tensor a = Filled({2, 1, 3, 4}, 3), b = Filled({3, 4, 5}, 4);
  ModelBuilder mb;
  mb.Input("a", a.shape());
  mb.Input("b", b.shape());
  mb.Node("MatMul", {"a", "b"}, {"y"});
  mb.Output("y");
  auto out = RunModel(mb.model(), {a, b});
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(ShapeToString(out[0].shape()), "[2,3,3,5]");
  ExpectNear(out[0], NaiveBatchedMatMul(a, b));
}

TEST(MatMulTest, OneDimensionalOperandsArePromotedAndDropped) {
  Tensor v = Filled({4}, 5), m = Filled({4, 3}, 6), batched = Filled({2, 3, 4}, 7);
  {
    ModelBuilder mb;
    mb.Input("a", v.shape());
    mb.Input("b", m.shape());
    mb.Node("MatMul", {"a", "b"}, {"y"});
    mb.Output("y");
    auto out = RunModel(mb.model(), {v, m});
    ASSERT_EQ(out.size(), 1u);
    ExpectNear(out[0], NaiveBatchedMatMul(v.Reshaped({1, 4}), m).Reshaped({3}));
  }
  {
    ModelBuilder mb;
    mb.Input("a", batched.shape());
    mb.Constant("b", v);
    mb.Node("MatMul", {"a", "b"}, {"y"});
    mb.Output("y");
    auto out = RunModel(mb.model(), {batched});
    ASSERT_EQ(out.size(), 1u);
    ExpectNear(out[0], NaiveBatchedMatMul(batched, v.Reshaped({4, 1})).Reshaped({2, 3}));
  }
  {
    ModelBuilder mb;
    mb.Input("a", v.shape());
    mb.Input("b", v.shape());
    mb.Node("MatMul", {"a", "b"}, {"y"});
    mb.Output("y");
    auto out = RunModel(mb.model(), {v, v});
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].rank(), 0);
    float dot = 0;
    for (int i = 0; i < 4; ++i) dot += v.data<float>()[i] * v.data<float>()[i];
    EXPECT_NEAR(out[0].data<float>()[0], dot, 1e-5f);
  }
}

TEST(MatMulTest, IntegerFallback) {
  Tensor a(DataType::kInt32, {2, 3}), b(DataType::kInt32, {3, 2});
  for (int i = 0; i < 6; ++i) {
    a.data<int32_t>()[i] = i + 1;
    b.data<int32_t>()[i] = 2 * i - 3;
  }
  ModelBuilder mb;
  mb.Input("a", a.shape(), onnx::TensorProto::INT32);
  mb.Input("b", b.shape(), onnx::TensorProto::INT32);
  mb.Node("MatMul", {"a", "b"}, {"y"});
  mb.Output("y", onnx::TensorProto::INT32);
  auto out = RunModel(mb.model(), {a, b});
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].dtype(), DataType::kInt32);
  // [[1,2,3],[4,5,6]] x [[-3,-1],[1,3],[5,7]]
  const int32_t want[4] = {14, 26, 23, 53};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(out[0].data<int32_t>()[i], want[i]);
}

TEST(MatMulTest, InnerDimMismatchIsInvalidArgument) {
  ModelBuilder mb;
  mb.Input("a", {2, -1});
  mb.Input("b", {3, 2});
  mb.Node("MatMul", {"a", "b"}, {"y"});
  mb.Output("y");
  auto out = TryRun(mb.model(), {Filled({2, 4}, 8), Filled({3, 2}, 9)});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(MatMulTest, PlansAreCachedPerShapeInOneContext) {
  Tensor b = Filled({6, 4}, 10);
  ModelBuilder mb;
  mb.Input("a", {-1, 6});
  mb.Constant("b", b);
  mb.Node("MatMul", {"a", "b"}, {"y"});
  mb.Output("y");
  auto session = Session::Compile(mb.model(), CompileOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  auto ctx = (*session)->NewContext();
  for (int64_t rows : {1, 5, 1, 32, 5}) {
    Tensor a = Filled({rows, 6}, static_cast<int>(rows));
    std::vector<Tensor> out;
    ASSERT_TRUE((*session)->Run(ctx.get(), {a}, &out).ok());
    ExpectNear(out[0], NaiveBatchedMatMul(a, b));
  }
}

// A 1-D A (a vector times the constant matrix) at every reduced precision, read by
// another MatMul and as the node producing the output (the head, which INT8 runs in
// BF16): the reduced kernels take it as one row and keep the output 1-D.
TEST(MatMulTest, VectorTimesMatrixAtEveryPrecision) {
  Tensor w1 = Filled({6, 5}, 21), w2 = Filled({5, 3}, 22), a = Filled({6}, 23);
  ModelBuilder mb;
  mb.Input("a", {6});
  mb.Constant("w1", w1);
  mb.Constant("w2", w2);
  mb.Node("MatMul", {"a", "w1"}, {"h"});
  mb.Node("MatMul", {"h", "w2"}, {"y"});
  mb.Output("y");
  const Tensor h = NaiveBatchedMatMul(a.Reshaped({1, 6}), w1);
  const Tensor want = NaiveBatchedMatMul(h, w2);
  for (Precision p : {Precision::kInt8, Precision::kDynamicRange, Precision::kBF16}) {
    SCOPED_TRACE(PrecisionName(p));
    CompileOptions o;
    o.precision = p;
    o.calibration = {{a}};
    auto session = Session::Compile(mb.model(), o);
    ASSERT_TRUE(session.ok()) << session.status();
    std::vector<Tensor> out;
    absl::Status st = (*session)->Run((*session)->NewContext().get(), {a}, &out);
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_EQ(out[0].num_elements(), 3);
    for (int j = 0; j < 3; ++j) {
      EXPECT_NEAR(out[0].data<float>()[j], want.data<float>()[j],
                  0.05f * (1.f + std::fabs(want.data<float>()[j])));
    }
  }
}

// Plans built and run on several threads at once, each batch size creating its own
// primitives, keep their fused ReLU. oneDNN's process-wide primitive cache is off after
// the first Compile: emptying it while other threads created primitives (the daemon did
// after every model load) now and then handed a MatMul a primitive without its ReLU.
TEST(MatMulTest, ConcurrentCompilesAndRunsKeepTheirFusedRelu) {
  Tensor w = Filled({6, 3}, 5), bias = Filled({3}, 6);
  ModelBuilder mb;
  mb.Input("a", {-1, 6});
  mb.Constant("w", w);
  mb.Constant("bias", bias);
  mb.Node("MatMul", {"a", "w"}, {"mm"});
  mb.Node("Add", {"mm", "bias"}, {"x"});
  mb.Node("Relu", {"x"}, {"y"});
  mb.Output("y");
  constexpr int kThreads = 3, kRounds = 12;
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds && failures[t].empty(); ++round) {
        auto session = Session::Compile(mb.model(), CompileOptions());
        if (!session.ok()) {
          failures[t] = session.status().ToString();
          return;
        }
        auto ctx = (*session)->NewContext();
        const int64_t rows = 1 + (round * kThreads + t) % 7;
        Tensor a = Filled({rows, 6}, round + t);
        std::vector<Tensor> out;
        absl::Status st = (*session)->Run(ctx.get(), {a}, &out);
        if (!st.ok()) {
          failures[t] = st.ToString();
          return;
        }
        const Tensor want = NaiveDense(a, w, bias, [](float v) { return std::max(v, 0.f); });
        for (int64_t i = 0; i < want.num_elements(); ++i) {
          if (std::fabs(out[0].data<float>()[i] - want.data<float>()[i]) > 1e-4f) {
            failures[t] = "round " + std::to_string(round) + ", rows " +
                          std::to_string(rows) + ": output " + std::to_string(i) + " is " +
                          std::to_string(out[0].data<float>()[i]) + ", want " +
                          std::to_string(want.data<float>()[i]);
            return;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], "") << "thread " << t;
  if (std::getenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY") == nullptr &&
      std::getenv("DNNL_PRIMITIVE_CACHE_CAPACITY") == nullptr) {
    EXPECT_EQ(dnnl::get_primitive_cache_capacity(), 0);
  }
}

// Packed constant weights are held once: the plan drops its reference to an FP32 B that
// the MatMul/Gemm kernel packed (so the unpacked copy is freed), but keeps one another
// node still reads. Weight accounting sees both cases; outputs stay exact across batch
// sizes, whose primitives may ask for other packed layouts (reordered from the first).
TEST(MatMulTest, PackedWeightsAreHeldOnce) {
  Tensor b1 = Filled({64, 48}, 11), b2 = Filled({32, 48}, 12), shared = Filled({48, 48}, 13);
  ModelBuilder mb;
  mb.Input("a", {-1, 64});
  mb.Constant("b1", b1);
  mb.Constant("b2", b2);
  mb.Constant("s", shared);
  mb.Node("MatMul", {"a", "b1"}, {"h"});
  mb.Node("MatMul", {"h", "s"}, {"h2"});
  mb.Node("Add", {"h2", "s"}, {"h3"});  // [r, 48] + [48, 48] needs r == 48
  SetInt(mb.Node("Gemm", {"h3", "b2"}, {"y"}), "transB", 1);
  mb.Output("y");
  auto session = Session::Compile(mb.model(), CompileOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  const PlanStats st = (*session)->stats();
  const int64_t f32 = 4;
  EXPECT_EQ(st.fp32_weight_bytes, (b1.num_elements() + b2.num_elements() +
                                   shared.num_elements()) * f32);
  // b1 and b2 once each (in their kernels); `s` twice: packed in the MatMul and kept
  // unpacked in the plan for the Add.
  EXPECT_EQ(st.weight_bytes,
            (b1.num_elements() + b2.num_elements() + 2 * shared.num_elements()) * f32);
  for (int round = 0; round < 2; ++round) {
    auto ctx = (*session)->NewContext();
    Tensor a = Filled({48, 64}, round);
    std::vector<Tensor> out;
    ASSERT_TRUE((*session)->Run(ctx.get(), {a}, &out).ok());
    Tensor h2 = NaiveBatchedMatMul(NaiveBatchedMatMul(a, b1), shared);
    for (int64_t i = 0; i < h2.num_elements(); ++i) {
      h2.data<float>()[i] += shared.data<float>()[i];
    }
    ExpectNear(out[0], NaiveGemm(h2, b2, nullptr, false, true, 1.f, 0.f));
  }
}

TEST(MatMulTest, PackedWeightsServeEveryBatchSizeAfterRelease) {
  Tensor b = Filled({256, 96}, 14);
  ModelBuilder mb;
  mb.Input("a", {-1, 256});
  mb.Constant("b", b);
  SetInt(mb.Node("Gemm", {"a", "b"}, {"g"}), "transA", 0);
  mb.Node("MatMul", {"g", "c"}, {"y"});
  mb.Constant("c", Filled({96, 40}, 15));
  mb.Output("y");
  auto session = Session::Compile(mb.model(), CompileOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ((*session)->stats().weight_bytes, (256 * 96 + 96 * 40) * 4);
  auto ctx = (*session)->NewContext();
  for (int64_t rows : {1, 64, 3, 512, 1}) {
    Tensor a = Filled({rows, 256}, static_cast<int>(rows));
    std::vector<Tensor> out;
    ASSERT_TRUE((*session)->Run(ctx.get(), {a}, &out).ok());
    ExpectNear(out[0], NaiveBatchedMatMul(NaiveGemm(a, b, nullptr, false, false, 1.f, 0.f),
                                          Filled({96, 40}, 15)));
  }
}

// ---- Gemm --------------------------------------------------------------------------

struct GemmCase {
  std::string name;
  Shape c_shape;  // empty: no C
  bool trans_a, trans_b;
  float alpha, beta;
  bool constant_bc;
};

class GemmTest : public ::testing::TestWithParam<GemmCase> {};

TEST_P(GemmTest, MatchesNaive) {
  const GemmCase& gc = GetParam();
  const int64_t m = 3, k = 5, n = 4;
  Tensor a = Filled(gc.trans_a ? Shape{k, m} : Shape{m, k}, 11);
  Tensor b = Filled(gc.trans_b ? Shape{n, k} : Shape{k, n}, 12);
  const bool has_c = !gc.c_shape.empty() || gc.name.find("scalar") != std::string::npos;
  Tensor c = Filled(gc.c_shape, 13);
  ModelBuilder mb;
  mb.Input("a", a.shape());
  std::vector<Tensor> inputs = {a};
  std::vector<std::string> names = {"a", "b"};
  if (gc.constant_bc) {
    mb.Constant("b", b);
  } else {
    mb.Input("b", b.shape());
    inputs.push_back(b);
  }
  if (has_c) {
    names.push_back("c");
    if (gc.constant_bc) {
      mb.Constant("c", c);
    } else {
      mb.Input("c", c.shape());
      inputs.push_back(c);
    }
  }
  auto* node = mb.Node("Gemm", names, {"y"});
  if (gc.trans_a) SetInt(node, "transA", 1);
  if (gc.trans_b) SetInt(node, "transB", 1);
  if (gc.alpha != 1.f) SetFloat(node, "alpha", gc.alpha);
  if (gc.beta != 1.f) SetFloat(node, "beta", gc.beta);
  mb.Output("y");
  auto out = RunModel(mb.model(), inputs);
  ASSERT_EQ(out.size(), 1u);
  ExpectNear(out[0], NaiveGemm(a, b, has_c ? &c : nullptr, gc.trans_a, gc.trans_b,
                               gc.alpha, gc.beta));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, GemmTest,
    ::testing::Values(
        GemmCase{"no_c", {}, false, false, 1.f, 1.f, true},
        GemmCase{"trans_a_trans_b_matrix_c", {3, 4}, true, true, 0.25f, 0.35f, true},
        GemmCase{"trans_a_trans_b_matrix_c_inputs", {3, 4}, true, true, 0.25f, 0.35f,
                 false},
        GemmCase{"trans_b_vector_bias", {4}, false, true, 1.f, 1.f, true},
        GemmCase{"vector_bias_inputs_beta", {4}, false, false, 1.f, 0.5f, false},
        GemmCase{"row_c_alpha", {1, 4}, false, false, 2.f, 1.f, true},
        GemmCase{"column_c", {3, 1}, true, false, 1.f, 1.f, true},
        GemmCase{"scalar_c", {}, false, false, 1.f, 2.f, true},
        GemmCase{"single_elem_c_inputs", {1}, false, true, 0.5f, 1.f, false}),
    [](const ::testing::TestParamInfo<GemmCase>& info) { return info.param.name; });

}  // namespace
}  // namespace qs
