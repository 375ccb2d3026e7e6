#include "engine/buffer_pool.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <new>
#include <utility>

namespace qs {
namespace {

thread_local BufferPool* current_pool = nullptr;

// The size class of a request: rounded up to a quarter of its power of two (at most
// 25 % wasted), then to whole pages. Networks allocate many nearly equal sizes (a few
// channels or pixels apart); with exact sizes each needs its own buffer, the cap fills
// with sizes used once per run and the rest pay fresh page faults every run.
size_t RoundedSize(size_t bytes) {
  // No allocation comes near this; the loop below would overflow past it.
  if (bytes > (std::numeric_limits<size_t>::max() >> 2)) throw std::bad_alloc();
  size_t power = 1;
  while (power <= bytes / 2) power *= 2;
  const size_t step = std::max<size_t>(power / 4, 1);
  const size_t rounded = (bytes + step - 1) / step * step;
  return (rounded + 4095) / 4096 * 4096;
}

}  // namespace

std::shared_ptr<BufferPool> BufferPool::Create(size_t max_cached_bytes) {
  return std::shared_ptr<BufferPool>(new BufferPool(max_cached_bytes));
}

BufferPool::~BufferPool() {
  for (auto& [size, buffers] : free_)
    for (void* p : buffers) std::free(p);
  std::free(arena_);  // every place has come back: each holds a reference to the pool
}

std::shared_ptr<void> BufferPool::Allocate(size_t bytes) {
  const size_t size = RoundedSize(bytes);
  void* p = nullptr;
  int recorded = -1;  // this allocation's index in the run being recorded
  {
    absl::ReleasableMutexLock lock(&mu_);
    if (in_run_) {
      const int k = run_index_++;
      if (replay_ != nullptr && !diverged_) {
        const int64_t offset = k < static_cast<int>(replay_->sizes.size()) &&
                                       replay_->sizes[k] == bytes
                                   ? replay_->arena.offsets[k]
                                   : -2;
        if (offset == -2) {
          diverged_ = true;  // not the recorded pattern
        } else if (offset >= 0) {
          bool bytes_free = true;
          for (int j : replay_->arena.conflicts[k]) bytes_free &= returned_[j] != kLent;
          if (bytes_free) {
            returned_[k] = kLent;
            ++arena_lent_;
            ++arena_hits_;
            char* q = arena_ + offset;
            const uint64_t generation = generation_;
            lock.Release();
            // Built outside the lock: if the control block cannot be allocated, the
            // deleter runs at once and takes the lock.
            std::shared_ptr<BufferPool> self = shared_from_this();
            return std::shared_ptr<void>(
                q, [self, k, generation](void*) { self->ReleaseArena(k, generation); });
          }
          diverged_ = true;  // a buffer on these bytes is still lent: lifetimes differ
        }
      } else if (recording_) {
        // recorded_[k] is the k-th allocation of the run: recording starts at the run's
        // first allocation and takes every one after it, or stops.
        try {
          recorded_.push_back({bytes, clock_++, -1});
          recorded = k;
        } catch (const std::bad_alloc&) {
          recording_ = false;  // this run goes unplanned
        }
      }
    }
    auto it = free_.find(size);
    if (it != free_.end() && !it->second.empty()) {
      p = it->second.back();
      it->second.pop_back();
      cached_ -= size;
    }
  }
  if (p == nullptr) {
    // A size the cache does not hold: make room for it by freeing cached buffers of
    // other sizes, so shapes that stopped coming (another batch size, sequence length)
    // do not hold the cap forever.
    std::vector<void*> evicted;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = free_.begin(); it != free_.end() && cached_ + size > max_cached_;) {
        while (!it->second.empty() && cached_ + size > max_cached_) {
          evicted.push_back(it->second.back());
          it->second.pop_back();
          cached_ -= it->first;
          turned_away_ += it->first;
        }
        if (it->second.empty()) {
          free_.erase(it++);
        } else {
          ++it;
        }
      }
    }
    for (void* q : evicted) std::free(q);
    p = std::aligned_alloc(64, size);
    if (p == nullptr) throw std::bad_alloc();
  }
  if (recorded >= 0) {
    absl::MutexLock lock(&mu_);
    try {
      if (recording_) recorded_live_[p] = recorded;
    } catch (const std::bad_alloc&) {
      recording_ = false;  // its lifetime would be unknown: this run goes unplanned
    }
  }
  std::shared_ptr<BufferPool> self = shared_from_this();
  return std::shared_ptr<void>(p, [self, size](void* q) { self->Release(q, size); });
}

void BufferPool::Release(void* p, size_t bytes) {
  {
    absl::MutexLock lock(&mu_);
    if (recording_) {
      if (auto it = recorded_live_.find(p); it != recorded_live_.end()) {
        recorded_[it->second].end = clock_++;
        recorded_live_.erase(it);
      }
    }
    if (cached_ + bytes <= max_cached_) {
      free_[bytes].push_back(p);
      cached_ += bytes;
      return;
    }
    turned_away_ += bytes;
  }
  std::free(p);
}

size_t BufferPool::TakeTurnedAwayBytes() {
  absl::MutexLock lock(&mu_);
  return std::exchange(turned_away_, 0);
}

void BufferPool::set_max_cached_bytes(size_t bytes) {
  absl::MutexLock lock(&mu_);
  max_cached_ = bytes;
}

