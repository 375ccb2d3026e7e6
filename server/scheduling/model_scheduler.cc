#include "server/scheduling/model_scheduler.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/log.h"

namespace qs {

FailureReason FailureReasonFor(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted: return FailureReason::kRejected;
    case absl::StatusCode::kCancelled: return FailureReason::kCancelled;
    case absl::StatusCode::kDeadlineExceeded: return FailureReason::kTimeout;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition: return FailureReason::kInvalid;
    default: return FailureReason::kInternal;
  }
}

void WorkerTracker::Add() {
  absl::MutexLock lock(&mu_);
  ++live_;
}

void WorkerTracker::Remove() {
  absl::MutexLock lock(&mu_);
  --live_;
}

bool WorkerTracker::WaitForAll(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return live_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&none), deadline);
}

ModelScheduler::ModelScheduler(std::shared_ptr<const void> owner, const Session* session,
                               const inference::ModelConfig& config,
                               const SchedulerOptions& options)
    : owner_(std::move(owner)),
      session_(session),
      max_batch_size_(config.max_batch_size()),
      max_queue_delay_(absl::Microseconds(
          config.dynamic_batching().max_queue_delay_microseconds())),
      max_queue_size_(config.dynamic_batching().default_queue_policy().max_queue_size()),
      default_timeout_(absl::Microseconds(
          config.dynamic_batching().default_queue_policy().default_timeout_microseconds())),
      priority_levels_(config.dynamic_batching().priority_levels()),
      default_priority_level_(config.dynamic_batching().default_priority_level()),
      options_(options),
      worker_activation_bytes_(static_cast<size_t>(std::max(1, options.instance_count)), 0) {
  for (int p : config.dynamic_batching().preferred_batch_size()) {
    if (p > 0 && p <= std::max(1, max_batch_size_)) preferred_.push_back(p);
  }
  std::sort(preferred_.begin(), preferred_.end());
}

absl::StatusOr<std::shared_ptr<ModelScheduler>> ModelScheduler::Start(
    std::shared_ptr<const void> owner, const Session* session,
    const inference::ModelConfig& config, const SchedulerOptions& options) {
  auto s = std::shared_ptr<ModelScheduler>(
      new ModelScheduler(std::move(owner), session, config, options));
  const int count = std::max(1, options.instance_count);
  absl::BlockingCounter warmed(count);
  for (int i = 0; i < count; ++i) {
    if (options.tracker) options.tracker->Add();
    // Each worker holds a reference: the scheduler lives until every worker exits.
    std::thread([self = s, i, threads = std::max(1, options.threads_per_worker),
                 &warmed]() mutable {
      self->WorkerLoop(i, threads, &warmed);
      WorkerTracker* tracker = self->options_.tracker;
      // Drop our reference before telling the tracker, so shutdown never outruns the
      // release of the model.
      self.reset();
      if (tracker) tracker->Remove();
    }).detach();
  }
  warmed.Wait();
  // Every worker is past its warmup loop: the input sets (a max-batch image tensor is
  // MBs) have no further use, so they do not stay resident for the model's life.
  std::vector<std::vector<Tensor>>().swap(s->options_.warmup);
  absl::Status st;
  {
    absl::MutexLock lock(&s->mu_);
    st = s->warmup_status_;
  }
  if (!st.ok()) {
    s->Retire();
    return st;
  }
  return s;
}

absl::Status ModelScheduler::Enqueue(std::unique_ptr<InferenceRequest> request) {
  if (default_timeout_ > absl::ZeroDuration()) {
    request->deadline = std::min(request->deadline, request->enqueue_time + default_timeout_);
  }
  absl::MutexLock lock(&mu_);
  if (retired_) {
    return absl::UnavailableError("model is being unloaded; retry on another version");
  }
  if (max_queue_size_ > 0 && queue_.size() >= max_queue_size_) {
    return absl::UnavailableError(
        absl::StrCat("exceeds maximum queue size (", max_queue_size_, ")"));
  }
  if (priority_levels_ == 0) {
    queue_.push_back(std::move(request));
  } else {
    // Triton's priority levels: 1 is served first; FIFO within a level. The level is
    // clamped into 1..priority_levels; 0 means the model's default level.
    auto level = [this](uint64_t p) {
      if (p == 0) p = default_priority_level_ == 0 ? priority_levels_ : default_priority_level_;
      return std::clamp<uint64_t>(p, 1, priority_levels_);
    };
    request->priority = level(request->priority);
    auto pos = std::find_if(queue_.begin(), queue_.end(), [&](const auto& q) {
      return q->priority > request->priority;
    });
    queue_.insert(pos, std::move(request));
  }
  if (options_.observer) options_.observer->OnQueueDepth(static_cast<int64_t>(queue_.size()));
  return absl::OkStatus();
}

