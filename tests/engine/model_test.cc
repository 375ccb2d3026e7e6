// Model-level engine tests: whole networks exported by PyTorch (torch.onnx.export),
// compiled FP32 and run at batch 1 and batch 4 (whole, and as two batch shards) against
// the outputs PyTorch itself computed for the same inputs.
//
// The fixtures come from tests/fixtures/make_engine_models.py (the ctest fixture
// engine_models runs it into ${PROJECT_BINARY_DIR}/engine_models). Layout:
//   <dir>/<model>/model.onnx
//   <dir>/<model>/b<batch>/<name>.npy   one per graph input and output, the name with
//                                       characters outside [A-Za-z0-9._-] mapped to '_'
// Usage: model_test [gtest flags] [DIR]   (default DIR: QS_BINARY_DIR/engine_models;
// the environment variable QS_ENGINE_MODELS overrides the default too).
//
// Error metric, per output tensor:
//   relative error = max_i |a_i - b_i| / max_i |b_i|
// with a = engine output, b = PyTorch reference (both FP32, compared in double). It
// must be <= 1e-4. A NaN/Inf in the engine output, a shape or dtype mismatch, or an
// all-zero reference (which would make the metric meaningless) fails the test.
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/npy.h"
#include "engine/onnx_import.h"
#include "engine/session.h"
#include "gtest/gtest.h"
#include "tests/engine/threads_scope.h"

namespace qs {
namespace {

constexpr double kMaxRelativeError = 1e-4;

std::string& FixtureDir() {
  static std::string dir = [] {
    const char* env = std::getenv("QS_ENGINE_MODELS");
    return std::string(env != nullptr && *env != '\0' ? env
                                                      : QS_BINARY_DIR "/engine_models");
  }();
  return dir;
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// Same mapping as make_engine_models.py's sanitize().
std::string FileNameFor(const std::string& value_name) {
  std::string out = value_name;
  for (char& c : out) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                    (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) c = '_';
  }
  return out;
}

struct ErrorFigure {
  double max_abs_diff = 0;
  double max_abs_ref = 0;
  double relative = 0;
  int64_t non_finite = 0;  // NaN/Inf elements in the engine output
  int64_t worst_index = -1;
};

ErrorFigure Compare(const float* got, const float* want, int64_t n) {
  ErrorFigure e;
  for (int64_t i = 0; i < n; ++i) {
    const double a = got[i];
    const double b = want[i];
    if (!std::isfinite(a)) {
      ++e.non_finite;
      continue;
    }
    const double d = std::fabs(a - b);
    if (d > e.max_abs_diff) {
      e.max_abs_diff = d;
      e.worst_index = i;
    }
    e.max_abs_ref = std::max(e.max_abs_ref, std::fabs(b));
  }
  e.relative = e.max_abs_ref > 0 ? e.max_abs_diff / e.max_abs_ref : 0;
  return e;
}

struct ModelCase {
  const char* name;
  bool large;  // generated only with --with-large; skipped when absent
};

void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

class ModelTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(ModelTest, MatchesPyTorchAtBatch1And4) {
  const ModelCase& mc = GetParam();
  const std::string dir = absl::StrCat(FixtureDir(), "/", mc.name);
  const std::string model_path = dir + "/model.onnx";
  if (!Exists(model_path)) {
    if (mc.large) GTEST_SKIP() << model_path << " not generated (needs --with-large)";
    FAIL() << model_path << " is missing; run tests/fixtures/make_engine_models.py --out "
           << FixtureDir() << " (ctest runs it as the engine_models fixture)";
  }

  auto model = LoadOnnxModel(model_path);
  ASSERT_TRUE(model.ok()) << model.status();
  CompileOptions options;
  options.precision = Precision::kFP32;
  options.max_batch_size = 4;
  auto session = Session::Compile(*model, options);
  ASSERT_TRUE(session.ok()) << session.status();

  // Each batch size on one OpenMP thread and on two: with two, batch 4 runs as two
  // shards of 2 rows (Session::Run, "Batch shards"), each on single-threaded kernels.
  // One context per team size for every batch size, including going back down to 1
  // after 4, so that any per-context caching keyed on shapes is exercised in both
  // directions. The second run at each batch size replays the first one's buffer plan
  // (buffer_pool.h).
  for (int threads : {1, 2}) {
    ThreadsScope team(threads);
    auto ctx = (*session)->NewContext();
    for (int batch : {1, 4, 1, 4}) {
      SCOPED_TRACE(absl::StrCat(mc.name, " batch ", batch, ", ", threads, " threads"));
      const std::string bdir = absl::StrCat(dir, "/b", batch);

      std::vector<Tensor> inputs;
      for (const ValueInfo& in : (*session)->inputs()) {
        auto t = ReadNpy(absl::StrCat(bdir, "/", FileNameFor(in.name), ".npy"));
        ASSERT_TRUE(t.ok()) << t.status();
        ASSERT_EQ(t->dtype(), in.dtype) << "reference input '" << in.name << "'";
        inputs.push_back(*std::move(t));
      }
      std::vector<Tensor> outputs;
      absl::Status st = (*session)->Run(ctx.get(), inputs, &outputs);
      ASSERT_TRUE(st.ok()) << st;
      ASSERT_EQ(outputs.size(), (*session)->outputs().size());

      for (size_t i = 0; i < outputs.size(); ++i) {
        const std::string& name = (*session)->outputs()[i].name;
        auto want = ReadNpy(absl::StrCat(bdir, "/", FileNameFor(name), ".npy"));
        ASSERT_TRUE(want.ok()) << want.status();
        const Tensor& got = outputs[i];
        ASSERT_EQ(got.dtype(), DataType::kFloat32) << "output '" << name << "'";
        ASSERT_EQ(want->dtype(), DataType::kFloat32) << "reference '" << name << "'";
        ASSERT_EQ(got.shape(), want->shape())
            << "output '" << name << "': engine " << ShapeToString(got.shape())
            << ", PyTorch " << ShapeToString(want->shape());

        const ErrorFigure e =
            Compare(got.data<float>(), want->data<float>(), got.num_elements());
        const std::string figure = absl::StrFormat(
            "%s b%d t%d %s: rel err %.3g (max|a-b| %.3g, max|ref| %.3g, worst index %d)",
            mc.name, batch, threads, name, e.relative, e.max_abs_diff, e.max_abs_ref,
            e.worst_index);
        std::printf("[ figure   ] %s\n", figure.c_str());
        RecordProperty(absl::StrCat(name, "_b", batch, "_t", threads, "_rel_err"),
                       absl::StrFormat("%.3g", e.relative));
        EXPECT_EQ(e.non_finite, 0) << "output '" << name << "' has non-finite values";
        EXPECT_GT(e.max_abs_ref, 0) << "reference '" << name << "' is all zeros";
        EXPECT_LE(e.relative, kMaxRelativeError) << figure;
      }
    }
    if (threads == 1) {
      // The last two runs took their activations from the plans' arena.
      EXPECT_GT(ctx->activation_memory().arena_hits, 0);
    } else {
      EXPECT_EQ(ctx->batch_shard_contexts(), 2) << "batch 4 did not run as shards";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(PyTorchExports, ModelTest,
                         ::testing::Values(ModelCase{"resnet18", false},
                                           ModelCase{"mobilenet_v2", false},
                                           ModelCase{"transformer", false},
                                           ModelCase{"unet", false},
                                           ModelCase{"resnet50", true}),
                         [](const ::testing::TestParamInfo<ModelCase>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace qs

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 1) qs::FixtureDir() = argv[1];
  return RUN_ALL_TESTS();
}
