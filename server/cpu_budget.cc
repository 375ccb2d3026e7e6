#include "server/cpu_budget.h"

#include <sched.h>

#include <cmath>
#include <fstream>
#include <sstream>

namespace qs {
namespace {

std::optional<int> CpusFromQuota(double quota, double period) {
  if (quota <= 0 || period <= 0) return std::nullopt;
  return static_cast<int>(std::ceil(quota / period));
}

}  // namespace

std::optional<int> CgroupCpuLimit(const std::string& cgroup_root) {
  // cgroup v2: "max 100000" or "200000 100000".
  std::ifstream v2(cgroup_root + "/cpu.max");
  if (v2) {
    std::string quota;
    double period = 0;
    v2 >> quota >> period;
    if (quota == "max") return std::nullopt;
    try {
      return CpusFromQuota(std::stod(quota), period);
    } catch (...) {
      return std::nullopt;
    }
  }
  std::ifstream q(cgroup_root + "/cpu/cpu.cfs_quota_us");
  std::ifstream p(cgroup_root + "/cpu/cpu.cfs_period_us");
  double quota = -1, period = 0;
  if (q && p && (q >> quota) && (p >> period)) return CpusFromQuota(quota, period);
  return std::nullopt;
}

int AvailableCpus() {
  int cpus = 1;
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (auto limit = CgroupCpuLimit(); limit.has_value() && *limit < cpus) cpus = *limit;
  return cpus < 1 ? 1 : cpus;
}

}  // namespace qs
