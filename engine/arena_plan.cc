#include "engine/arena_plan.h"

#include <algorithm>
#include <numeric>
#include <utility>

namespace qs {
namespace {

size_t Aligned(size_t bytes) {
  return (bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
}

bool LiveTogether(const BufferLifetime& a, const BufferLifetime& b) {
  return a.start < b.end && b.start < a.end;
}

}  // namespace

ArenaPlan PlanArena(const std::vector<BufferLifetime>& buffers) {
  const size_t n = buffers.size();
  ArenaPlan plan;
  plan.offsets.assign(n, -1);
  plan.conflicts.resize(n);
  std::vector<size_t> order;
  for (size_t i = 0; i < n; ++i)
    if (buffers[i].end >= 0) order.push_back(i);
  // Largest first; ties by allocation order, so that equal runs give equal plans.
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return Aligned(buffers[a].bytes) > Aligned(buffers[b].bytes);
  });
  std::vector<size_t> placed;
  std::vector<std::pair<size_t, size_t>> taken;  // [begin, end) of placed live buffers
  for (size_t i : order) {
    const size_t size = Aligned(buffers[i].bytes);
    taken.clear();
    for (size_t j : placed) {
      if (!LiveTogether(buffers[i], buffers[j])) continue;
      const size_t begin = static_cast<size_t>(plan.offsets[j]);
      taken.push_back({begin, begin + Aligned(buffers[j].bytes)});
    }
    std::sort(taken.begin(), taken.end());
    size_t offset = 0;
    for (const auto& [begin, end] : taken) {
      if (offset + size <= begin) break;  // fits in the gap below this one
      offset = std::max(offset, end);
    }
    plan.offsets[i] = static_cast<int64_t>(offset);
    plan.arena_bytes = std::max(plan.arena_bytes, offset + size);
    placed.push_back(i);
  }
  for (size_t k = 0; k < n; ++k) {
    if (plan.offsets[k] < 0) continue;
    const size_t kb = static_cast<size_t>(plan.offsets[k]);
    const size_t ke = kb + Aligned(buffers[k].bytes);
    for (size_t j = 0; j < k; ++j) {
      if (plan.offsets[j] < 0) continue;
      const size_t jb = static_cast<size_t>(plan.offsets[j]);
      const size_t je = jb + Aligned(buffers[j].bytes);
      if (jb < ke && kb < je) plan.conflicts[k].push_back(static_cast<int>(j));
    }
  }
  return plan;
}

}  // namespace qs
