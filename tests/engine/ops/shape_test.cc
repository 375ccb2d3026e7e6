// Shape, index and reduce kernels (engine/ops/shape.cc, index.cc, reduce.cc),
// run end to end through Session on small models, including the pre-opset-13
// attribute forms. Expected values are computed in the test with plain index
// loops.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
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

// 0, 1, 2, ... as float in `shape`.
Tensor Iota(Shape shape) {
  Tensor t(DataType::kFloat32, std::move(shape));
  std::iota(t.data<float>(), t.data<float>() + t.num_elements(), 0.f);
  return t;
}

Tensor I64(std::vector<int64_t> v) {
  return Make<int64_t>(DataType::kInt64, {static_cast<int64_t>(v.size())}, v);
}

template <typename T>
std::vector<T> Values(const Tensor& t) {
  return std::vector<T>(t.data<T>(), t.data<T>() + t.num_elements());
}

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
void AttrInts(onnx::NodeProto* n, const std::string& name,
              const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
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
void AttrTensor(onnx::NodeProto* n, const std::string& name, const Tensor& t) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::TENSOR);
  *a->mutable_t() = TensorToProto(t, "");
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

// A single node over a run-time input "x" and constant (initializer) extra
// inputs named c1, c2, ... (an empty Tensor leaves that optional input out).
absl::StatusOr<std::vector<Tensor>> RunNode(
    const std::string& op, int64_t opset, const Tensor& x,
    const std::vector<Tensor>& consts, const std::vector<DataType>& out_types,
    void (*attrs)(onnx::NodeProto*) = nullptr) {
  Model m(opset);
  m.Input("x", x.dtype(), x.shape());
  std::vector<std::string> inputs = {"x"};
  for (size_t i = 0; i < consts.size(); ++i) {
    if (!consts[i].defined()) {
      inputs.push_back("");
      continue;
    }
    const std::string name = "c" + std::to_string(i + 1);
    m.Initializer(name, consts[i]);
    inputs.push_back(name);
  }
  std::vector<std::string> outputs;
  for (size_t i = 0; i < out_types.size(); ++i) {
    outputs.push_back("y" + std::to_string(i));
    m.Output(outputs.back(), out_types[i]);
  }
  onnx::NodeProto* n = m.Node(op, inputs, outputs);
  if (attrs != nullptr) attrs(n);
  return RunModel(m, {x});
}

absl::StatusOr<Tensor> RunOne(const std::string& op, int64_t opset,
                              const Tensor& x,
                              const std::vector<Tensor>& consts,
                              DataType out_type,
                              void (*attrs)(onnx::NodeProto*) = nullptr) {
  auto out = RunNode(op, opset, x, consts, {out_type}, attrs);
  if (!out.ok()) return out.status();
  return (*out)[0];
}

// ---------------------------------------------------------------------------------------
// Views.

TEST(ShapeTest, ReshapeCopiesZeroAndInfersMinusOne) {
  Tensor x = Iota({2, 3, 4});
  auto y = RunOne("Reshape", 14, x, {I64({0, -1, 2})}, DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 6, 2}));
  EXPECT_EQ(Values<float>(*y), Values<float>(x));
  // allowzero=1: a 0 is a real zero-size dim.
  y = RunOne("Reshape", 14, Iota({0, 3}), {I64({3, 0})}, DataType::kFloat32,
             [](onnx::NodeProto* n) { AttrInt(n, "allowzero", 1); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{3, 0}));
  y = RunOne("Reshape", 14, x, {I64({5, -1})}, DataType::kFloat32);
  EXPECT_FALSE(y.ok());
}

TEST(ShapeTest, FlattenNegativeAxis) {
  auto y = RunOne("Flatten", 13, Iota({2, 3, 4}), {}, DataType::kFloat32,
                  [](onnx::NodeProto* n) { AttrInt(n, "axis", -1); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{6, 4}));
}

