// What the request path reports about each request and execution. The metrics module
// implements it; the scheduler and the gRPC handlers call it. Implementations must be
// thread-safe and cheap (they run on the request path).
#ifndef QUANTSERVE_SERVER_SCHEDULING_INFERENCE_OBSERVER_H_
#define QUANTSERVE_SERVER_SCHEDULING_INFERENCE_OBSERVER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/tensor.h"
#include "server/scheduling/inference_request.h"

namespace qs {

// Why a request failed, as exported in metrics.
enum class FailureReason { kRejected, kCancelled, kTimeout, kInvalid, kInternal };

class InferenceObserver {
 public:
  virtual ~InferenceObserver() = default;
  // A request finished successfully; `total` is receipt to completion.
  virtual void OnSuccess(int64_t batch_size, absl::Duration total,
                         const InferenceTimings& timings) = 0;
  virtual void OnFailure(FailureReason reason, absl::Duration total) = 0;
  // One model execution of `batch_size` rows.
  virtual void OnExecution(int64_t batch_size, const InferenceTimings& timings) = 0;
  // Queue depth changed (requests waiting) / requests executing changed.
  virtual void OnQueueDepth(int64_t queued) = 0;
  virtual void OnInFlight(int64_t delta) = 0;
  // After a successful execution: the batch inputs and outputs, for accuracy-drift
  // sampling. Must not block; implementations copy what they keep (tensors are shared
  // handles, so keeping them is cheap) and return at once.
  virtual void OnOutputs(const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& outputs) = 0;
  // Bytes the scheduler's workers hold for activations between runs (their contexts'
  // run-plan arenas and cached free buffers, and the buffers batched inputs are
  // concatenated into), summed over the workers: after warmup, then whenever the sum
  // changes. Calls are serialized.
  virtual void OnActivationBytes(int64_t bytes) = 0;
};

// Maps a final status to a failure reason.
FailureReason FailureReasonFor(const absl::Status& status);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_SCHEDULING_INFERENCE_OBSERVER_H_
