// A cache of large tensor buffers, one per execution context.
//
// Session::Run installs its context's pool on the running thread (BufferPool::Scope);
// while installed, Tensor allocations of at least kMinPooledBytes take a buffer of the
// same (page-rounded) size from the pool when one is free, and the buffer goes back to
// the pool when its last Tensor dies — on whatever thread that happens. Why: a run
// allocates the same sizes every time, and fresh pages from the kernel cost page faults
// (measured here: 1.4 ms to first-touch a 4 MB tensor, against 0.33 ms for the GELU that
// fills it).
//
// Thread-safety: Allocate and the buffers' release are thread-safe (one mutex). Every
// buffer holds a reference to its pool, so the pool outlives the tensors it lent.
// Memory: the pool keeps at most max_cached_bytes of free buffers; returns beyond that
// are freed at once, and a request for a size it does not hold first frees cached
// buffers of other sizes (smallest first) until the new one would fit under the cap.
// Sizes are rounded up to size classes (at most 25 % more), so nearly equal requests
// share buffers.
//
// Run plans: a run bracketed by BeginRun(signature)/EndRun() on the allocating thread is
// recorded (the order, sizes and lifetimes of its allocations); the buffers that came
// back before EndRun get places in one arena (arena_plan.h), and later runs with the same
// signature take those places instead of cached buffers. A run's activations then cost
// about their peak live size (ResNet-50 INT8 b8: 17.7 MB) rather than one cached buffer
// per size class and concurrency (41.5 MB). A place is handed out only when every earlier
// buffer of the run that shares its bytes has come back, so a run that allocates
// differently from its recording is still correct: the rest of it is served from the
// cache, and its plan is recorded again (at most kMaxPlanFailures times per signature).
// One arena serves every signature; it is sized for the largest plan.
#ifndef QUANTSERVE_ENGINE_BUFFER_POOL_H_
#define QUANTSERVE_ENGINE_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "engine/arena_plan.h"

namespace qs {

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  static constexpr size_t kMinPooledBytes = 64 * 1024;

  static std::shared_ptr<BufferPool> Create(size_t max_cached_bytes);
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A 64-byte aligned buffer of at least `bytes`; throws std::bad_alloc like new.
  std::shared_ptr<void> Allocate(size_t bytes);

  void set_max_cached_bytes(size_t bytes);
  // Bytes freed since the last call because the cache was full (returns it could not
  // keep, buffers evicted to make room for another size): what the next identical run
  // will allocate afresh. The owner raises the cap by this much to converge.
  size_t TakeTurnedAwayBytes();
  // Frees every cached buffer and caches nothing from now on (buffers still lent are
  // freed when they come back). For the owner going away: a tensor that outlives its
  // context (a thread's scratch, a caller's output) must not keep a whole cache alive.
  void Drain();
  size_t cached_bytes() const;

  // Brackets one run on the calling thread (see the file comment). `signature` must
  // identify the allocation pattern: the shapes and types of the run's inputs. Runs do
  // not nest; allocations between the calls come from this thread only. A run that
  // failed (`succeeded` false) leaves no plan. Never throw: without memory for the
  // bookkeeping a run goes unplanned.
  // The arena keeps the size of the largest plan for the pool's lifetime (the largest
  // batch a model's context has run); plans are kept for up to kMaxPlans signatures.
  void BeginRun(uint64_t signature) noexcept;
  void EndRun(bool succeeded) noexcept;
  size_t arena_bytes() const;
  // Allocations of the runs so far served from the arena (for tests and benchmarks).
  int64_t arena_hits() const;
  static constexpr int kMaxPlans = 32;
  static constexpr int kMaxPlanFailures = 3;

  // The pool installed on this thread, or nullptr.
  static BufferPool* Current();

  // Installs `pool` on this thread for the scope's lifetime (scopes nest).
  class Scope {
   public:
    explicit Scope(BufferPool* pool);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    BufferPool* previous_;
  };

 private:
  explicit BufferPool(size_t max_cached_bytes) : max_cached_(max_cached_bytes) {}
  void Release(void* p, size_t bytes);
  void ReleaseArena(int slot, uint64_t generation);
  // Frees the arena when nothing of it is lent (returns it to free outside the lock).
  void* TakeIdleArenaLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the recorded run a plan; hands back what the caller frees after unlocking: a
  // replaced arena and the cache. May throw std::bad_alloc before changing anything.
  void FinishRecordingLocked(void** old_arena, std::map<size_t, std::vector<void*>>* old_cache)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Per place of the plan being replayed.
  enum PlaceState : char { kUnused = 0, kLent = 1, kBack = 2 };
  struct RunPlan {
    std::vector<size_t> sizes;  // requested bytes per allocation, in order
    ArenaPlan arena;
  };

  mutable absl::Mutex mu_;
  // By size class; ordered, so that eviction (smallest first) does not depend on a
  // per-process hash seed.
  std::map<size_t, std::vector<void*>> free_ ABSL_GUARDED_BY(mu_);
  size_t cached_ ABSL_GUARDED_BY(mu_) = 0;
  size_t max_cached_ ABSL_GUARDED_BY(mu_);
  size_t turned_away_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;

  // Run plans (see the file comment).
  absl::flat_hash_map<uint64_t, std::unique_ptr<RunPlan>> plans_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, int> plan_failures_ ABSL_GUARDED_BY(mu_);
  char* arena_ ABSL_GUARDED_BY(mu_) = nullptr;
  size_t arena_size_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t arena_lent_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t arena_hits_ ABSL_GUARDED_BY(mu_) = 0;
  // The run in progress.
  bool in_run_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t run_signature_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // counts runs
  int run_index_ ABSL_GUARDED_BY(mu_) = 0;        // allocations so far in the run
  const RunPlan* replay_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool diverged_ ABSL_GUARDED_BY(mu_) = false;   // the run left its plan
  std::vector<char> returned_ ABSL_GUARDED_BY(mu_);  // replay: PlaceState per place
  // Recording: per allocation its lifetime in event ticks; live buffers by address.
  bool recording_ ABSL_GUARDED_BY(mu_) = false;
  int64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<BufferLifetime> recorded_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<void*, int> recorded_live_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_BUFFER_POOL_H_
