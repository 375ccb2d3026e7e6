// BatchSplitEnd chooses the per-sample prefix of a CNN; a session that splits must give
// what running each sample alone gives.
#include "engine/batch_split.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/onnx_import.h"
#include "engine/ops/reduced_precision.h"
#include "engine/session.h"
#include "gtest/gtest.h"
#include "tests/engine/ops/model_builder.h"
#include "tests/engine/threads_scope.h"

namespace qs {
namespace {

void AddConv(ModelBuilder* b, const std::string& x, const std::string& y, int64_t in,
             int64_t out, int seed) {
  b->Constant(y + "_w", Gaussian({out, in, 3, 3}, std::sqrt(2.f / (in * 9)), seed));
  b->Constant(y + "_b", Gaussian({out}, 0.1f, seed + 1));
  SetInts(b->Node("Conv", {x, y + "_w", y + "_b"}, {y}), "pads", {1, 1, 1, 1});
}

// x [N, 8, size, size] -conv-> relu -pool-> conv -> relu -> (+ residual conv) -> GAP ->
// Flatten -> Gemm: a CNN whose early maps are large and whose head is not per sample.
onnx::ModelProto SmallCnn(int64_t size, bool fixed_batch) {
  ModelBuilder b;
  b.Input("x", {fixed_batch ? 2 : -1, 8, size, size});
  b.Output("y");
  AddConv(&b, "x", "c1", 8, 32, 1);
  b.Node("Relu", {"c1"}, {"r1"});
  auto* pool = b.Node("MaxPool", {"r1"}, {"p1"});
  SetInts(pool, "kernel_shape", {2, 2});
  SetInts(pool, "strides", {2, 2});
  AddConv(&b, "p1", "c2", 32, 32, 3);
  b.Node("Relu", {"c2"}, {"r2"});
  AddConv(&b, "r2", "c3", 32, 32, 5);
  b.Node("Add", {"c3", "p1"}, {"s3"});
  b.Node("GlobalAveragePool", {"s3"}, {"g"});
  b.Node("Flatten", {"g"}, {"f"});
  b.Constant("fc_w", Gaussian({10, 32}, 0.2f, 7));
  auto* gemm = b.Node("Gemm", {"f", "fc_w"}, {"y"});
  SetInt(gemm, "transB", 1);
  onnx::ModelProto m = b.model();
  m.mutable_graph()->set_name("small_cnn");
  auto* shape = m.mutable_graph()->mutable_output(0)->mutable_type()
                    ->mutable_tensor_type()->mutable_shape();
  shape->add_dim()->set_dim_param("n");
  shape->add_dim()->set_dim_value(10);
  auto parsed = ParseOnnxModel(m.SerializeAsString(), "small_cnn");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : m;
}

size_t SplitEnd(const onnx::ModelProto& model, size_t min_bytes) {
  auto graph = ImportGraph(model);
  EXPECT_TRUE(graph.ok()) << graph.status();
  return graph.ok() ? BatchSplitEnd(*graph, min_bytes) : 0;
}

TEST(BatchSplitEndTest, EndsAfterTheLastLargeSeparableNode) {
  const onnx::ModelProto m = SmallCnn(64, false);
  // Per-sample outputs: c1/r1 32x64x64x4 = 512 KiB, p1..s3 32x32x32x4 = 128 KiB.
  EXPECT_EQ(SplitEnd(m, 512 * 1024), 2u);   // c1, r1
  EXPECT_EQ(SplitEnd(m, 128 * 1024), 7u);   // through the residual Add, before the GAP
  EXPECT_EQ(SplitEnd(m, 1 << 20), 0u);      // nothing that large
}

TEST(BatchSplitEndTest, IntegerPlansSplitOnlyThroughAnIntegerNode) {
  auto graph = ImportGraph(SmallCnn(64, false));
  ASSERT_TRUE(graph.ok()) << graph.status();
  ASSERT_EQ(BatchSplitEnd(*graph, 128 * 1024), 7u);
  EXPECT_FALSE(HasIntegerNodes(*graph, graph->nodes.size()));
  for (const char* precision : {kPrecisionStatic, kPrecisionDynamic}) {
    Graph g = *graph;
    g.nodes[3].attrs.SetString(kPrecisionAttr, precision);  // the second conv
    EXPECT_EQ(BatchSplitEnd(g, 128 * 1024), 7u) << precision;
    EXPECT_TRUE(HasIntegerNodes(g, 4));
    EXPECT_FALSE(HasIntegerNodes(g, 3));
    // Only the head is integer: a float prefix would be concatenated back whole.
    Graph head = *graph;
    head.nodes.back().attrs.SetString(kPrecisionAttr, precision);  // the Gemm
    EXPECT_EQ(BatchSplitEnd(head, 128 * 1024), 0u) << precision;
  }
  Graph bf16 = *graph;
  bf16.nodes[3].attrs.SetString(kPrecisionAttr, kPrecisionBf16);
  EXPECT_EQ(BatchSplitEnd(bf16, 128 * 1024), 7u);
}

TEST(BatchSplitEndTest, NoSplitWithoutAFreeBatchDimension) {
  EXPECT_EQ(SplitEnd(SmallCnn(64, true), 128 * 1024), 0u);
}

TEST(BatchSplitEndTest, MaxPoolWithIndicesEndsThePrefix) {
  ModelBuilder b;
  b.Input("x", {-1, 4, 64, 64});
  b.Output("y");
  auto* pool = b.Node("MaxPool", {"x"}, {"y", "idx"});
  SetInts(pool, "kernel_shape", {2, 2});
  b.Output("idx", onnx::TensorProto::INT64);
  auto graph = ImportGraph(b.model());
  ASSERT_TRUE(graph.ok()) << graph.status();
  EXPECT_EQ(BatchSplitEnd(*graph, 1), 0u);
}

// The session splits SmallCnn at batch 4 (its prefix holds the 8 MiB-per-sample maps of
// a 256x256 input); the result must match each sample run alone. Batch 2 is not split.
TEST(BatchSplitSessionTest, SplitRunMatchesSamplesRunAlone) {
  const onnx::ModelProto m = SmallCnn(256, false);  // c1: 32x256x256x4 = 8 MiB per sample
  ASSERT_GT(SplitEnd(m, 1 << 20), 0u);
  auto session = Session::Compile(m, CompileOptions());
  ASSERT_TRUE(session.ok()) << session.status();
  auto ctx = (*session)->NewContext();
  const Tensor x = Gaussian({4, 8, 256, 256}, 1.f, 11);
  std::vector<Tensor> whole;
  ctx->set_profiling(true);
  ASSERT_TRUE((*session)->Run(ctx.get(), {x}, &whole).ok());
  ctx->set_profiling(false);
  ASSERT_EQ(whole[0].shape(), Shape({4, 10}));
  // The first kernel ran once per sample, the head once for the batch.
  EXPECT_EQ(ctx->profile().front().calls, 4);
  EXPECT_EQ(ctx->profile().back().calls, 1);
  {
    auto ctx2 = (*session)->NewContext();
    ctx2->set_profiling(true);
    std::vector<Tensor> two;
    Tensor x2(DataType::kFloat32, {2, 8, 256, 256});
    ASSERT_TRUE((*session)->Run(ctx2.get(), {x2}, &two).ok());
    EXPECT_EQ(ctx2->profile().front().calls, 1);
  }
  for (int64_t s = 0; s < 4; ++s) {
    Tensor one(DataType::kFloat32, {1, 8, 256, 256});
    std::copy(x.data<float>() + s * one.num_elements(),
              x.data<float>() + (s + 1) * one.num_elements(), one.data<float>());
    std::vector<Tensor> alone;
    ASSERT_TRUE((*session)->Run(ctx.get(), {one}, &alone).ok());
    for (int64_t j = 0; j < 10; ++j) {
      const float want = alone[0].data<float>()[j];
      EXPECT_NEAR(whole[0].data<float>()[s * 10 + j], want, 1e-5f * (1.f + std::fabs(want)))
          << "sample " << s << " class " << j;
    }
  }
}

// DYNAMIC_RANGE observes each activation's range per run, so a per-sample prefix run
// shows in the result: it is each sample's own range. Integer plans split only on one
// thread, that is inside a batch shard (batch 8 on 2 threads), and not on a 2-thread
// team (batch 5 runs whole: it does not divide into shards).
TEST(BatchSplitSessionTest, IntegerPlansSplitOnlyInsideBatchShards) {
  const onnx::ModelProto m = SmallCnn(256, false);
  CompileOptions options;
  options.precision = Precision::kDynamicRange;
  options.max_batch_size = 8;
  auto session = Session::Compile(m, options);
  ASSERT_TRUE(session.ok()) << session.status();
  Tensor x = Gaussian({8, 8, 256, 256}, 1.f, 12);
  const int64_t per_sample = x.num_elements() / 8;
  for (int64_t i = 0; i < x.num_elements(); ++i) {
    x.data<float>()[i] *= 1.f + static_cast<float>(i / per_sample);  // ranges differ
  }
  std::vector<std::vector<float>> alone(8);
  {
    ThreadsScope one(1);
    auto ctx = (*session)->NewContext();
    for (int64_t s = 0; s < 8; ++s) {
      std::vector<Tensor> out;
      ASSERT_TRUE((*session)->Run(ctx.get(), {x.Rows(s, 1)}, &out).ok());
      alone[s].assign(out[0].data<float>(), out[0].data<float>() + 10);
    }
  }
  ThreadsScope two(2);
  auto max_diff = [&](const Tensor& got, int64_t rows) {
    double d = 0;
    for (int64_t s = 0; s < rows; ++s) {
      for (int64_t j = 0; j < 10; ++j) {
        d = std::max(d, std::fabs(double{got.data<float>()[s * 10 + j]} - alone[s][j]) /
                            (1.0 + std::fabs(alone[s][j])));
      }
    }
    return d;
  };
  auto ctx = (*session)->NewContext();
  std::vector<Tensor> sharded;
  ASSERT_TRUE((*session)->Run(ctx.get(), {x}, &sharded).ok());
  EXPECT_EQ(ctx->batch_shard_contexts(), 2);
  EXPECT_LE(max_diff(sharded[0], 8), 1e-5);
  std::vector<Tensor> team;
  ASSERT_TRUE((*session)->Run(ctx.get(), {x.Rows(0, 5)}, &team).ok());
  EXPECT_GT(max_diff(team[0], 5), 1e-4);  // one range for the batch: not split
}

}  // namespace
}  // namespace qs
