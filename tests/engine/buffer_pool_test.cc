#include "engine/buffer_pool.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <thread>
#include <vector>

#include "engine/tensor.h"
#include "gtest/gtest.h"

namespace qs {
namespace {

TEST(BufferPoolTest, ReturnedBufferIsReusedForTheSameSizeClass) {
  auto pool = BufferPool::Create(size_t{1} << 20);
  void* first;
  {
    std::shared_ptr<void> a = pool->Allocate(100000);
    first = a.get();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
    EXPECT_EQ(pool->cached_bytes(), 0u);
  }
  // 100000 is in the class 7 x 16 KiB (a quarter of 64 KiB steps), page-aligned.
  EXPECT_EQ(pool->cached_bytes(), 114688u);
  std::shared_ptr<void> b = pool->Allocate(99000);  // same class
  EXPECT_EQ(b.get(), first);
  EXPECT_EQ(pool->cached_bytes(), 0u);
  std::shared_ptr<void> c = pool->Allocate(115000);  // the next class: a new buffer
  EXPECT_NE(c.get(), first);
}

TEST(BufferPoolTest, SizeClassesWasteAtMostAQuarter) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  for (size_t bytes : {size_t{65536}, size_t{65537}, size_t{81920}, size_t{1} << 20,
                       (size_t{1} << 20) + 1, size_t{3} << 20, (size_t{5} << 20) - 7}) {
    pool->Allocate(bytes).reset();
    const size_t before = pool->cached_bytes();
    std::shared_ptr<void> again = pool->Allocate(bytes);  // takes back its own class
    const size_t cls = before - pool->cached_bytes();
    EXPECT_GE(cls, bytes);
    EXPECT_LE(cls, bytes + bytes / 4 + 4096) << bytes;
    EXPECT_EQ(cls % 4096, 0u);
  }
}

TEST(BufferPoolTest, KeepsAtMostTheCapAndCountsWhatItTurnedAway) {
  auto pool = BufferPool::Create(256 * 1024);
  std::vector<std::shared_ptr<void>> held;
  for (int i = 0; i < 4; ++i) held.push_back(pool->Allocate(128 * 1024));
  EXPECT_EQ(pool->TakeTurnedAwayBytes(), 0u);
  held.clear();
  EXPECT_EQ(pool->cached_bytes(), 256u * 1024);
  EXPECT_EQ(pool->TakeTurnedAwayBytes(), 256u * 1024);  // two returns did not fit
  EXPECT_EQ(pool->TakeTurnedAwayBytes(), 0u);            // taken: reset
  pool->set_max_cached_bytes(0);
  std::shared_ptr<void> a = pool->Allocate(128 * 1024);  // from the cache
  a.reset();  // over the new cap: freed
  EXPECT_EQ(pool->cached_bytes(), 128u * 1024);
  EXPECT_EQ(pool->TakeTurnedAwayBytes(), 128u * 1024);
}

TEST(BufferPoolTest, TensorsUseTheInstalledPoolAndMayOutliveIt) {
  std::weak_ptr<BufferPool> weak;
  Tensor kept;
  {
    auto pool = BufferPool::Create(size_t{16} << 20);
    weak = pool;
    {
      BufferPool::Scope scope(pool.get());
      EXPECT_EQ(BufferPool::Current(), pool.get());
      Tensor small = Tensor::Uninitialized(DataType::kFloat32, {16});  // below the minimum
      Tensor zeroed(DataType::kFloat32, {1 << 16});  // 256 KiB, zero-filled
      for (int64_t i = 0; i < zeroed.num_elements(); ++i) ASSERT_EQ(zeroed.data<float>()[i], 0.f);
      zeroed.data<float>()[5] = 1.f;
      kept = Tensor::Uninitialized(DataType::kFloat32, {1 << 16});
      kept.data<float>()[0] = 42.f;
    }
    EXPECT_EQ(BufferPool::Current(), nullptr);
    EXPECT_EQ(pool->cached_bytes(), size_t{1} << 18);  // `zeroed` came back
    {
      BufferPool::Scope scope(pool.get());
      Tensor again(DataType::kFloat32, {1 << 16});  // the recycled buffer, zeroed again
      EXPECT_EQ(again.data<float>()[5], 0.f);
    }
  }
  EXPECT_FALSE(weak.expired());  // `kept` holds the pool
  EXPECT_EQ(kept.data<float>()[0], 42.f);
  kept = Tensor();
  EXPECT_TRUE(weak.expired());
}

TEST(BufferPoolTest, ANewSizeEvictsSmallerClassesFirstToFitUnderTheCap) {
  auto pool = BufferPool::Create(384 * 1024);
  pool->Allocate(128 * 1024).reset();
  pool->Allocate(256 * 1024).reset();
  EXPECT_EQ(pool->cached_bytes(), 384u * 1024);
  EXPECT_EQ(pool->TakeTurnedAwayBytes(), 0u);
  std::shared_ptr<void> c = pool->Allocate(64 * 1024);  // a size it does not hold:
  EXPECT_EQ(pool->cached_bytes(), 256u * 1024);         // the 128 KiB buffer made room
  EXPECT_EQ(pool->TakeTurnedAwayBytes(), 128u * 1024);
  c.reset();  // ... and the new size is cached
  EXPECT_EQ(pool->cached_bytes(), 320u * 1024);
}

TEST(BufferPoolTest, DrainFreesTheCacheAndStopsCaching) {
  auto pool = BufferPool::Create(size_t{1} << 20);
  std::shared_ptr<void> lent = pool->Allocate(100000);
  pool->Allocate(200000).reset();
  EXPECT_EQ(pool->cached_bytes(), 229376u);  // class 7 x 32 KiB
  pool->Drain();
  EXPECT_EQ(pool->cached_bytes(), 0u);
  lent.reset();  // comes back after the drain: freed, not cached
  EXPECT_EQ(pool->cached_bytes(), 0u);
}

TEST(BufferPoolTest, AnImpossibleSizeThrowsBadAlloc) {
  auto pool = BufferPool::Create(size_t{1} << 20);
  for (size_t bytes : {std::numeric_limits<size_t>::max(), std::numeric_limits<size_t>::max() / 2,
                       (size_t{1} << 62) + 1}) {
    EXPECT_THROW(pool->Allocate(bytes), std::bad_alloc) << bytes;
  }
  EXPECT_EQ(pool->cached_bytes(), 0u);
}

TEST(BufferPoolTest, ConcurrentAllocateAndRelease) {
  auto pool = BufferPool::Create(size_t{8} << 20);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, t] {
      for (int i = 0; i < 2000; ++i) {
        std::shared_ptr<void> b = pool->Allocate(65536 * (1 + (i + t) % 3));
        static_cast<char*>(b.get())[0] = static_cast<char>(i);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_LE(pool->cached_bytes(), size_t{8} << 20);
}


// The allocations of one run: a chain a -> b -> c, where c may reuse a's bytes.
struct ChainRun {
  void* a = nullptr;
  void* b = nullptr;
  void* c = nullptr;
};

// Each buffer is filled, as a kernel would, so that a buffer sharing its bytes shows.
ChainRun RunChain(BufferPool* pool, uint64_t signature, bool succeeded = true) {
  ChainRun r;
  pool->BeginRun(signature);
  {
    std::shared_ptr<void> a = pool->Allocate(1 << 20);
    std::memset(a.get(), 1, 1 << 20);
    std::shared_ptr<void> b = pool->Allocate(1 << 20);
    std::memset(b.get(), 2, 1 << 20);
    r.a = a.get();
    r.b = b.get();
    a.reset();
    std::shared_ptr<void> c = pool->Allocate(1 << 20);
    std::memset(c.get(), 3, 1 << 20);
    r.c = c.get();
  }
  pool->EndRun(succeeded);
  return r;
}

bool Holds(const std::shared_ptr<void>& p, size_t bytes, char value) {
  const char* b = static_cast<const char*>(p.get());
  return std::all_of(b, b + bytes, [value](char v) { return v == value; });
}

TEST(BufferPoolTest, ARecordedRunIsReplayedFromOneArenaOfItsPeak) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  const ChainRun first = RunChain(pool.get(), 1);  // recorded, served by the cache
  EXPECT_EQ(pool->arena_hits(), 0);
  EXPECT_EQ(pool->arena_bytes(), size_t{2} << 20);  // two live at a time
  EXPECT_EQ(pool->cached_bytes(), 0u);  // the recording's buffers were let go
  const ChainRun second = RunChain(pool.get(), 1);
  EXPECT_EQ(pool->arena_hits(), 3);
  EXPECT_EQ(second.c, second.a);  // a had come back: c takes its place
  EXPECT_NE(second.b, second.a);
  const ChainRun third = RunChain(pool.get(), 1);
  EXPECT_EQ(pool->arena_hits(), 6);
  EXPECT_EQ(third.a, second.a);
  EXPECT_EQ(third.b, second.b);
  EXPECT_EQ(pool->cached_bytes(), 0u);
  (void)first;
}

TEST(BufferPoolTest, ARunThatHoldsABufferLongerNeverSharesItsBytes) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  RunChain(pool.get(), 1);  // recorded: a dies before c is allocated
  pool->BeginRun(1);
  std::shared_ptr<void> a = pool->Allocate(1 << 20);
  std::shared_ptr<void> b = pool->Allocate(1 << 20);
  std::memset(a.get(), 0xAB, 1 << 20);
  // a is still lent, and its place is the one planned for c: c must come from elsewhere.
  std::shared_ptr<void> c = pool->Allocate(1 << 20);
  std::memset(c.get(), 0xCD, 1 << 20);
  const char* ac = static_cast<const char*>(a.get());
  EXPECT_TRUE(std::all_of(ac, ac + (1 << 20), [](char v) { return v == '\xAB'; }));
  EXPECT_NE(c.get(), a.get());
  EXPECT_NE(c.get(), b.get());
  a.reset();
  b.reset();
  c.reset();
  pool->EndRun(true);
  // The plan was wrong for this pattern: the next run records again, then replays.
  const int64_t hits = pool->arena_hits();
  RunChain(pool.get(), 1);
  EXPECT_EQ(pool->arena_hits(), hits);
  RunChain(pool.get(), 1);
  EXPECT_EQ(pool->arena_hits(), hits + 3);
}

