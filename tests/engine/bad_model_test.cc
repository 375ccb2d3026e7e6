// Bad models: each must be rejected by LoadOnnxModel / ParseOnnxModel / Session::Compile
// (or, for a wrongly shaped request, Session::Run) with a clear absl error whose code is
// the documented one and whose message names the problem; none may crash.
//
// Models are built here as onnx::ModelProto. Where the ONNX checker (run by
// ParseOnnxModel) rejects a model first, the test asserts that message and then also
// hands the unchecked proto straight to Session::Compile: Compile is a public API and
// must give its own precise error rather than crash on a proto that skipped the checker.
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/onnx_import.h"
#include "engine/session.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"

namespace qs {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// ---- model building ----------------------------------------------------------------

onnx::ValueInfoProto* AddValue(google::protobuf::RepeatedPtrField<onnx::ValueInfoProto>* vs,
                               const std::string& name,
                               const std::vector<int64_t>& shape) {
  auto* vi = vs->Add();
  vi->set_name(name);
  auto* tt = vi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t d : shape) {  // -1: the symbolic dimension "batch"
    auto* dim = tt->mutable_shape()->add_dim();
    if (d < 0) {
      dim->set_dim_param("batch");
    } else {
      dim->set_dim_value(d);
    }
  }
  return vi;
}

onnx::NodeProto* AddNode(onnx::GraphProto* g, const std::string& name,
                         const std::string& op, const std::vector<std::string>& inputs,
                         const std::vector<std::string>& outputs) {
  auto* n = g->add_node();
  n->set_name(name);
  n->set_op_type(op);
  for (const auto& i : inputs) n->add_input(i);
  for (const auto& o : outputs) n->add_output(o);
  return n;
}

onnx::TensorProto FloatInitializer(const std::string& name,
                                   const std::vector<int64_t>& dims,
                                   const std::vector<float>& values) {
  onnx::TensorProto t;
  t.set_name(name);
  t.set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) t.add_dims(d);
  t.set_raw_data(std::string(reinterpret_cast<const char*>(values.data()),
                             values.size() * sizeof(float)));
  return t;
}

// A model with an empty graph "g", IR 8, default-domain opset 13.
onnx::ModelProto EmptyModel() {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.set_producer_name("quantserve/tests/engine/bad_model_test.cc");
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(13);
  m.mutable_graph()->set_name("g");
  return m;
}

// y = Relu(MatMul(x, W) + b), x FP32 [batch, 4], y FP32 [batch, 3]; a W of 4x3 and a
// padding initializer big enough that the graph dominates the serialized bytes.
onnx::ModelProto TinyModel() {
  onnx::ModelProto m = EmptyModel();
  auto* g = m.mutable_graph();
  AddValue(g->mutable_input(), "x", {-1, 4});
  AddValue(g->mutable_output(), "y", {-1, 3});
  *g->add_initializer() =
      FloatInitializer("W", {4, 3}, {1, 0, -1, 0.5f, 1, 0, 0, -0.5f, 1, -1, 0.25f, 2});
  *g->add_initializer() = FloatInitializer("b", {3}, {0.5f, -1, 0.25f});
  AddNode(g, "matmul", "MatMul", {"x", "W"}, {"xw"});
  AddNode(g, "add", "Add", {"xw", "b"}, {"xwb"});
  AddNode(g, "relu", "Relu", {"xwb"}, {"y"});
  return m;
}

std::string Serialize(const onnx::ModelProto& m) {
  std::string bytes;
  EXPECT_TRUE(m.SerializeToString(&bytes));
  return bytes;
}

std::string WriteTempFile(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "/bad_model_test_" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  EXPECT_TRUE(out.good()) << path;
  return path;
}

absl::Status CompileStatus(const onnx::ModelProto& m) {
  CompileOptions options;
  options.precision = Precision::kFP32;
  return Session::Compile(m, options).status();
}

// ---- sanity: the good model loads, compiles and runs --------------------------------

