#include "server/scheduling/model_stats.h"

#include "absl/time/clock.h"

namespace qs {

void ModelStats::RecordSuccess(int64_t batch_size, absl::Duration request_total,
                               const InferenceTimings& t) {
  absl::MutexLock lock(&mu_);
  s_.inference_count += static_cast<uint64_t>(batch_size);
  s_.success.Add(request_total);
  s_.queue.Add(t.queue);
  s_.compute_input.Add(t.compute_input);
  s_.compute_infer.Add(t.compute_infer);
  s_.compute_output.Add(t.compute_output);
  s_.last_inference_ms = static_cast<uint64_t>(absl::ToUnixMillis(absl::Now()));
}

void ModelStats::RecordFailure(absl::Duration request_total) {
  absl::MutexLock lock(&mu_);
  s_.fail.Add(request_total);
}

void ModelStats::RecordExecution(int64_t batch_size, const InferenceTimings& t) {
  absl::MutexLock lock(&mu_);
  s_.execution_count++;
  auto& b = s_.batches[static_cast<uint64_t>(batch_size)];
  b.compute_input.Add(t.compute_input);
  b.compute_infer.Add(t.compute_infer);
  b.compute_output.Add(t.compute_output);
}

ModelStatsSnapshot ModelStats::Snapshot() const {
  absl::MutexLock lock(&mu_);
  return s_;
}

}  // namespace qs
