// Session::Run cuts a batch into one row range per OpenMP thread (session.h, "Batch
// shards"). What a sharded run returns must be what running each range alone returns,
// the calling thread's OpenMP settings must survive it, and a batch or model that cannot
// be cut must run whole.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/onnx_import.h"
#include "engine/session.h"
#include "gtest/gtest.h"
#include "tests/engine/ops/model_builder.h"
#include "tests/engine/threads_scope.h"

namespace qs {
namespace {

// x [N, 8, 32, 32] -> Conv 3x3 (16) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> y
// [N, 10]. `extra` adds a second output: "flat" (y reshaped to one dimension: batched,
// but not along a leading batch dimension) or "const" (a fixed [3] constant).
onnx::ModelProto SmallCnn(const std::string& extra = "") {
  ModelBuilder b;
  b.Input("x", {-1, 8, 32, 32});
  b.Output("y");
  b.Constant("w", Gaussian({16, 8, 3, 3}, 0.2f, 1));
  b.Constant("bias", Gaussian({16}, 0.1f, 2));
  SetInts(b.Node("Conv", {"x", "w", "bias"}, {"c"}), "pads", {1, 1, 1, 1});
  b.Node("Relu", {"c"}, {"r"});
  b.Node("GlobalAveragePool", {"r"}, {"g"});
  b.Node("Flatten", {"g"}, {"f"});
  b.Constant("fc_w", Gaussian({10, 16}, 0.3f, 3));
  SetInt(b.Node("Gemm", {"f", "fc_w"}, {"y"}), "transB", 1);
  if (extra == "flat") {
    Tensor shape(DataType::kInt64, {1});
    shape.data<int64_t>()[0] = -1;
    b.Constant("flat_shape", shape);
    b.Node("Reshape", {"y", "flat_shape"}, {"flat"});
    b.Output("flat");
  } else if (extra == "const") {
    b.Constant("k", Gaussian({3}, 1.f, 4));
    b.Node("Identity", {"k"}, {"const"});
    b.Output("const");
  }
  onnx::ModelProto m = b.model();
  m.mutable_graph()->set_name("small_cnn");
  // Declared output shapes, -1 for a symbolic dimension.
  auto declare = [&m](int output, const Shape& shape) {
    auto* dims = m.mutable_graph()->mutable_output(output)->mutable_type()
                     ->mutable_tensor_type()->mutable_shape();
    for (int64_t d : shape) {
      if (d < 0) {
        dims->add_dim()->set_dim_param(absl::StrCat("d", output));
      } else {
        dims->add_dim()->set_dim_value(d);
      }
    }
  };
  declare(0, {-1, 10});
  if (extra == "flat") declare(1, {-1});
  if (extra == "const") declare(1, {3});
  auto parsed = ParseOnnxModel(m.SerializeAsString(), "small_cnn");
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  return parsed.ok() ? *parsed : m;
}

std::unique_ptr<Session> CompileOrDie(const onnx::ModelProto& model, Precision precision,
                                      int max_batch_size) {
  CompileOptions options;
  options.precision = precision;
  options.max_batch_size = max_batch_size;
  auto session = Session::Compile(model, options);
  EXPECT_TRUE(session.ok()) << session.status();
  return session.ok() ? *std::move(session) : nullptr;
}

std::vector<Tensor> RunOrDie(const Session& session, ExecutionContext* ctx,
                             const std::vector<Tensor>& inputs) {
  std::vector<Tensor> out;
  absl::Status st = session.Run(ctx, inputs, &out);
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

// max |a - b| / max |b| over equal shapes.
double RelativeError(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  if (a.shape() != b.shape()) return 1e9;
  double diff = 0, ref = 0;
  for (int64_t i = 0; i < a.num_elements(); ++i) {
    diff = std::max(diff, std::fabs(double{a.data<float>()[i]} - b.data<float>()[i]));
    ref = std::max(ref, std::fabs(double{b.data<float>()[i]}));
  }
  EXPECT_GT(ref, 0);
  return diff / ref;
}

// The rows of the batch run in `rows`-row pieces on a context that never shards (one
// OpenMP thread), stacked back.
Tensor RunInPieces(const Session& session, const Tensor& x, int64_t rows) {
  ThreadsScope one(1);
  auto ctx = session.NewContext();
  std::vector<float> joined;
  Shape shape;
  for (int64_t r = 0; r < x.dim(0); r += rows) {
    const std::vector<Tensor> out = RunOrDie(session, ctx.get(), {x.Rows(r, rows)});
    if (out.empty()) return Tensor();
    shape = out[0].shape();
    joined.insert(joined.end(), out[0].data<float>(),
                  out[0].data<float>() + out[0].num_elements());
  }
  EXPECT_EQ(ctx->batch_shard_contexts(), 0);
  shape[0] = x.dim(0);
  Tensor t(DataType::kFloat32, shape);
  std::copy(joined.begin(), joined.end(), t.data<float>());
  return t;
}

TEST(BatchShardsTest, Fp32ShardsGiveWhatEachRowGivesAlone) {
  auto session = CompileOrDie(SmallCnn(), Precision::kFP32, 8);
  ASSERT_NE(session, nullptr);
  const Tensor x = Gaussian({8, 8, 32, 32}, 1.f, 11);
  const Tensor want = RunInPieces(*session, x, 1);
  ThreadsScope two(2);
  auto ctx = session->NewContext();
  for (int run = 0; run < 2; ++run) {  // the second replays the shards' buffer plans
    SCOPED_TRACE(run);
    const std::vector<Tensor> got = RunOrDie(*session, ctx.get(), {x});
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(ctx->batch_shard_contexts(), 2);
    EXPECT_LE(RelativeError(got[0], want), 1e-5);
    // The calling thread's team size is what it was: the shards' single-thread
    // setting stayed inside their parallel region.
    EXPECT_EQ(omp_get_max_threads(), 2);
  }
  EXPECT_GT(ctx->activation_memory().arena_hits, 0);
  EXPECT_GT(ctx->peak_activation_bytes(), 0);
}

TEST(BatchShardsTest, DynamicRangeQuantizesEachShardFromItsOwnRows) {
  // At DYNAMIC_RANGE the activation range is observed per run, so a shard's rows are
  // quantized with the range of that shard: the result is that of running each half
  // of the batch alone.
  auto session = CompileOrDie(SmallCnn(), Precision::kDynamicRange, 8);
  ASSERT_NE(session, nullptr);
  Tensor x = Gaussian({4, 8, 32, 32}, 1.f, 12);
  for (int64_t i = 0; i < x.num_elements() / 2; ++i) x.data<float>()[i] *= 5;  // ranges differ
  const Tensor halves = RunInPieces(*session, x, 2);
  ThreadsScope two(2);
  auto ctx = session->NewContext();
  const std::vector<Tensor> got = RunOrDie(*session, ctx.get(), {x});
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(ctx->batch_shard_contexts(), 2);
  EXPECT_LE(RelativeError(got[0], halves), 1e-5);
  // And not that of quantizing the whole batch with one range: the check above can fail.
  const Tensor whole = RunInPieces(*session, x, 4);
  EXPECT_GT(RelativeError(whole, halves), 1e-4);
}

TEST(BatchShardsTest, BatchesThatDoNotSplitEvenlyRunWhole) {
  auto session = CompileOrDie(SmallCnn(), Precision::kFP32, 8);
  ASSERT_NE(session, nullptr);
  ThreadsScope two(2);
  for (int64_t batch : {1, 2, 3, 5}) {
    SCOPED_TRACE(batch);
    auto ctx = session->NewContext();
    const Tensor x = Gaussian({batch, 8, 32, 32}, 1.f, 13);
    const std::vector<Tensor> got = RunOrDie(*session, ctx.get(), {x});
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(ctx->batch_shard_contexts(), 0);
    EXPECT_LE(RelativeError(got[0], RunInPieces(*session, x, 1)), 1e-5);
  }
}

TEST(BatchShardsTest, NoShardsWithoutABatchDimensionOrASecondThread) {
  const Tensor x = Gaussian({4, 8, 32, 32}, 1.f, 14);
  {
    auto session = CompileOrDie(SmallCnn(), Precision::kFP32, /*max_batch_size=*/0);
    ASSERT_NE(session, nullptr);
    ThreadsScope two(2);
    auto ctx = session->NewContext();
    RunOrDie(*session, ctx.get(), {x});
    EXPECT_EQ(ctx->batch_shard_contexts(), 0);
  }
  auto session = CompileOrDie(SmallCnn(), Precision::kFP32, 8);
  ASSERT_NE(session, nullptr);
  {
    ThreadsScope one(1);
    auto ctx = session->NewContext();
    RunOrDie(*session, ctx.get(), {x});
    EXPECT_EQ(ctx->batch_shard_contexts(), 0);
  }
  // A run already inside a parallel region is one thread's share of other work.
  ThreadsScope two(2);
  auto ctx = session->NewContext();
  int shard_contexts = -1;
#pragma omp parallel num_threads(2)
  {
#pragma omp master
    {
      RunOrDie(*session, ctx.get(), {x});
      shard_contexts = ctx->batch_shard_contexts();
    }
  }
  EXPECT_EQ(shard_contexts, 0);
}

TEST(BatchShardsTest, OutputsWithoutALeadingBatchDimensionRunWhole) {
  const Tensor x = Gaussian({4, 8, 32, 32}, 1.f, 15);
  for (const char* extra : {"const", "flat"}) {
    SCOPED_TRACE(extra);
    auto session = CompileOrDie(SmallCnn(extra), Precision::kFP32, 8);
    ASSERT_NE(session, nullptr);
    const Tensor want = RunInPieces(*session, x, 4);
    ThreadsScope two(2);
    auto ctx = session->NewContext();
    for (int run = 0; run < 2; ++run) {
      SCOPED_TRACE(run);
      const std::vector<Tensor> got = RunOrDie(*session, ctx.get(), {x});
      ASSERT_EQ(got.size(), 2u);
      EXPECT_LE(RelativeError(got[0], want), 1e-5);
      if (std::string(extra) == "flat") {
        // Found out on the first run (its shards' outputs cannot be joined), which then
        // ran whole; later runs go whole from the start.
        ASSERT_EQ(got[1].shape(), Shape({40}));
        for (int64_t i = 0; i < 40; ++i) {
          EXPECT_EQ(got[1].data<float>()[i], got[0].data<float>()[i]) << i;
        }
      } else {
        // Declared [3]: never sharded.
        EXPECT_EQ(got[1].shape(), Shape({3}));
        EXPECT_EQ(ctx->batch_shard_contexts(), 0);
      }
    }
  }
}

// Two inputs whose rows are 12 and 20 bytes long: the shards' row ranges do not start on
// 64-byte boundaries, so they are copied rather than viewed.
TEST(BatchShardsTest, SeveralInputsWithUnalignedRows) {
  ModelBuilder b;
  b.Input("a", {-1, 3});
  b.Input("c", {-1, 5});
  b.Output("y");
  b.Constant("w", Gaussian({3, 5}, 1.f, 21));
  b.Node("MatMul", {"a", "w"}, {"m"});
  b.Node("Add", {"m", "c"}, {"y"});
  onnx::ModelProto m = b.model();
  m.mutable_graph()->set_name("two_inputs");
  auto* dims = m.mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()
                   ->mutable_shape();
  dims->add_dim()->set_dim_param("n");
  dims->add_dim()->set_dim_value(5);
  auto parsed = ParseOnnxModel(m.SerializeAsString(), "two_inputs");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  auto session = CompileOrDie(*parsed, Precision::kFP32, 8);
  ASSERT_NE(session, nullptr);
  const Tensor a = Gaussian({6, 3}, 1.f, 22);
  const Tensor c = Gaussian({6, 5}, 1.f, 23);
  const Tensor w = Gaussian({3, 5}, 1.f, 21);  // the model's weights
  ThreadsScope two(2);
  auto ctx = session->NewContext();
  const std::vector<Tensor> got = RunOrDie(*session, ctx.get(), {a, c});
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(ctx->batch_shard_contexts(), 2);
  ASSERT_EQ(got[0].shape(), Shape({6, 5}));
  // numpy's a @ w + c, computed here in double.
  for (int64_t r = 0; r < 6; ++r) {
    for (int64_t j = 0; j < 5; ++j) {
      double want = c.data<float>()[r * 5 + j];
      for (int64_t k = 0; k < 3; ++k) {
        want += double{a.data<float>()[r * 3 + k]} * w.data<float>()[k * 5 + j];
      }
      EXPECT_NEAR(got[0].data<float>()[r * 5 + j], want, 1e-5) << r << "," << j;
    }
  }
}

}  // namespace
}  // namespace qs
