#include "server/cpu_budget.h"

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace qs {
namespace {

std::string MakeDir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("qs_cgroup_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "cpu");
  return dir.string();
}

TEST(CpuBudgetTest, CgroupV2Quota) {
  const std::string dir = MakeDir("v2");
  std::ofstream(dir + "/cpu.max") << "150000 100000\n";
  EXPECT_EQ(CgroupCpuLimit(dir), 2);  // 1.5 CPUs round up
  std::ofstream(dir + "/cpu.max") << "max 100000\n";
  EXPECT_FALSE(CgroupCpuLimit(dir).has_value());
}

TEST(CpuBudgetTest, CgroupV1Quota) {
  const std::string dir = MakeDir("v1");
  std::ofstream(dir + "/cpu/cpu.cfs_quota_us") << "400000\n";
  std::ofstream(dir + "/cpu/cpu.cfs_period_us") << "100000\n";
  EXPECT_EQ(CgroupCpuLimit(dir), 4);
  std::ofstream(dir + "/cpu/cpu.cfs_quota_us") << "-1\n";
  EXPECT_FALSE(CgroupCpuLimit(dir).has_value());
}

TEST(CpuBudgetTest, AvailableCpusIsPositive) { EXPECT_GE(AvailableCpus(), 1); }

}  // namespace
}  // namespace qs
