// The quantization ops (engine/ops/quantize_ops.cc): hand-checked cases (round half to
// even, saturation, per-axis parameters, u8 weights with asymmetric zero points) and
// randomized integer MatMul/Conv checked exactly against naive loops written here, on
// both the oneDNN path and the reference loops (QS_INT8_REFERENCE=1).
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "engine/graph.h"
#include "engine/layout.h"
#include "engine/onnx_import.h"
#include "engine/ops/reduced_precision.h"
#include "engine/ops/registry.h"
#include "engine/passes/passes.h"
#include "engine/session.h"
#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"

namespace qs {

namespace {

// ---- model building ----------------------------------------------------------------

int32_t OnnxType(DataType t) { return DataTypeToOnnx(t); }

class ModelBuilder {
 public:
  explicit ModelBuilder(int64_t opset = 13) {
    model_.set_ir_version(8);
    auto* op = model_.add_opset_import();
    op->set_domain("");
    op->set_version(opset);
  }
  void Input(const std::string& name, const Tensor& like) {
    auto* vi = model_.mutable_graph()->add_input();
    vi->set_name(name);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(OnnxType(like.dtype()));
    auto* shape = tt->mutable_shape();
    for (int64_t d : like.shape()) shape->add_dim()->set_dim_value(d);
  }
  void Output(const std::string& name, DataType type) {
    auto* vi = model_.mutable_graph()->add_output();
    vi->set_name(name);
    vi->mutable_type()->mutable_tensor_type()->set_elem_type(OnnxType(type));
  }
  void Constant(const std::string& name, const Tensor& t) {
    *model_.mutable_graph()->add_initializer() = TensorToProto(t, name);
  }
  // An operand that is a graph input (fed at run time) or an initializer.
  void Operand(const std::string& name, const Tensor& t, bool constant,
               std::vector<Tensor>* feeds) {
    if (constant) {
      Constant(name, t);
    } else {
      Input(name, t);
      feeds->push_back(t);
    }
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

void SetInt(onnx::NodeProto* n, const std::string& name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}
void SetInts(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}

std::vector<Tensor> RunModel(const onnx::ModelProto& model, const std::vector<Tensor>& in) {
  auto session = Session::Compile(model, CompileOptions());
  EXPECT_TRUE(session.ok()) << session.status();
  if (!session.ok()) return {};
  auto ctx = (*session)->NewContext();
  std::vector<Tensor> out;
  absl::Status st = (*session)->Run(ctx.get(), in, &out);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// ---- tensors ----------------------------------------------------------------------

template <typename T>
Tensor Make(DataType type, const Shape& shape, const std::vector<T>& v) {
  Tensor t(type, shape);
  EXPECT_EQ(static_cast<int64_t>(v.size()), t.num_elements());
  for (size_t i = 0; i < v.size(); ++i) t.data<T>()[i] = v[i];
  return t;
}
Tensor F32(const Shape& s, const std::vector<float>& v) { return Make(DataType::kFloat32, s, v); }
Tensor U8(const Shape& s, const std::vector<uint8_t>& v) { return Make(DataType::kUInt8, s, v); }
Tensor S8(const Shape& s, const std::vector<int8_t>& v) { return Make(DataType::kInt8, s, v); }
Tensor S32(const Shape& s, const std::vector<int32_t>& v) { return Make(DataType::kInt32, s, v); }

int32_t IntAt(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DataType::kUInt8: return t.data<uint8_t>()[i];
    case DataType::kInt8: return t.data<int8_t>()[i];
    case DataType::kInt32: return t.data<int32_t>()[i];
    default: ADD_FAILURE() << "not an integer tensor"; return 0;
  }
}

void ExpectInts(const Tensor& got, DataType type, const Shape& shape,
                const std::vector<int32_t>& want) {
  ASSERT_EQ(DataTypeName(got.dtype()), DataTypeName(type));
  ASSERT_EQ(ShapeToString(got.shape()), ShapeToString(shape));
  ASSERT_EQ(got.num_elements(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(IntAt(got, i), want[i]) << "at " << i;
}

void ExpectSameInts(const Tensor& got, const Tensor& want) {
  ASSERT_EQ(DataTypeName(got.dtype()), DataTypeName(want.dtype()));
  ASSERT_EQ(ShapeToString(got.shape()), ShapeToString(want.shape()));
  int64_t bad = 0;
  for (int64_t i = 0; i < want.num_elements(); ++i) {
    if (IntAt(got, i) != IntAt(want, i) && bad++ < 5) {
      ADD_FAILURE() << "at " << i << ": got " << IntAt(got, i) << ", want " << IntAt(want, i);
    }
  }
  EXPECT_EQ(bad, 0);
}

// Deterministic pseudo-random integers; about one value in six is an extreme of the
// type, so u8 255 x s8 -128 products (the saturating case of non-VNNI kernels) occur.
class Rng {
 public:
  explicit Rng(uint32_t seed) : s_(seed * 2654435761u + 1) {}
  uint32_t Next() {
    s_ = s_ * 1664525u + 1013904223u;
    return s_ >> 8;
  }
  int32_t Int(DataType type) {
    const int32_t lo = type == DataType::kUInt8 ? 0 : -128;
    const int32_t hi = type == DataType::kUInt8 ? 255 : 127;
    const uint32_t r = Next() % 12;
    if (r == 0) return lo;
    if (r == 1) return hi;
    return lo + static_cast<int32_t>(Next() % (hi - lo + 1));
  }
  Tensor Tensor8(DataType type, const Shape& shape) {
    Tensor t(type, shape);
    for (int64_t i = 0; i < t.num_elements(); ++i) {
      if (type == DataType::kUInt8) {
        t.data<uint8_t>()[i] = static_cast<uint8_t>(Int(type));
      } else {
        t.data<int8_t>()[i] = static_cast<int8_t>(Int(type));
      }
    }
    return t;
  }

 private:
  uint32_t s_;
};

// Runs `body` once on the oneDNN path and once on the reference loops.
class BothPaths : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) {
      setenv("QS_INT8_REFERENCE", "1", 1);
    } else {
      unsetenv("QS_INT8_REFERENCE");
    }
  }
  void TearDown() override { unsetenv("QS_INT8_REFERENCE"); }
};

// ---- QuantizeLinear -------------------------------------------------------------------

Tensor Quantize(const Tensor& x, const Tensor& scale, const Tensor& zp, int64_t axis = 1) {
  ModelBuilder mb;
  std::vector<Tensor> feeds;
  mb.Input("x", x);
  feeds.push_back(x);
  mb.Constant("s", scale);
  mb.Constant("z", zp);
  SetInt(mb.Node("QuantizeLinear", {"x", "s", "z"}, {"y"}), "axis", axis);
  mb.Output("y", zp.dtype());
  auto out = RunModel(mb.model(), feeds);
  return out.empty() ? Tensor() : out[0];
}

TEST(QuantizeLinearTest, TiesRoundHalfToEven) {
  // x / 2 = 0.5, 1.5, 2.5, -0.5, -1.5, 3.5 -> 0, 2, 2, -0, -2, 4; + zp 10.
  ExpectInts(Quantize(F32({6}, {1, 3, 5, -1, -3, 7}), F32({}, {2.f}), U8({}, {10})),
             DataType::kUInt8, {6}, {10, 12, 12, 10, 8, 14});
  ExpectInts(Quantize(F32({6}, {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f}), F32({}, {1.f}),
                      S8({}, {0})),
             DataType::kInt8, {6}, {0, 2, 2, 0, -2, -2});
}

TEST(QuantizeLinearTest, Saturates) {
  // u8: -3 -> 0; -0.5 -> -0 -> 0; 254.5 -> 254 (tie to even); 255.5 -> 256 -> 255.
  ExpectInts(Quantize(F32({5}, {-3.f, -0.5f, 254.5f, 255.5f, 300.f}), F32({}, {1.f}),
                      U8({}, {0})),
             DataType::kUInt8, {5}, {0, 0, 254, 255, 255});
  // s8: -128.5 and -127.5 both round to -128; 126.5 -> 126; 127.5 -> 128 -> 127.
  ExpectInts(Quantize(F32({6}, {-200.f, -128.5f, -127.5f, 126.5f, 127.5f, 1e30f}),
                      F32({}, {1.f}), S8({}, {0})),
             DataType::kInt8, {6}, {-128, -128, -128, 126, 127, 127});
  // The zero point is added before saturating: round(-50.5) = -50, -50 - 100 -> -128.
  ExpectInts(Quantize(F32({2}, {-50.5f, 300.f}), F32({}, {1.f}), S8({}, {-100})),
             DataType::kInt8, {2}, {-128, 127});
}

TEST(QuantizeLinearTest, PerAxis) {
  const Tensor x = F32({2, 3, 2}, {1, 2, 3, 4, 5, 6, -1, -2, -3, -4, -6, -10});
  // axis 1: scales 1, 2, 4 and zero points 0, 10, -5.
  //   c1: 3/2 = 1.5 -> 2 (+10 = 12), -3/2 = -1.5 -> -2 (+10 = 8)
  //   c2: 5/4 -> 1, 6/4 = 1.5 -> 2, -6/4 = -1.5 -> -2, -10/4 = -2.5 -> -2; then -5
  ExpectInts(Quantize(x, F32({3}, {1, 2, 4}), S8({3}, {0, 10, -5}), 1), DataType::kInt8,
             {2, 3, 2}, {1, 2, 12, 12, -4, -3, -1, -2, 8, 8, -7, -7});
  // axis -1 (= 2): scales 1 and 0.5.
  ExpectInts(Quantize(x, F32({2}, {1, 0.5f}), S8({2}, {0, 0}), -1), DataType::kInt8,
             {2, 3, 2}, {1, 4, 3, 8, 5, 12, -1, -4, -3, -8, -6, -20});
}

// Runs one kernel directly, so that a channels-last input can be fed.
std::vector<Tensor> RunKernel(const std::string& op, const std::vector<Tensor>& inputs,
                              int64_t axis, size_t outputs = 1) {
  Node node;
  node.name = "n";
  node.op_type = op;
  onnx::AttributeProto a;
  a.set_name("axis");
  a.set_type(onnx::AttributeProto::INT);
  a.set_i(axis);
  node.attrs.Set(a);
  KernelInit init;
  init.node = &node;
  init.opset = 13;
  init.constants.assign(inputs.size(), nullptr);
  auto kernel = DefaultKernelRegistry().Create(init);
  EXPECT_TRUE(kernel.ok()) << kernel.status();
  if (!kernel.ok()) return {};
  auto state = (*kernel)->NewState();
  std::vector<const Tensor*> ptrs;
  for (const Tensor& t : inputs) ptrs.push_back(&t);
  std::vector<Tensor> outs(outputs);
  DnnlResources dnnl;
  KernelRunContext ctx;
  ctx.inputs = ptrs;
  ctx.outputs = &outs;
  ctx.state = state.get();
  ctx.dnnl = &dnnl;
  absl::Status st = (*kernel)->Run(ctx);
  EXPECT_TRUE(st.ok()) << st;
  return outs;
}

TEST(QuantizeLinearTest, PerAxisOnChannelsLastInput) {
  Tensor x(DataType::kFloat32, {2, 3, 2, 2});
  for (int64_t i = 0; i < x.num_elements(); ++i) x.data<float>()[i] = 0.75f * (i - 11);
  const Tensor x_cl = ToChannelsLast(x);
  ASSERT_EQ(x_cl.layout(), Layout::kChannelsLast);
  for (int64_t axis : {1, 2, 3}) {
    const int64_t c = x.dim(static_cast<int>(axis));
    Tensor s(DataType::kFloat32, {c}), z(DataType::kUInt8, {c});
    for (int64_t i = 0; i < c; ++i) {
      s.data<float>()[i] = 0.5f * (i + 1);
      z.data<uint8_t>()[i] = static_cast<uint8_t>(100 + 7 * i);
    }
    auto plain = RunKernel("QuantizeLinear", {x, s, z}, axis);
    auto cl = RunKernel("QuantizeLinear", {x_cl, s, z}, axis);
    ASSERT_EQ(plain.size(), 1u);
    ASSERT_EQ(cl.size(), 1u);
    ExpectSameInts(ToPlain(cl[0]), plain[0]);
    // And back: DequantizeLinear on the channels-last values.
    auto dq_plain = RunKernel("DequantizeLinear", {plain[0], s, z}, axis);
    auto dq_cl = RunKernel("DequantizeLinear", {cl[0], s, z}, axis);
    const Tensor back = ToPlain(dq_cl[0]);
    for (int64_t i = 0; i < x.num_elements(); ++i) {
      EXPECT_EQ(back.data<float>()[i], dq_plain[0].data<float>()[i]) << "axis " << axis;
    }
  }
}

// ---- DequantizeLinear -------------------------------------------------------------------

Tensor Dequantize(const Tensor& x, const Tensor& scale, const Tensor* zp, int64_t axis = 1) {
  ModelBuilder mb;
  mb.Input("x", x);
  mb.Constant("s", scale);
  if (zp != nullptr) mb.Constant("z", *zp);
  SetInt(mb.Node("DequantizeLinear", {"x", "s", zp != nullptr ? "z" : ""}, {"y"}), "axis",
         axis);
  mb.Output("y", DataType::kFloat32);
  auto out = RunModel(mb.model(), {x});
  return out.empty() ? Tensor() : out[0];
}

void ExpectFloats(const Tensor& got, const std::vector<float>& want) {
  ASSERT_EQ(got.dtype(), DataType::kFloat32);
  ASSERT_EQ(got.num_elements(), static_cast<int64_t>(want.size()));
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got.data<float>()[i], want[i]) << i;
}

TEST(DequantizeLinearTest, PerTensorAndPerAxis) {
  const Tensor zp = U8({}, {128});
  ExpectFloats(Dequantize(U8({4}, {0, 3, 128, 255}), F32({}, {0.5f}), &zp),
               {-64.f, -62.5f, 0.f, 63.5f});
  // int32 (a bias) per axis 1, no zero point.
  ExpectFloats(Dequantize(S32({2, 3}, {1, -2, 3, 1000000, 5, -6}), F32({3}, {0.5f, 1, 2}),
                          nullptr, 1),
               {0.5f, -2.f, 6.f, 500000.f, 5.f, -12.f});
  // int8 per axis 0.
  const Tensor zp8 = S8({2}, {-1, 3});
  ExpectFloats(Dequantize(S8({2, 2}, {-128, 127, -128, 127}), F32({2}, {1.f, 0.25f}), &zp8, 0),
               {-127.f, 128.f, -32.75f, 31.f});
}

// ---- DynamicQuantizeLinear ----------------------------------------------------------------

std::vector<Tensor> DynamicQuantize(const Tensor& x) {
  ModelBuilder mb(11);
  mb.Input("x", x);
  mb.Node("DynamicQuantizeLinear", {"x"}, {"y", "s", "z"});
  mb.Output("y", DataType::kUInt8);
  mb.Output("s", DataType::kFloat32);
  mb.Output("z", DataType::kUInt8);
  return RunModel(mb.model(), {x});
}

TEST(DynamicQuantizeLinearTest, RangeIncludesZero) {
  // range [-3, 2]: scale 5/255, zp = round(3 / scale) = 153; values computed in float32
  // as the spec does (-2.5 / scale is just above -127.5, hence 26).
  auto out = DynamicQuantize(F32({6}, {0, 2, -3, -2.5f, 1.34f, 0.5f}));
  ASSERT_EQ(out.size(), 3u);
  ExpectInts(out[0], DataType::kUInt8, {6}, {153, 255, 0, 26, 221, 179});
  EXPECT_FLOAT_EQ(out[1].data<float>()[0], 5.f / 255.f);
  EXPECT_EQ(out[1].rank(), 0);
  ExpectInts(out[2], DataType::kUInt8, {}, {0 + 153});
  // All positive: min becomes 0, zp 0.
  out = DynamicQuantize(F32({4}, {1, 2.1f, 1.3f, 2.5f}));
  ExpectInts(out[0], DataType::kUInt8, {4}, {102, 214, 133, 255});
  ExpectInts(out[2], DataType::kUInt8, {}, {0});
  // All zero: no range; every value quantizes to the zero point 0.
  out = DynamicQuantize(F32({3}, {0, 0, 0}));
  ExpectInts(out[0], DataType::kUInt8, {3}, {0, 0, 0});
  ExpectInts(out[2], DataType::kUInt8, {}, {0});
  EXPECT_TRUE(std::isfinite(out[1].data<float>()[0]));
}

// ---- MatMulInteger / QLinearMatMul ---------------------------------------------------

// numpy matmul of (A - azp) (B - bzp) for rank >= 2 with broadcast batches; zero points
// given per (a batch, row) and (b batch, column).
using ZpFn = std::function<int32_t(int64_t batch, int64_t index)>;
Tensor NaiveMatMulInteger(const Tensor& a, const Tensor& b, ZpFn azp, ZpFn bzp) {
  const int ra = a.rank(), rb = b.rank(), r = std::max(ra, rb);
  Shape pa(r - ra, 1), pb(r - rb, 1);
  pa.insert(pa.end(), a.shape().begin(), a.shape().end());
  pb.insert(pb.end(), b.shape().begin(), b.shape().end());
  const int64_t m = pa[r - 2], k = pa[r - 1], n = pb[r - 1];
  Shape out_shape;
  for (int i = 0; i < r - 2; ++i) out_shape.push_back(std::max(pa[i], pb[i]));
  out_shape.push_back(m);
  out_shape.push_back(n);
  Tensor y(DataType::kInt32, out_shape);
  const int64_t batch = NumElements(out_shape) / std::max<int64_t>(1, m * n);
  for (int64_t bi = 0; bi < batch; ++bi) {
    int64_t rem = bi, ao = 0, bo = 0, as = 1, bs = 1;
    for (int d = r - 3; d >= 0; --d) {
      const int64_t idx = rem % out_shape[d];
      rem /= out_shape[d];
      ao += (pa[d] == 1 ? 0 : idx) * as;
      bo += (pb[d] == 1 ? 0 : idx) * bs;
      as *= pa[d];
      bs *= pb[d];
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        int64_t acc = 0;
        for (int64_t p = 0; p < k; ++p) {
          acc += static_cast<int64_t>(IntAt(a, (ao * m + i) * k + p) - azp(ao, i)) *
                 (IntAt(b, (bo * k + p) * n + j) - bzp(bo, j));
        }
        y.data<int32_t>()[(bi * m + i) * n + j] = static_cast<int32_t>(acc);
      }
  }
  return y;
}

Tensor MatMulInteger(const Tensor& a, const Tensor& b, const Tensor* azp, const Tensor* bzp,
                     bool const_b) {
  ModelBuilder mb(10);
  std::vector<Tensor> feeds;
  mb.Operand("a", a, false, &feeds);
  mb.Operand("b", b, const_b, &feeds);
  if (azp) mb.Operand("az", *azp, false, &feeds);
  if (bzp) mb.Operand("bz", *bzp, const_b, &feeds);
  mb.Node("MatMulInteger", {"a", "b", azp ? "az" : "", bzp ? "bz" : ""}, {"y"});
  mb.Output("y", DataType::kInt32);
  auto out = RunModel(mb.model(), feeds);
  return out.empty() ? Tensor() : out[0];
}

TEST_P(BothPaths, MatMulIntegerHandChecked) {
  // ONNX's example: (11-12)*1 + (7-12)*2 + (3-12)*3 = -38, ...
  const Tensor a = U8({4, 3}, {11, 7, 3, 10, 6, 2, 9, 5, 1, 8, 4, 0});
  const Tensor b = U8({3, 2}, {1, 4, 2, 5, 3, 6});
  const Tensor az = U8({1}, {12}), bz = U8({1}, {0});
  for (bool const_b : {false, true}) {
    ExpectInts(MatMulInteger(a, b, &az, &bz, const_b), DataType::kInt32, {4, 2},
               {-38, -83, -44, -98, -50, -113, -56, -128});
  }
  // Per-row a zero point and per-column b zero point:
  // A - azp = [[0,1],[1,2]], B - bzp = [[4,7],[6,9]] -> [[6,9],[16,25]].
  const Tensor a2 = S8({2, 2}, {1, 2, 3, 4}), b2 = S8({2, 2}, {5, 6, 7, 8});
  const Tensor az2 = S8({2}, {1, 2}), bz2 = S8({2}, {1, -1});
  for (bool const_b : {false, true}) {
    ExpectInts(MatMulInteger(a2, b2, &az2, &bz2, const_b), DataType::kInt32, {2, 2},
               {6, 9, 16, 25});
  }
}

struct MatMulCase {
  Shape a, b;
  DataType at, bt;
  int azp_kind;  // 0 none, 1 scalar, 2 per row (1-D)
  int bzp_kind;  // 0 none, 1 scalar, 2 per column (1-D)
};

TEST_P(BothPaths, MatMulIntegerMatchesNaive) {
  const DataType u8 = DataType::kUInt8, s8 = DataType::kInt8;
  const std::vector<MatMulCase> cases = {
      {{7, 300}, {300, 19}, u8, s8, 1, 1},      // dynamic-quantization shape, long K
      {{7, 300}, {300, 19}, u8, u8, 1, 2},      // u8 x u8, per-column b zp
      {{5, 33}, {33, 17}, s8, s8, 2, 2},        // s8 x s8, per-row / per-column
      {{5, 33}, {33, 17}, s8, u8, 0, 1},        // s8 x u8
      {{2, 3, 9, 40}, {40, 11}, u8, s8, 2, 0},  // batched A, 2-D B
      {{2, 1, 4, 16}, {3, 16, 5}, u8, u8, 1, 1},  // broadcast batches
      {{64, 256}, {256, 64}, u8, u8, 1, 1},     // larger: the OpenMP paths
  };
  Rng rng(7);
  for (const MatMulCase& c : cases) {
    const Tensor a = rng.Tensor8(c.at, c.a), b = rng.Tensor8(c.bt, c.b);
    const int64_t m = c.a[c.a.size() - 2], n = c.b.back();
    Tensor az = rng.Tensor8(c.at, c.azp_kind == 2 ? Shape{m} : Shape{});
    Tensor bz = rng.Tensor8(c.bt, c.bzp_kind == 2 ? Shape{n} : Shape{});
    auto azf = [&](int64_t, int64_t i) {
      return c.azp_kind == 0 ? 0 : IntAt(az, c.azp_kind == 2 ? i : 0);
    };
    auto bzf = [&](int64_t, int64_t j) {
      return c.bzp_kind == 0 ? 0 : IntAt(bz, c.bzp_kind == 2 ? j : 0);
    };
    const Tensor want = NaiveMatMulInteger(a, b, azf, bzf);
    for (bool const_b : {false, true}) {
      if (const_b && c.b.size() != 2) continue;
      SCOPED_TRACE(ShapeToString(c.a) + " x " + ShapeToString(c.b) +
                   (const_b ? " const" : " runtime"));
      ExpectSameInts(MatMulInteger(a, b, c.azp_kind ? &az : nullptr,
                                   c.bzp_kind ? &bz : nullptr, const_b),
                     want);
    }
  }
}

TEST_P(BothPaths, QLinearMatMulMatchesNaive) {
  Rng rng(11);
  for (DataType bt : {DataType::kUInt8, DataType::kInt8}) {
    for (bool const_b : {false, true}) {
      const Tensor a = rng.Tensor8(DataType::kUInt8, {2, 6, 50});
      const Tensor b = rng.Tensor8(bt, {50, 9});
      const Tensor az = U8({}, {131});
      Tensor bz = rng.Tensor8(bt, {9});
      const Tensor as = F32({}, {0.02f});
      Tensor bs(DataType::kFloat32, {9});
      for (int j = 0; j < 9; ++j) bs.data<float>()[j] = 0.001f * (j + 1);
      const Tensor ys = F32({}, {0.05f});
      const Tensor yz = S8({}, {-3});
      ModelBuilder mb(10);
      std::vector<Tensor> feeds;
      mb.Operand("a", a, false, &feeds);
      mb.Constant("as", as);
      mb.Constant("az", az);
      mb.Operand("b", b, const_b, &feeds);
      mb.Constant("bs", bs);
      mb.Constant("bz", bz);
      mb.Constant("ys", ys);
      mb.Constant("yz", yz);
      mb.Node("QLinearMatMul", {"a", "as", "az", "b", "bs", "bz", "ys", "yz"}, {"y"});
      mb.Output("y", DataType::kInt8);
      auto out = RunModel(mb.model(), feeds);
      ASSERT_EQ(out.size(), 1u);
      const Tensor acc = NaiveMatMulInteger(
          a, b, [&](int64_t, int64_t) { return 131; },
          [&](int64_t, int64_t j) { return IntAt(bz, j); });
      Tensor want(DataType::kInt8, acc.shape());
      int saturated = 0;
      for (int64_t i = 0; i < acc.num_elements(); ++i) {
        const int64_t j = i % 9;
        const float mult = 0.02f * bs.data<float>()[j] / 0.05f;
        float v = std::nearbyint(static_cast<float>(acc.data<int32_t>()[i]) * mult) - 3.f;
        saturated += v < -128.f || v > 127.f;
        v = std::min(127.f, std::max(-128.f, v));
        want.data<int8_t>()[i] = static_cast<int8_t>(v);
      }
      EXPECT_GT(saturated, 0);  // the case exercises saturation
      ExpectSameInts(out[0], want);
    }
  }
}

// ---- ConvInteger / QLinearConv --------------------------------------------------------

struct ConvGeom {
  int64_t group = 1;
  std::vector<int64_t> strides, pads, dilations;  // per spatial dim (pads: begin.., end..)
};

// conv(x - x_zp, w - w_zp[m]) on plain NC... tensors; padded taps are real zeros.
Tensor NaiveConvInteger(const Tensor& x, const Tensor& w, int32_t xzp,
                        const std::vector<int32_t>& wzp, const ConvGeom& g) {
  const int sp = x.rank() - 2;
  const int64_t n = x.dim(0), c = x.dim(1), m = w.dim(0), cg = c / g.group, mg = m / g.group;
  Shape in(3, 1), k(3, 1), st(3, 1), dl(3, 1), pb(3, 0), out_sp(3, 1);
  for (int i = 0; i < sp; ++i) {
    const int j = 3 - sp + i;
    in[j] = x.dim(2 + i);
    k[j] = w.dim(2 + i);
    st[j] = g.strides[i];
    dl[j] = g.dilations[i];
    pb[j] = g.pads[i];
    out_sp[j] = (in[j] + g.pads[i] + g.pads[sp + i] - ((k[j] - 1) * dl[j] + 1)) / st[j] + 1;
  }
  Shape out_shape = {n, m};
  for (int i = 0; i < sp; ++i) out_shape.push_back(out_sp[3 - sp + i]);
  Tensor y(DataType::kInt32, out_shape);
  for (int64_t b = 0; b < n; ++b)
    for (int64_t oc = 0; oc < m; ++oc)
      for (int64_t o0 = 0; o0 < out_sp[0]; ++o0)
        for (int64_t o1 = 0; o1 < out_sp[1]; ++o1)
          for (int64_t o2 = 0; o2 < out_sp[2]; ++o2) {
            int64_t acc = 0;
            const int64_t grp = oc / mg;
            for (int64_t ci = 0; ci < cg; ++ci)
              for (int64_t k0 = 0; k0 < k[0]; ++k0)
                for (int64_t k1 = 0; k1 < k[1]; ++k1)
                  for (int64_t k2 = 0; k2 < k[2]; ++k2) {
                    const int64_t i0 = o0 * st[0] - pb[0] + k0 * dl[0];
                    const int64_t i1 = o1 * st[1] - pb[1] + k1 * dl[1];
                    const int64_t i2 = o2 * st[2] - pb[2] + k2 * dl[2];
                    if (i0 < 0 || i0 >= in[0] || i1 < 0 || i1 >= in[1] || i2 < 0 ||
                        i2 >= in[2]) {
                      continue;
                    }
                    const int64_t xi =
                        (((b * c + grp * cg + ci) * in[0] + i0) * in[1] + i1) * in[2] + i2;
                    const int64_t wi = (((oc * cg + ci) * k[0] + k0) * k[1] + k1) * k[2] + k2;
                    acc += static_cast<int64_t>(IntAt(x, xi) - xzp) * (IntAt(w, wi) - wzp[oc]);
                  }
            y.data<int32_t>()[(((b * m + oc) * out_sp[0] + o0) * out_sp[1] + o1) * out_sp[2] +
                              o2] = static_cast<int32_t>(acc);
          }
  return y;
}

void SetGeometry(onnx::NodeProto* node, const ConvGeom& g) {
  SetInt(node, "group", g.group);
  SetInts(node, "strides", g.strides);
  SetInts(node, "pads", g.pads);
  SetInts(node, "dilations", g.dilations);
}

TEST_P(BothPaths, ConvIntegerWithPaddingHandChecked) {
  // ONNX's example: x - 1 = 1..9 padded with (real) zeros, 2x2 ones -> window sums.
  const Tensor x = U8({1, 1, 3, 3}, {2, 3, 4, 5, 6, 7, 8, 9, 10});
  const Tensor w = U8({1, 1, 2, 2}, {1, 1, 1, 1});
  for (bool const_w : {false, true}) {
    ModelBuilder mb(10);
    std::vector<Tensor> feeds;
    mb.Operand("x", x, false, &feeds);
    mb.Operand("w", w, const_w, &feeds);
    mb.Constant("xz", U8({}, {1}));
    SetInts(mb.Node("ConvInteger", {"x", "w", "xz"}, {"y"}), "pads", {1, 1, 1, 1});
    mb.Output("y", DataType::kInt32);
    auto out = RunModel(mb.model(), feeds);
    ASSERT_EQ(out.size(), 1u);
    ExpectInts(out[0], DataType::kInt32, {1, 1, 4, 4},
               {1, 3, 5, 3, 5, 12, 16, 9, 11, 24, 28, 15, 7, 15, 17, 9});
  }
}

struct ConvCase {
  Shape x, w;
  DataType xt, wt;
  ConvGeom g;
  bool per_channel_zp;
};

TEST_P(BothPaths, ConvIntegerMatchesNaive) {
  const DataType u8 = DataType::kUInt8, s8 = DataType::kInt8;
  const std::vector<ConvCase> cases = {
      // 2-D, s8 weights (d = 0 after the shift only for s8 zp 0: per-channel zps here)
      {{2, 16, 9, 9}, {24, 16, 3, 3}, u8, s8, {1, {1, 1}, {1, 1, 1, 1}, {1, 1}}, true},
      // u8 weights, asymmetric per-channel zps, stride 2, uneven pads
      {{1, 8, 11, 10}, {12, 8, 3, 3}, u8, u8, {1, {2, 2}, {1, 0, 2, 1}, {1, 1}}, true},
      // grouped + dilated, s8 activations
      {{1, 12, 10, 10}, {6, 4, 3, 3}, s8, u8, {3, {1, 1}, {2, 2, 2, 2}, {2, 2}}, false},
      // depthwise
      {{1, 32, 7, 7}, {32, 1, 3, 3}, u8, s8, {32, {1, 1}, {1, 1, 1, 1}, {1, 1}}, true},
      // 1-D and 3-D
      {{2, 5, 17}, {7, 5, 4}, u8, u8, {1, {3}, {2, 1}, {1}}, true},
      {{1, 3, 5, 6, 4}, {4, 3, 2, 3, 2}, s8, s8, {1, {1, 2, 1}, {1, 1, 0, 0, 1, 1}, {1, 1, 2}},
       true},
  };
  Rng rng(3);
  for (const ConvCase& c : cases) {
    const Tensor x = rng.Tensor8(c.xt, c.x), w = rng.Tensor8(c.wt, c.w);
    const int64_t m = c.w[0];
    const Tensor xz = rng.Tensor8(c.xt, {});
    const Tensor wz = rng.Tensor8(c.wt, c.per_channel_zp ? Shape{m} : Shape{});
    std::vector<int32_t> wzp(m);
    for (int64_t i = 0; i < m; ++i) wzp[i] = IntAt(wz, c.per_channel_zp ? i : 0);
    const Tensor want = NaiveConvInteger(x, w, IntAt(xz, 0), wzp, c.g);
    for (bool const_w : {false, true}) {
      SCOPED_TRACE(ShapeToString(c.x) + " * " + ShapeToString(c.w) +
                   (const_w ? " const" : " runtime"));
      ModelBuilder mb(10);
      std::vector<Tensor> feeds;
      mb.Operand("x", x, false, &feeds);
      mb.Operand("w", w, const_w, &feeds);
      mb.Operand("xz", xz, false, &feeds);
      mb.Operand("wz", wz, const_w, &feeds);
      SetGeometry(mb.Node("ConvInteger", {"x", "w", "xz", "wz"}, {"y"}), c.g);
      mb.Output("y", DataType::kInt32);
      auto out = RunModel(mb.model(), feeds);
      ASSERT_EQ(out.size(), 1u);
      ExpectSameInts(out[0], want);
    }
  }
}

TEST_P(BothPaths, QLinearConvU8WeightsHandChecked) {
  // x - 10 = 0, 10, 20, 30; w - w_zp = 130 - 125 = 5 and 120 - 131 = -11 (u8 weights
  // with asymmetric zero points, shifted to s8 inside); bias 8 and -4;
  // multipliers 0.5 * 0.25 / 1 = 0.125 and 0.5 * 0.5 / 1 = 0.25.
  //   c0: (8, 58, 108, 158) * 0.125 = 1, 7.25, 13.5, 19.75 -> 1, 7, 14, 20 (+100)
  //   c1: (-4, -114, -224, -334) * 0.25 = -1, -28.5, -56, -83.5 -> -1, -28, -56, -84
  const Tensor x = U8({1, 1, 2, 2}, {10, 20, 30, 40});
  const Tensor w = U8({2, 1, 1, 1}, {130, 120});
  for (bool const_w : {false, true}) {
    ModelBuilder mb(10);
    std::vector<Tensor> feeds;
    mb.Operand("x", x, false, &feeds);
    mb.Constant("xs", F32({}, {0.5f}));
    mb.Constant("xz", U8({}, {10}));
    mb.Operand("w", w, const_w, &feeds);
    mb.Constant("ws", F32({2}, {0.25f, 0.5f}));
    mb.Constant("wz", U8({2}, {125, 131}));
    mb.Constant("ys", F32({}, {1.f}));
    mb.Constant("yz", U8({}, {100}));
    mb.Constant("b", S32({2}, {8, -4}));
    mb.Node("QLinearConv", {"x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"}, {"y"});
    mb.Output("y", DataType::kUInt8);
    auto out = RunModel(mb.model(), feeds);
    ASSERT_EQ(out.size(), 1u);
    ExpectInts(out[0], DataType::kUInt8, {1, 2, 2, 2},
               {101, 107, 114, 120, 99, 72, 44, 16});
  }
}

// Two chained QLinearConvs (u8 activations stay channels-last between them), then
// DequantizeLinear, against the naive integer conv and requantization.
TEST_P(BothPaths, QLinearConvChainMatchesNaive) {
  Rng rng(5);
  const Tensor x = rng.Tensor8(DataType::kUInt8, {2, 8, 9, 9});
  const Tensor w1 = rng.Tensor8(DataType::kUInt8, {16, 8, 3, 3});
  const Tensor w2 = rng.Tensor8(DataType::kInt8, {8, 16, 1, 1});
  Tensor wz1 = rng.Tensor8(DataType::kUInt8, {16});
  const Tensor wz2 = S8({8}, {0, 0, 0, 0, 0, 0, 0, 0});
  Tensor ws1(DataType::kFloat32, {16}), ws2(DataType::kFloat32, {8});
  for (int i = 0; i < 16; ++i) ws1.data<float>()[i] = 0.002f + 0.0005f * i;
  for (int i = 0; i < 8; ++i) ws2.data<float>()[i] = 0.01f + 0.001f * i;
  Tensor b1(DataType::kInt32, {16});
  for (int i = 0; i < 16; ++i) b1.data<int32_t>()[i] = (i - 8) * 1000;
  const float xs = 0.05f, s1 = 0.4f, s2 = 0.3f;
  const int32_t xz = 120, z1 = 128, z2 = 5;

  auto requant = [](const Tensor& acc, const std::vector<int32_t>& bias,
                    const std::vector<float>& mult, int32_t zp, DataType type) {
    Tensor y(type, acc.shape());
    const int64_t m = acc.dim(1), inner = acc.num_elements() / (acc.dim(0) * m);
    const float lo = type == DataType::kUInt8 ? 0.f : -128.f;
    const float hi = type == DataType::kUInt8 ? 255.f : 127.f;
    for (int64_t i = 0; i < acc.num_elements(); ++i) {
      const int64_t c = (i / inner) % m;
      float v = std::nearbyint(static_cast<float>(acc.data<int32_t>()[i] + bias[c]) * mult[c]);
      v = std::min(hi, std::max(lo, v + zp));
      if (type == DataType::kUInt8) {
        y.data<uint8_t>()[i] = static_cast<uint8_t>(v);
      } else {
        y.data<int8_t>()[i] = static_cast<int8_t>(v);
      }
    }
    return y;
  };
  std::vector<int32_t> wzp1(16), bias1(16), zeros8(8, 0);
  std::vector<float> mult1(16), mult2(8);
  for (int i = 0; i < 16; ++i) {
    wzp1[i] = wz1.data<uint8_t>()[i];
    bias1[i] = b1.data<int32_t>()[i];
    mult1[i] = xs * ws1.data<float>()[i] / s1;
  }
  for (int i = 0; i < 8; ++i) mult2[i] = s1 * ws2.data<float>()[i] / s2;
  const ConvGeom g1{1, {1, 1}, {1, 1, 1, 1}, {1, 1}}, g2{1, {2, 2}, {0, 0, 0, 0}, {1, 1}};
  const Tensor y1 = requant(NaiveConvInteger(x, w1, xz, wzp1, g1), bias1, mult1, z1,
                            DataType::kUInt8);
  const Tensor y2 = requant(NaiveConvInteger(y1, w2, z1, zeros8, g2), zeros8, mult2, z2,
                            DataType::kInt8);

  for (bool const_w : {false, true}) {
    ModelBuilder mb(13);
    std::vector<Tensor> feeds;
    mb.Operand("x", x, false, &feeds);
    mb.Constant("xs", F32({}, {xs}));
    mb.Constant("xz", U8({}, {static_cast<uint8_t>(xz)}));
    mb.Operand("w1", w1, const_w, &feeds);
    mb.Constant("ws1", ws1);
    mb.Constant("wz1", wz1);
    mb.Constant("s1", F32({}, {s1}));
    mb.Constant("z1", U8({}, {static_cast<uint8_t>(z1)}));
    mb.Constant("b1", b1);
    mb.Operand("w2", w2, const_w, &feeds);
    mb.Constant("ws2", ws2);
    mb.Constant("wz2", wz2);
    mb.Constant("s2", F32({}, {s2}));
    mb.Constant("z2", S8({}, {static_cast<int8_t>(z2)}));
    SetGeometry(mb.Node("QLinearConv", {"x", "xs", "xz", "w1", "ws1", "wz1", "s1", "z1", "b1"},
                        {"y1"}),
                g1);
    SetGeometry(mb.Node("QLinearConv", {"y1", "s1", "z1", "w2", "ws2", "wz2", "s2", "z2"},
                        {"y2"}),
                g2);
    mb.Node("DequantizeLinear", {"y2", "s2", "z2"}, {"f"});
    mb.Output("y2", DataType::kInt8);
    mb.Output("f", DataType::kFloat32);
    auto out = RunModel(mb.model(), feeds);
    ASSERT_EQ(out.size(), 2u);
    ExpectSameInts(out[0], y2);
    for (int64_t i = 0; i < y2.num_elements(); ++i) {
      ASSERT_EQ(out[1].data<float>()[i], (y2.data<int8_t>()[i] - z2) * s2) << i;
    }
  }
}

// ---- FoldQdqIntoReducedPrecision -----------------------------------------------------

// The graph back as a model (nodes with their engine attributes, initializers), so that
// Session::Compile runs what a pass produced.
onnx::ModelProto ExportGraph(const Graph& g, const onnx::ModelProto& original) {
  onnx::ModelProto m = original;
  auto* gp = m.mutable_graph();
  gp->clear_node();
  gp->clear_initializer();
  gp->clear_value_info();
  for (const Node& n : g.nodes) {
    auto* np = gp->add_node();
    np->set_name(n.name);
    np->set_op_type(n.op_type);
    np->set_domain(n.domain);
    for (const auto& i : n.inputs) np->add_input(i);
    for (const auto& o : n.outputs) np->add_output(o);
    for (const auto& a : n.attrs.Names()) *np->add_attribute() = *n.attrs.Get(a);
  }
  for (const auto& [name, t] : g.initializers) *gp->add_initializer() = TensorToProto(t, name);
  return m;
}

// ONNX Runtime's QDQ Conv: x -> Q -> DQ -> Conv(DQ(int8 W), DQ(int32 B)) -> Q -> DQ.
// `per_channel`: symmetric per-channel weights where every channel reaches +-127 (ORT's
// default), else one scale for the tensor.
// `chained`: a second QDQ Conv (1x1) reads the first one's DequantizeLinear output.
onnx::ModelProto QdqConvModel(bool per_channel, const Tensor& x, bool chained = false) {
  const int64_t m = 16, c = 8;
  Rng rng(9);
  Tensor wq = rng.Tensor8(DataType::kInt8, {m, c, 3, 3});
  Tensor ws(DataType::kFloat32, per_channel ? Shape{m} : Shape{});
  for (int64_t o = 0; o < m; ++o) {
    int8_t* w = wq.data<int8_t>() + o * c * 9;
    for (int64_t i = 0; i < c * 9; ++i) w[i] = static_cast<int8_t>(std::max<int>(w[i], -127));
    if (per_channel) {
      w[o % 9] = o % 2 ? 127 : -127;
      ws.data<float>()[o] = 0.001f * (o + 1);
    } else if (o < m / 2) {
      for (int64_t i = 0; i < c * 9; ++i) w[i] = static_cast<int8_t>(w[i] / 3);
    }
  }
  if (!per_channel) ws.data<float>()[0] = 0.004f;
  const float xs = 0.05f;
  Tensor bq(DataType::kInt32, {m}), bs(DataType::kFloat32, {m});
  for (int64_t o = 0; o < m; ++o) {
    bq.data<int32_t>()[o] = static_cast<int32_t>((o - 7) * 150);
    bs.data<float>()[o] = xs * ws.data<float>()[per_channel ? o : 0];
  }
  ModelBuilder mb(13);
  mb.Input("x", x);
  mb.Constant("xs", F32({}, {xs}));
  mb.Constant("xz", U8({}, {100}));
  mb.Constant("wq", wq);
  mb.Constant("ws", ws);
  mb.Constant("wz", per_channel ? S8({m}, std::vector<int8_t>(m, 0)) : S8({}, {0}));
  mb.Constant("bq", bq);
  mb.Constant("bs", bs);
  mb.Constant("bz", S32({m}, std::vector<int32_t>(m, 0)));
  mb.Constant("ys", F32({}, {0.1f}));
  mb.Constant("yz", U8({}, {10}));
  mb.Node("QuantizeLinear", {"x", "xs", "xz"}, {"xq"});
  mb.Node("DequantizeLinear", {"xq", "xs", "xz"}, {"xd"});
  SetInt(mb.Node("DequantizeLinear", {"wq", "ws", "wz"}, {"w"}), "axis", 0);
  SetInt(mb.Node("DequantizeLinear", {"bq", "bs", "bz"}, {"b"}), "axis", 0);
  SetInts(mb.Node("Conv", {"xd", "w", "b"}, {"c"}), "pads", {1, 1, 1, 1});
  mb.Node("QuantizeLinear", {"c", "ys", "yz"}, {"cq"});
  mb.Node("DequantizeLinear", {"cq", "ys", "yz"}, {"y"});
  if (!chained) {
    mb.Output("y", DataType::kFloat32);
    return mb.model();
  }
  Tensor w2 = rng.Tensor8(DataType::kInt8, {8, m, 1, 1});
  Tensor ws2(DataType::kFloat32, {8});
  for (int64_t o = 0; o < 8; ++o) {
    int8_t* w = w2.data<int8_t>() + o * m;
    for (int64_t i = 0; i < m; ++i) w[i] = static_cast<int8_t>(std::max<int>(w[i], -127));
    w[o] = 127;
    ws2.data<float>()[o] = 0.002f * (o + 1);
  }
  mb.Constant("w2q", w2);
  mb.Constant("w2s", ws2);
  mb.Constant("w2z", S8({8}, std::vector<int8_t>(8, 0)));
  mb.Constant("y2s", F32({}, {0.2f}));
  mb.Constant("y2z", U8({}, {128}));
  SetInt(mb.Node("DequantizeLinear", {"w2q", "w2s", "w2z"}, {"w2"}), "axis", 0);
  mb.Node("Conv", {"y", "w2"}, {"c2"});
  mb.Node("QuantizeLinear", {"c2", "y2s", "y2z"}, {"c2q"});
  mb.Node("DequantizeLinear", {"c2q", "y2s", "y2z"}, {"y2"});
  mb.Output("y2", DataType::kFloat32);
  return mb.model();
}

// Imports `model`, runs the pass, and returns the first Conv node's copy (and the
// second's, if any) and the new model.
onnx::ModelProto FoldQdq(const onnx::ModelProto& model, Node* conv, Node* conv2 = nullptr) {
  auto g = ImportGraph(model);
  EXPECT_TRUE(g.ok()) << g.status();
  if (!g.ok()) return model;
  EXPECT_TRUE(RemoveIdentityNodes(&*g).ok());
  const absl::Status st = FoldQdqIntoReducedPrecision(&*g);
  EXPECT_TRUE(st.ok()) << st;
  int convs = 0;
  for (const Node& n : g->nodes) {
    if (n.op_type != "Conv") continue;
    if (convs++ == 0) {
      *conv = n;
    } else if (conv2 != nullptr) {
      *conv2 = n;
    }
  }
  return ExportGraph(*g, model);
}

Tensor QdqInput() {
  Tensor x(DataType::kFloat32, {2, 8, 7, 7});
  Rng rng(4);
  for (int64_t i = 0; i < x.num_elements(); ++i) {
    // Off the quantization grid (no ties): [-4.5, 5.5)
    x.data<float>()[i] = static_cast<float>(rng.Next() % 1000003) * 1e-5f - 4.5f;
  }
  return x;
}

TEST(FoldQdqTest, SymmetricPerChannelConvRunsInt8) {
  const Tensor x = QdqInput();
  const onnx::ModelProto model = QdqConvModel(/*per_channel=*/true, x);
  Node conv;
  const onnx::ModelProto folded = FoldQdq(model, &conv);
  ASSERT_EQ(conv.op_type, "Conv");
  EXPECT_EQ(conv.attrs.GetString(kPrecisionAttr, ""), kPrecisionStatic);
  EXPECT_EQ(conv.inputs[0], "x");  // reads the float input; the kernel quantizes it
  // u8 zero point 100, scale 0.05: [(0 - 100) * 0.05, (255 - 100) * 0.05]
  EXPECT_FLOAT_EQ(conv.attrs.GetFloat(kActMinAttr, 0), -5.f);
  EXPECT_FLOAT_EQ(conv.attrs.GetFloat(kActMaxAttr, 0), 7.75f);
  // Same integer weights and activations as the simulated-quantization graph: the
  // outputs (quantized again with step 0.1) agree but for accumulation-order ties.
  const auto want = RunModel(model, {x});
  const auto got = RunModel(folded, {x});
  ASSERT_EQ(want.size(), 1u);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(ShapeToString(got[0].shape()), "[2,16,7,7]");
  int64_t differ = 0;
  for (int64_t i = 0; i < want[0].num_elements(); ++i) {
    const float d = std::fabs(got[0].data<float>()[i] - want[0].data<float>()[i]);
    EXPECT_LE(d, 0.1f + 1e-5f) << i;
    differ += d > 0;
  }
  EXPECT_LE(differ, want[0].num_elements() / 100);
}

TEST(FoldQdqTest, ChainedConvsPassU8) {
  const Tensor x = QdqInput();
  const onnx::ModelProto model = QdqConvModel(/*per_channel=*/true, x, /*chained=*/true);
  Node conv1, conv2;
  const onnx::ModelProto folded = FoldQdq(model, &conv1, &conv2);
  ASSERT_EQ(conv2.op_type, "Conv");
  EXPECT_EQ(conv2.attrs.GetString(kPrecisionAttr, ""), kPrecisionStatic);
  EXPECT_EQ(conv2.inputs[0], conv1.outputs[0]);
  // conv1 writes u8 in conv2's input quantization (scale 0.1, zero point 10).
  EXPECT_FLOAT_EQ(conv1.attrs.GetFloat(kOutMinAttr, 0), -1.f);
  EXPECT_FLOAT_EQ(conv1.attrs.GetFloat(kOutMaxAttr, 0), 24.5f);
  EXPECT_FLOAT_EQ(conv2.attrs.GetFloat(kActMinAttr, 0), -1.f);
  EXPECT_FLOAT_EQ(conv2.attrs.GetFloat(kActMaxAttr, 0), 24.5f);
  const auto want = RunModel(model, {x});
  const auto got = RunModel(folded, {x});
  ASSERT_EQ(want.size(), 1u);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(ShapeToString(got[0].shape()), "[2,8,7,7]");
  int64_t differ = 0;
  for (int64_t i = 0; i < want[0].num_elements(); ++i) {
    const float d = std::fabs(got[0].data<float>()[i] - want[0].data<float>()[i]);
    EXPECT_LE(d, 0.2f + 1e-5f) << i;  // one output step
    differ += d > 0;
  }
  EXPECT_LE(differ, want[0].num_elements() / 50);
}

TEST(FoldQdqTest, PerTensorWeightsStaySimulated) {
  // Re-quantizing per-tensor weights per channel would round them a second time.
  const Tensor x = QdqInput();
  Node conv;
  const onnx::ModelProto folded = FoldQdq(QdqConvModel(/*per_channel=*/false, x), &conv);
  ASSERT_EQ(conv.op_type, "Conv");
  EXPECT_FALSE(conv.attrs.Has(kPrecisionAttr));
  EXPECT_EQ(conv.inputs[0], "xd");
  EXPECT_EQ(RunModel(folded, {x}).size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Int8, BothPaths, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "ReferenceLoops" : "OneDnn";
                         });

}  // namespace
}  // namespace qs
