#include "server/metrics/server_collectors.h"

#include <unistd.h>

#include <fstream>
#include <map>
#include <utility>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "prometheus/client_metric.h"
#include "prometheus/metric_type.h"
#include "server/repository/model_repository.h"

namespace qs {
namespace {

prometheus::MetricFamily GaugeFamily(std::string name, std::string help) {
  prometheus::MetricFamily family;
  family.name = std::move(name);
  family.help = std::move(help);
  family.type = prometheus::MetricType::Gauge;
  return family;
}

void AddSample(prometheus::MetricFamily* family, double value,
               std::vector<prometheus::ClientMetric::Label> labels = {}) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = value;
  family->metric.push_back(std::move(m));
}

}  // namespace

absl::StatusOr<ProcessMemory> ReadProcessMemory() {
  std::ifstream statm("/proc/self/statm");
  int64_t size_pages = 0, resident_pages = 0;
  if (!(statm >> size_pages >> resident_pages)) {
    return absl::UnavailableError("cannot read /proc/self/statm");
  }
  const int64_t page = static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
  ProcessMemory m;
  m.virtual_bytes = size_pages * page;
  m.resident_bytes = resident_pages * page;
  return m;
}

ProcessCollector::ProcessCollector(std::string build_version, absl::Time start_time)
    : build_version_(std::move(build_version)), start_time_(start_time) {}

std::vector<prometheus::MetricFamily> ProcessCollector::Collect() const {
  std::vector<prometheus::MetricFamily> out;
  auto memory = ReadProcessMemory();
  if (memory.ok()) {
    out.push_back(GaugeFamily("quantserve_process_resident_memory_bytes",
                              "Resident set size of the server process, bytes."));
    AddSample(&out.back(), static_cast<double>(memory->resident_bytes));
    out.push_back(GaugeFamily("quantserve_process_virtual_memory_bytes",
                              "Virtual memory size of the server process, bytes."));
    AddSample(&out.back(), static_cast<double>(memory->virtual_bytes));
  }
  out.push_back(GaugeFamily("quantserve_uptime_seconds",
                            "Seconds since the server started."));
  AddSample(&out.back(), absl::ToDoubleSeconds(absl::Now() - start_time_));
  out.push_back(GaugeFamily("quantserve_build_info",
                            "Always 1; the label carries the quantserve version."));
  AddSample(&out.back(), 1.0, {{"version", build_version_}});
  return out;
}

ModelStateCollector::ModelStateCollector(const ModelRepository* repository)
    : repository_(repository) {}

std::vector<prometheus::MetricFamily> ModelStateCollector::Collect() const {
  std::map<std::string, int> counts;
  for (ModelState s : {ModelState::kReady, ModelState::kUnavailable, ModelState::kLoading,
                       ModelState::kUnloading}) {
    counts[ModelStateName(s)] = 0;
  }
  for (const ModelIndexEntry& e : repository_->Index(/*ready_only=*/false)) {
    ++counts[ModelStateName(e.state)];
  }
  std::vector<prometheus::MetricFamily> out;
  out.push_back(GaugeFamily("quantserve_models",
                            "Model versions known to the repository, by state."));
  for (const auto& [state, n] : counts) {
    AddSample(&out.back(), static_cast<double>(n), {{"state", state}});
  }
  return out;
}

}  // namespace qs
