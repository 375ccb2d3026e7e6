#include "engine/arena_plan.h"

#include <algorithm>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace qs {
namespace {

bool LiveTogether(const BufferLifetime& a, const BufferLifetime& b) {
  return a.start < b.end && b.start < a.end;
}

size_t Aligned(size_t b) { return (b + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment; }

// The largest sum of aligned sizes live at one tick: no plan can be smaller.
size_t PeakLive(const std::vector<BufferLifetime>& bufs) {
  size_t peak = 0;
  for (const auto& at : bufs) {
    if (at.end < 0) continue;
    size_t live = 0;
    for (const auto& b : bufs)
      if (b.end >= 0 && b.start <= at.start && at.start < b.end) live += Aligned(b.bytes);
    peak = std::max(peak, live);
  }
  return peak;
}

// Every property a replay relies on, checked from the definitions.
void ExpectValid(const std::vector<BufferLifetime>& bufs, const ArenaPlan& plan) {
  ASSERT_EQ(plan.offsets.size(), bufs.size());
  ASSERT_EQ(plan.conflicts.size(), bufs.size());
  for (size_t i = 0; i < bufs.size(); ++i) {
    if (bufs[i].end < 0) {
      EXPECT_EQ(plan.offsets[i], -1) << i;
      EXPECT_TRUE(plan.conflicts[i].empty()) << i;
      continue;
    }
    ASSERT_GE(plan.offsets[i], 0) << i;
    EXPECT_EQ(plan.offsets[i] % kArenaAlignment, 0u) << i;
    const size_t ib = plan.offsets[i], ie = ib + Aligned(bufs[i].bytes);
    EXPECT_LE(ie, plan.arena_bytes) << i;
    std::vector<int> want;
    for (size_t j = 0; j < bufs.size(); ++j) {
      if (j == i || bufs[j].end < 0) continue;
      const size_t jb = plan.offsets[j], je = jb + Aligned(bufs[j].bytes);
      const bool share = jb < ie && ib < je;
      if (share) {
        EXPECT_FALSE(LiveTogether(bufs[i], bufs[j])) << "buffers " << i << " and " << j
                                                     << " are live together on shared bytes";
      }
      if (share && j < i) want.push_back(static_cast<int>(j));
    }
    EXPECT_EQ(plan.conflicts[i], want) << i;
  }
}

TEST(ArenaPlanTest, AChainReusesTheBytesOfWhatDied) {
  // a -> b -> c -> d, each value read only by the next: two live at a time.
  std::vector<BufferLifetime> bufs = {
      {1000, 0, 3}, {2000, 1, 5}, {1000, 4, 7}, {2000, 6, 8}};
  const ArenaPlan plan = PlanArena(bufs);
  ExpectValid(bufs, plan);
  EXPECT_EQ(plan.arena_bytes, Aligned(1000) + Aligned(2000));
  EXPECT_EQ(plan.arena_bytes, PeakLive(bufs));
}

TEST(ArenaPlanTest, BuffersThatNeverComeBackGetNoPlace) {
  std::vector<BufferLifetime> bufs = {{4096, 0, 2}, {8192, 1, -1}, {4096, 3, 4}};
  const ArenaPlan plan = PlanArena(bufs);
  ExpectValid(bufs, plan);
  EXPECT_EQ(plan.offsets[1], -1);
  EXPECT_EQ(plan.arena_bytes, 4096u);  // the two others take turns on the same bytes
  EXPECT_EQ(plan.offsets[0], plan.offsets[2]);
  EXPECT_EQ(plan.conflicts[2], std::vector<int>({0}));
}

TEST(ArenaPlanTest, NothingPlacedIsAnEmptyArena) {
  EXPECT_EQ(PlanArena({}).arena_bytes, 0u);
  EXPECT_EQ(PlanArena({{100, 0, -1}}).arena_bytes, 0u);
}

TEST(ArenaPlanTest, RandomRunsAreValidAndNearTheirPeak) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + static_cast<int>(rng() % 60);
    std::vector<BufferLifetime> bufs;
    int64_t tick = 0;
    for (int i = 0; i < n; ++i) {
      BufferLifetime b;
      b.bytes = 1 + rng() % (1 << 20);
      b.start = tick++;
      b.end = rng() % 10 == 0 ? -1 : b.start + 1 + static_cast<int64_t>(rng() % 12);
      bufs.push_back(b);
    }
    const ArenaPlan plan = PlanArena(bufs);
    SCOPED_TRACE(trial);
    ExpectValid(bufs, plan);
    const size_t peak = PeakLive(bufs);
    EXPECT_GE(plan.arena_bytes, peak);
    // Greedy packing is not optimal in general, but far from twice the peak here.
    EXPECT_LE(plan.arena_bytes, peak + peak / 2) << "peak " << peak;
  }
}

}  // namespace
}  // namespace qs