TEST(ShapeTest, SqueezeUnsqueezeAttributeAndInputForms) {
  auto y = RunOne("Squeeze", 11, Iota({1, 3, 1}), {}, DataType::kFloat32,
                  [](onnx::NodeProto* n) { AttrInts(n, "axes", {-1}); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{1, 3}));
  y = RunOne("Squeeze", 13, Iota({1, 3, 1}), {}, DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{3}));
  y = RunOne("Squeeze", 13, Iota({1, 3, 1}), {I64({1})}, DataType::kFloat32);
  EXPECT_FALSE(y.ok());  // dim 1 is 3

  y = RunOne("Unsqueeze", 11, Iota({3, 4}), {}, DataType::kFloat32,
             [](onnx::NodeProto* n) {
               AttrInts(n, "axes", {0, 3});
             });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{1, 3, 4, 1}));
  y = RunOne("Unsqueeze", 13, Iota({3, 4}), {I64({-1, 1})}, DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{3, 1, 4, 1}));
}

TEST(ShapeTest, DropoutIsIdentityWithAllTrueMask) {
  auto out = RunNode("Dropout", 13, Iota({2, 2}), {},
                     {DataType::kFloat32, DataType::kBool});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Values<float>((*out)[0]), (std::vector<float>{0, 1, 2, 3}));
  EXPECT_EQ(Values<uint8_t>((*out)[1]), (std::vector<uint8_t>{1, 1, 1, 1}));
  // Opset 7: the mask has the data's type.
  out = RunNode("Dropout", 7, Iota({2}), {},
                {DataType::kFloat32, DataType::kFloat32});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[1].dtype(), DataType::kFloat32);
  EXPECT_EQ(Values<float>((*out)[1]), (std::vector<float>{1, 1}));
  // Training mode with a non-zero ratio would be random: rejected.
  out = RunNode("Dropout", 13, Iota({2}),
                {Make<float>(DataType::kFloat32, {}, {0.5f}),
                 Make<uint8_t>(DataType::kBool, {}, {1})},
                {DataType::kFloat32});
  EXPECT_FALSE(out.ok());
}

// ---------------------------------------------------------------------------------------
// Copies.

TEST(ShapeTest, TransposeMatchesIndexLoops) {
  const Shape in = {2, 3, 4};
  Tensor x = Iota(in);
  auto y = RunOne("Transpose", 13, x, {}, DataType::kFloat32,
                  [](onnx::NodeProto* n) {
                    AttrInts(n, "perm", {2, 0, 1});
                  });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{4, 2, 3}));
  std::vector<float> want;
  for (int k = 0; k < 4; ++k)
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 3; ++j)
        want.push_back(static_cast<float>((i * 3 + j) * 4 + k));
  EXPECT_EQ(Values<float>(*y), want);
  // Default perm reverses the dims.
  y = RunOne("Transpose", 13, Iota({2, 3}), {}, DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<float>(*y), (std::vector<float>{0, 3, 1, 4, 2, 5}));
}

// Every permutation of a 4-D tensor whose dims are large enough for the tiled
// path.
TEST(ShapeTest, TransposeAllPermutationsMatchIndexLoops) {
  const Shape in = {3, 9, 10, 11};
  Tensor x = Iota(in);
  std::vector<int64_t> perm = {0, 1, 2, 3};
  do {
    Model m(13);
    m.Input("x", DataType::kFloat32, in).Output("y", DataType::kFloat32);
    AttrInts(m.Node("Transpose", {"x"}, {"y"}), "perm", perm);
    auto out = RunModel(m, {x});
    ASSERT_TRUE(out.ok()) << out.status();
    const Tensor& y = (*out)[0];
    const int64_t in_strides[] = {990, 110, 11, 1};
    Shape out_shape;
    for (int64_t p : perm) out_shape.push_back(in[p]);
    ASSERT_EQ(y.shape(), out_shape);
    int64_t o = 0;
    bool same = true;
    for (int64_t a = 0; a < out_shape[0]; ++a)
      for (int64_t b = 0; b < out_shape[1]; ++b)
        for (int64_t c = 0; c < out_shape[2]; ++c)
          for (int64_t d = 0; d < out_shape[3]; ++d, ++o) {
            const int64_t src =
                a * in_strides[perm[0]] + b * in_strides[perm[1]] +
                c * in_strides[perm[2]] + d * in_strides[perm[3]];
            same = same && y.data<float>()[o] == static_cast<float>(src);
          }
    EXPECT_TRUE(same) << "perm " << ShapeToString(perm);
  } while (std::next_permutation(perm.begin(), perm.end()));
}

