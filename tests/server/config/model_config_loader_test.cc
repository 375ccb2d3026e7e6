#include "server/config/model_config_loader.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "model_config.pb.h"

namespace qs {
namespace {

// True if some entry of `lines` contains every one of `parts`.
::testing::AssertionResult AnyContains(
    const std::vector<std::string>& lines,
    std::initializer_list<absl::string_view> parts) {
  for (const std::string& line : lines) {
    bool all = true;
    for (absl::string_view part : parts) {
      if (line.find(std::string(part)) == std::string::npos) all = false;
    }
    if (all) return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "no entry contains all of [" << absl::StrJoin(parts, "|")
         << "] in:\n  " << absl::StrJoin(lines, "\n  ");
}

bool Contains(absl::string_view haystack, absl::string_view needle) {
  return haystack.find(needle) != absl::string_view::npos;
}

// A Triton config for an ONNX Runtime model, with fields quantserve does not
// model, written the way Triton users write them: lists of messages without
// ':', ',' separators, empty lists, '#' comments and a tab.
constexpr char kTritonConfig[] = R"cfg(name: "resnet"
backend: "onnxruntime"
max_batch_size: 32
input [
  { name: "input", data_type: TYPE_FP32, format: FORMAT_NCHW, dims: [ 3, 224, 224 ] }
]
output [ { name: "logits", data_type: TYPE_FP32, dims: [ 1000 ], label_filename: "labels.txt" } ]
batch_input [ { kind: BATCH_ELEMENT_COUNT, target_name: [ "n" ], data_type: TYPE_FP32, source_input: [ "input" ] } ]
instance_group [
  { name: "cpu", kind: KIND_CPU, count: 2, rate_limiter { resources [ { name: "R1", count: 4 } ] priority: 1 }, secondary_devices: [ ] }
]
dynamic_batching {
  preferred_batch_size: [ 8, 16 ]
  max_queue_delay_microseconds: 2000
  default_queue_policy { timeout_action: REJECT, default_timeout_microseconds: 100000, allow_timeout_override: true, max_queue_size: 256 }
  priority_levels: 2
  default_priority_level: 2
  priority_queue_policy { key: 1 value: { max_queue_size: 16 } }
}
version_policy: { latest: { num_versions: 2 } }
optimization { execution_accelerators {
  cpu_execution_accelerator : [ { name : "openvino" } ]
} }
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
model_warmup [ { name: "zeros" batch_size: 4 inputs { key: "input" value: { data_type: TYPE_FP32 dims: [ 3, 224, 224 ] zero_data: true } } } ]
	model_repository_agents { agents [ { name: "checksum", parameters { key: "MD5:model.onnx" value: "abc" } } ] }  # trailing comment
metric_tags { key: "team" value: "vision" }
response_cache { enable: false }
)cfg";

TEST(ParseModelConfigTextTest, ParsesTritonOnnxRuntimeConfig) {
  std::vector<std::string> warnings;
  absl::StatusOr<inference::ModelConfig> config =
      ParseModelConfigText(kTritonConfig, "resnet/config.pbtxt", &warnings);
  ASSERT_TRUE(config.ok()) << config.status();

  EXPECT_EQ(config->name(), "resnet");
  EXPECT_EQ(config->backend(), "onnxruntime");
  EXPECT_EQ(config->max_batch_size(), 32);
  ASSERT_EQ(config->input_size(), 1);
  EXPECT_EQ(config->input(0).name(), "input");
  EXPECT_EQ(config->input(0).data_type(), inference::TYPE_FP32);
  EXPECT_EQ(config->input(0).format(), inference::ModelInput::FORMAT_NCHW);
  ASSERT_EQ(config->input(0).dims_size(), 3);
  EXPECT_EQ(config->input(0).dims(2), 224);
  ASSERT_EQ(config->output_size(), 1);
  EXPECT_EQ(config->output(0).dims(0), 1000);
  EXPECT_EQ(config->output(0).label_filename(), "labels.txt");

  ASSERT_EQ(config->instance_group_size(), 1);
  EXPECT_EQ(config->instance_group(0).name(), "cpu");
  EXPECT_EQ(config->instance_group(0).kind(),
            inference::ModelInstanceGroup::KIND_CPU);
  EXPECT_EQ(config->instance_group(0).count(), 2);

  ASSERT_TRUE(config->has_dynamic_batching());
  const inference::ModelDynamicBatching& batching = config->dynamic_batching();
  ASSERT_EQ(batching.preferred_batch_size_size(), 2);
  EXPECT_EQ(batching.preferred_batch_size(1), 16);
  EXPECT_EQ(batching.max_queue_delay_microseconds(), 2000u);
  EXPECT_EQ(batching.default_queue_policy().timeout_action(),
            inference::ModelQueuePolicy::REJECT);
  EXPECT_EQ(batching.default_queue_policy().default_timeout_microseconds(),
            100000u);
  EXPECT_TRUE(batching.default_queue_policy().allow_timeout_override());
  EXPECT_EQ(batching.default_queue_policy().max_queue_size(), 256u);
  EXPECT_EQ(batching.priority_levels(), 2u);
  EXPECT_EQ(batching.default_priority_level(), 2u);
  ASSERT_EQ(batching.priority_queue_policy().count(1), 1u);
  EXPECT_EQ(batching.priority_queue_policy().at(1).max_queue_size(), 16u);

  ASSERT_TRUE(config->version_policy().has_latest());
  EXPECT_EQ(config->version_policy().latest().num_versions(), 2u);
  EXPECT_TRUE(config->has_optimization());
  ASSERT_EQ(config->parameters().count("intra_op_thread_count"), 1u);
  EXPECT_EQ(config->parameters().at("intra_op_thread_count").string_value(),
            "2");
  ASSERT_EQ(config->model_warmup_size(), 1);
  EXPECT_EQ(config->model_warmup(0).batch_size(), 4u);
  ASSERT_EQ(config->model_warmup(0).inputs().count("input"), 1u);
  EXPECT_TRUE(config->model_warmup(0).inputs().at("input").zero_data());
  EXPECT_EQ(config->metric_tags().at("team"), "vision");
  EXPECT_FALSE(config->response_cache().enable());
  EXPECT_FALSE(config->has_quantization());

  // Every unknown field is reported once, with its path and 1-based location.
  EXPECT_EQ(warnings.size(), 5u) << absl::StrJoin(warnings, "\n");
  EXPECT_TRUE(
      AnyContains(warnings, {"resnet/config.pbtxt:8:1:", "batch_input"}));
  EXPECT_TRUE(AnyContains(
      warnings, {"resnet/config.pbtxt:10:", "instance_group[0].rate_limiter"}));
  EXPECT_TRUE(AnyContains(warnings, {"resnet/config.pbtxt:10:",
                                     "instance_group[0].secondary_devices"}));
  EXPECT_TRUE(AnyContains(warnings, {"resnet/config.pbtxt:21:16:",
                                     "optimization.execution_accelerators"}));
  // The line starts with a tab: protobuf counts it as 8 columns.
  EXPECT_TRUE(AnyContains(
      warnings, {"resnet/config.pbtxt:26:9:", "model_repository_agents"}));
}

TEST(ParseModelConfigTextTest, SyntaxErrorReportsLineAndColumn) {
  // The '}' closing the input on line 3 is missing.
  constexpr char kText[] =
      "name: \"m\"\n"
      "max_batch_size: 8\n"
      "input [ { name: \"x\", data_type: TYPE_FP32, dims: [ 3 ] ]\n"
      "output [ { name: \"y\", data_type: TYPE_FP32, dims: [ 3 ] } ]\n";
  std::vector<std::string> warnings;
  absl::StatusOr<inference::ModelConfig> config =
      ParseModelConfigText(kText, "m/config.pbtxt", &warnings);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(config.status().message());
  // Column 56 is the unexpected ']' (1-based).
  EXPECT_TRUE(Contains(message, "m/config.pbtxt:3:56: ")) << message;
  EXPECT_TRUE(Contains(message, "]")) << message;
}

TEST(ParseModelConfigTextTest, ErrorLocationIsExactAfterAnUnknownField) {
  // The unknown field before the error (after a tab) is blanked out before
  // protobuf parses; the reported column must still match the original text.
  constexpr char kText[] =
      "name: \"m\"\n"
      "\tbatch_output [ { target_name: [ \"a\" ] } ], max_batch_size: \"x\"\n";
  absl::StatusOr<inference::ModelConfig> config =
      ParseModelConfigText(kText, "cfg", nullptr);
  ASSERT_FALSE(config.ok());
  const std::string message(config.status().message());
  // Tab = columns 1..8, "batch_output" starts at 9, the string "x" at 68.
  EXPECT_TRUE(Contains(message, "cfg:2:68: ")) << message;
}

TEST(ParseModelConfigTextTest, UnknownEnumValueIsAnError) {
  std::vector<std::string> warnings;
  absl::StatusOr<inference::ModelConfig> config = ParseModelConfigText(
      "name: \"m\"\ninstance_group [ { kind: KIND_TPU } ]\n", "cfg", &warnings);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(config.status().message(), "cfg:2:")) << config.status();
  EXPECT_TRUE(Contains(config.status().message(), "KIND_TPU"))
      << config.status();
}

TEST(ParseModelConfigTextTest, WrongScalarTypeIsAnError) {
  absl::StatusOr<inference::ModelConfig> config =
      ParseModelConfigText("max_batch_size: \"eight\"\n", "cfg", nullptr);
  ASSERT_FALSE(config.ok());
  EXPECT_TRUE(Contains(config.status().message(), "cfg:1:17: "))
      << config.status();
}

TEST(ParseModelConfigTextTest, UnknownFieldInsideMalformedTextStillWarns) {
  // The text is broken after the unknown field; the error is reported and the
  // unknown field still shows up as a warning.
  std::vector<std::string> warnings;
  absl::StatusOr<inference::ModelConfig> config = ParseModelConfigText(
      "name: \"m\"\nensemble_scheduling { step [ { model_name: \"a\" } ] }\n"
      "input { name: \"x\"\n",
      "cfg", &warnings);
  ASSERT_FALSE(config.ok());
  EXPECT_TRUE(Contains(config.status().message(), "cfg:4:")) << config.status();
  EXPECT_TRUE(AnyContains(warnings, {"cfg:2:1:", "ensemble_scheduling"}));
}

TEST(ParseModelConfigTextTest, EveryTruncationFailsCleanlyOrParses) {
  // Cut the Triton config at every byte: the unknown-field pre-pass must never
  // crash or hang, and every failure must carry a location.
  const std::string text(kTritonConfig);
  for (size_t n = 0; n <= text.size(); ++n) {
    std::vector<std::string> warnings;
    absl::StatusOr<inference::ModelConfig> config = ParseModelConfigText(
        absl::string_view(text).substr(0, n), "cfg", &warnings);
    if (!config.ok()) {
      EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(config.status().message().substr(0, 4), "cfg:")
          << "prefix " << n << ": " << config.status();
    }
  }
}

TEST(ParseModelConfigTextTest, ParsesQuantizationBlock) {
  constexpr char kText[] = R"cfg(
    name: "bert"
    platform: "onnxruntime_onnx"
    quantization {
      precision: INT8
      calibration { data_dir: "calib" method: ENTROPY }
      exclude_op_types: [ "Softmax", "LayerNormalization" ]
      exclude_nodes: "head/MatMul"
      disable_default_exclusions: true
      int8_stem_fp32: true
    }
    drift {
      sample_rate: 0.01
      max_samples_per_second: 5
      classification_outputs: "logits"
      relative_l2_bound: 0.05
      window_size: 1000
      fallback_precision: FP32
      guard_enabled: true
    }
  )cfg";
  std::vector<std::string> warnings;
  absl::StatusOr<inference::ModelConfig> config =
      ParseModelConfigText(kText, "bert/config.pbtxt", &warnings);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(warnings.empty()) << absl::StrJoin(warnings, "\n");

