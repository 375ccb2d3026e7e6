// Process-wide serving state read by the health, readiness and inference handlers.
// Thread-safe (atomics); written by the Daemon only.
#ifndef QUANTSERVE_SERVER_SERVER_STATE_H_
#define QUANTSERVE_SERVER_SERVER_STATE_H_

#include <atomic>

namespace qs {

class ServerState {
 public:
  // Live: the process answers RPCs (true from the moment the gRPC server starts).
  bool live() const { return live_.load(std::memory_order_acquire); }
  // Ready: the start-up load finished and the server is not draining. One model failing
  // to load does not make the server unready (its own ModelReady says so).
  bool ready() const {
    return startup_done_.load(std::memory_order_acquire) && !draining();
  }
  // Draining: SIGTERM received; new inference is refused with UNAVAILABLE.
  bool draining() const { return draining_.load(std::memory_order_acquire); }

  void set_live(bool v) { live_.store(v, std::memory_order_release); }
  void set_startup_done() { startup_done_.store(true, std::memory_order_release); }
  void set_draining() { draining_.store(true, std::memory_order_release); }

 private:
  std::atomic<bool> live_{false};
  std::atomic<bool> startup_done_{false};
  std::atomic<bool> draining_{false};
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_SERVER_STATE_H_
