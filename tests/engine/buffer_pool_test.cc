#include "engine/buffer_pool.h"

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

}  // namespace
}  // namespace qs