TEST(ShapeTest, ConcatAndSplit) {
  Model m(13);
  m.Input("a", DataType::kInt64, {2, 1}).Input("b", DataType::kInt64, {2, 2});
  m.Output("y", DataType::kInt64);
  AttrInt(m.Node("Concat", {"a", "b"}, {"y"}), "axis", -1);
  auto out =
      RunModel(m, {Make<int64_t>(DataType::kInt64, {2, 1}, {1, 2}),
                   Make<int64_t>(DataType::kInt64, {2, 2}, {3, 4, 5, 6})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0].shape(), (Shape{2, 3}));
  EXPECT_EQ(Values<int64_t>((*out)[0]),
            (std::vector<int64_t>{1, 3, 4, 2, 5, 6}));

  // Opset 13: split sizes as an input.
  auto parts = RunNode("Split", 13, Iota({2, 5}), {I64({2, 3})},
                       {DataType::kFloat32, DataType::kFloat32},
                       [](onnx::NodeProto* n) { AttrInt(n, "axis", 1); });
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ(Values<float>((*parts)[0]), (std::vector<float>{0, 1, 5, 6}));
  EXPECT_EQ(Values<float>((*parts)[1]), (std::vector<float>{2, 3, 4, 7, 8, 9}));
  // Opset 11: split attribute; equal parts when absent.
  parts =
      RunNode("Split", 11, Iota({6}), {},
              {DataType::kFloat32, DataType::kFloat32}, [](onnx::NodeProto* n) {
                AttrInts(n, "split", {1, 5});
              });
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ((*parts)[1].shape(), (Shape{5}));
  parts = RunNode("Split", 13, Iota({6}), {},
                  {DataType::kFloat32, DataType::kFloat32, DataType::kFloat32});
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ(Values<float>((*parts)[2]), (std::vector<float>{4, 5}));
}

TEST(ShapeTest, SliceNegativeStepsAndClamping) {
  const Shape in = {3, 5};
  Tensor x = Iota(in);
  // Rows reversed from the last, every other column counting down from 100
  // (clamped).
  auto y =
      RunOne("Slice", 13, x,
             {I64({-1, 100}), I64({INT64_MIN, 0}), I64({0, 1}), I64({-1, -2})},
             DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{3, 2}));
  std::vector<float> want;
  for (int i = 2; i >= 0; --i)
    for (int j = 4; j > 0; j -= 2)
      want.push_back(static_cast<float>(i * 5 + j));
  EXPECT_EQ(Values<float>(*y), want);
  // axes omitted, steps omitted, negative start.
  y = RunOne("Slice", 13, x, {I64({1, -3}), I64({3, 5})}, DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<float>(*y), (std::vector<float>{7, 8, 9, 12, 13, 14}));
  // Opset 9: attributes.
  y = RunOne("Slice", 9, x, {}, DataType::kFloat32, [](onnx::NodeProto* n) {
    AttrInts(n, "starts", {1});
    AttrInts(n, "ends", {2});
    AttrInts(n, "axes", {1});
  });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<float>(*y), (std::vector<float>{1, 6, 11}));
}

TEST(ShapeTest, ExpandAndTile) {
  auto y =
      RunOne("Expand", 13, Iota({3, 1}), {I64({2, 1, 2})}, DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(Values<float>(*y),
            (std::vector<float>{0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2}));
  y = RunOne("Tile", 13, Iota({2, 2}), {I64({2, 3})}, DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{4, 6}));
  std::vector<float> want;
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 6; ++j)
      want.push_back(static_cast<float>((i % 2) * 2 + j % 2));
  EXPECT_EQ(Values<float>(*y), want);
}

