// Element-wise binary/variadic kernels (engine/ops/binary.cc), run end to end
// through Session on one-node models. Expected values are computed in the test
// with plain loops.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/session.h"
#include "engine/tensor.h"
#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"

namespace qs {
namespace {

template <typename T>
Tensor Make(DataType dtype, Shape shape, const std::vector<T>& values) {
  Tensor t(dtype, std::move(shape));
  EXPECT_EQ(static_cast<size_t>(t.num_elements()), values.size());
  std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}

template <typename T>
std::vector<T> Values(const Tensor& t) {
  return std::vector<T>(t.data<T>(), t.data<T>() + t.num_elements());
}

// A one-graph model: inputs fed at run time, optional initializers, nodes.
class Model {
 public:
  explicit Model(int64_t opset) {
    model_.set_ir_version(8);
    auto* op = model_.add_opset_import();
    op->set_domain("");
    op->set_version(opset);
    graph_ = model_.mutable_graph();
    graph_->set_name("test");
  }

  Model& Input(const std::string& name, DataType dtype, const Shape& shape) {
    auto* vi = graph_->add_input();
    vi->set_name(name);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(DataTypeToOnnx(dtype));
    auto* s = tt->mutable_shape();
    for (int64_t d : shape) s->add_dim()->set_dim_value(d);
    return *this;
  }
  Model& Initializer(const std::string& name, const Tensor& t) {
    *graph_->add_initializer() = TensorToProto(t, name);
    return *this;
  }
  Model& Output(const std::string& name, DataType dtype) {
    auto* vi = graph_->add_output();
    vi->set_name(name);
    vi->mutable_type()->mutable_tensor_type()->set_elem_type(
        DataTypeToOnnx(dtype));
    return *this;
  }
  onnx::NodeProto* Node(const std::string& op,
                        const std::vector<std::string>& inputs,
                        const std::vector<std::string>& outputs) {
    auto* n = graph_->add_node();
    n->set_op_type(op);
    n->set_name(op + std::to_string(graph_->node_size()));
    for (const auto& i : inputs) n->add_input(i);
    for (const auto& o : outputs) n->add_output(o);
    return n;
  }
  const onnx::ModelProto& proto() const { return model_; }

 private:
  onnx::ModelProto model_;
  onnx::GraphProto* graph_;
};

void AttrInt(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}
void AttrFloat(onnx::NodeProto* n, const std::string& name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}
void AttrString(onnx::NodeProto* n, const std::string& name,
                const std::string& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s(v);
}

absl::StatusOr<std::vector<Tensor>> RunModel(
    const Model& m, const std::vector<Tensor>& inputs) {
  auto session = Session::Compile(m.proto(), CompileOptions());
  if (!session.ok()) return session.status();
  auto ctx = (*session)->NewContext();
  std::vector<Tensor> outputs;
  absl::Status st = (*session)->Run(ctx.get(), inputs, &outputs);
  if (!st.ok()) return st;
  return outputs;
}

// One binary node "op(a, b) -> y" with both operands fed at run time.
absl::StatusOr<Tensor> RunBinary(const std::string& op, int64_t opset,
                                 const Tensor& a, const Tensor& b,
                                 DataType out_type,
                                 void (*attrs)(onnx::NodeProto*) = nullptr) {
  Model m(opset);
  m.Input("a", a.dtype(), a.shape())
      .Input("b", b.dtype(), b.shape())
      .Output("y", out_type);
  onnx::NodeProto* n = m.Node(op, {"a", "b"}, {"y"});
  if (attrs != nullptr) attrs(n);
  auto out = RunModel(m, {a, b});
  if (!out.ok()) return out.status();
  return (*out)[0];
}

TEST(BinaryTest, AddBroadcastsColumnAgainstRow) {
  // [2,3,1] + [4] -> [2,3,4]: out[i,j,k] = a[i,j] + b[k].
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<float> b = {10, 20, 30, 40};
  auto y = RunBinary("Add", 14, Make(DataType::kFloat32, {2, 3, 1}, a),
                     Make(DataType::kFloat32, {4}, b), DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 3, 4}));
  std::vector<float> want;
  for (int ij = 0; ij < 6; ++ij) {
    for (int k = 0; k < 4; ++k) want.push_back(a[ij] + b[k]);
  }
  EXPECT_EQ(Values<float>(*y), want);
}

