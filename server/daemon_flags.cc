#include "server/daemon_flags.h"

#include <cstring>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "engine/log.h"
#include "server/metrics/serving_metrics.h"

ABSL_FLAG(std::string, model_repository, "", "Path of the model repository (required).");
ABSL_FLAG(std::string, grpc_address, "0.0.0.0", "Address the gRPC server binds to.");
ABSL_FLAG(int, grpc_port, 8001, "gRPC port (0 picks a free port).");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0", "Address of the Prometheus endpoint.");
ABSL_FLAG(int, metrics_port, 8002, "Prometheus /metrics port (0 picks a free port, -1 disables).");
ABSL_FLAG(std::string, metrics_latency_buckets, "",
          "Comma-separated upper bounds, in seconds, of the latency histograms (e.g. "
          "'0.001,0.005,0.025,0.1'); empty: 50us x 2^k up to 13.1s.");
ABSL_FLAG(std::string, model_control_mode, "none",
          "none: load every model at start; poll: also follow repository changes; "
          "explicit: load only --load-model models and allow load/unload RPCs.");
ABSL_FLAG(std::string, load_model, "",
          "Model to load at start in explicit mode; repeat the flag for several, '*' for all.");
ABSL_FLAG(int, repository_poll_secs, 15, "Seconds between repository scans in poll mode.");
ABSL_FLAG(int, exit_timeout_secs, 30,
          "On SIGTERM, seconds to let queued and running requests finish.");
ABSL_FLAG(int, log_verbose, 0, "1 or more: verbose logging.");
ABSL_FLAG(int, grpc_max_message_bytes, 2147483647,
          "Largest gRPC message accepted and sent (gRPC's own default is 4 MiB).");
ABSL_FLAG(int, default_max_batch_size, 4,
          "max_batch_size given to models whose config states neither batching nor tensors.");
ABSL_FLAG(int, cpu_threads, 0,
          "OpenMP threads for model execution in total; 0 = CPUs available to the process "
          "(affinity and cgroup quota).");

namespace qs {

std::vector<std::string> ExtractRepeatedFlag(int* argc, char** argv, const std::string& name) {
  std::vector<std::string> values;
  const std::string dash2 = "--" + name, dash1 = "-" + name;
  const std::string underscored = [&] {
    std::string u = name;
    for (char& c : u) c = c == '-' ? '_' : c;
    return u;
  }();
  const std::string u2 = "--" + underscored, u1 = "-" + underscored;
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    std::string arg = argv[i];
    bool matched = false;
    for (const std::string& prefix : {dash2, dash1, u2, u1}) {
      if (arg == prefix && i + 1 < *argc) {
        values.push_back(argv[++i]);
        matched = true;
        break;
      }
      if (arg.rfind(prefix + "=", 0) == 0) {
        values.push_back(arg.substr(prefix.size() + 1));
        matched = true;
        break;
      }
    }
    if (!matched) argv[out++] = argv[i];
  }
  *argc = out;
  return values;
}

void NormalizeFlagDashes(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* a = argv[i];
    if (a[0] != '-') continue;
    if (std::strcmp(a, "--") == 0) break;
    char* p = a;
    while (*p == '-') ++p;
    for (; *p != '\0' && *p != '='; ++p) {
      if (*p == '-') *p = '_';
    }
  }
}

absl::StatusOr<DaemonOptions> DaemonOptionsFromFlags(const std::vector<std::string>& load_models) {
  DaemonOptions o;
  o.model_repository = absl::GetFlag(FLAGS_model_repository);
  if (o.model_repository.empty()) {
    return absl::InvalidArgumentError("--model-repository is required (see --help)");
  }
  o.grpc_address = absl::GetFlag(FLAGS_grpc_address);
  o.grpc_port = absl::GetFlag(FLAGS_grpc_port);
  o.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  o.metrics_port = absl::GetFlag(FLAGS_metrics_port);
  const std::string buckets = absl::GetFlag(FLAGS_metrics_latency_buckets);
  if (!buckets.empty()) {
    auto parsed = ParseLatencyBuckets(buckets);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metrics-latency-buckets: ", parsed.status().message()));
    }
    o.metrics_latency_buckets = *std::move(parsed);
  }
  auto mode = ParseModelControlMode(absl::GetFlag(FLAGS_model_control_mode));
  if (!mode.ok()) return mode.status();
  o.control_mode = *mode;
  o.load_models = load_models;
  if (!o.load_models.empty() && o.control_mode != ModelControlMode::kExplicit) {
    return absl::InvalidArgumentError("--load-model needs --model-control-mode=explicit");
  }
  o.poll_interval = absl::Seconds(absl::GetFlag(FLAGS_repository_poll_secs));
  o.exit_timeout = absl::Seconds(absl::GetFlag(FLAGS_exit_timeout_secs));
  o.max_message_bytes = absl::GetFlag(FLAGS_grpc_max_message_bytes);
  o.default_max_batch_size = absl::GetFlag(FLAGS_default_max_batch_size);
  o.cpu_threads = absl::GetFlag(FLAGS_cpu_threads);
  if (absl::GetFlag(FLAGS_log_verbose) > 0) SetMinLogLevel(LogLevel::kVerbose);
  return o;
}

}  // namespace qs