void ModelScheduler::Retire() {
  absl::MutexLock lock(&mu_);
  retired_ = true;
}

bool ModelScheduler::retired() const {
  absl::MutexLock lock(&mu_);
  return retired_;
}

int64_t ModelScheduler::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}

bool ModelScheduler::Compatible(const InferenceRequest& a, const InferenceRequest& b) const {
  if (a.inputs.size() != b.inputs.size()) return false;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const Shape& x = a.inputs[i].shape();
    const Shape& y = b.inputs[i].shape();
    if (x.size() != y.size() || !std::equal(x.begin() + 1, x.end(), y.begin() + 1))
      return false;
  }
  return true;
}

std::vector<std::unique_ptr<InferenceRequest>> ModelScheduler::NextBatch() {
  std::vector<std::unique_ptr<InferenceRequest>> expired;
  std::vector<std::unique_ptr<InferenceRequest>> batch;
  {
    absl::MutexLock lock(&mu_);
    while (true) {
      auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !queue_.empty() || retired_;
      };
      mu_.Await(absl::Condition(&has_work));
      if (queue_.empty()) break;  // retired and drained
      // Requests that expired or were cancelled while queued never run.
      const absl::Time now = absl::Now();
      for (auto it = queue_.begin(); it != queue_.end();) {
        if ((*it)->deadline <= now || ((*it)->is_cancelled && (*it)->is_cancelled())) {
          expired.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      if (queue_.empty()) {
        if (!expired.empty()) break;
        continue;
      }
      if (max_batch_size_ <= 0) {  // no batching: one request per execution
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
        break;
      }
      // Greedy scan from the head: compatible requests up to max_batch_size.
      int64_t available = 0;
      size_t count = 0;
      bool blocked = false;  // the scan stopped before the end of the queue
      for (const auto& r : queue_) {
        if (!Compatible(*queue_.front(), *r) || available + r->batch_size > max_batch_size_) {
          blocked = true;
          break;
        }
        available += r->batch_size;
        ++count;
      }
      const bool delay_over =
          now >= queue_.front()->enqueue_time + max_queue_delay_ || retired_;
      const bool send_now = available >= max_batch_size_ || blocked || delay_over;
      // Triton's rule: send the largest batch possible once the delay is over (or no
      // bigger batch can form); before that, only at the largest preferred size
      // reachable.
      int64_t target = 0;
      if (send_now) {
        target = available;
      } else {
        for (int64_t p : preferred_)
          if (p <= available) target = p;
      }
      if (target > 0) {
        int64_t taken = 0;
        while (count-- > 0 && taken + queue_.front()->batch_size <= target) {
          taken += queue_.front()->batch_size;
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        if (batch.empty()) {  // a single request larger than the preferred target
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        break;
      }
      if (!expired.empty()) break;  // complete those first, then come back
      // Wait for more requests or for the oldest request's delay to run out.
      const size_t seen = queue_.size();
      auto grew = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return queue_.size() != seen || retired_;
      };
      absl::Time wake = queue_.front()->enqueue_time + max_queue_delay_;
      for (const auto& r : queue_) wake = std::min(wake, r->deadline);
      mu_.AwaitWithDeadline(absl::Condition(&grew), wake);
    }
    if (options_.observer) options_.observer->OnQueueDepth(static_cast<int64_t>(queue_.size()));
  }
  for (auto& r : expired) {
    const bool cancelled = r->is_cancelled && r->is_cancelled();
    stats_.RecordFailure(absl::Now() - r->enqueue_time);
    if (options_.observer) {
      options_.observer->OnFailure(
          cancelled ? FailureReason::kCancelled : FailureReason::kTimeout,
          absl::Now() - r->enqueue_time);
    }
    r->done(cancelled ? absl::CancelledError("request cancelled while queued")
                      : absl::DeadlineExceededError(
                            "request timed out in the queue before it could run"),
            InferenceResult());
  }
  return batch;
}

void ModelScheduler::ReportActivationBytes(int worker, const ExecutionContext* ctx,
                                           const std::vector<Tensor>& staging,
                                           int64_t* last) {
  InferenceObserver* observer = options_.observer.get();
  if (observer == nullptr) return;
  int64_t bytes = 0;
  if (ctx != nullptr) {
    const ExecutionContext::ActivationMemory m = ctx->activation_memory();
    bytes = static_cast<int64_t>(m.arena_bytes + m.cached_bytes);
  }
  for (const Tensor& t : staging) bytes += static_cast<int64_t>(t.byte_size());
  if (bytes == *last) return;  // the usual case once warm: no lock
  *last = bytes;
  absl::MutexLock lock(&activation_mu_);
  worker_activation_bytes_[static_cast<size_t>(worker)] = bytes;
  int64_t total = 0;
  for (int64_t b : worker_activation_bytes_) total += b;
  observer->OnActivationBytes(total);
}

void ModelScheduler::WorkerLoop(int worker, int threads, absl::BlockingCounter* warmed) {
  omp_set_num_threads(threads);
  // The context (oneDNN stream, cached primitives) is created on this thread and only
  // used here; warming it builds the primitives for the warmup shapes.
  std::unique_ptr<ExecutionContext> ctx = session_->NewContext();
  for (const auto& inputs : options_.warmup) {
    if (options_.abort_warmup && options_.abort_warmup()) {  // shutting down
      absl::MutexLock lock(&mu_);
      if (warmup_status_.ok()) warmup_status_ = absl::UnavailableError("server is shutting down");
      break;
    }
    std::vector<Tensor> outputs;
    // Warmup, not Run: convolution kernels are chosen by timing here, at load.
    absl::Status st = session_->Warmup(ctx.get(), inputs, &outputs);
    if (!st.ok()) {
      absl::MutexLock lock(&mu_);
      if (warmup_status_.ok()) {
        warmup_status_ = absl::FailedPreconditionError(
            absl::StrCat("warmup failed: ", st.message()));
      }
      break;
    }
  }
  std::vector<Tensor> staging;  // Concat's buffers, one per input
  int64_t activation_bytes = -1;
  // Before Start returns: the gauge states the warmed contexts' memory from the start.
  ReportActivationBytes(worker, ctx.get(), staging, &activation_bytes);
  warmed->DecrementCount();  // `warmed` must not be touched after this line
  while (true) {
    auto batch = NextBatch();
    if (batch.empty()) {
      absl::MutexLock lock(&mu_);
      if (retired_ && queue_.empty()) break;
      continue;
    }
    Execute(ctx.get(), std::move(batch), &staging);
    ReportActivationBytes(worker, ctx.get(), staging, &activation_bytes);
  }
  // The context and the staging buffers go with this worker.
  staging.clear();
  ctx.reset();
  ReportActivationBytes(worker, nullptr, staging, &activation_bytes);
}

namespace {

// Concatenates the i-th input of every request along dimension 0, into `*staging`: the
// worker reuses one buffer per input from batch to batch (a fresh multi-MB block per
// batch is mapped and page-faulted anew every time), unless something still holds the
// last batch's inputs (an observer's sample), and grows it to the largest batch seen.
Tensor Concat(const std::vector<std::unique_ptr<InferenceRequest>>& batch, size_t i,
              int64_t total, Tensor* staging) {
  const Tensor& first = batch[0]->inputs[i];
  Shape shape = first.shape();
  shape[0] = total;
  size_t bytes = 0;
  for (const auto& r : batch) bytes += r->inputs[i].byte_size();
  if (!staging->defined() || !staging->unique() || staging->byte_size() < bytes) {
    *staging = Tensor::Uninitialized(DataType::kUInt8, {static_cast<int64_t>(bytes)});
  }
  char* dst = static_cast<char*>(staging->raw_data());
  for (const auto& r : batch) {
    const Tensor& t = r->inputs[i];
    std::memcpy(dst, t.raw_data(), t.byte_size());
    dst += t.byte_size();
  }
  auto owner = std::make_shared<Tensor>(*staging);
  return Tensor::Wrap(first.dtype(), shape, owner->raw_data(), owner);
}

}  // namespace

void ModelScheduler::Execute(ExecutionContext* ctx,
                             std::vector<std::unique_ptr<InferenceRequest>> batch,
                             std::vector<Tensor>* staging) {
  const absl::Time start = absl::Now();
  int64_t total = 0;
  for (const auto& r : batch) total += r->batch_size;
  std::vector<Tensor> inputs;
  if (batch.size() == 1) {
    inputs = batch[0]->inputs;
  } else {
    staging->resize(std::max(staging->size(), batch[0]->inputs.size()));
    for (size_t i = 0; i < batch[0]->inputs.size(); ++i)
      inputs.push_back(Concat(batch, i, total, &(*staging)[i]));
  }
  InferenceObserver* observer = options_.observer.get();
  if (observer) observer->OnInFlight(static_cast<int64_t>(batch.size()));
  const absl::Time infer_start = absl::Now();
  std::vector<Tensor> outputs;
  absl::Status st = session_->Run(ctx, inputs, &outputs);
  const absl::Time infer_end = absl::Now();
  if (observer && st.ok()) observer->OnOutputs(inputs, outputs);
  InferenceTimings exec;
  exec.compute_input = infer_start - start;
  exec.compute_infer = infer_end - infer_start;
  // Results are built and every statistic (per request and per execution) recorded
  // before any request completes, so a client that has its answer sees its execution
  // in ModelStatistics.
  std::vector<std::pair<absl::Status, InferenceResult>> results;
  results.reserve(batch.size());
  int64_t offset = 0;
  for (auto& r : batch) {
    InferenceResult result;
    result.executed_batch_size = total;
    result.timings = exec;
    result.timings.queue = start - r->enqueue_time;
    absl::Status rs = st;
    if (rs.ok()) {
      for (const Tensor& out : outputs) {
        if (batch.size() == 1) {
          result.outputs.push_back(out);
          continue;
        }
        // A view into the batch output: no copy, the buffer is shared.
        if (out.rank() == 0 || out.dim(0) != total) {
          rs = absl::InternalError(
              "model output has no batch dimension matching the batched inputs");
          break;
        }
        Shape shape = out.shape();
        shape[0] = r->batch_size;
        const size_t row = out.byte_size() / static_cast<size_t>(total);
        auto owner = std::make_shared<Tensor>(out);
        void* data = static_cast<char*>(owner->raw_data()) + row * offset;
        result.outputs.push_back(Tensor::Wrap(out.dtype(), shape, data, owner));
      }
    }
    offset += r->batch_size;
    const absl::Time out_end = absl::Now();
    result.timings.compute_output = out_end - infer_end;
    if (rs.ok()) {
      stats_.RecordSuccess(r->batch_size, out_end - r->enqueue_time, result.timings);
      if (observer) observer->OnSuccess(r->batch_size, out_end - r->enqueue_time, result.timings);
    } else {
      stats_.RecordFailure(out_end - r->enqueue_time);
      if (observer) observer->OnFailure(FailureReasonFor(rs), out_end - r->enqueue_time);
    }
    results.emplace_back(std::move(rs), std::move(result));
  }
  exec.compute_output = absl::Now() - infer_end;
  if (st.ok()) {
    stats_.RecordExecution(total, exec);
    if (observer) observer->OnExecution(total, exec);
  }
  if (observer) observer->OnInFlight(-static_cast<int64_t>(batch.size()));
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i]->done(std::move(results[i].first), std::move(results[i].second));
  }
}

}  // namespace qs