TEST(BinaryTest, MulBroadcastsMiddleAndOuterDims) {
  // [2,1,3] * [1,4,1] -> [2,4,3]: neither side is contiguous in the output.
  std::vector<int32_t> a = {1, 2, 3, 4, 5, 6};
  std::vector<int32_t> b = {1, 10, 100, 1000};
  auto y = RunBinary("Mul", 14, Make(DataType::kInt32, {2, 1, 3}, a),
                     Make(DataType::kInt32, {1, 4, 1}, b), DataType::kInt32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 4, 3}));
  std::vector<int32_t> want;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j)
      for (int k = 0; k < 3; ++k) want.push_back(a[i * 3 + k] * b[j]);
  EXPECT_EQ(Values<int32_t>(*y), want);
}

TEST(BinaryTest, SubWithScalarAndEqualShapes) {
  auto y =
      RunBinary("Sub", 14, Make<int64_t>(DataType::kInt64, {3}, {5, 6, 7}),
                Make<int64_t>(DataType::kInt64, {}, {10}), DataType::kInt64);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{-5, -4, -3}));
  y = RunBinary("Sub", 14,
                Make<double>(DataType::kFloat64, {2, 2}, {1, 2, 3, 4}),
                Make<double>(DataType::kFloat64, {2, 2}, {4, 3, 2, 1}),
                DataType::kFloat64);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<double>(*y), (std::vector<double>{-3, -1, 1, 3}));
}

TEST(BinaryTest, IntegerDivTruncatesAndRejectsZero) {
  auto y = RunBinary(
      "Div", 14, Make<int32_t>(DataType::kInt32, {4}, {7, -7, 7, -7}),
      Make<int32_t>(DataType::kInt32, {4}, {2, 2, -2, -2}), DataType::kInt32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int32_t>(*y), (std::vector<int32_t>{3, -3, -3, 3}));
  y = RunBinary("Div", 14, Make<int32_t>(DataType::kInt32, {2}, {1, 2}),
                Make<int32_t>(DataType::kInt32, {2}, {1, 0}), DataType::kInt32);
  EXPECT_FALSE(y.ok());
  EXPECT_NE(y.status().message().find("division by zero"), std::string::npos)
      << y.status();
}

TEST(BinaryTest, Float16AddComputesInFloat) {
  Tensor a(DataType::kFloat16, {2});
  Tensor b(DataType::kFloat16, {2});
  a.data<uint16_t>()[0] = FloatToHalf(1.5f);
  a.data<uint16_t>()[1] = FloatToHalf(-2.0f);
  b.data<uint16_t>()[0] = FloatToHalf(0.25f);
  b.data<uint16_t>()[1] = FloatToHalf(8.0f);
  auto y = RunBinary("Add", 14, a, b, DataType::kFloat16);
  ASSERT_TRUE(y.ok()) << y.status();
  ASSERT_EQ(y->dtype(), DataType::kFloat16);
  EXPECT_EQ(HalfToFloat(y->data<uint16_t>()[0]), 1.75f);
  EXPECT_EQ(HalfToFloat(y->data<uint16_t>()[1]), 6.0f);
}

TEST(BinaryTest, PowWithIntegerExponentKeepsBaseType) {
  auto y = RunBinary("Pow", 15, Make<float>(DataType::kFloat32, {3}, {2, 3, 4}),
                     Make<int64_t>(DataType::kInt64, {3}, {3, 2, -1}),
                     DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->dtype(), DataType::kFloat32);
  EXPECT_EQ(Values<float>(*y), (std::vector<float>{8, 9, 0.25f}));
  y = RunBinary("Pow", 15, Make<int32_t>(DataType::kInt32, {2}, {3, 5}),
                Make<float>(DataType::kFloat32, {}, {2}), DataType::kInt32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int32_t>(*y), (std::vector<int32_t>{9, 25}));
}

