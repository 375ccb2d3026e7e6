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
}

std::shared_ptr<void> BufferPool::Allocate(size_t bytes) {
  const size_t size = RoundedSize(bytes);
  void* p = nullptr;
  {
    absl::MutexLock lock(&mu_);
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
  std::shared_ptr<BufferPool> self = shared_from_this();
  return std::shared_ptr<void>(p, [self, size](void* q) { self->Release(q, size); });
}

void BufferPool::Release(void* p, size_t bytes) {
  {
    absl::MutexLock lock(&mu_);
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
  {
    absl::MutexLock lock(&mu_);
    free.swap(free_);
    cached_ = 0;
    max_cached_ = 0;
  }
  for (auto& [size, buffers] : free)
    for (void* p : buffers) std::free(p);
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
