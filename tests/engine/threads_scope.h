// Test helper: sets the calling thread's OpenMP team size for a scope and restores it
// when the scope ends, also when an ASSERT returns early.
#ifndef QUANTSERVE_TESTS_ENGINE_THREADS_SCOPE_H_
#define QUANTSERVE_TESTS_ENGINE_THREADS_SCOPE_H_

#include <omp.h>

namespace qs {

class ThreadsScope {
 public:
  explicit ThreadsScope(int n) : previous_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ThreadsScope() { omp_set_num_threads(previous_); }
  ThreadsScope(const ThreadsScope&) = delete;
  ThreadsScope& operator=(const ThreadsScope&) = delete;

 private:
  int previous_;
};

}  // namespace qs

#endif  // QUANTSERVE_TESTS_ENGINE_THREADS_SCOPE_H_