TEST(ShapeTest, PadModes) {
  Tensor x = Iota({2, 3});  // [[0,1,2],[3,4,5]]
  auto y =
      RunOne("Pad", 13, x,
             {I64({0, 2, 1, -1}), Make<float>(DataType::kFloat32, {}, {9})},
             DataType::kFloat32);  // constant; the end of dim 1 is cropped
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{3, 4}));
  EXPECT_EQ(Values<float>(*y),
            (std::vector<float>{9, 9, 0, 1, 9, 9, 3, 4, 9, 9, 9, 9}));
  y = RunOne("Pad", 13, x, {I64({0, 2, 0, 2})}, DataType::kFloat32,
             [](onnx::NodeProto* n) { AttrString(n, "mode", "reflect"); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<float>(*y),
            (std::vector<float>{2, 1, 0, 1, 2, 1, 0, 5, 4, 3, 4, 5, 4, 3}));
  y = RunOne("Pad", 13, x, {I64({1, 1, 0, 0})}, DataType::kFloat32,
             [](onnx::NodeProto* n) { AttrString(n, "mode", "edge"); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<float>(*y),
            (std::vector<float>{0, 0, 1, 2, 0, 0, 1, 2, 3, 3, 4, 5}));
  // Opset 2: pads and value are attributes.
  y = RunOne("Pad", 2, Iota({2}), {}, DataType::kFloat32,
             [](onnx::NodeProto* n) {
               AttrInts(n, "pads", {1, 0});
               AttrFloat(n, "value", -1.f);
             });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<float>(*y), (std::vector<float>{-1, 0, 1}));
  y = RunOne("Pad", 13, x, {I64({0, 0, 0, 0})}, DataType::kFloat32,
             [](onnx::NodeProto* n) { AttrString(n, "mode", "wrap"); });
  ASSERT_FALSE(y.ok());
  EXPECT_NE(y.status().message().find("wrap"), std::string::npos) << y.status();
}

TEST(ShapeTest, DepthToSpaceAndBack) {
  Tensor x = Iota({1, 8, 2, 3});
  auto y = RunOne("DepthToSpace", 13, x, {}, DataType::kFloat32,
                  [](onnx::NodeProto* n) {
                    AttrInt(n, "blocksize", 2);
                    AttrString(n, "mode", "CRD");
                  });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{1, 2, 4, 6}));
  // CRD: out[c, h*b+i, w*b+j] = in[c*b*b + i*b + j, h, w].
  std::vector<float> want;
  for (int c = 0; c < 2; ++c)
    for (int oh = 0; oh < 4; ++oh)
      for (int ow = 0; ow < 6; ++ow) {
        const int ic = c * 4 + (oh % 2) * 2 + ow % 2;
        want.push_back(static_cast<float>((ic * 2 + oh / 2) * 3 + ow / 2));
      }
  EXPECT_EQ(Values<float>(*y), want);
  // SpaceToDepth inverts DCR DepthToSpace.
  Model m(13);
  m.Input("x", DataType::kFloat32, {1, 8, 2, 3})
      .Output("y", DataType::kFloat32);
  AttrInt(m.Node("DepthToSpace", {"x"}, {"t"}), "blocksize", 2);
  AttrInt(m.Node("SpaceToDepth", {"t"}, {"y"}), "blocksize", 2);
  auto out = RunModel(m, {x});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Values<float>((*out)[0]), Values<float>(x));
}

// ---------------------------------------------------------------------------------------
// Shape queries, constants and casts.

TEST(ShapeTest, ShapeWithStartEndAndSize) {
  auto y = RunOne("Shape", 15, Iota({2, 3, 4, 5}), {}, DataType::kInt64,
                  [](onnx::NodeProto* n) {
                    AttrInt(n, "start", 1);
                    AttrInt(n, "end", -1);
                  });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{3, 4}));
  y = RunOne("Size", 13, Iota({2, 3, 4, 5}), {}, DataType::kInt64);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->rank(), 0);
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{120}));
}