void BufferPool::Drain() {
  std::map<size_t, std::vector<void*>> free;
  void* arena = nullptr;
  {
    absl::MutexLock lock(&mu_);
    free.swap(free_);
    cached_ = 0;
    max_cached_ = 0;
    draining_ = true;
    plans_.clear();
    replay_ = nullptr;
    recording_ = false;
    arena = TakeIdleArenaLocked();  // else the last place to come back frees it
  }
  for (auto& [size, buffers] : free)
    for (void* p : buffers) std::free(p);
  std::free(arena);
}

void* BufferPool::TakeIdleArenaLocked() {
  if (arena_lent_ > 0) return nullptr;
  void* arena = arena_;
  arena_ = nullptr;
  arena_size_ = 0;
  return arena;
}

void BufferPool::ReleaseArena(int slot, uint64_t generation) {
  void* arena = nullptr;
  {
    absl::MutexLock lock(&mu_);
    --arena_lent_;
    // Places of earlier runs cannot be out during a replay (BeginRun): only this run's.
    if (in_run_ && generation == generation_ && replay_ != nullptr) returned_[slot] = kBack;
    if (draining_) arena = TakeIdleArenaLocked();
  }
  std::free(arena);
}

void BufferPool::BeginRun(uint64_t signature) noexcept {
  absl::MutexLock lock(&mu_);
  in_run_ = true;
  run_signature_ = signature;
  ++generation_;
  run_index_ = 0;
  diverged_ = false;
  replay_ = nullptr;
  recording_ = false;
  if (draining_) return;
  try {
    if (auto it = plans_.find(signature); it != plans_.end()) {
      // Only on an idle arena: a place still lent from an earlier run (an output the
      // caller holds) could share bytes with any place of this one.
      if (arena_lent_ == 0 && arena_size_ >= it->second->arena.arena_bytes) {
        returned_.assign(it->second->sizes.size(), kUnused);
        replay_ = it->second.get();
      }
      return;
    }
    const auto failures = plan_failures_.find(signature);
    if (static_cast<int>(plans_.size()) < kMaxPlans &&
        (failures == plan_failures_.end() || failures->second < kMaxPlanFailures)) {
      recorded_.clear();
      recorded_live_.clear();
      clock_ = 0;
      recording_ = true;
    }
  } catch (const std::bad_alloc&) {
    replay_ = nullptr;  // out of memory for the bookkeeping: run from the cache
    recording_ = false;
  }
}

void BufferPool::EndRun(bool succeeded) noexcept {
  std::map<size_t, std::vector<void*>> old_cache;
  void* old_arena = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (!in_run_) return;
    in_run_ = false;
    try {
      if (replay_ != nullptr) {
        // A place still lent at the end: the recording saw a shorter lifetime. The run
        // was correct (places are handed out only on free bytes), but its plan is not.
        bool wrong = diverged_;
        for (char state : returned_) wrong |= state == kLent;
        if (wrong) {
          plans_.erase(run_signature_);
          ++plan_failures_[run_signature_];
        }
      } else if (recording_ && succeeded) {
        // A failed run may have stopped anywhere: its recording is not the pattern.
        FinishRecordingLocked(&old_arena, &old_cache);
      }
    } catch (const std::bad_alloc&) {
      // Out of memory for the bookkeeping: the run simply leaves no plan.
    }
    replay_ = nullptr;
    recording_ = false;
    recorded_.clear();
    recorded_live_.clear();
  }
  for (auto& [size, buffers] : old_cache)
    for (void* p : buffers) std::free(p);
  std::free(old_arena);
}

void BufferPool::FinishRecordingLocked(void** old_arena,
                                       std::map<size_t, std::vector<void*>>* old_cache) {
  // Everything that can throw comes before the arena and the cache change.
  ArenaPlan arena = PlanArena(recorded_);
  if (arena.arena_bytes == 0) return;  // nothing came back during the run
  auto plan = std::make_unique<RunPlan>();
  for (const BufferLifetime& b : recorded_) plan->sizes.push_back(b.bytes);
  plan->arena = std::move(arena);
  const size_t needed = plan->arena.arena_bytes;
  auto [slot, inserted] = plans_.try_emplace(run_signature_);
  if (needed > arena_size_) {
    // Cannot grow while places are lent; a failed allocation keeps the old arena (and
    // the plans it serves). Either way the next run of this signature records again.
    const size_t size = (needed + 4095) / 4096 * 4096;
    char* grown = arena_lent_ > 0 ? nullptr : static_cast<char*>(std::aligned_alloc(4096, size));
    if (grown == nullptr) {
      plans_.erase(slot);
      return;
    }
    *old_arena = arena_;
    arena_ = grown;
    arena_size_ = size;
  }
  slot->second = std::move(plan);
  // Replays take the arena: what the recording left in the cache is not needed (a buffer
  // that is, such as a run's output, is allocated again once and cached).
  old_cache->swap(free_);
  cached_ = 0;
}

size_t BufferPool::arena_bytes() const {
  absl::MutexLock lock(&mu_);
  return arena_size_;
}

int64_t BufferPool::arena_hits() const {
  absl::MutexLock lock(&mu_);
  return arena_hits_;
}

size_t BufferPool::cached_bytes() const {
  absl::MutexLock lock(&mu_);
  return cached_;
}

BufferPool* BufferPool::Current() { return current_pool; }

BufferPool::Scope::Scope(BufferPool* pool) : previous_(current_pool) {
  current_pool = pool;
}

BufferPool::Scope::~Scope() { current_pool = previous_; }

}  // namespace qs
