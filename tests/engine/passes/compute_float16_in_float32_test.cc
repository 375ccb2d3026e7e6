// FLOAT16 models compute in FP32 (ComputeFloat16InFloat32): a model whose weights,
// constants, casts and graph inputs/outputs are FLOAT16 must give exactly what the same
// model written in FP32 gives (its weights holding the same half-precision values),
// rounded to half at the output; and it keeps declaring FLOAT16 inputs and outputs.
#include <cmath>
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

Tensor Cast(const Tensor& t, DataType to) {
  auto c = CastTensor(t, to);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : Tensor();
}

// A TENSOR attribute `name` on `n` holding the rank-0 or rank-1 tensor `t`.
void SetTensorAttr(onnx::NodeProto* n, const std::string& name, const Tensor& t) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::TENSOR);
  *a->mutable_t() = TensorToProto(t, "");
}

// x -Conv(w, b)-> c -Clip(0, Constant 6)-> r -Cast-> r2 -Flatten-> f -MatMul(m)-> p
// y = p + ConstantOfShape(Shape(p), 0.5). All floating values are of type `type`; the
// weights hold the half-precision values of the Gaussians either way.
onnx::ModelProto HalfNet(DataType type) {
  const int32_t onnx_type =
      type == DataType::kFloat16 ? onnx::TensorProto::FLOAT16 : onnx::TensorProto::FLOAT;
  auto as = [&](const Tensor& t) { return Cast(Cast(t, DataType::kFloat16), type); };
  ModelBuilder b;
  b.Input("x", {-1, 4, 8, 8}, onnx_type);
  b.Output("y", onnx_type);
  b.Constant("w", as(Gaussian({8, 4, 3, 3}, 0.3f, 1)));
  b.Constant("b", as(Gaussian({8}, 0.1f, 2)));
  b.Constant("zero", as(Scalar(0.f)));
  b.Constant("m", as(Gaussian({512, 10}, 0.05f, 3)));
  auto* conv = b.Node("Conv", {"x", "w", "b"}, {"c"});
  auto* pads = conv->add_attribute();
  pads->set_name("pads");
  pads->set_type(onnx::AttributeProto::INTS);
  for (int i = 0; i < 4; ++i) pads->add_ints(1);
  SetTensorAttr(b.Node("Constant", {}, {"six"}), "value", as(Scalar(6.f)));
  b.Node("Clip", {"c", "zero", "six"}, {"r"});
  auto* cast = b.Node("Cast", {"r"}, {"r2"});
  auto* to = cast->add_attribute();
  to->set_name("to");
  to->set_type(onnx::AttributeProto::INT);
  to->set_i(onnx_type);
  b.Node("Flatten", {"r2"}, {"f"});
  b.Node("MatMul", {"f", "m"}, {"p"});
  b.Node("Shape", {"p"}, {"shape"});
  Tensor half(DataType::kFloat32, {1});
  half.data<float>()[0] = 0.5f;
  SetTensorAttr(b.Node("ConstantOfShape", {"shape"}, {"halves"}), "value", as(half));
  b.Node("Add", {"p", "halves"}, {"y"});
  return b.model();
}

TEST(ComputeFloat16InFloat32Test, HalfModelMatchesItsFp32TwinRoundedToHalf) {
  auto half = Session::Compile(HalfNet(DataType::kFloat16), CompileOptions());
  ASSERT_TRUE(half.ok()) << half.status();
  auto full = Session::Compile(HalfNet(DataType::kFloat32), CompileOptions());
  ASSERT_TRUE(full.ok()) << full.status();
  ASSERT_EQ((*half)->inputs().size(), 1u);
  EXPECT_EQ((*half)->inputs()[0].dtype, DataType::kFloat16);
  EXPECT_EQ((*half)->outputs()[0].dtype, DataType::kFloat16);
  for (int64_t batch : {1, 3}) {
    SCOPED_TRACE(batch);
    const Tensor x16 = Cast(Gaussian({batch, 4, 8, 8}, 1.f, 4), DataType::kFloat16);
    std::vector<Tensor> got, want;
    ASSERT_TRUE((*half)->Run((*half)->NewContext().get(), {x16}, &got).ok());
    ASSERT_TRUE(
        (*full)->Run((*full)->NewContext().get(), {Cast(x16, DataType::kFloat32)}, &want).ok());
    ASSERT_EQ(got[0].dtype(), DataType::kFloat16);
    ASSERT_EQ(got[0].shape(), (Shape{batch, 10}));
    const Tensor want16 = Cast(want[0], DataType::kFloat16);
    int nonzero = 0;
    for (int64_t i = 0; i < want16.num_elements(); ++i) {
      EXPECT_EQ(got[0].data<uint16_t>()[i], want16.data<uint16_t>()[i]) << "element " << i;
      nonzero += want[0].data<float>()[i] != 0.5f;
    }
    EXPECT_GT(nonzero, 0);  // the network computed something
  }
}

// A model without FLOAT16 is left as it was: same outputs, same declared types.
TEST(ComputeFloat16InFloat32Test, Fp32ModelIsUntouched) {
  onnx::ModelProto model = HalfNet(DataType::kFloat32);
  auto graph = ImportGraph(model);
  ASSERT_TRUE(graph.ok()) << graph.status();
  const size_t nodes = graph->nodes.size();
  ASSERT_TRUE(ComputeFloat16InFloat32(&*graph).ok());
  EXPECT_EQ(graph->nodes.size(), nodes);
  EXPECT_EQ(graph->inputs[0].dtype, DataType::kFloat32);
}

}  // namespace
}  // namespace qs