TEST(ShapeTest, ConstantsAndConstantOfShape) {
  Model m(13);
  m.Input("x", DataType::kInt64, {3}).Output("y", DataType::kInt64);
  AttrInts(m.Node("Constant", {}, {"c"}), "value_ints", {10, 20, 30});
  m.Node("Add", {"x", "c"}, {"y"});
  auto out = RunModel(m, {I64({1, 2, 3})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Values<int64_t>((*out)[0]), (std::vector<int64_t>{11, 22, 33}));

  auto y = RunOne("ConstantOfShape", 9, I64({2, 2}), {}, DataType::kInt32,
                  [](onnx::NodeProto* n) {
                    AttrTensor(n, "value",
                               Make<int32_t>(DataType::kInt32, {1}, {7}));
                  });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 2}));
  EXPECT_EQ(Values<int32_t>(*y), (std::vector<int32_t>{7, 7, 7, 7}));
}

TEST(ShapeTest, CastNumericTypesAndRejectString) {
  auto y = RunOne(
      "Cast", 13, Make<float>(DataType::kFloat32, {3}, {1.5f, -2.5f, 3}), {},
      DataType::kInt32, [](onnx::NodeProto* n) { AttrInt(n, "to", 6); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int32_t>(*y), (std::vector<int32_t>{1, -2, 3}));
  y = RunOne("Cast", 13, I64({1, 2048}), {}, DataType::kFloat16,
             [](onnx::NodeProto* n) { AttrInt(n, "to", 10); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(HalfToFloat(y->data<uint16_t>()[1]), 2048.f);
  y = RunOne("Cast", 13, I64({1}), {}, DataType::kString,
             [](onnx::NodeProto* n) { AttrInt(n, "to", 8); });
  ASSERT_FALSE(y.ok());
  EXPECT_NE(y.status().message().find("to=8"), std::string::npos) << y.status();
}

TEST(ShapeTest, RangeCountsTowardLimit) {
  Model m(11);
  m.Input("s", DataType::kInt32, {}).Output("y", DataType::kInt32);
  m.Initializer("l", Make<int32_t>(DataType::kInt32, {}, {-6}));
  m.Initializer("d", Make<int32_t>(DataType::kInt32, {}, {-3}));
  m.Node("Range", {"s", "l", "d"}, {"y"});
  auto out = RunModel(m, {Make<int32_t>(DataType::kInt32, {}, {4})});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Values<int32_t>((*out)[0]), (std::vector<int32_t>{4, 1, -2, -5}));
}

// A shape subgraph over a constant is folded at compile time by running these
// kernels on int64 tensors: Reshape(x, Concat(Slice(Shape(w)), [-1])).
TEST(ShapeTest, ConstantShapeSubgraphFolds) {
  Model m(13);
  m.Input("x", DataType::kFloat32, {24}).Output("y", DataType::kFloat32);
  m.Initializer("w", Iota({2, 3, 4}));
  m.Initializer("zero", I64({0}));
  m.Initializer("one", I64({1}));
  m.Initializer("minus1", I64({-1}));
  m.Node("Shape", {"w"}, {"s"});
  m.Node("Slice", {"s", "zero", "one"}, {"s0"});
  AttrInt(m.Node("Concat", {"s0", "minus1"}, {"target"}), "axis", 0);
  m.Node("Reshape", {"x", "target"}, {"y"});
  auto session = Session::Compile(m.proto(), CompileOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  EXPECT_EQ((*session)->stats().num_nodes, 1);  // only the Reshape remains
  auto ctx = (*session)->NewContext();
  std::vector<Tensor> out;
  ASSERT_TRUE((*session)->Run(ctx.get(), {Iota({24})}, &out).ok());
  EXPECT_EQ(out[0].shape(), (Shape{2, 12}));
}

// ---------------------------------------------------------------------------------------
// Index ops.

TEST(IndexTest, GatherAxis1WithNegativeIndices) {
  Tensor x = Iota({2, 4});
  auto y = RunOne(
      "Gather", 13, x, {Make<int64_t>(DataType::kInt64, {2, 2}, {0, -1, 2, 2})},
      DataType::kFloat32, [](onnx::NodeProto* n) { AttrInt(n, "axis", 1); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 2, 2}));
  std::vector<float> want;
  const int idx[] = {0, 3, 2, 2};
  for (int i = 0; i < 2; ++i)
    for (int j : idx) want.push_back(static_cast<float>(i * 4 + j));
  EXPECT_EQ(Values<float>(*y), want);
  y = RunOne("Gather", 13, x, {I64({4})}, DataType::kFloat32,
             [](onnx::NodeProto* n) { AttrInt(n, "axis", 1); });
  EXPECT_FALSE(y.ok());  // out of range
}

TEST(IndexTest, GatherElements) {
  auto y = RunOne("GatherElements", 13, Iota({2, 3}),
                  {Make<int64_t>(DataType::kInt64, {2, 2}, {2, 0, -1, 1})},
                  DataType::kFloat32,
                  [](onnx::NodeProto* n) { AttrInt(n, "axis", 1); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<float>(*y), (std::vector<float>{2, 0, 5, 4}));
}

TEST(IndexTest, ArgMaxKeepdimsAndLastIndex) {
  Tensor x = Make<float>(DataType::kFloat32, {2, 3}, {1, 7, 7, 9, 2, 9});
  auto y = RunOne("ArgMax", 13, x, {}, DataType::kInt64,
                  [](onnx::NodeProto* n) { AttrInt(n, "axis", 1); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 1}));
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{1, 0}));
  y = RunOne("ArgMax", 13, x, {}, DataType::kInt64, [](onnx::NodeProto* n) {
    AttrInt(n, "axis", -1);
    AttrInt(n, "keepdims", 0);
    AttrInt(n, "select_last_index", 1);
  });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2}));
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{2, 2}));
  y = RunOne("ArgMin", 13, x, {}, DataType::kInt64,
             [](onnx::NodeProto* n) { AttrInt(n, "keepdims", 0); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{0, 1, 0}));
}