TEST(BadModelTest, TinyModelIsGood) {
  auto parsed = ParseOnnxModel(Serialize(TinyModel()), "tiny");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto session = Session::Compile(*parsed, CompileOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  auto ctx = (*session)->NewContext();
  Tensor x(DataType::kFloat32, {1, 4});
  for (int i = 0; i < 4; ++i) x.data<float>()[i] = static_cast<float>(i + 1);
  std::vector<Tensor> out;
  ASSERT_TRUE((*session)->Run(ctx.get(), {x}, &out).ok());
  ASSERT_EQ(out.size(), 1u);
  ASSERT_EQ(out[0].shape(), (Shape{1, 3}));
  EXPECT_FLOAT_EQ(out[0].data<float>()[0], 0.0f);
  EXPECT_FLOAT_EQ(out[0].data<float>()[1], 0.5f);
  EXPECT_FLOAT_EQ(out[0].data<float>()[2], 10.25f);
}

// ---- file-level problems -------------------------------------------------------------

TEST(BadModelTest, TruncatedFile) {
  const std::string bytes = Serialize(TinyModel());
  const std::string half = bytes.substr(0, bytes.size() / 2);
  const std::string path = WriteTempFile("truncated.onnx", half);
  auto loaded = LoadOnnxModel(path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << loaded.status();
  EXPECT_THAT(std::string(loaded.status().message()),
              AllOf(::testing::StartsWith(path), HasSubstr("not a valid ONNX protobuf"),
                    HasSubstr("truncated")));

  auto parsed = ParseOnnxModel(half, "half.onnx");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(parsed.status().message()),
              AllOf(::testing::StartsWith("half.onnx"), HasSubstr("truncated")));
}

TEST(BadModelTest, EmptyFile) {
  const std::string path = WriteTempFile("empty.onnx", "");
  auto loaded = LoadOnnxModel(path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << loaded.status();
  EXPECT_THAT(std::string(loaded.status().message()),
              AllOf(::testing::StartsWith(path), HasSubstr("empty")));

  auto parsed = ParseOnnxModel("", "empty bytes");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("empty"));
}

TEST(BadModelTest, MissingFile) {
  const std::string path = ::testing::TempDir() + "/bad_model_test_does_not_exist.onnx";
  auto loaded = LoadOnnxModel(path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound) << loaded.status();
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(path));
}

// ---- graph-level problems -------------------------------------------------------------

TEST(BadModelTest, UnsupportedOp) {
  onnx::ModelProto m = EmptyModel();
  auto* g = m.mutable_graph();
  AddValue(g->mutable_input(), "x", {-1, 4});
  AddValue(g->mutable_output(), "y", {-1, 4});
  AddNode(g, "mystery_node", "NoSuchOp", {"x"}, {"y"});

  // The ONNX checker knows no schema for it.
  auto parsed = ParseOnnxModel(Serialize(m), "nosuchop.onnx");
  if (parsed.ok()) {
    // (Should the checker ever let it through, Compile must name it.)
    absl::Status st = CompileStatus(*parsed);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("NoSuchOp"));
  } else {
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument)
        << parsed.status();
    EXPECT_THAT(std::string(parsed.status().message()),
                AllOf(::testing::StartsWith("nosuchop.onnx"), HasSubstr("NoSuchOp"),
                      HasSubstr("mystery_node"), HasSubstr("13")));
  }

  // Compile itself: Unimplemented naming op, node and opset.
  absl::Status st = CompileStatus(m);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
  EXPECT_THAT(std::string(st.message()),
              AllOf(HasSubstr("NoSuchOp"), HasSubstr("mystery_node"),
                    HasSubstr("opset 13")));
}

TEST(BadModelTest, DanglingInput) {
  onnx::ModelProto m = EmptyModel();
  auto* g = m.mutable_graph();
  AddValue(g->mutable_input(), "x", {-1, 4});
  AddValue(g->mutable_output(), "y", {-1, 4});
  AddNode(g, "adder", "Add", {"x", "ghost"}, {"y"});

  auto parsed = ParseOnnxModel(Serialize(m), "dangling.onnx");
  if (parsed.ok()) {
    absl::Status st = CompileStatus(*parsed);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("ghost"));
  } else {
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument)
        << parsed.status();
    EXPECT_THAT(std::string(parsed.status().message()),
                AllOf(::testing::StartsWith("dangling.onnx"), HasSubstr("ghost")));
  }

  absl::Status st = CompileStatus(m);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()),
              AllOf(HasSubstr("adder"), HasSubstr("'ghost'"),
                    HasSubstr("no node, input or initializer produces")));
}

TEST(BadModelTest, GraphCycle) {
  onnx::ModelProto m = EmptyModel();
  auto* g = m.mutable_graph();
  AddValue(g->mutable_input(), "x", {-1, 4});
  AddValue(g->mutable_output(), "y", {-1, 4});
  // a = x + b ; b = Relu(a) ; y = Relu(b): "add_a" and "relu_b" feed each other.
  AddNode(g, "add_a", "Add", {"x", "b"}, {"a"});
  AddNode(g, "relu_b", "Relu", {"a"}, {"b"});
  AddNode(g, "relu_y", "Relu", {"b"}, {"y"});

  // The checker sees a node reading a value no *earlier* node produced.
  auto parsed = ParseOnnxModel(Serialize(m), "cycle.onnx");
  if (parsed.ok()) {
    absl::Status st = CompileStatus(*parsed);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("cycle"));
  } else {
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument)
        << parsed.status();
    EXPECT_THAT(std::string(parsed.status().message()),
                AllOf(::testing::StartsWith("cycle.onnx"), HasSubstr("topologically"),
                      HasSubstr("'b'")));
  }

  absl::Status st = CompileStatus(m);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()),
              AllOf(HasSubstr("cycle"), ::testing::AnyOf(HasSubstr("add_a"),
                                                         HasSubstr("relu_b"))));
}