TEST(BufferPoolTest, APlaceStillLentWhenARunStartsKeepsThatRunOffTheArena) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  RunChain(pool.get(), 1);
  pool->BeginRun(1);
  std::shared_ptr<void> kept = pool->Allocate(1 << 20);  // a, kept past the run
  {
    std::shared_ptr<void> b = pool->Allocate(1 << 20);
  }
  pool->EndRun(true);
  std::memset(kept.get(), 0x5A, 1 << 20);
  const int64_t hits = pool->arena_hits();
  const ChainRun next = RunChain(pool.get(), 1);  // served by the cache
  EXPECT_EQ(pool->arena_hits(), hits);
  for (void* p : {next.a, next.b, next.c}) EXPECT_NE(p, kept.get());
  const char* k = static_cast<const char*>(kept.get());
  EXPECT_TRUE(std::all_of(k, k + (1 << 20), [](char v) { return v == 0x5A; }));
}

TEST(BufferPoolTest, APlaceHeldPastItsRunKeepsOtherSignaturesOffTheArena) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  RunChain(pool.get(), 1);  // plan 1: a and c on the same bytes
  RunChain(pool.get(), 1);  // replayed
  const int64_t hits = pool->arena_hits();
  // Signature 2 has the same pattern but keeps its first buffer past the run.
  RunChain(pool.get(), 2);  // recorded
  pool->BeginRun(2);
  std::shared_ptr<void> kept = pool->Allocate(1 << 20);  // replayed: an arena place
  EXPECT_EQ(pool->arena_hits(), hits + 1);
  {
    std::shared_ptr<void> b = pool->Allocate(1 << 20);
  }
  pool->EndRun(true);
  EXPECT_EQ(pool->arena_hits(), hits + 2);
  std::memset(kept.get(), 0x5A, 1 << 20);
  // Plan 1 is intact, but a run of it now could place a buffer on `kept`'s bytes.
  RunChain(pool.get(), 1);
  EXPECT_EQ(pool->arena_hits(), hits + 2);
  EXPECT_TRUE(Holds(kept, 1 << 20, 0x5A));
  kept.reset();
  RunChain(pool.get(), 1);  // the arena is idle again
  EXPECT_EQ(pool->arena_hits(), hits + 5);
}

