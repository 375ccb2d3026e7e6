// How many CPUs this process may use: the affinity mask, capped by the cgroup CPU quota
// (cgroup v2 cpu.max or v1 cpu.cfs_quota_us / cpu.cfs_period_us), so that in a container
// limited to 2 CPUs on a 64-core host we run 2 OpenMP threads, not 64.
#ifndef QUANTSERVE_SERVER_CPU_BUDGET_H_
#define QUANTSERVE_SERVER_CPU_BUDGET_H_

#include <optional>
#include <string>

namespace qs {

// CPUs from the quota files under `cgroup_root` (default /sys/fs/cgroup), rounded up;
// nullopt when there is no quota.
std::optional<int> CgroupCpuLimit(const std::string& cgroup_root = "/sys/fs/cgroup");
// min(affinity CPUs, cgroup limit), at least 1.
int AvailableCpus();

}  // namespace qs

#endif  // QUANTSERVE_SERVER_CPU_BUDGET_H_