TEST(BinaryTest, ComparisonsProduceBool) {
  Tensor a = Make<float>(DataType::kFloat32, {2, 2}, {1, 5, 3, 3});
  Tensor b = Make<float>(DataType::kFloat32, {2}, {3, 4});
  struct Case {
    const char* op;
    int64_t opset;
    std::vector<uint8_t> want;
  } cases[] = {
      {"Less", 13, {1, 0, 0, 1}},           {"Greater", 13, {0, 1, 0, 0}},
      {"Equal", 13, {0, 0, 1, 0}},          {"LessOrEqual", 16, {1, 0, 1, 1}},
      {"GreaterOrEqual", 16, {0, 1, 1, 0}},
  };
  for (const Case& c : cases) {
    auto y = RunBinary(c.op, c.opset, a, b, DataType::kBool);
    ASSERT_TRUE(y.ok()) << c.op << ": " << y.status();
    EXPECT_EQ(y->dtype(), DataType::kBool);
    EXPECT_EQ(Values<uint8_t>(*y), c.want) << c.op;
  }
}

TEST(BinaryTest, LogicOpsOnBool) {
  Tensor a = Make<uint8_t>(DataType::kBool, {4}, {0, 0, 1, 1});
  Tensor b = Make<uint8_t>(DataType::kBool, {4}, {0, 1, 0, 1});
  auto y = RunBinary("And", 7, a, b, DataType::kBool);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<uint8_t>(*y), (std::vector<uint8_t>{0, 0, 0, 1}));
  y = RunBinary("Or", 7, a, b, DataType::kBool);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<uint8_t>(*y), (std::vector<uint8_t>{0, 1, 1, 1}));
  y = RunBinary("Xor", 7, a, b, DataType::kBool);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<uint8_t>(*y), (std::vector<uint8_t>{0, 1, 1, 0}));
  y = RunBinary("Equal", 13, a, b, DataType::kBool);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<uint8_t>(*y), (std::vector<uint8_t>{1, 0, 0, 1}));

  Model m(13);
  m.Input("a", DataType::kBool, {4}).Output("y", DataType::kBool);
  m.Node("Not", {"a"}, {"y"});
  auto out = RunModel(m, {a});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Values<uint8_t>((*out)[0]), (std::vector<uint8_t>{1, 1, 0, 0}));
}

TEST(BinaryTest, WhereBroadcastsThreeWays) {
  // cond [2,1], x [1,3], y scalar -> [2,3].
  Model m(16);
  m.Input("c", DataType::kBool, {2, 1})
      .Input("x", DataType::kInt64, {1, 3})
      .Input("y", DataType::kInt64, {})
      .Output("out", DataType::kInt64);
  m.Node("Where", {"c", "x", "y"}, {"out"});
  auto out = RunModel(m, {Make<uint8_t>(DataType::kBool, {2, 1}, {1, 0}),
                          Make<int64_t>(DataType::kInt64, {1, 3}, {1, 2, 3}),
                          Make<int64_t>(DataType::kInt64, {}, {-1})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0].shape(), (Shape{2, 3}));
  EXPECT_EQ(Values<int64_t>((*out)[0]),
            (std::vector<int64_t>{1, 2, 3, -1, -1, -1}));
}

TEST(BinaryTest, VariadicMaxMinSumMeanBroadcast) {
  Tensor a = Make<float>(DataType::kFloat32, {2, 2}, {1, 8, 3, 4});
  Tensor b = Make<float>(DataType::kFloat32, {2}, {2, 5});
  Tensor c = Make<float>(DataType::kFloat32, {}, {3});
  auto run = [&](const std::string& op) {
    Model m(13);
    m.Input("a", DataType::kFloat32, {2, 2})
        .Input("b", DataType::kFloat32, {2})
        .Input("c", DataType::kFloat32, {})
        .Output("y", DataType::kFloat32);
    m.Node(op, {"a", "b", "c"}, {"y"});
    auto out = RunModel(m, {a, b, c});
    EXPECT_TRUE(out.ok()) << op << ": " << out.status();
    return out.ok() ? Values<float>((*out)[0]) : std::vector<float>();
  };
  std::vector<float> mx, mn, sum, mean;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      const float va = a.data<float>()[i * 2 + j], vb = b.data<float>()[j],
                  vc = 3;
      mx.push_back(std::max({va, vb, vc}));
      mn.push_back(std::min({va, vb, vc}));
      sum.push_back(va + vb + vc);
      mean.push_back((va + vb + vc) / 3);
    }
  }
  EXPECT_EQ(run("Max"), mx);
  EXPECT_EQ(run("Min"), mn);
  EXPECT_EQ(run("Sum"), sum);
  std::vector<float> got = run("Mean");
  ASSERT_EQ(got.size(), mean.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_FLOAT_EQ(got[i], mean[i]);
}