TEST(IndexTest, TopKNonZeroOneHot) {
  auto out =
      RunNode("TopK", 11, Make<float>(DataType::kFloat32, {5}, {3, 1, 4, 1, 5}),
              {I64({3})}, {DataType::kFloat32, DataType::kInt64},
              [](onnx::NodeProto* n) { AttrInt(n, "largest", 0); });
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(Values<float>((*out)[0]), (std::vector<float>{1, 1, 3}));
  EXPECT_EQ(Values<int64_t>((*out)[1]), (std::vector<int64_t>{1, 3, 0}));

  auto y = RunOne("NonZero", 13,
                  Make<int32_t>(DataType::kInt32, {2, 2}, {0, 5, 6, 0}), {},
                  DataType::kInt64);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 2}));
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{0, 1, 1, 0}));

  y = RunOne("OneHot", 11, I64({1, -1}),
             {Make<int64_t>(DataType::kInt64, {}, {3}),
              Make<float>(DataType::kFloat32, {2}, {0, 5})},
             DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 3}));
  EXPECT_EQ(Values<float>(*y), (std::vector<float>{0, 5, 0, 0, 0, 5}));
}

// ---------------------------------------------------------------------------------------
// Reductions.

TEST(ReduceTest, ReduceMeanNoKeepdims) {
  const Shape in = {2, 3, 4};
  Tensor x = Iota(in);
  auto y = RunOne("ReduceMean", 13, x, {}, DataType::kFloat32,
                  [](onnx::NodeProto* n) {
                    AttrInts(n, "axes", {1});
                    AttrInt(n, "keepdims", 0);
                  });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 4}));
  std::vector<float> want;
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 4; ++k) {
      float s = 0;
      for (int j = 0; j < 3; ++j) s += static_cast<float>((i * 3 + j) * 4 + k);
      want.push_back(s / 3);
    }
  EXPECT_EQ(Values<float>(*y), want);
}