  ASSERT_TRUE(config->has_quantization());
  const inference::QuantizationConfig& q = config->quantization();
  EXPECT_EQ(q.precision(), inference::INT8);
  EXPECT_EQ(q.calibration().data_dir(), "calib");
  EXPECT_EQ(q.calibration().method(), inference::CalibrationConfig::ENTROPY);
  EXPECT_EQ(q.calibration().percentile(), 0.0);
  ASSERT_EQ(q.exclude_op_types_size(), 2);
  EXPECT_EQ(q.exclude_op_types(1), "LayerNormalization");
  ASSERT_EQ(q.exclude_nodes_size(), 1);
  EXPECT_TRUE(q.disable_default_exclusions());
  EXPECT_TRUE(q.int8_stem_fp32());

  ASSERT_TRUE(config->has_drift());
  const inference::DriftConfig& d = config->drift();
  EXPECT_DOUBLE_EQ(d.sample_rate(), 0.01);
  EXPECT_DOUBLE_EQ(d.max_samples_per_second(), 5.0);
  ASSERT_EQ(d.classification_outputs_size(), 1);
  EXPECT_DOUBLE_EQ(d.relative_l2_bound(), 0.05);
  EXPECT_EQ(d.window_size(), 1000u);
  EXPECT_EQ(d.fallback_precision(), inference::FP32);
  EXPECT_TRUE(d.guard_enabled());
}