TEST(BinaryTest, ModFollowsDivisorOrDividendSign) {
  Tensor a = Make<int32_t>(DataType::kInt32, {4}, {7, -7, 7, -7});
  Tensor b = Make<int32_t>(DataType::kInt32, {4}, {3, 3, -3, -3});
  auto y = RunBinary("Mod", 13, a, b, DataType::kInt32);  // Python semantics
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int32_t>(*y), (std::vector<int32_t>{1, 2, -2, -1}));
  y = RunBinary("Mod", 13, a, b, DataType::kInt32, [](onnx::NodeProto* n) {
    AttrInt(n, "fmod", 1);
  });  // C semantics
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int32_t>(*y), (std::vector<int32_t>{1, -1, 1, -1}));
  y = RunBinary("Mod", 13, Make<float>(DataType::kFloat32, {2}, {5.5f, -5.5f}),
                Make<float>(DataType::kFloat32, {}, {2}), DataType::kFloat32,
                [](onnx::NodeProto* n) { AttrInt(n, "fmod", 1); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<float>(*y), (std::vector<float>{1.5f, -1.5f}));
}

TEST(BinaryTest, BitShiftUnsigned) {
  Tensor a = Make<uint8_t>(DataType::kUInt8, {3}, {1, 16, 255});
  Tensor b = Make<uint8_t>(DataType::kUInt8, {3}, {1, 2, 9});
  auto y =
      RunBinary("BitShift", 11, a, b, DataType::kUInt8,
                [](onnx::NodeProto* n) { AttrString(n, "direction", "LEFT"); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<uint8_t>(*y), (std::vector<uint8_t>{2, 64, 0}));
  y = RunBinary("BitShift", 11, a, b, DataType::kUInt8, [](onnx::NodeProto* n) {
    AttrString(n, "direction", "RIGHT");
  });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<uint8_t>(*y), (std::vector<uint8_t>{0, 4, 0}));
}

TEST(BinaryTest, PReluBroadcastsSlope) {
  auto y = RunBinary(
      "PRelu", 16, Make<float>(DataType::kFloat32, {2, 2}, {-1, 2, -3, 4}),
      Make<float>(DataType::kFloat32, {2}, {0.5f, 0.25f}), DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<float>(*y), (std::vector<float>{-0.5f, 2, -1.5f, 4}));
}