TEST(ReduceTest, NonAdjacentAxesAndEveryKind) {
  const Shape in = {2, 3, 2};
  Tensor x = Make<float>(DataType::kFloat32, in,
                         {1, -2, 3, 0.5f, 2, -1, 4, 1, -3, 2, 0.25f, 5});
  auto at = [&](int i, int j, int k) {
    return x.data<float>()[(i * 3 + j) * 2 + k];
  };
  struct Case {
    const char* op;
    double (*init)();
    double (*step)(double, double);
    double (*fin)(double, int);
  } cases[] = {
      {"ReduceSum", [] { return 0.0; },
       [](double a, double v) { return a + v; },
       [](double a, int) { return a; }},
      {"ReduceMean", [] { return 0.0; },
       [](double a, double v) { return a + v; },
       [](double a, int n) { return a / n; }},
      {"ReduceMax", [] { return -1e30; },
       [](double a, double v) { return std::max(a, v); },
       [](double a, int) { return a; }},
      {"ReduceMin", [] { return 1e30; },
       [](double a, double v) { return std::min(a, v); },
       [](double a, int) { return a; }},
      {"ReduceProd", [] { return 1.0; },
       [](double a, double v) { return a * v; },
       [](double a, int) { return a; }},
      {"ReduceSumSquare", [] { return 0.0; },
       [](double a, double v) { return a + v * v; },
       [](double a, int) { return a; }},
      {"ReduceL2", [] { return 0.0; },
       [](double a, double v) { return a + v * v; },
       [](double a, int) { return std::sqrt(a); }},
      {"ReduceLogSumExp", [] { return 0.0; },
       [](double a, double v) { return a + std::exp(v); },
       [](double a, int) { return std::log(a); }},
  };
  for (const Case& c : cases) {
    // Axes {0, 2} with keepdims: [2,3,2] -> [1,3,1].
    auto y =
        RunOne(c.op, 11, x, {}, DataType::kFloat32, [](onnx::NodeProto* n) {
          AttrInts(n, "axes", {0, -1});
        });
    ASSERT_TRUE(y.ok()) << c.op << ": " << y.status();
    EXPECT_EQ(y->shape(), (Shape{1, 3, 1})) << c.op;
    for (int j = 0; j < 3; ++j) {
      double acc = c.init();
      for (int i = 0; i < 2; ++i)
        for (int k = 0; k < 2; ++k) acc = c.step(acc, at(i, j, k));
      EXPECT_NEAR(y->data<float>()[j], c.fin(acc, 4), 1e-4)
          << c.op << " j=" << j;
    }
  }
}

