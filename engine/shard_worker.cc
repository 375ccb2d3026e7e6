#include "engine/shard_worker.h"

#include <omp.h>

#include <utility>

namespace qs {

ShardWorker::ShardWorker() : thread_([this] { Loop(); }) {}

ShardWorker::~ShardWorker() {
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &ShardWorker::Idle));
    stop_ = true;
  }
  thread_.join();
}

void ShardWorker::Run(std::function<void()> job) {
  absl::MutexLock lock(&mu_);
  job_ = std::move(job);
  busy_ = true;
}

void ShardWorker::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &ShardWorker::Idle));
}

void ShardWorker::Loop() {
  // One thread per shard: primitives built here are sized for one thread.
  omp_set_num_threads(1);
  while (true) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &ShardWorker::HasJobOrStop));
      if (stop_) return;
      job = std::move(job_);
      job_ = nullptr;
    }
    job();
    absl::MutexLock lock(&mu_);
    busy_ = false;
  }
}

}  // namespace qs
