// The per model-version dynamic batcher and its worker threads (Triton's semantics:
// see docs/architecture.md).
//
// Threads: `instance_count` workers, each owning one engine ExecutionContext created on
// that thread and an OpenMP team of `threads_per_worker`. Enqueue() never blocks on
// computation; it only takes the queue lock.
//
// Lifetime: Start() returns a shared handle; workers hold their own reference, so the
// scheduler (and the model it pins) lives until Retire() has been called and every
// worker has drained the queue and exited. Retire() is idempotent.
#ifndef QUANTSERVE_SERVER_SCHEDULING_MODEL_SCHEDULER_H_
#define QUANTSERVE_SERVER_SCHEDULING_MODEL_SCHEDULER_H_

#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "engine/session.h"
#include "model_config.pb.h"
#include "server/scheduling/inference_observer.h"
#include "server/scheduling/inference_request.h"
#include "server/scheduling/model_stats.h"

namespace qs {

// Counts live worker threads across all schedulers so shutdown can wait for them.
class WorkerTracker {
 public:
  void Add() ABSL_LOCKS_EXCLUDED(mu_);
  void Remove() ABSL_LOCKS_EXCLUDED(mu_);
  // True if every worker exited before `deadline`.
  bool WaitForAll(absl::Time deadline) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  absl::Mutex mu_;
  int live_ ABSL_GUARDED_BY(mu_) = 0;
};

struct SchedulerOptions {
  int instance_count = 1;
  int threads_per_worker = 1;
  WorkerTracker* tracker = nullptr;  // optional, must outlive the workers
  std::shared_ptr<InferenceObserver> observer;  // optional (metrics)
  // Input sets every worker runs on its own context before Start returns (see
  // server/repository/warmup.h). The scheduler drops its copy once they have run.
  std::vector<std::vector<Tensor>> warmup;
  // Polled between warmup runs: true stops the warmup (Start then fails Unavailable),
  // so a SIGTERM during a long warmup does not wait for it.
  std::function<bool()> abort_warmup;
};

class ModelScheduler : public std::enable_shared_from_this<ModelScheduler> {
 public:
  // `session` and `config` must outlive the scheduler: the caller passes an owner that
  // keeps them alive (`owner`), which the scheduler holds until its workers exit.
  // Blocks until every worker has run the warmup sets. Errors: the first warmup failure
  // (the workers are then retired).
  static absl::StatusOr<std::shared_ptr<ModelScheduler>> Start(std::shared_ptr<const void> owner,
                                               const Session* session,
                                               const inference::ModelConfig& config,
                                               const SchedulerOptions& options);

  // Queues `request`. Unavailable when the queue is full (max_queue_size) or the
  // scheduler is retired; the request's callback is then NOT called.
  absl::Status Enqueue(std::unique_ptr<InferenceRequest> request) ABSL_LOCKS_EXCLUDED(mu_);
  // Stops accepting requests; queued ones still run. Idempotent, non-blocking.
  void Retire() ABSL_LOCKS_EXCLUDED(mu_);

  int64_t queued() const ABSL_LOCKS_EXCLUDED(mu_);
  // True once Retire() was called (it never becomes false again).
  bool retired() const ABSL_LOCKS_EXCLUDED(mu_);
  const ModelStats& stats() const { return stats_; }
  // Null when no observer was configured.
  InferenceObserver* observer() const { return options_.observer.get(); }
  int max_batch_size() const { return max_batch_size_; }

 private:
  ModelScheduler(std::shared_ptr<const void> owner, const Session* session,
                 const inference::ModelConfig& config, const SchedulerOptions& options);
  void WorkerLoop(int worker, int threads, absl::BlockingCounter* warmed);
  // Tells the observer the workers' activation bytes (context and batch staging
  // buffers) when worker `worker`'s changed from `*last` (-1 before its first report).
  // A null `ctx`: the worker is exiting and holds nothing.
  void ReportActivationBytes(int worker, const ExecutionContext* ctx,
                             const std::vector<Tensor>& staging, int64_t* last)
      ABSL_LOCKS_EXCLUDED(activation_mu_);
  // Takes the next batch off the queue; empty when retired and drained.
  std::vector<std::unique_ptr<InferenceRequest>> NextBatch() ABSL_LOCKS_EXCLUDED(mu_);
  // `staging`: the worker's buffers for batched inputs (see Concat).
  void Execute(ExecutionContext* ctx, std::vector<std::unique_ptr<InferenceRequest>> batch,
               std::vector<Tensor>* staging);
  bool Compatible(const InferenceRequest& a, const InferenceRequest& b) const;

  std::shared_ptr<const void> owner_;
  const Session* session_;
  const int max_batch_size_;
  std::vector<int64_t> preferred_;  // ascending
  const absl::Duration max_queue_delay_;
  const uint32_t max_queue_size_;
  const absl::Duration default_timeout_;
  const uint64_t priority_levels_;         // 0: one FIFO queue
  const uint64_t default_priority_level_;  // used for priority 0
  SchedulerOptions options_;
  ModelStats stats_;

  mutable absl::Mutex mu_;
  std::deque<std::unique_ptr<InferenceRequest>> queue_ ABSL_GUARDED_BY(mu_);
  absl::Status warmup_status_ ABSL_GUARDED_BY(mu_);
  bool retired_ ABSL_GUARDED_BY(mu_) = false;

  absl::Mutex activation_mu_;  // serializes OnActivationBytes
  std::vector<int64_t> worker_activation_bytes_ ABSL_GUARDED_BY(activation_mu_);
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_SCHEDULING_MODEL_SCHEDULER_H_