// Random shapes and axis subsets (adjacent or not, keepdims or not) against a
// naive reduction over every input element: exercises the grouped multi-pass
// plan.
TEST(ReduceTest, RandomAxesMatchNaiveReduction) {
  std::mt19937 rng(99);
  auto uniform = [&](int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  for (int iter = 0; iter < 200; ++iter) {
    const int rank = uniform(1, 4);
    Shape in(rank);
    for (int d = 0; d < rank; ++d) in[d] = uniform(1, 5);
    std::vector<int64_t> axes;
    for (int d = 0; d < rank; ++d) {
      if (uniform(0, 1)) axes.push_back(uniform(0, 1) ? d : d - rank);
    }
    if (axes.empty()) axes.push_back(0);
    const bool keepdims = uniform(0, 1) == 1;
    Tensor x(DataType::kFloat32, in);
    for (int64_t i = 0; i < x.num_elements(); ++i) {
      x.data<float>()[i] = static_cast<float>(uniform(-8, 8)) / 4;
    }
    std::vector<bool> reduced(rank, false);
    for (int64_t a : axes) reduced[a < 0 ? a + rank : a] = true;
    Shape out_shape, kept_shape;
    for (int d = 0; d < rank; ++d) {
      if (!reduced[d]) kept_shape.push_back(in[d]);
      if (!reduced[d] || keepdims) out_shape.push_back(reduced[d] ? 1 : in[d]);
    }
    // Naive: accumulate each input element into its kept-coordinate slot.
    const int64_t m = NumElements(kept_shape);
    std::vector<double> sum(m, 0), mx(m, -1e30);
    std::vector<int64_t> idx(rank, 0);
    for (int64_t flat = 0; flat < x.num_elements(); ++flat) {
      int64_t rem = flat;
      for (int d = rank - 1; d >= 0; --d) {
        idx[d] = rem % in[d];
        rem /= in[d];
      }
      int64_t o = 0;
      for (int d = 0; d < rank; ++d) {
        if (!reduced[d]) o = o * in[d] + idx[d];
      }
      const double v = x.data<float>()[flat];
      sum[o] += v;
      mx[o] = std::max(mx[o], v);
    }
    // RunOne takes a plain function pointer, so the attributes go through
    // statics.
    static std::vector<int64_t> axes_attr;
    static int64_t keepdims_attr;
    axes_attr = axes;
    keepdims_attr = keepdims;
    auto attrs = [](onnx::NodeProto* n) {
      AttrInts(n, "axes", axes_attr);
      AttrInt(n, "keepdims", keepdims_attr);
    };
    const std::string where = "shape " + ShapeToString(in) + " axes " +
                              ShapeToString(axes) + " keepdims " +
                              std::to_string(keepdims);
    auto ysum = RunOne("ReduceSum", 11, x, {}, DataType::kFloat32, attrs);
    auto ymax = RunOne("ReduceMax", 11, x, {}, DataType::kFloat32, attrs);
    ASSERT_TRUE(ysum.ok() && ymax.ok()) << where;
    ASSERT_EQ(ysum->shape(), out_shape) << where;
    ASSERT_EQ(ymax->shape(), out_shape) << where;
    for (int64_t i = 0; i < m; ++i) {
      // Quarters sum exactly in float, so the order of accumulation does not
      // matter.
      EXPECT_EQ(ysum->data<float>()[i], static_cast<float>(sum[i])) << where;
      EXPECT_EQ(ymax->data<float>()[i], static_cast<float>(mx[i])) << where;
    }
  }
}

TEST(ReduceTest, ReduceSumAxesInputAndNoop) {
  Tensor x = Make<int64_t>(DataType::kInt64, {2, 3}, {1, 2, 3, 4, 5, 6});
  auto y = RunOne("ReduceSum", 13, x, {I64({-1})}, DataType::kInt64,
                  [](onnx::NodeProto* n) { AttrInt(n, "keepdims", 0); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{6, 15}));
  // No axes: reduce everything, or nothing with noop_with_empty_axes.
  y = RunOne("ReduceSum", 13, x, {}, DataType::kInt64);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{1, 1}));
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{21}));
  y = RunOne("ReduceSum", 13, x, {}, DataType::kInt64,
             [](onnx::NodeProto* n) { AttrInt(n, "noop_with_empty_axes", 1); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int64_t>(*y), Values<int64_t>(x));
  // Opset 11: axes attribute.
  y = RunOne("ReduceSum", 11, x, {}, DataType::kInt64,
             [](onnx::NodeProto* n) { AttrInts(n, "axes", {0}); });
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(Values<int64_t>(*y), (std::vector<int64_t>{5, 7, 9}));
}

TEST(ReduceTest, LongContiguousSumIsAccurate) {
  // 1000 contiguous elements per row (the inner==1 path with partial
  // accumulators).
  Tensor x(DataType::kFloat32, {2, 1000});
  for (int i = 0; i < 2000; ++i)
    x.data<float>()[i] = static_cast<float>(i % 7) - 3.f;
  auto y = RunOne("ReduceSum", 13, x, {I64({1})}, DataType::kFloat32);
  ASSERT_TRUE(y.ok()) << y.status();
  for (int r = 0; r < 2; ++r) {
    double want = 0;
    for (int i = 0; i < 1000; ++i) want += (r * 1000 + i) % 7 - 3;
    EXPECT_FLOAT_EQ(y->data<float>()[r], static_cast<float>(want));
  }
}

}  // namespace
}  // namespace qs