TEST(BufferPoolTest, AFailedRunLeavesNoPlan) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  RunChain(pool.get(), 1, /*succeeded=*/false);
  EXPECT_EQ(pool->arena_bytes(), 0u);
  RunChain(pool.get(), 1);  // recorded now
  RunChain(pool.get(), 1);
  EXPECT_EQ(pool->arena_hits(), 3);
}

TEST(BufferPoolTest, ASignatureThatKeepsDivergingStopsBeingRecorded) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  for (int i = 0; i < BufferPool::kMaxPlanFailures; ++i) {
    RunChain(pool.get(), 1);  // recorded
    pool->BeginRun(1);        // then a run of another pattern: the plan is dropped
    pool->Allocate(2 << 20).reset();
    pool->EndRun(true);
  }
  const int64_t hits = pool->arena_hits();
  RunChain(pool.get(), 1);
  RunChain(pool.get(), 1);
  EXPECT_EQ(pool->arena_hits(), hits);
}

TEST(BufferPoolTest, PlacesComeBackFromOtherThreads) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  RunChain(pool.get(), 1);
  for (int round = 0; round < 20; ++round) {
    pool->BeginRun(1);
    std::shared_ptr<void> a = pool->Allocate(1 << 20);
    std::shared_ptr<void> b = pool->Allocate(1 << 20);
    std::thread t([moved = std::move(a)]() mutable { moved.reset(); });
    t.join();  // a came back on another thread: c may take its place
    std::shared_ptr<void> c = pool->Allocate(1 << 20);
    EXPECT_NE(c.get(), b.get());
    b.reset();
    c.reset();
    pool->EndRun(true);
  }
  EXPECT_EQ(pool->arena_hits(), 60);
}

