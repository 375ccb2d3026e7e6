// A thread of our own that runs one job at a time for one owner: the batch shards of an
// ExecutionContext (Session::Run) beyond the one the calling thread runs.
//
// Why not an OpenMP team: oneDNN 2.6 (library-managed scratchpad, concurrent execution
// off as Debian builds it) keeps a primitive's scratchpad in thread-local storage of the
// thread that created it, so a primitive must be created, run and destroyed on one
// thread. An OpenMP team does not promise that its thread k stays the same OS thread
// (libgomp retires pool threads when a smaller team follows a larger one); this thread
// lives as long as the worker, and its OpenMP team size is 1 (oneDNN builds
// single-threaded primitives on it, and OpenMP regions it meets run inline).
//
// Thread-safety: one owner thread calls Run/Wait at a time. Run hands the job over and
// returns; Wait blocks until the job has returned. The destructor waits for a running
// job, then stops and joins the thread.
#ifndef QUANTSERVE_ENGINE_SHARD_WORKER_H_
#define QUANTSERVE_ENGINE_SHARD_WORKER_H_

#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace qs {

class ShardWorker {
 public:
  ShardWorker();
  ~ShardWorker();
  ShardWorker(const ShardWorker&) = delete;
  ShardWorker& operator=(const ShardWorker&) = delete;

  // Starts `job` on the worker thread; the previous job must have been waited for.
  // `job` must not throw.
  void Run(std::function<void()> job);
  // Blocks until the job given to Run has returned (at once when there is none).
  void Wait();

 private:
  void Loop();
  bool Idle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !busy_; }
  bool HasJobOrStop() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || (busy_ && job_ != nullptr);
  }

  absl::Mutex mu_;
  std::function<void()> job_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts after the fields it reads
};

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_SHARD_WORKER_H_
