#include "server/config/config_completion.h"

#include "gtest/gtest.h"

namespace qs {
namespace {

ValueInfo Info(const std::string& name, DataType t, Shape s) {
  ValueInfo v;
  v.name = name;
  v.dtype = t;
  v.shape = std::move(s);
  v.has_shape = true;
  return v;
}

TEST(ConfigCompletionTest, DerivesBatchingAndTensorsFromGraph) {
  inference::ModelConfig config;
  CompletionOptions o;
  o.model_name = "m";
  ASSERT_TRUE(CompleteModelConfig({Info("x", DataType::kFloat32, {-1, 3, 8, 8})},
                                  {Info("y", DataType::kFloat32, {-1, 10})}, o, &config)
                  .ok());
  EXPECT_EQ(config.name(), "m");
  EXPECT_EQ(config.max_batch_size(), 4);
  EXPECT_TRUE(config.has_dynamic_batching());
  ASSERT_EQ(config.input_size(), 1);
  EXPECT_EQ(config.input(0).data_type(), inference::TYPE_FP32);
  EXPECT_EQ(std::vector<int64_t>(config.input(0).dims().begin(), config.input(0).dims().end()),
            (std::vector<int64_t>{3, 8, 8}));
  EXPECT_EQ(config.output(0).dims_size(), 1);
}

TEST(ConfigCompletionTest, FixedFirstDimensionMeansNoBatching) {
  inference::ModelConfig config;
  CompletionOptions o;
  o.model_name = "m";
  ASSERT_TRUE(CompleteModelConfig({Info("x", DataType::kInt64, {1, 16})},
                                  {Info("y", DataType::kFloat32, {1, 2})}, o, &config)
                  .ok());
  EXPECT_EQ(config.max_batch_size(), 0);
  EXPECT_EQ(config.input(0).dims_size(), 2);
}

TEST(ConfigCompletionTest, RejectsInputTheModelLacks) {
  inference::ModelConfig config;
  config.set_max_batch_size(8);
  config.add_input()->set_name("not_in_model");
  CompletionOptions o;
  o.model_name = "m";
  absl::Status st = CompleteModelConfig({Info("x", DataType::kFloat32, {-1, 4})},
                                        {Info("y", DataType::kFloat32, {-1, 3})}, o, &config);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("not_in_model"), absl::string_view::npos);
  EXPECT_NE(st.message().find("x"), absl::string_view::npos);
}

TEST(ConfigCompletionTest, RejectsContradictingTypeAndDims) {
  CompletionOptions o;
  o.model_name = "m";
  inference::ModelConfig typed;
  typed.set_max_batch_size(8);
  auto* in = typed.add_input();
  in->set_name("x");
  in->set_data_type(inference::TYPE_INT32);
  EXPECT_EQ(CompleteModelConfig({Info("x", DataType::kFloat32, {-1, 4})}, {}, o, &typed).code(),
            absl::StatusCode::kFailedPrecondition);
  inference::ModelConfig dims;
  dims.set_max_batch_size(8);
  auto* d = dims.add_input();
  d->set_name("x");
  d->add_dims(5);
  absl::Status st = CompleteModelConfig({Info("x", DataType::kFloat32, {-1, 4})}, {}, o, &dims);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("[5]"), absl::string_view::npos) << st.message();
}

TEST(ConfigCompletionTest, NameMustMatchFolder) {
  inference::ModelConfig config;
  config.set_name("other");
  CompletionOptions o;
  o.model_name = "m";
  EXPECT_EQ(CompleteModelConfig({}, {}, o, &config).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace qs
