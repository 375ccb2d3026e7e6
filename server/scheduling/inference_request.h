// One inference request as the scheduler sees it: validated engine tensors, timing
// bounds, and the completion callback.
#ifndef QUANTSERVE_SERVER_SCHEDULING_INFERENCE_REQUEST_H_
#define QUANTSERVE_SERVER_SCHEDULING_INFERENCE_REQUEST_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "engine/tensor.h"

namespace qs {

struct InferenceTimings {
  absl::Duration queue;
  absl::Duration compute_input;
  absl::Duration compute_infer;
  absl::Duration compute_output;
};

struct InferenceResult {
  std::vector<Tensor> outputs;  // in the session's output order (all outputs)
  InferenceTimings timings;
  int64_t executed_batch_size = 0;  // size of the batch this request ran in
};

struct InferenceRequest {
  // Inputs in the session's input order; with batching each has the batch dimension.
  std::vector<Tensor> inputs;
  int64_t batch_size = 1;
  absl::Time enqueue_time;
  absl::Time deadline = absl::InfiniteFuture();
  // The request's `priority` parameter (Triton: 1 highest; 0 = the model's default).
  uint64_t priority = 0;
  // Polled while queued; a cancelled request completes with CANCELLED and never runs.
  std::function<bool()> is_cancelled;
  // Called exactly once, on a worker thread (or the enqueuing thread for rejections
  // returned by Enqueue, which do not call it).
  std::function<void(absl::Status, InferenceResult)> done;
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_SCHEDULING_INFERENCE_REQUEST_H_