TEST(ParseModelConfigTextTest, MinimalQuantizationBlock) {
  absl::StatusOr<inference::ModelConfig> config = ParseModelConfigText(
      "quantization { precision: INT8 calibration { data_dir: \"calib\" "
      "method: ENTROPY } }",
      "cfg", nullptr);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->quantization().precision(), inference::INT8);
  EXPECT_EQ(config->quantization().calibration().method(),
            inference::CalibrationConfig::ENTROPY);
  EXPECT_FALSE(config->quantization().disable_default_exclusions());
  EXPECT_FALSE(config->quantization().int8_stem_fp32());
}

TEST(ParseModelConfigTextTest, EmptyTextIsAnEmptyConfig) {
  std::vector<std::string> warnings;
  absl::StatusOr<inference::ModelConfig> config =
      ParseModelConfigText("", "cfg", &warnings);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->ByteSizeLong(), 0u);
  EXPECT_TRUE(warnings.empty());
}

TEST(UnsupportedFieldWarningsTest, SupportedConfigHasNone) {
  absl::StatusOr<inference::ModelConfig> config = ParseModelConfigText(
      "name: \"m\" backend: \"onnxruntime\" platform: \"onnxruntime_onnx\" "
      "max_batch_size: 4 instance_group [ { kind: KIND_CPU count: 2 } ] "
      "dynamic_batching { } response_cache { enable: false }",
      "cfg", nullptr);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(UnsupportedFieldWarnings(*config).empty())
      << absl::StrJoin(UnsupportedFieldWarnings(*config), "\n");
}

