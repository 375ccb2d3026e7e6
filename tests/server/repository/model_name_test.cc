#include "server/repository/model_name.h"

#include "gtest/gtest.h"

namespace qs {
namespace {

TEST(ModelNameTest, AcceptsOrdinaryNames) {
  for (const char* name : {"resnet50", "digits_mlp", "bert-base.v2", "A1"}) {
    EXPECT_TRUE(ValidateModelName(name).ok()) << name;
  }
}

TEST(ModelNameTest, RejectsTraversalHiddenAndTemporaryNames) {
  for (const char* name : {"", "..", "../etc", "a/b", "bad..name", ".hidden", "model~",
                           "model.tmp", "x.swp", "a b", "a\\b"}) {
    absl::Status st = ValidateModelName(name);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << name;
  }
  EXPECT_NE(ValidateModelName("bad..name").message().find(".."), absl::string_view::npos);
}

TEST(ModelNameTest, VersionFolders) {
  EXPECT_TRUE(IsVersionFolderName("1"));
  EXPECT_TRUE(IsVersionFolderName("20240101"));
  EXPECT_FALSE(IsVersionFolderName("0"));
  EXPECT_FALSE(IsVersionFolderName("01"));
  EXPECT_FALSE(IsVersionFolderName("v1"));
  EXPECT_FALSE(IsVersionFolderName("testdata"));
}

}  // namespace
}  // namespace qs
