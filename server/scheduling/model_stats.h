// Per model-version counters behind ModelStatistics (Triton's semantics): cumulative
// counts and nanoseconds for success, failure, queue and the three compute stages, and
// per executed batch size. Thread-safe.
#ifndef QUANTSERVE_SERVER_SCHEDULING_MODEL_STATS_H_
#define QUANTSERVE_SERVER_SCHEDULING_MODEL_STATS_H_

#include <cstdint>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/scheduling/inference_request.h"

namespace qs {

struct Duration2 {
  uint64_t count = 0;
  uint64_t ns = 0;
  void Add(absl::Duration d) {
    ++count;
    ns += static_cast<uint64_t>(absl::ToInt64Nanoseconds(d));
  }
};

struct ModelStatsSnapshot {
  uint64_t inference_count = 0;
  uint64_t execution_count = 0;
  uint64_t last_inference_ms = 0;
  Duration2 success, fail, queue, compute_input, compute_infer, compute_output;
  struct Batch {
    Duration2 compute_input, compute_infer, compute_output;
  };
  std::map<uint64_t, Batch> batches;
};

class ModelStats {
 public:
  void RecordSuccess(int64_t batch_size, absl::Duration request_total,
                     const InferenceTimings& t) ABSL_LOCKS_EXCLUDED(mu_);
  void RecordFailure(absl::Duration request_total) ABSL_LOCKS_EXCLUDED(mu_);
  void RecordExecution(int64_t batch_size, const InferenceTimings& t)
      ABSL_LOCKS_EXCLUDED(mu_);
  ModelStatsSnapshot Snapshot() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  ModelStatsSnapshot s_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_SCHEDULING_MODEL_STATS_H_
