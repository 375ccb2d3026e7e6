// The daemon: start order and the reverse stop order, in one place.
//
// Start: repository -> initial model loads (per control mode) -> gRPC server (services:
// inference, health) -> metrics exposer -> poll thread. Shutdown (SIGTERM): health goes
// NOT_SERVING and new inference is refused with UNAVAILABLE, queued and running
// requests finish within exit_timeout, then the gRPC server stops and models unload.
#ifndef QUANTSERVE_SERVER_DAEMON_H_
#define QUANTSERVE_SERVER_DAEMON_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace qs {

enum class ModelControlMode { kNone, kPoll, kExplicit };

struct DaemonOptions {
  std::string model_repository;
  std::string grpc_address = "0.0.0.0";
  int grpc_port = 8001;  // 0: pick a free port (see Daemon::grpc_port)
  std::string metrics_address = "0.0.0.0";
  int metrics_port = 8002;  // 0: pick a free port; -1: no metrics endpoint
  // Bounds of the latency histograms, seconds, increasing; empty: the default
  // (50 us x 2^k up to 13.1 s).
  std::vector<double> metrics_latency_buckets;
  ModelControlMode control_mode = ModelControlMode::kNone;
  std::vector<std::string> load_models;  // explicit mode; "*" = all
  absl::Duration poll_interval = absl::Seconds(15);
  absl::Duration exit_timeout = absl::Seconds(30);
  int max_message_bytes = 2147483647;
  int default_max_batch_size = 4;
  int cpu_threads = 0;  // OpenMP threads for model execution; 0 = the CPUs we may use
};

absl::StatusOr<ModelControlMode> ParseModelControlMode(const std::string& text);

class Daemon {
 public:
  // Validates options. InvalidArgument naming the bad option.
  static absl::StatusOr<std::unique_ptr<Daemon>> Create(DaemonOptions options);
  ~Daemon();

  // Loads models and starts serving; returns once the server accepts RPCs and the
  // start-up load finished. A model that fails to load is logged and left UNAVAILABLE;
  // only an unusable repository or an unbindable port fails Start.
  absl::Status Start();
  // Drains and stops (see file comment); idempotent, blocks up to exit_timeout + a
  // little. Returns false if the drain timed out.
  bool Shutdown();

  int grpc_port() const;
  int metrics_port() const;

 private:
  struct Impl;
  explicit Daemon(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_DAEMON_H_