TEST(BadModelTest, HugeDeclaredInputDimension) {
  onnx::ModelProto m = EmptyModel();
  auto* g = m.mutable_graph();
  AddValue(g->mutable_input(), "x", {-1, 1000000000000});
  AddValue(g->mutable_output(), "y", {-1, 1000000000000});
  AddNode(g, "relu", "Relu", {"x"}, {"y"});

  // Structurally valid ONNX; the engine must refuse it before anything is allocated.
  auto parsed = ParseOnnxModel(Serialize(m), "huge.onnx");
  const onnx::ModelProto& to_compile = parsed.ok() ? *parsed : m;
  if (!parsed.ok()) {
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("1000000000000"));
  }
  absl::Status st = CompileStatus(to_compile);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()),
              AllOf(HasSubstr("'x'"), HasSubstr("1000000000000"),
                    HasSubstr(std::to_string(kMaxDimension))));
  // The signature alone (what the server reads before calibrating) refuses it too.
  auto sig = ImportSignature(m);
  ASSERT_FALSE(sig.ok());
  EXPECT_EQ(sig.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(sig.status().message()), HasSubstr("1000000000000"));
}

// Older exporters list initializers among the graph inputs: they are constants, not
// inputs, in the signature as in the imported graph.
TEST(BadModelTest, SignatureIsTheImportedGraphsInputsAndOutputs) {
  onnx::ModelProto m = EmptyModel();
  auto* g = m.mutable_graph();
  AddValue(g->mutable_input(), "x", {-1, 3});
  AddValue(g->mutable_input(), "w", {3, 2});
  *g->add_initializer() = FloatInitializer("w", {3, 2}, {1, 2, 3, 4, 5, 6});
  AddValue(g->mutable_output(), "y", {-1, 2});
  AddNode(g, "mm", "MatMul", {"x", "w"}, {"y"});
  auto graph = ImportGraph(m);
  ASSERT_TRUE(graph.ok()) << graph.status();
  auto sig = ImportSignature(m);
  ASSERT_TRUE(sig.ok()) << sig.status();
  auto names = [](const std::vector<ValueInfo>& vs) {
    std::vector<std::string> n;
    for (const auto& v : vs) n.push_back(v.name + ":" + ShapeToString(v.shape));
    return n;
  };
  EXPECT_EQ(names(sig->inputs), (std::vector<std::string>{"x:" + ShapeToString({-1, 3})}));
  EXPECT_EQ(names(sig->inputs), names(graph->inputs));
  EXPECT_EQ(names(sig->outputs), names(graph->outputs));
}

TEST(BadModelTest, InitializerRawDataSizeMismatch) {
  onnx::ModelProto m = TinyModel();
  auto* g = m.mutable_graph();
  // W declares [4, 3] (48 bytes) but carries 10 bytes.
  for (auto& init : *g->mutable_initializer()) {
    if (init.name() == "W") init.set_raw_data(std::string(10, '\x01'));
  }

  auto parsed = ParseOnnxModel(Serialize(m), "badinit.onnx");
  const onnx::ModelProto& to_compile = parsed.ok() ? *parsed : m;
  if (!parsed.ok()) {
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("W"));
  }
  absl::Status st = CompileStatus(to_compile);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()),
              AllOf(HasSubstr("initializer"), HasSubstr("'W'"), HasSubstr("[4,3]"),
                    HasSubstr("12 elements")));
}

// ---- run-time problems ------------------------------------------------------------------

TEST(BadModelTest, RunWithWrongInputShape) {
  auto parsed = ParseOnnxModel(Serialize(TinyModel()), "tiny");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto session = Session::Compile(*parsed, CompileOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  auto ctx = (*session)->NewContext();
  std::vector<Tensor> out;

  // Wrong inner dimension.
  absl::Status st =
      (*session)->Run(ctx.get(), {Tensor(DataType::kFloat32, {2, 5})}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()),
              AllOf(HasSubstr("'x'"), HasSubstr("[2,5]"), HasSubstr("[-1,4]")));

  // Wrong rank.
  st = (*session)->Run(ctx.get(), {Tensor(DataType::kFloat32, {4})}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()), AllOf(HasSubstr("'x'"), HasSubstr("[4]")));

  // Wrong dtype.
  st = (*session)->Run(ctx.get(), {Tensor(DataType::kInt64, {1, 4})}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()), AllOf(HasSubstr("'x'"), HasSubstr("INT64")));

  // Wrong number of inputs.
  st = (*session)->Run(ctx.get(), {}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;

  // The context is still usable after the rejected requests.
  Tensor x(DataType::kFloat32, {1, 4});
  st = (*session)->Run(ctx.get(), {x}, &out);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(out.size(), 1u);
  EXPECT_FLOAT_EQ(out[0].data<float>()[0], 0.5f);
  EXPECT_FLOAT_EQ(out[0].data<float>()[1], 0.0f);
  EXPECT_FLOAT_EQ(out[0].data<float>()[2], 0.25f);
}

}  // namespace
}  // namespace qs
