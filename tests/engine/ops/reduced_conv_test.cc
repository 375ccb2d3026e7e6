// INT8 and BF16 convs chained in u8 / bf16, residuals included: a small residual network
// compiled at reduced precision (INT8 calibrated on the evaluation input, so only
// rounding remains) must match the FP32 plan of the same model, and the chained tensors
// must really travel narrow.
#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/onnx_import.h"
#include "engine/ops/dnnl_util.h"
#include "engine/session.h"
#include "engine/tensor.h"
#include "gtest/gtest.h"
#include "tests/engine/ops/model_builder.h"

namespace qs {
namespace {

// conv + bias; `pad` for 3x3 kernels. Weights He-scaled times `w_gain`, bias N(0, bias_std).
void AddConv(ModelBuilder* b, const std::string& x, const std::string& y, int64_t in,
             int64_t out, int64_t k, int seed, float w_gain = 1.f, float bias_std = 0.1f) {
  const std::string w = y + "_w", bias = y + "_b";
  b->Constant(w, Gaussian({out, in, k, k}, w_gain * std::sqrt(2.f / (in * k * k)), seed));
  b->Constant(bias, Gaussian({out}, bias_std, seed + 1));
  auto* n = b->Node("Conv", {x, w, bias}, {y});
  n->set_name(y);
  SetInts(n, "pads", {k / 2, k / 2, k / 2, k / 2});
}

// Channels of the test networks' inner convs: wider than the 32 up to which BF16 keeps
// a conv in FP32 by default (assign_precision.cc, IsNarrowConv).
constexpr int64_t kWidth = 48;

// x -A-> relu, maxpool t1 -B(+t1)-> relu t2 -D-> d (signed, read only as a residual)
//                               t2 -C(+d)-> relu t3 -F(+t3)-> f -E-> y (head)
// B: u8 residual into a u8 output (same tensor as its input 0); C: a signed u8
// residual (non-zero zero point) into a u8 output; F: a u8 residual into an FP32
// output (its reader E, the graph-output head, stays FP32).
onnx::ModelProto ResidualNet() {
  ModelBuilder b;
  b.Input("x", {-1, 8, 12, 12});
  b.Output("y");
  AddConv(&b, "x", "a", 8, kWidth, 3, 10);
  b.Node("Relu", {"a"}, {"t0"});
  auto* pool = b.Node("MaxPool", {"t0"}, {"t1"});
  pool->set_name("pool");
  SetInts(pool, "kernel_shape", {3, 3});
  SetInts(pool, "pads", {1, 1, 1, 1});
  AddConv(&b, "t1", "bconv", kWidth, kWidth, 1, 20);
  b.Node("Add", {"bconv", "t1"}, {"bsum"});
  b.Node("Relu", {"bsum"}, {"t2"});
  AddConv(&b, "t2", "d", kWidth, kWidth, 1, 30);
  AddConv(&b, "t2", "cconv", kWidth, kWidth, 3, 40);
  b.Node("Add", {"cconv", "d"}, {"csum"});
  b.Node("Relu", {"csum"}, {"t3"});
  AddConv(&b, "t3", "fconv", kWidth, kWidth, 1, 50);
  b.Node("Add", {"t3", "fconv"}, {"f"});
  AddConv(&b, "f", "y", kWidth, 4, 1, 60);
  return b.model();
}

// Cosine similarity of two f32 tensors of the same size, as flat vectors.
double Cosine(const Tensor& want, const Tensor& got) {
  double dot = 0, na = 0, nb = 0;
  for (int64_t i = 0; i < want.num_elements(); ++i) {
    const double a = want.data<float>()[i], g = got.data<float>()[i];
    dot += a * g;
    na += a * a;
    nb += g * g;
  }
  return dot / std::sqrt(na * nb);
}

struct Compared {
  double cosine = 0, max_rel_err = 0;
  std::vector<std::string> narrow_outputs;  // nodes whose output travelled as u8/bf16
  std::vector<std::string> reduced;         // nodes the report lists at INT8 or BF16
};

// x -A-> relu t -P-> p; p is read by an FP32 Sigmoid first and by the BF16/INT8 conv Q
// second: P must keep writing f32 (the Sigmoid cannot read a narrow tensor).
onnx::ModelProto MixedReaders() {
  ModelBuilder b;
  b.Input("x", {-1, 8, 12, 12});
  b.Output("y");
  AddConv(&b, "x", "a", 8, kWidth, 3, 10);
  b.Node("Relu", {"a"}, {"t"});
  AddConv(&b, "t", "p", kWidth, kWidth, 1, 20);
  b.Node("Sigmoid", {"p"}, {"s"});
  AddConv(&b, "p", "q", kWidth, kWidth, 3, 30);
  b.Node("Add", {"q", "s"}, {"qs"});
  AddConv(&b, "qs", "y", kWidth, 4, 1, 40);
  return b.model();
}

// `built` (one output, [batch, dims...]) parsed from bytes as a model file is: that runs
// shape inference, which the residual fusion and the batch split need.
absl::StatusOr<onnx::ModelProto> AsModelFile(onnx::ModelProto built, const std::string& name,
                                              std::initializer_list<int64_t> dims) {
  built.mutable_graph()->set_name(name);
  auto* y_shape = built.mutable_graph()->mutable_output(0)->mutable_type()
                      ->mutable_tensor_type()->mutable_shape();  // the checker wants one
  y_shape->add_dim()->set_dim_param("dyn");
  for (int64_t d : dims) y_shape->add_dim()->set_dim_value(d);
  return ParseOnnxModel(built.SerializeAsString(), name);
}

Compared CompileAndCompare(Precision precision, onnx::ModelProto built = ResidualNet()) {
  auto parsed = AsModelFile(std::move(built), "residual_net", {4, 12, 12});
  Compared r;
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  if (!parsed.ok()) return r;
  const onnx::ModelProto& model = *parsed;
  const Tensor x = Gaussian({2, 8, 12, 12}, 1.f, 7);
  auto fp32 = Session::Compile(model, CompileOptions());
  EXPECT_TRUE(fp32.ok()) << fp32.status();
  CompileOptions o;
  o.precision = precision;
  o.calibration = {{x}};
  auto q = Session::Compile(model, o);
  EXPECT_TRUE(q.ok()) << q.status();
  if (!fp32.ok() || !q.ok()) return r;
  std::vector<Tensor> want, got;
  auto c1 = (*fp32)->NewContext();
  EXPECT_TRUE((*fp32)->Run(c1.get(), {x}, &want).ok());
  auto c2 = (*q)->NewContext();
  c2->set_tap([&](size_t node, const std::vector<const Tensor*>&,
                  const std::vector<Tensor>& outs) {
    if (!outs.empty() && outs[0].dtype() != DataType::kFloat32) {
      r.narrow_outputs.push_back((*q)->precision_report()[node].name);
    }
  });
  for (const NodePrecision& n : (*q)->precision_report()) {
    if (n.precision != "FP32") r.reduced.push_back(n.name);
  }
  absl::Status st = (*q)->Run(c2.get(), {x}, &got);
  EXPECT_TRUE(st.ok()) << st;
  if (!st.ok()) return r;
  const float* a = want[0].data<float>();
  const float* b = got[0].data<float>();
  double amax = 0, err = 0;
  for (int64_t i = 0; i < want[0].num_elements(); ++i) {
    amax = std::max(amax, std::fabs(double(a[i])));
    err = std::max(err, std::fabs(double(a[i]) - b[i]));
  }
  r.cosine = Cosine(want[0], got[0]);
  r.max_rel_err = err / amax;
  return r;
}

TEST(ReducedConvTest, Int8ResidualChainMatchesFp32) {
  const Compared r = CompileAndCompare(Precision::kInt8);
  // Five u8 requantizations in a row: each adds at most half a step of its range.
  EXPECT_GE(r.cosine, 0.999);
  EXPECT_LE(r.max_rel_err, 0.05);
  // A (through the MaxPool), B (residual t1) and C (residual d) chain in u8; D writes
  // u8 for C; F and the head write FP32.
  EXPECT_EQ(r.narrow_outputs,
            (std::vector<std::string>{"a", "pool", "bconv", "d", "cconv"}));
}

TEST(ReducedConvTest, Bf16ResidualChainMatchesFp32) {
  const Compared r = CompileAndCompare(Precision::kBF16);
  EXPECT_GE(r.cosine, 0.9999);
  EXPECT_LE(r.max_rel_err, 0.02);
  // BF16 does not pass through the MaxPool (it runs in f32).
  EXPECT_EQ(r.narrow_outputs, (std::vector<std::string>{"bconv", "d", "cconv"}));
  // A (8 input channels) and the head stay FP32 by default.
  EXPECT_EQ(r.reduced, (std::vector<std::string>{"bconv", "d", "cconv", "fconv"}));
}

TEST(ReducedConvTest, ConvReadByAnFp32OpKeepsWritingFp32) {
  for (Precision p : {Precision::kBF16, Precision::kInt8}) {
    SCOPED_TRACE(static_cast<int>(p));
    const Compared r = CompileAndCompare(p, MixedReaders());
    EXPECT_GE(r.cosine, 0.999);
    for (const std::string& n : r.narrow_outputs) EXPECT_NE(n, "p");
    EXPECT_NE(std::find(r.reduced.begin(), r.reduced.end(), "p"), r.reduced.end());
  }
}

// Outputs of 1 MiB and more take the kernel-timing path (impl_autotune.h, reached through
// Session::Warmup) with the bias post-op's operand among the timed arguments; at two
// batch sizes, in one context.
TEST(ReducedConvTest, LargeMapsMatchFp32AtEveryPrecision) {
  ModelBuilder b;
  b.Input("x", {-1, 16, 64, 64});
  b.Output("y");
  // x -A-> relu -B-> relu -Y-> y: Y is the head (kept FP32 by default), so B writes f32
  // (3 MiB at batch 4) from an unsigned input: the INT8 kernels with a choice.
  AddConv(&b, "x", "a", 16, kWidth, 3, 70);
  b.Node("Relu", {"a"}, {"r"});
  AddConv(&b, "r", "bconv", kWidth, kWidth, 3, 74);
  b.Node("Relu", {"bconv"}, {"r2"});
  AddConv(&b, "r2", "y", kWidth, 32, 3, 71);
  auto model = AsModelFile(b.model(), "large_maps", {32, 64, 64});
  ASSERT_TRUE(model.ok()) << model.status();
  const Tensor calib = Gaussian({4, 16, 64, 64}, 1.f, 72);
  auto fp32 = Session::Compile(*model, CompileOptions());
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  for (Precision p : {Precision::kInt8, Precision::kBF16}) {
    SCOPED_TRACE(static_cast<int>(p));
    CompileOptions o;
    o.precision = p;
    o.calibration = {{calib}};
    auto q = Session::Compile(*model, o);
    ASSERT_TRUE(q.ok()) << q.status();
    for (const NodePrecision& n : (*q)->precision_report()) {
      if (n.name == "bconv") {
        EXPECT_NE(n.precision, "FP32");  // the reduced kernel runs
      }
    }
    auto c1 = (*fp32)->NewContext();
    auto c2 = (*q)->NewContext();
    for (int64_t batch : {1, 4}) {  // outputs of 0.5 and 2 MiB (f32)
      const Tensor x = Gaussian({batch, 16, 64, 64}, 1.f, 73 + static_cast<int>(batch));
      std::vector<Tensor> want, got;
      ASSERT_TRUE((*fp32)->Warmup(c1.get(), {x}, &want).ok());
      absl::Status st = (*q)->Warmup(c2.get(), {x}, &got);
      ASSERT_TRUE(st.ok()) << st;
      EXPECT_GE(Cosine(want[0], got[0]), 0.999) << "batch " << batch;
    }
  }
}

// Outputs made mostly of bias (weights at a tenth of He scale, bias N(0, 1)): the INT8
// and BF16 convs take the bias as the primitive's own argument, which INT8 must first
// divide by each channel's output scale (and by the next layer's input scale where it
// writes u8). A wrong factor there shows as an O(1) error, which small biases would hide.
TEST(ReducedConvTest, BiasDominatedOutputsMatchFp32) {
  ModelBuilder b;
  b.Input("x", {-1, 8, 12, 12});
  b.Output("y");
  // x -A-> relu -B-> relu -Y-> y: A writes u8 for B; B writes f32 for the FP32 head Y.
  AddConv(&b, "x", "a", 8, kWidth, 3, 80, 0.1f, 1.f);
  b.Node("Relu", {"a"}, {"r"});
  AddConv(&b, "r", "bconv", kWidth, kWidth, 1, 82, 0.1f, 1.f);
  b.Node("Relu", {"bconv"}, {"r2"});
  AddConv(&b, "r2", "y", kWidth, 4, 1, 84);
  const Compared r1 = CompileAndCompare(Precision::kInt8, b.model());
  EXPECT_GE(r1.cosine, 0.999);
  EXPECT_LE(r1.max_rel_err, 0.02);
  EXPECT_NE(std::find(r1.narrow_outputs.begin(), r1.narrow_outputs.end(), "a"),
            r1.narrow_outputs.end());  // the u8-writing path was taken
  const Compared r2 = CompileAndCompare(Precision::kBF16, b.model());
  EXPECT_GE(r2.cosine, 0.9999);
  EXPECT_LE(r2.max_rel_err, 0.01);
  // Only B runs in BF16 (A's 8 input channels keep it FP32), and writes f32 for the head.
  EXPECT_EQ(r2.reduced, std::vector<std::string>{"bconv"});
}

// The image stem (a conv over 3 channels) of an INT8 plan runs in BF16 where the CPU
// computes bf16 natively, in FP32 elsewhere, when its option is off, or when the user
// names it; the head (the conv producing the graph output) runs at DYNAMIC_RANGE, in
// BF16 or FP32 as its option says, FP32 when named. With the default exclusions
// disabled both are INT8 like the rest. A BF16 stem read only through a MaxPool by INT8
// convs (as input and as fused residual, ResNet's shape) writes bf16, pooled in bf16.
TEST(ReducedConvTest, Int8PlanRunsTheImageStemInBf16AndTheHeadAsConfigured) {
  ModelBuilder b;
  b.Input("x", {-1, 3, 16, 16});
  b.Output("y");
  AddConv(&b, "x", "stem", 3, 16, 3, 90);
  b.Node("Relu", {"stem"}, {"r"});
  auto* pool = b.Node("MaxPool", {"r"}, {"p"});
  pool->set_name("pool");
  SetInts(pool, "kernel_shape", {3, 3});
  SetInts(pool, "pads", {1, 1, 1, 1});
  AddConv(&b, "p", "body", 16, 16, 3, 92);
  b.Node("Add", {"body", "p"}, {"sum"});
  b.Node("Relu", {"sum"}, {"r2"});
  AddConv(&b, "r2", "y", 16, 4, 1, 94);
  auto model = AsModelFile(b.model(), "stem_net", {4, 16, 16});
  ASSERT_TRUE(model.ok()) << model.status();
  const Tensor x = Gaussian({2, 3, 16, 16}, 1.f, 95);
  auto fp32 = Session::Compile(*model, CompileOptions());
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  std::vector<Tensor> want;
  ASSERT_TRUE((*fp32)->Run((*fp32)->NewContext().get(), {x}, &want).ok());
  const std::string native_stem = HasNativeBf16() ? "BF16" : "FP32";
  struct Case {
    const char* label;
    std::function<void(CompileOptions*)> set;
    std::string stem, head;
  };
  using Head = CompileOptions::Int8Head;
  const std::vector<Case> cases = {
      {"default", [](CompileOptions*) {}, native_stem, "DYNAMIC_RANGE"},
      {"option off", [](CompileOptions* o) { o->int8_stem_in_bf16 = false; }, "FP32",
       "DYNAMIC_RANGE"},
      {"head bf16", [](CompileOptions* o) { o->int8_head = Head::kBf16; }, native_stem,
       native_stem},
      {"head fp32", [](CompileOptions* o) { o->int8_head = Head::kFp32; }, native_stem,
       "FP32"},
      {"named", [](CompileOptions* o) { o->exclude_nodes = {"stem", "y"}; }, "FP32", "FP32"},
      {"no default exclusions",
       [](CompileOptions* o) { o->disable_default_exclusions = true; }, "INT8", "INT8"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    CompileOptions o;
    o.precision = Precision::kInt8;
    o.calibration = {{x}};
    c.set(&o);
    auto q = Session::Compile(*model, o);
    ASSERT_TRUE(q.ok()) << q.status();
    std::map<std::string, std::string> precision;
    std::map<std::string, double> sqnr;
    for (const NodePrecision& p : (*q)->precision_report()) {
      precision[p.name] = p.precision;
      sqnr[p.name] = p.sqnr_db;
    }
    EXPECT_EQ(precision["stem"], c.stem);
    EXPECT_EQ(precision["body"], "INT8");
    EXPECT_EQ(precision["y"], c.head);  // the head, producing the graph output
    EXPECT_EQ(precision["pool"], c.stem);  // the MaxPool runs on what the stem writes
    if (c.stem != "FP32") {
      EXPECT_GT(sqnr["pool"], 20.0);  // measured, in real units
    }
    std::map<std::string, DataType> out_type;
    auto ctx = (*q)->NewContext();
    ctx->set_tap([&](size_t node, const std::vector<const Tensor*>&,
                     const std::vector<Tensor>& outs) {
      if (!outs.empty()) out_type[(*q)->precision_report()[node].name] = outs[0].dtype();
    });
    std::vector<Tensor> got;
    ASSERT_TRUE((*q)->Run(ctx.get(), {x}, &got).ok());
    EXPECT_GE(Cosine(want[0], got[0]), 0.999);
    const DataType stem_out = c.stem == "BF16"   ? DataType::kBFloat16
                              : c.stem == "INT8" ? DataType::kUInt8
                                                 : DataType::kFloat32;
    EXPECT_EQ(out_type["stem"], stem_out);
    EXPECT_EQ(out_type["pool"], stem_out);
  }
}

// A BF16 stem read directly by an INT8 conv (MobileNetV2's shape) keeps writing f32: bf16
// then u8 would round twice. So does one whose MaxPool output is also read by a non-conv.
TEST(ReducedConvTest, Bf16StemWritesF32UnlessOnlyPooledIntoInt8Convs) {
  if (!HasNativeBf16()) GTEST_SKIP() << "no native bf16: the stem stays FP32";
  for (bool pooled : {false, true}) {
    SCOPED_TRACE(pooled ? "MaxPool also read by a Sigmoid" : "read directly by a conv");
    ModelBuilder b;
    b.Input("x", {-1, 3, 16, 16});
    b.Output("y");
    AddConv(&b, "x", "stem", 3, 16, 3, 100);
    b.Node("Relu", {"stem"}, {"r"});
    std::string body_in = "r";
    if (pooled) {
      auto* pool = b.Node("MaxPool", {"r"}, {"p"});
      SetInts(pool, "kernel_shape", {3, 3});
      SetInts(pool, "pads", {1, 1, 1, 1});
      b.Node("Sigmoid", {"p"}, {"s"});
      body_in = "p";
    }
    AddConv(&b, body_in, "body", 16, 16, 3, 102);
    std::string head_in = "body";
    if (pooled) {
      b.Node("Add", {"body", "s"}, {"bs"});
      head_in = "bs";
    }
    AddConv(&b, head_in, "y", 16, 4, 1, 104);
    auto model = AsModelFile(b.model(), "stem_f32", {4, 16, 16});
    ASSERT_TRUE(model.ok()) << model.status();
    CompileOptions o;
    o.precision = Precision::kInt8;
    o.calibration = {{Gaussian({2, 3, 16, 16}, 1.f, 105)}};
    auto q = Session::Compile(*model, o);
    ASSERT_TRUE(q.ok()) << q.status();
    DataType stem_out = DataType::kUndefined;
    auto ctx = (*q)->NewContext();
    ctx->set_tap([&](size_t node, const std::vector<const Tensor*>&,
                     const std::vector<Tensor>& outs) {
      if ((*q)->precision_report()[node].name == "stem") stem_out = outs[0].dtype();
    });
    std::vector<Tensor> got;
    ASSERT_TRUE((*q)->Run(ctx.get(), {o.calibration[0][0]}, &got).ok());
    EXPECT_EQ(stem_out, DataType::kFloat32);
  }
}

// A 3-channel conv that is also the output head follows the head's option (the head
// rule wins), and writes the f32 output the graph declares.
TEST(ReducedConvTest, ImageStemThatIsTheHeadFollowsTheHeadOption) {
  ModelBuilder b;
  b.Input("x", {-1, 3, 8, 8});
  b.Output("y");
  AddConv(&b, "x", "y", 3, 4, 3, 96);
  auto model = AsModelFile(b.model(), "stem_head", {4, 8, 8});
  ASSERT_TRUE(model.ok()) << model.status();
  const Tensor x = Gaussian({2, 3, 8, 8}, 1.f, 97);
  using Head = CompileOptions::Int8Head;
  const std::string native = HasNativeBf16() ? "BF16" : "FP32";
  for (const auto& [head, want] : std::vector<std::pair<Head, std::string>>{
           {Head::kDynamicRange, "DYNAMIC_RANGE"}, {Head::kBf16, native}, {Head::kFp32, "FP32"}}) {
    SCOPED_TRACE(want);
    CompileOptions o;
    o.precision = Precision::kInt8;
    o.calibration = {{x}};
    o.int8_head = head;
    auto q = Session::Compile(*model, o);
    ASSERT_TRUE(q.ok()) << q.status();
    ASSERT_EQ((*q)->precision_report().size(), 1u);
    EXPECT_EQ((*q)->precision_report()[0].precision, want);
    std::vector<Tensor> got;
    ASSERT_TRUE((*q)->Run((*q)->NewContext().get(), {x}, &got).ok());
    EXPECT_EQ(got[0].dtype(), DataType::kFloat32);
  }
}

// BF16 keeps convs with at most 32 input or output channels in FP32 by default (they
// gain no time and sit early, where later layers amplify their rounding); INT8 and
// DYNAMIC_RANGE quantize them, and so does BF16 with the default exclusions disabled.
TEST(ReducedConvTest, Bf16KeepsNarrowConvsInFp32) {
  ModelBuilder b;
  b.Input("x", {-1, 32, 8, 8});
  b.Output("y");
  AddConv(&b, "x", "in32", 32, 64, 1, 90);     // 32 inputs: narrow
  AddConv(&b, "in32", "wide", 64, 33, 3, 91);  // 64 -> 33: wide
  AddConv(&b, "wide", "out32", 33, 32, 1, 92);  // 32 outputs: narrow
  AddConv(&b, "out32", "y", 32, 64, 1, 93);    // the head
  const std::vector<std::string> all = {"in32", "wide", "out32"};
  // The INT8 head runs at DYNAMIC_RANGE (CompileOptions::int8_head).
  std::vector<std::string> int8 = all;
  int8.push_back("y");
  struct Case {
    Precision precision;
    bool disable_default_exclusions;
    std::vector<std::string> reduced;
  };
  for (const Case& c : {Case{Precision::kBF16, false, {"wide"}},
                        Case{Precision::kBF16, true, {"in32", "wide", "out32", "y"}},
                        Case{Precision::kInt8, false, int8},
                        Case{Precision::kDynamicRange, false, all}}) {
    SCOPED_TRACE(absl::StrCat(static_cast<int>(c.precision), " ", c.disable_default_exclusions));
    auto model = AsModelFile(b.model(), "narrow", {64, 8, 8});
    ASSERT_TRUE(model.ok()) << model.status();
    CompileOptions o;
    o.precision = c.precision;
    o.disable_default_exclusions = c.disable_default_exclusions;
    o.calibration = {{Gaussian({2, 32, 8, 8}, 1.f, 94)}};
    auto q = Session::Compile(*model, o);
    ASSERT_TRUE(q.ok()) << q.status();
    std::vector<std::string> reduced;
    for (const NodePrecision& n : (*q)->precision_report()) {
      if (n.precision != "FP32") reduced.push_back(n.name);
    }
    EXPECT_EQ(reduced, c.reduced);
  }
}

// An INT8 conv reading a u8 tensor with a zero point (a signed value, such as
// MobileNetV2's residual stream) packs its weights with zero-point compensation, and the
// layout differs by batch size (here: oc blocks of 64 at batch 8, 48 at batch 1). oneDNN
// 2.6 cannot reorder between these two compensated layouts, so the second batch size
// must pack from a layout without compensation: before, batch 1 after batch 8 failed to
// build ("could not create a primitive descriptor for a reorder primitive"), and so did
// MobileNetV2 INT8 at batch 1.
TEST(ReducedConvTest, ZeroPointInputServesEveryBatchSize) {
  ModelBuilder b;
  b.Input("x", {-1, 96, 14, 14});
  b.Output("y");
  // MobileNetV2's features.12: `expand` writes u8 for `project` (0.9 MB at batch 8, too
  // small for kernel timing), so both batch sizes take oneDNN's first choice.
  AddConv(&b, "x", "signed", 96, 96, 1, 110);  // no ReLU: writes u8 with a zero point
  AddConv(&b, "signed", "expand", 96, 576, 1, 111);
  b.Node("Relu", {"expand"}, {"r"});
  AddConv(&b, "r", "project", 576, 96, 1, 115);
  AddConv(&b, "project", "y", 96, 16, 1, 112);
  auto model = AsModelFile(b.model(), "zero_point", {16, 14, 14});
  ASSERT_TRUE(model.ok()) << model.status();
  CompileOptions o;
  o.precision = Precision::kInt8;
  o.calibration = {{Gaussian({8, 96, 14, 14}, 1.f, 113)}};
  auto q = Session::Compile(*model, o);
  ASSERT_TRUE(q.ok()) << q.status();
  auto fp32 = Session::Compile(*model, CompileOptions());
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  for (const NodePrecision& n : (*q)->precision_report()) {
    if (n.name == "expand") {
      EXPECT_EQ(n.precision, "INT8");
    }
  }
  auto c1 = (*fp32)->NewContext();
  auto c2 = (*q)->NewContext();
  for (int64_t batch : {8, 1, 4, 8, 1}) {
    SCOPED_TRACE(batch);
    const Tensor x = Gaussian({batch, 96, 14, 14}, 1.f, 114 + static_cast<int>(batch));
    std::vector<Tensor> want, got;
    ASSERT_TRUE((*fp32)->Warmup(c1.get(), {x}, &want).ok());
    const absl::Status st = (*q)->Warmup(c2.get(), {x}, &got);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_GE(Cosine(want[0], got[0]), 0.99);
  }
}

TEST(ReducedConvTest, DynamicRangeKeepsFp32BetweenLayers) {
  const Compared r = CompileAndCompare(Precision::kDynamicRange);
  EXPECT_GE(r.cosine, 0.999);
  EXPECT_LE(r.max_rel_err, 0.05);
  EXPECT_TRUE(r.narrow_outputs.empty());
}

}  // namespace
}  // namespace qs
