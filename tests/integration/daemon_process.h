// Test helper: runs the real quantserve binary as a child process on 127.0.0.1 with
// ephemeral ports, waits (by reading its log, no sleeps) until it is ready, and stops it
// with a signal.
#ifndef QUANTSERVE_TESTS_INTEGRATION_DAEMON_PROCESS_H_
#define QUANTSERVE_TESTS_INTEGRATION_DAEMON_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace qs::testing {

class DaemonProcess {
 public:
  // Starts `binary` with `args` plus --grpc-address=127.0.0.1 --grpc-port=0
  // --metrics-address=127.0.0.1 --metrics-port=0. Returns false (with the log in
  // log()) if the process exits before it logs "server ready".
  bool Start(const std::string& binary, const std::vector<std::string>& args);
  // Sends `sig` and waits for the exit status (-1 if killed by a signal).
  int Stop(int sig);
  ~DaemonProcess();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  // Everything the daemon logged so far.
  std::string log() const;
  // Blocks until the log contains `text`; false if the process exits first.
  bool WaitForLog(const std::string& text);

 private:
  void ReadLoop();
  pid_t pid_ = -1;
  int fd_ = -1;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::thread reader_;
  mutable absl::Mutex mu_;
  std::string log_ ABSL_GUARDED_BY(mu_);
  bool eof_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace qs::testing

#endif  // QUANTSERVE_TESTS_INTEGRATION_DAEMON_PROCESS_H_
