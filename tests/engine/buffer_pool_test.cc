#include "engine/buffer_pool.h"

#include <thread>
#include <vector>

#include "engine/tensor.h"
#include "gtest/gtest.h"

namespace qs {
namespace {

TEST(BufferPoolTest, ReturnedBufferIsReusedForTheSameSize) {
  auto pool = BufferPool::Create(size_t{1} << 20);
  void* first;
  {
    std::shared_ptr<void> a = pool->Allocate(100000);
    first = a.get();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(first) % 64, 0u);
    EXPECT_EQ(pool->cached_bytes(), 0u);
  }
  EXPECT_EQ(pool->cached_bytes(), 102400u);  // page-rounded
  std::shared_ptr<void> b = pool->Allocate(99000);  // same page-rounded size
  EXPECT_EQ(b.get(), first);
  EXPECT_EQ(pool->cached_bytes(), 0u);
  std::shared_ptr<void> c = pool->Allocate(300000);  // another size: a new buffer
  EXPECT_NE(c.get(), first);
}

TEST(BufferPoolTest, KeepsAtMostTheCap) {
  auto pool = BufferPool::Create(200 * 1024);
  std::vector<std::shared_ptr<void>> held;
  for (int i = 0; i < 4; ++i) held.push_back(pool->Allocate(100 * 1024));
  held.clear();
  EXPECT_EQ(pool->cached_bytes(), 200u * 1024);
  pool->set_max_cached_bytes(0);
  std::shared_ptr<void> a = pool->Allocate(100 * 1024);  // from the cache
  a.reset();  // over the new cap: freed
  EXPECT_EQ(pool->cached_bytes(), 100u * 1024);
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

TEST(BufferPoolTest, ANewSizeEvictsOtherSizesToFitUnderTheCap) {
  auto pool = BufferPool::Create(300 * 1024);
  pool->Allocate(100 * 1024).reset();
  pool->Allocate(200 * 1024).reset();
  EXPECT_EQ(pool->cached_bytes(), 300u * 1024);
  std::shared_ptr<void> c = pool->Allocate(150 * 1024);  // a size that stopped coming
  c.reset();                                              // ... makes room, then is cached
  EXPECT_LE(pool->cached_bytes(), 300u * 1024);
  EXPECT_GE(pool->cached_bytes(), 150u * 1024);
}

TEST(BufferPoolTest, DrainFreesTheCacheAndStopsCaching) {
  auto pool = BufferPool::Create(size_t{1} << 20);
  std::shared_ptr<void> lent = pool->Allocate(100000);
  pool->Allocate(200000).reset();
  EXPECT_EQ(pool->cached_bytes(), 200704u);
  pool->Drain();
  EXPECT_EQ(pool->cached_bytes(), 0u);
  lent.reset();  // comes back after the drain: freed, not cached
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
