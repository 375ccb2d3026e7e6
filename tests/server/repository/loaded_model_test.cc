// LoadedModel::Load hands the config's quantization block to the engine: digits_cnn from
// the test repository (fixture test_repo) at INT8 with the default exclusions. Its
// 1-channel stem conv runs in BF16 on CPUs with native bf16 and in FP32 with
// int8_stem_fp32 (and on other CPUs); its head runs at DYNAMIC_RANGE, or FP32 with
// int8_head_fp32.
#include <functional>
#include <memory>
#include <string>

#include "engine/ops/dnnl_util.h"
#include "gtest/gtest.h"
#include "server/repository/loaded_model.h"

namespace qs {
namespace {

// digits_cnn_int8 loaded at INT8 with the default exclusions, `set` applied to its
// quantization block.
absl::StatusOr<std::shared_ptr<LoadedModel>> LoadDigitsCnnInt8(
    const std::function<void(inference::QuantizationConfig*)>& set) {
  ModelLoadRequest req;
  req.name = "digits_cnn_int8";
  req.version = 1;
  req.model_dir = QS_BINARY_DIR "/test_repo/digits_cnn_int8";
  req.config.set_name(req.name);
  req.config.set_max_batch_size(16);
  inference::QuantizationConfig* q = req.config.mutable_quantization();
  q->set_precision(inference::INT8);
  q->mutable_calibration()->set_data_dir("calibration");
  set(q);
  return LoadedModel::Load(req);
}

TEST(LoadedModelTest, Int8StemFp32KeepsTheImageStemInFp32) {
  const std::string native = HasNativeBf16() ? "BF16" : "FP32";
  for (bool stem_fp32 : {false, true}) {
    SCOPED_TRACE(stem_fp32 ? "int8_stem_fp32: true" : "default");
    auto model = LoadDigitsCnnInt8(
        [&](inference::QuantizationConfig* q) { q->set_int8_stem_fp32(stem_fp32); });
    ASSERT_TRUE(model.ok()) << model.status();
    const auto& report = (*model)->session().precision_report();
    ASSERT_FALSE(report.empty());
    // The stem is the first node; the second conv is INT8 either way.
    EXPECT_EQ(report[0].op_type, "Conv");
    EXPECT_EQ(report[0].precision, stem_fp32 ? "FP32" : native);
    bool int8_conv = false;
    for (const auto& n : report) int8_conv |= n.op_type == "Conv" && n.precision == "INT8";
    EXPECT_TRUE(int8_conv);
  }
}

// The head (digits_cnn's Gemm, producing the logits) runs at DYNAMIC_RANGE in an INT8
// plan by default, and in FP32 with int8_head_fp32.
TEST(LoadedModelTest, Int8HeadFp32KeepsTheHeadInFp32) {
  for (bool head_fp32 : {false, true}) {
    SCOPED_TRACE(head_fp32 ? "int8_head_fp32: true" : "default");
    auto model = LoadDigitsCnnInt8(
        [&](inference::QuantizationConfig* q) { q->set_int8_head_fp32(head_fp32); });
    ASSERT_TRUE(model.ok()) << model.status();
    const auto& report = (*model)->session().precision_report();
    ASSERT_FALSE(report.empty());
    EXPECT_EQ(report.back().op_type, "Gemm");
    EXPECT_EQ(report.back().precision, head_fp32 ? "FP32" : "DYNAMIC_RANGE");
  }
}

}  // namespace
}  // namespace qs