TEST(BufferPoolTest, SignaturesHaveTheirOwnPlansInOneArena) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  RunChain(pool.get(), 1);  // 2 MiB arena
  pool->BeginRun(2);        // a bigger pattern: three 1 MiB buffers live together
  {
    std::shared_ptr<void> x = pool->Allocate(1 << 20);
    std::shared_ptr<void> y = pool->Allocate(1 << 20);
    std::shared_ptr<void> z = pool->Allocate(1 << 20);
  }
  pool->EndRun(true);
  EXPECT_EQ(pool->arena_bytes(), size_t{3} << 20);  // grown to the larger plan
  const int64_t hits = pool->arena_hits();
  RunChain(pool.get(), 1);  // the small plan replays in the grown arena
  EXPECT_EQ(pool->arena_hits(), hits + 3);
}

TEST(BufferPoolTest, AllocationsOutsideARunAndAfterDrainUseTheCache) {
  auto pool = BufferPool::Create(size_t{64} << 20);
  RunChain(pool.get(), 1);
  pool->BeginRun(1);
  std::shared_ptr<void> lent = pool->Allocate(1 << 20);  // an arena place
  pool->Drain();  // the arena goes when its last place comes back
  EXPECT_EQ(pool->arena_bytes(), size_t{2} << 20);
  lent.reset();
  EXPECT_EQ(pool->arena_bytes(), 0u);
  pool->EndRun(true);
  const int64_t hits = pool->arena_hits();
  RunChain(pool.get(), 1);
  RunChain(pool.get(), 1);
  EXPECT_EQ(pool->arena_hits(), hits);  // no plans after a drain
  EXPECT_EQ(pool->arena_bytes(), 0u);
}

}  // namespace
}  // namespace qs