TEST(UnsupportedFieldWarningsTest, ListsIgnoredFields) {
  absl::StatusOr<inference::ModelConfig> config = ParseModelConfigText(
      R"cfg(
        name: "m"
        backend: "python"
        platform: "tensorrt_plan"
        sequence_batching { max_sequence_idle_microseconds: 5000000 }
        optimization { priority: PRIORITY_MAX }
        model_transaction_policy { decoupled: true }
        response_cache { enable: true }
        instance_group [ { kind: KIND_CPU }, { kind: KIND_GPU gpus: [ 0 ] } ]
        cc_model_filenames { key: "7.5" value: "model_sm75.plan" }
      )cfg",
      "cfg", nullptr);
  ASSERT_TRUE(config.ok()) << config.status();
  const std::vector<std::string> w = UnsupportedFieldWarnings(*config);
  EXPECT_TRUE(AnyContains(w, {"backend", "python"}));
  EXPECT_TRUE(AnyContains(w, {"platform", "tensorrt_plan"}));
  EXPECT_TRUE(AnyContains(w, {"sequence_batching"}));
  EXPECT_TRUE(AnyContains(w, {"optimization"}));
  EXPECT_TRUE(AnyContains(w, {"model_transaction_policy.decoupled"}));
  EXPECT_TRUE(AnyContains(w, {"response_cache"}));
  EXPECT_TRUE(AnyContains(w, {"instance_group[1].kind", "KIND_GPU"}));
  EXPECT_TRUE(AnyContains(w, {"instance_group[1].gpus"}));
  EXPECT_FALSE(AnyContains(w, {"instance_group[0]"}));
  EXPECT_TRUE(AnyContains(w, {"cc_model_filenames"}));
}

TEST(LoadModelConfigFileTest, MissingFileIsNotFound) {
  absl::StatusOr<inference::ModelConfig> config = LoadModelConfigFile(
      ::testing::TempDir() + "/no_such_dir/config.pbtxt", nullptr);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound)
      << config.status();
}

TEST(LoadModelConfigFileTest, DirectoryIsRejected) {
  absl::StatusOr<inference::ModelConfig> config =
      LoadModelConfigFile(::testing::TempDir(), nullptr);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kFailedPrecondition)
      << config.status();
}

TEST(LoadModelConfigFileTest, ReadsFileAndUsesPathInMessages) {
  const std::string path =
      ::testing::TempDir() + "/model_config_loader_test_config.pbtxt";
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    const std::string text =
        "name: \"m\"\nmax_batch_size: 2\nmodel_operations { "
        "op_library_filename: "
        "[ \"x.so\" ] }\n";
    ASSERT_EQ(std::fwrite(text.data(), 1, text.size(), f), text.size());
    std::fclose(f);
  }
  std::vector<std::string> warnings;
  absl::StatusOr<inference::ModelConfig> config =
      LoadModelConfigFile(path, &warnings);
  std::remove(path.c_str());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->name(), "m");
  EXPECT_EQ(config->max_batch_size(), 2);
  EXPECT_TRUE(
      AnyContains(warnings, {absl::StrCat(path, ":3:1:"), "model_operations"}));
}

}  // namespace
}  // namespace qs
