// Builds small ONNX models in C++ for the op tests (graph inputs, -1 = a symbolic
// dimension; outputs, initializers and nodes) and runs them.
#ifndef QUANTSERVE_TESTS_ENGINE_OPS_MODEL_BUILDER_H_
#define QUANTSERVE_TESTS_ENGINE_OPS_MODEL_BUILDER_H_

#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/graph.h"
#include "engine/session.h"
#include "engine/tensor.h"
#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"

namespace qs {

class ModelBuilder {
 public:
  explicit ModelBuilder(int64_t opset = 13) {
    model_.set_ir_version(8);
    auto* op = model_.add_opset_import();
    op->set_domain("");
    op->set_version(opset);
  }
  void Input(const std::string& name, const Shape& shape,
             int32_t type = onnx::TensorProto::FLOAT) {
    auto* vi = model_.mutable_graph()->add_input();
    vi->set_name(name);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(type);
    for (int64_t d : shape) {  // -1: a symbolic (run-time) dimension
      auto* dim = tt->mutable_shape()->add_dim();
      if (d < 0) {
        dim->set_dim_param("dyn");
      } else {
        dim->set_dim_value(d);
      }
    }
  }
  void Output(const std::string& name, int32_t type = onnx::TensorProto::FLOAT) {
    auto* vi = model_.mutable_graph()->add_output();
    vi->set_name(name);
    vi->mutable_type()->mutable_tensor_type()->set_elem_type(type);
  }
  void Constant(const std::string& name, const Tensor& t) {
    *model_.mutable_graph()->add_initializer() = TensorToProto(t, name);
  }
  onnx::NodeProto* Node(const std::string& op, std::vector<std::string> inputs,
                        std::vector<std::string> outputs) {
    auto* n = model_.mutable_graph()->add_node();
    n->set_op_type(op);
    n->set_name(op + "_" + std::to_string(model_.graph().node_size()));
    for (auto& i : inputs) n->add_input(i);
    for (auto& o : outputs) n->add_output(o);
    return n;
  }
  const onnx::ModelProto& model() const { return model_; }

 private:
  onnx::ModelProto model_;
};

// An FP32 tensor of N(0, stddev^2) samples, reproducible from `seed`.
inline Tensor Gaussian(const Shape& shape, float stddev, int seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.f, stddev);
  Tensor t(DataType::kFloat32, shape);
  for (int64_t i = 0; i < t.num_elements(); ++i) t.data<float>()[i] = g(rng);
  return t;
}

// A rank-0 FP32 constant.
inline Tensor Scalar(float v) {
  Tensor t(DataType::kFloat32, {});
  t.data<float>()[0] = v;
  return t;
}

// Compiles `model` (FP32) and runs it once on a fresh context.
inline absl::StatusOr<std::vector<Tensor>> TryRun(const onnx::ModelProto& model,
                                                  const std::vector<Tensor>& inputs) {
  auto session = Session::Compile(model, CompileOptions());
  if (!session.ok()) return session.status();
  auto ctx = (*session)->NewContext();
  std::vector<Tensor> out;
  absl::Status st = (*session)->Run(ctx.get(), inputs, &out);
  if (!st.ok()) return st;
  return out;
}

// TryRun that fails the current test on an error.
inline std::vector<Tensor> RunModel(const onnx::ModelProto& model,
                                    const std::vector<Tensor>& inputs) {
  auto out = TryRun(model, inputs);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : std::vector<Tensor>();
}

// RunModel that also reports the plan's kernel count (after the fusion passes).
inline std::vector<Tensor> RunCountingNodes(const onnx::ModelProto& model,
                                            const std::vector<Tensor>& inputs,
                                            int64_t* num_nodes) {
  auto session = Session::Compile(model, CompileOptions());
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return {};
  *num_nodes = (*session)->stats().num_nodes;
  auto ctx = (*session)->NewContext();
  std::vector<Tensor> out;
  absl::Status st = (*session)->Run(ctx.get(), inputs, &out);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// Node attributes.
inline void SetInt(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

inline void SetInts(onnx::NodeProto* n, const std::string& name, std::vector<int64_t> v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}

inline void SetString(onnx::NodeProto* n, const std::string& name, const std::string& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::STRING);
  a->set_s(v);
}

}  // namespace qs

#endif  // QUANTSERVE_TESTS_ENGINE_OPS_MODEL_BUILDER_H_