TEST(BinaryTest, ClipWithOptionalInputsAndLegacyAttributes) {
  // Opset 13: min omitted, max given, int8.
  Model m(13);
  m.Input("x", DataType::kInt8, {4})
      .Input("hi", DataType::kInt8, {})
      .Output("y", DataType::kInt8);
  m.Node("Clip", {"x", "", "hi"}, {"y"});
  auto out = RunModel(m, {Make<int8_t>(DataType::kInt8, {4}, {-128, 0, 5, 127}),
                          Make<int8_t>(DataType::kInt8, {}, {4})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Values<int8_t>((*out)[0]), (std::vector<int8_t>{-128, 0, 4, 4}));

  // Opset 6: bounds are attributes.
  Model old(6);
  old.Input("x", DataType::kFloat32, {3}).Output("y", DataType::kFloat32);
  onnx::NodeProto* n = old.Node("Clip", {"x"}, {"y"});
  AttrFloat(n, "min", -1.f);
  AttrFloat(n, "max", 1.f);
  out = RunModel(old, {Make<float>(DataType::kFloat32, {3}, {-5, 0.5f, 5})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Values<float>((*out)[0]), (std::vector<float>{-1, 0.5f, 1}));
}

// Random shape pairs (rank <= 4, random size-1 dims on either side) against a
// naive per-element broadcast: exercises the dim-collapsing plan and every
// stride pattern.
TEST(BinaryTest, RandomBroadcastsMatchNaiveIndexing) {
  std::mt19937 rng(1234);
  auto uniform = [&](int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  for (int iter = 0; iter < 300; ++iter) {
    const int rank = uniform(0, 4);
    Shape out(rank), sa, sb;
    for (int d = 0; d < rank; ++d) out[d] = uniform(1, 5);
    // Each side drops some leading dims and sets some dims to 1.
    const int ra = uniform(0, rank), rb = uniform(0, rank);
    for (int d = rank - ra; d < rank; ++d)
      sa.push_back(uniform(0, 2) == 0 ? 1 : out[d]);
    for (int d = rank - rb; d < rank; ++d)
      sb.push_back(uniform(0, 2) == 0 ? 1 : out[d]);
    Tensor a(DataType::kInt32, sa), b(DataType::kInt32, sb);
    for (int64_t i = 0; i < a.num_elements(); ++i)
      a.data<int32_t>()[i] = uniform(-99, 99);
    for (int64_t i = 0; i < b.num_elements(); ++i)
      b.data<int32_t>()[i] = uniform(-99, 99);
    auto y = RunBinary("Sub", 14, a, b, DataType::kInt32);
    ASSERT_TRUE(y.ok()) << y.status();
    // Expected output: rank max(ra, rb); per dim the larger of the left-padded
    // dims.
    const int r = std::max(ra, rb);
    Shape want_shape(r);
    for (int d = 0; d < r; ++d) {
      const int64_t da = d >= r - ra ? sa[d - (r - ra)] : 1;
      const int64_t db = d >= r - rb ? sb[d - (r - rb)] : 1;
      want_shape[d] = std::max(da, db);
    }
    ASSERT_EQ(y->shape(), want_shape);
    const int64_t n = NumElements(want_shape);
    bool same = true;
    for (int64_t flat = 0; flat < n; ++flat) {
      // Decompose flat into coordinates, then map into each input (size-1 dims
      // -> 0).
      std::vector<int64_t> idx(r);
      int64_t rem = flat;
      for (int d = r - 1; d >= 0; --d) {
        idx[d] = rem % want_shape[d];
        rem /= want_shape[d];
      }
      auto offset = [&](const Shape& s) {
        int64_t off = 0;
        const int pad = r - static_cast<int>(s.size());
        for (size_t d = 0; d < s.size(); ++d) {
          off = off * s[d] + (s[d] == 1 ? 0 : idx[pad + d]);
        }
        return off;
      };
      const int32_t want =
          a.data<int32_t>()[offset(sa)] - b.data<int32_t>()[offset(sb)];
      same = same && y->data<int32_t>()[flat] == want;
    }
    EXPECT_TRUE(same) << ShapeToString(sa) << " - " << ShapeToString(sb);
  }
}

TEST(BinaryTest, ErrorsNameTheProblem) {
  auto y = RunBinary(
      "Add", 14, Make<float>(DataType::kFloat32, {2, 3}, {1, 2, 3, 4, 5, 6}),
      Make<float>(DataType::kFloat32, {2}, {1, 2}), DataType::kFloat32);
  EXPECT_FALSE(y.ok());
  y = RunBinary("Mod", 13, Make<int32_t>(DataType::kInt32, {1}, {1}),
                Make<int32_t>(DataType::kInt32, {1}, {1}), DataType::kInt32,
                [](onnx::NodeProto* n) { AttrInt(n, "fmod", 2); });
  ASSERT_FALSE(y.ok());
  EXPECT_NE(y.status().message().find("fmod"), std::string::npos) << y.status();
}

TEST(BinaryTest, ConstantOperandsFoldAtCompileTime) {
  // Both operands are initializers: the node is folded, the output is a
  // constant.
  Model m(14);
  m.Initializer("a", Make<int64_t>(DataType::kInt64, {2}, {3, 4}))
      .Initializer("b", Make<int64_t>(DataType::kInt64, {}, {2}))
      .Input("x", DataType::kInt64, {2})
      .Output("y", DataType::kInt64);
  m.Node("Mul", {"a", "b"}, {"t"});
  m.Node("Add", {"t", "x"}, {"y"});
  auto out = RunModel(m, {Make<int64_t>(DataType::kInt64, {2}, {1, 1})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Values<int64_t>((*out)[0]), (std::vector<int64_t>{7, 9}));
}

}  // namespace
}  // namespace qs
