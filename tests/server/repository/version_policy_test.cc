#include "server/repository/version_policy.h"

#include "gtest/gtest.h"

namespace qs {
namespace {

using V = std::vector<int64_t>;

TEST(VersionPolicyTest, DefaultIsLatestOne) {
  inference::ModelVersionPolicy p;
  EXPECT_EQ(SelectVersions(p, {3, 1, 7}), (V{7}));
}

TEST(VersionPolicyTest, LatestN) {
  inference::ModelVersionPolicy p;
  p.mutable_latest()->set_num_versions(2);
  EXPECT_EQ(SelectVersions(p, {3, 1, 7}), (V{3, 7}));
  p.mutable_latest()->set_num_versions(5);
  EXPECT_EQ(SelectVersions(p, {3, 1}), (V{1, 3}));
}

TEST(VersionPolicyTest, AllAndSpecific) {
  inference::ModelVersionPolicy all;
  all.mutable_all();
  EXPECT_EQ(SelectVersions(all, {2, 1}), (V{1, 2}));
  inference::ModelVersionPolicy specific;
  specific.mutable_specific()->add_versions(3);
  specific.mutable_specific()->add_versions(9);  // not on disk
  specific.mutable_specific()->add_versions(1);
  EXPECT_EQ(SelectVersions(specific, {1, 2, 3}), (V{1, 3}));
}

}  // namespace
}  // namespace qs
