// FuseLayerNorm: the LayerNorm PyTorch exports below opset 17 (ReduceMean, Sub, Pow,
// ReduceMean, Add, Sqrt, Div, Mul, Add) must become one QsLayerNorm node computing the
// same outputs, and must be left alone when an intermediate is read elsewhere.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/graph.h"
#include "engine/onnx_import.h"
#include "engine/passes/passes.h"
#include "engine/session.h"
#include "engine/tensor.h"
#include "gtest/gtest.h"
#include "tests/engine/ops/model_builder.h"

namespace qs {
namespace {

constexpr float kEps = 1e-5f;
const Shape kShape = {2, 5, 16};

Tensor Uniform(const Shape& shape, float lo, float hi, int seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  Tensor t(DataType::kFloat32, shape);
  for (int64_t i = 0; i < t.num_elements(); ++i) t.data<float>()[i] = u(rng);
  return t;
}

Tensor Filled(const Shape& shape, float value) {
  Tensor t(DataType::kFloat32, shape);
  std::fill(t.data<float>(), t.data<float>() + t.num_elements(), value);
  return t;
}

struct Variant {
  bool square_with_mul = false;     // Mul(d, d) instead of Pow(d, 2)
  bool centered_is_output = false;  // d is a graph output as well
  bool affine = true;               // the Mul by gamma and the Add of beta
  bool x_from_node = false;         // X is a Relu's output rather than the graph input
  int64_t axis = -1;
  int64_t opset = 13;  // 18: ReduceMean takes its axes as input 1
};

// The decomposed LayerNorm as torch.onnx.export writes it for nn.LayerNorm (y = d / s
// * gamma + beta, d = X - mean). Outputs "y" and, with centered_is_output, "d".
onnx::ModelProto LayerNormModel(const Variant& v, const Tensor& gamma, const Tensor& beta) {
  ModelBuilder b(v.opset);
  b.Input("input", kShape);
  b.Output("y");
  if (v.centered_is_output) b.Output("d");
  std::string x = "input";
  if (v.x_from_node) {
    x = "x";
    b.Node("Relu", {"input"}, {x});
  }
  Tensor axes(DataType::kInt64, {1});
  axes.data<int64_t>()[0] = v.axis;
  b.Constant("axes", axes);
  b.Constant("two", Filled({}, 2.f));
  b.Constant("eps", Filled({}, kEps));
  auto mean = [&](const std::string& in, const std::string& out) {
    if (v.opset >= 18) {
      b.Node("ReduceMean", {in, "axes"}, {out});
    } else {
      SetInts(b.Node("ReduceMean", {in}, {out}), "axes", {v.axis});
    }
  };
  mean(x, "m");
  b.Node("Sub", {x, "m"}, {"d"});
  if (v.square_with_mul) {
    b.Node("Mul", {"d", "d"}, {"p"});
  } else {
    b.Node("Pow", {"d", "two"}, {"p"});
  }
  mean("p", "v");
  b.Node("Add", {"v", "eps"}, {"e"});  // eps second, gamma and beta first below
  b.Node("Sqrt", {"e"}, {"s"});
  if (!v.affine) {
    b.Node("Div", {"d", "s"}, {"y"});
    return b.model();
  }
  b.Node("Div", {"d", "s"}, {"n"});
  b.Constant("gamma", gamma);
  b.Constant("beta", beta);
  b.Node("Mul", {"gamma", "n"}, {"y1"});
  b.Node("Add", {"beta", "y1"}, {"y"});
  return b.model();
}

// As a model file would be loaded: checked, with shape inference (which gives the pass
// X's last dimension when X is an intermediate value).
onnx::ModelProto Parsed(onnx::ModelProto built) {
  built.mutable_graph()->set_name("layernorm");
  for (auto& out : *built.mutable_graph()->mutable_output()) {
    auto* shape = out.mutable_type()->mutable_tensor_type()->mutable_shape();
    for (int64_t d : kShape) shape->add_dim()->set_dim_value(d);
  }
  auto parsed = ParseOnnxModel(built.SerializeAsString(), "layernorm");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : onnx::ModelProto();
}

// LayerNorm over the last axis in double, and the centered values d = x - mean.
void Reference(const Tensor& x, const Tensor& gamma, const Tensor& beta, std::vector<double>* y,
               std::vector<double>* d) {
  const int64_t inner = x.shape().back();
  const int64_t rows = x.num_elements() / inner;
  y->assign(x.num_elements(), 0);
  d->assign(x.num_elements(), 0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data<float>() + r * inner;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < inner; ++i) mean += xr[i];
    mean /= inner;
    for (int64_t i = 0; i < inner; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    var /= inner;
    for (int64_t i = 0; i < inner; ++i) {
      const double c = xr[i] - mean;
      (*d)[r * inner + i] = c;
      (*y)[r * inner + i] =
          c / std::sqrt(var + kEps) * gamma.data<float>()[i] + beta.data<float>()[i];
    }
  }
}

double MaxAbsErr(const Tensor& got, const std::vector<double>& want) {
  EXPECT_EQ(got.num_elements(), static_cast<int64_t>(want.size()));
  double err = 0;
  for (int64_t i = 0; i < got.num_elements() && i < static_cast<int64_t>(want.size()); ++i) {
    err = std::max(err, std::fabs(got.data<float>()[i] - want[i]));
  }
  return err;
}

struct Result {
  int64_t num_nodes = -1;
  double y_err = 1e9, d_err = 1e9;  // max abs error against Reference
};

// Compiles the variant (FP32), runs it on random input and compares with Reference.
Result CompileAndRun(const Variant& v) {
  const Shape c = {kShape.back()};
  const Tensor gamma = v.affine ? Uniform(c, 0.5f, 1.5f, 2) : Filled(c, 1.f);
  const Tensor beta = v.affine ? Uniform(c, -0.5f, 0.5f, 3) : Filled(c, 0.f);
  const onnx::ModelProto model = Parsed(LayerNormModel(v, gamma, beta));
  Result r;
  auto session = Session::Compile(model, CompileOptions());
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return r;
  r.num_nodes = (*session)->stats().num_nodes;
  // Off-centre and wider than [-1, 1], so that both the mean and the variance matter.
  const Tensor x = Uniform(kShape, -2.f, 3.f, 1);
  auto ctx = (*session)->NewContext();
  std::vector<Tensor> out;
  absl::Status st = (*session)->Run(ctx.get(), {x}, &out);
  EXPECT_TRUE(st.ok()) << st;
  if (!st.ok() || out.empty()) return r;
  Tensor ln_in = x.Clone();  // what reaches the LayerNorm
  if (v.x_from_node) {
    for (int64_t i = 0; i < ln_in.num_elements(); ++i) {
      ln_in.data<float>()[i] = std::max(ln_in.data<float>()[i], 0.f);
    }
  }
  std::vector<double> y, d;
  Reference(ln_in, gamma, beta, &y, &d);
  r.y_err = MaxAbsErr(out[0], y);
  if (out.size() > 1) r.d_err = MaxAbsErr(out[1], d);
  return r;
}

// The graph after import and FuseLayerNorm alone. Without `infer_shapes` the model
// skips ParseOnnxModel: no checker (whose ONNX stops at opset 17), no inferred shapes.
Graph FusedGraph(const Variant& v, bool infer_shapes) {
  onnx::ModelProto model = LayerNormModel(v, Uniform({kShape.back()}, 0.5f, 1.5f, 2),
                                          Uniform({kShape.back()}, -0.5f, 0.5f, 3));
  if (infer_shapes) model = Parsed(std::move(model));
  auto graph = ImportGraph(model);
  EXPECT_TRUE(graph.ok()) << graph.status();
  if (!graph.ok()) return Graph();
  const absl::Status st = FuseLayerNorm(&*graph);
  EXPECT_TRUE(st.ok()) << st;
  return *std::move(graph);
}

TEST(FuseLayerNormTest, PowPatternBecomesOneNode) {
  const Result r = CompileAndRun(Variant());
  EXPECT_EQ(r.num_nodes, 1);
  EXPECT_LE(r.y_err, 1e-5);
}

TEST(FuseLayerNormTest, MulSquareBecomesOneNode) {
  Variant v;
  v.square_with_mul = true;
  const Result r = CompileAndRun(v);
  EXPECT_EQ(r.num_nodes, 1);
  EXPECT_LE(r.y_err, 1e-5);
}

TEST(FuseLayerNormTest, NotFusedWhenCenteredValueIsGraphOutput) {
  Variant v;
  v.centered_is_output = true;
  const Result r = CompileAndRun(v);
  EXPECT_EQ(r.num_nodes, 9);
  EXPECT_LE(r.y_err, 1e-5);
  EXPECT_LE(r.d_err, 1e-5);
}

TEST(FuseLayerNormTest, PositiveAxisFuses) {
  Variant v;
  v.axis = static_cast<int64_t>(kShape.size()) - 1;
  const Result r = CompileAndRun(v);
  EXPECT_EQ(r.num_nodes, 1);
  EXPECT_LE(r.y_err, 1e-5);
}

// Without gamma and beta the pass makes ones and zeros, sized from shape inference's
// record of X (here a Relu's output, so not a declared graph input).
TEST(FuseLayerNormTest, WithoutAffineFusesWithInferredSize) {
  Variant v;
  v.affine = false;
  v.x_from_node = true;
  const Result r = CompileAndRun(v);
  EXPECT_EQ(r.num_nodes, 2);  // Relu, QsLayerNorm
  EXPECT_LE(r.y_err, 1e-5);
}

TEST(FuseLayerNormTest, FusedNodeCarriesInputsAndAttributes) {
  const Graph g = FusedGraph(Variant(), /*infer_shapes=*/true);
  ASSERT_EQ(g.nodes.size(), 1u);
  const Node& n = g.nodes[0];
  EXPECT_EQ(n.op_type, kLayerNormOp);
  EXPECT_EQ(n.inputs, (std::vector<std::string>{"input", "gamma", "beta"}));
  EXPECT_EQ(n.outputs, (std::vector<std::string>{"y"}));
  EXPECT_EQ(n.attrs.GetInt("axis", 0), -1);
  EXPECT_EQ(n.attrs.GetFloat("epsilon", 0.f), kEps);
  EXPECT_EQ(n.name, "ReduceMean_1/layernorm");
}

TEST(FuseLayerNormTest, KeepsOrderAndAddsOnesAndZeros) {
  Variant v;
  v.affine = false;
  v.x_from_node = true;
  const Graph g = FusedGraph(v, /*infer_shapes=*/true);
  ASSERT_EQ(g.nodes.size(), 2u);
  EXPECT_EQ(g.nodes[0].op_type, "Relu");
  const Node& n = g.nodes[1];
  ASSERT_EQ(n.op_type, kLayerNormOp);
  ASSERT_EQ(n.inputs.size(), 3u);
  EXPECT_EQ(n.inputs[0], "x");
  EXPECT_EQ(n.outputs, (std::vector<std::string>{"y"}));
  for (int k = 1; k <= 2; ++k) {
    auto it = g.initializers.find(n.inputs[k]);
    ASSERT_NE(it, g.initializers.end()) << n.inputs[k];
    ASSERT_EQ(it->second.shape(), Shape({kShape.back()}));
    for (int64_t i = 0; i < kShape.back(); ++i) {
      EXPECT_EQ(it->second.data<float>()[i], k == 1 ? 1.f : 0.f);
    }
  }
}

TEST(FuseLayerNormTest, Opset18AxesInputFuses) {
  Variant v;
  v.opset = 18;
  const Graph g = FusedGraph(v, /*infer_shapes=*/false);
  ASSERT_EQ(g.nodes.size(), 1u);
  EXPECT_EQ(g.nodes[0].op_type, kLayerNormOp);
}

TEST(FuseLayerNormTest, OtherAxisIsNotFused) {
  Variant v;
  v.axis = 1;
  const Graph g = FusedGraph(v, /*infer_shapes=*/true);
  EXPECT_EQ(g.nodes.size(), 9u);
  for (const Node& n : g.nodes) EXPECT_NE(n.op_type, kLayerNormOp);
}

TEST(FuseLayerNormTest, MissingLastDimensionIsNotFusedWithoutAffine) {
  Variant v;
  v.affine = false;
  v.x_from_node = true;  // an intermediate: only shape inference would know its shape
  const Graph g = FusedGraph(v, /*infer_shapes=*/false);
  EXPECT_EQ(g.nodes.size(), 8u);
}

// The kernel behind QsLayerNorm, as LayerNormalization (opset 17) uses it: Scale and B
// broadcast to the normalized shape, and B omitted.
TEST(LayerNormKernelTest, BroadcastsScaleAndBiasAndTakesNoBias) {
  struct Case {
    int64_t axis;
    Shape scale_shape;
    Shape bias_shape;  // empty: no B
  };
  for (const Case& c : {Case{-1, {1}, {}}, Case{-2, {16}, {1, 16}}, Case{1, {5, 16}, {16}}}) {
    SCOPED_TRACE(testing::Message() << "axis " << c.axis);
    const Tensor x = Uniform(kShape, -2.f, 3.f, 4);
    const Tensor scale = Uniform(c.scale_shape, 0.5f, 1.5f, 5);
    const Tensor bias = c.bias_shape.empty() ? Tensor() : Uniform(c.bias_shape, -0.5f, 0.5f, 6);
    ModelBuilder b(17);
    b.Input("x", kShape);
    b.Output("y");
    b.Constant("scale", scale);
    std::vector<std::string> inputs = {"x", "scale"};
    if (bias.defined()) {
      b.Constant("bias", bias);
      inputs.push_back("bias");
    }
    auto* n = b.Node("LayerNormalization", inputs, {"y"});
    SetInt(n, "axis", c.axis);
    auto* eps = n->add_attribute();
    eps->set_name("epsilon");
    eps->set_type(onnx::AttributeProto::FLOAT);
    eps->set_f(kEps);
    const std::vector<Tensor> out = RunModel(Parsed(b.model()), {x});
    ASSERT_EQ(out.size(), 1u);
    const int64_t first = c.axis < 0 ? c.axis + static_cast<int64_t>(kShape.size()) : c.axis;
    int64_t inner = 1;
    for (size_t d = first; d < kShape.size(); ++d) inner *= kShape[d];
    // Row-major, right-aligned: the broadcast operand repeats every num_elements values.
    auto at = [&](const Tensor& t, int64_t i) {
      return t.defined() ? t.data<float>()[i % t.num_elements()] : 0.f;
    };
    double err = 0;
    for (int64_t r = 0; r < x.num_elements() / inner; ++r) {
      const float* xr = x.data<float>() + r * inner;
      double mean = 0, var = 0;
      for (int64_t i = 0; i < inner; ++i) mean += xr[i];
      mean /= inner;
      for (int64_t i = 0; i < inner; ++i) var += (xr[i] - mean) * (xr[i] - mean);
      var /= inner;
      for (int64_t i = 0; i < inner; ++i) {
        const double want = (xr[i] - mean) / std::sqrt(var + kEps) * at(scale, i) + at(bias, i);
        err = std::max(err, std::fabs(out[0].data<float>()[r * inner + i] - want));
      }
    }
    EXPECT_LE(err, 1e-5);
  }
}

}  // namespace
}  // namespace qs
