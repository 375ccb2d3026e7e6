// Offsets in one arena for buffers whose lifetimes are known: what a run of a session
// allocated, in order, and when each buffer came back. Buffers live at the same time never
// share a byte; buffers that never overlap in time may. BufferPool replays such a plan for
// later runs of the same shapes, so that a run's activations take about their peak live
// size instead of one cached buffer per size class and concurrency (ResNet-50 INT8 at
// batch 8: 17.7 MB planned against 41.5 MB cached by class).
//
// Pure functions; thread-compatible.
#ifndef QUANTSERVE_ENGINE_ARENA_PLAN_H_
#define QUANTSERVE_ENGINE_ARENA_PLAN_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qs {

// One buffer of a recorded run: its size and the half-open interval [start, end) of event
// times during which it was lent out. end < 0: it never came back during the run (a
// run's output), and it gets no place in the arena.
struct BufferLifetime {
  size_t bytes = 0;
  int64_t start = 0;
  int64_t end = -1;
};

struct ArenaPlan {
  // Per buffer: its byte offset in the arena (a multiple of kArenaAlignment), or -1
  // for a buffer that is not placed (end < 0).
  std::vector<int64_t> offsets;
  // Per buffer: the earlier buffers (lower index) placed on some of the same bytes. When
  // the plan is replayed, buffer k may be handed out only after all of these came back.
  std::vector<std::vector<int>> conflicts;
  size_t arena_bytes = 0;  // the end of the highest placed buffer
};

inline constexpr size_t kArenaAlignment = 64;

// Greedy by size, largest first: each buffer goes at the lowest offset where it overlaps
// no placed buffer that is live at the same time. Buffers are rounded up to
// kArenaAlignment. O(n^2) in the number of buffers (a run allocates tens to hundreds).
ArenaPlan PlanArena(const std::vector<BufferLifetime>& buffers);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_ARENA_PLAN_H_
