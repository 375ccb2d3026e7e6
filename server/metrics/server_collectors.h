// Server-wide gauges computed when Prometheus scrapes (nothing is updated between
// scrapes): process memory from /proc/self/statm, uptime, build info, and how many
// model versions are in each repository state.
//
// Thread-safety: both collectors are immutable after construction; Collect() may run on
// any thread, concurrently.
#ifndef QUANTSERVE_SERVER_METRICS_SERVER_COLLECTORS_H_
#define QUANTSERVE_SERVER_METRICS_SERVER_COLLECTORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "prometheus/collectable.h"
#include "prometheus/metric_family.h"

namespace qs {

class ModelRepository;

struct ProcessMemory {
  int64_t resident_bytes = 0;
  int64_t virtual_bytes = 0;
};
// Reads /proc/self/statm (pages) and converts to bytes. Unavailable if unreadable.
absl::StatusOr<ProcessMemory> ReadProcessMemory();

// quantserve_process_resident_memory_bytes, quantserve_process_virtual_memory_bytes
// (omitted when /proc is unreadable), quantserve_uptime_seconds,
// quantserve_build_info{version} = 1.
class ProcessCollector : public prometheus::Collectable {
 public:
  ProcessCollector(std::string build_version, absl::Time start_time);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::string build_version_;
  const absl::Time start_time_;
};

// quantserve_models{state}: model versions per state, every state always present
// (READY, UNAVAILABLE, LOADING, UNLOADING). A model that failed before any version was
// known counts as one UNAVAILABLE entry, as in RepositoryIndex.
class ModelStateCollector : public prometheus::Collectable {
 public:
  // `repository` must outlive every Collect() call.
  explicit ModelStateCollector(const ModelRepository* repository);
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const ModelRepository* const repository_;
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_METRICS_SERVER_COLLECTORS_H_
