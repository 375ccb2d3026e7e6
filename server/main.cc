// quantserve: flags -> Daemon -> serve until SIGINT/SIGTERM -> drain -> exit.
#include <malloc.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "engine/log.h"
#include "server/daemon.h"
#include "server/daemon_flags.h"
#include "server/probe.h"

int main(int argc, char** argv) {
  // --probe=HOST:PORT: one health Check against a running daemon, then exit (HEALTHCHECK).
  if (int rc = qs::RunProbeIfRequested(argc, argv); rc >= 0) return rc;
  // glibc raises its mmap threshold (up to 32 MiB) whenever a large block is freed; from
  // then on tensors, weights and request buffers of up to 32 MiB come from the heap,
  // whose freed pages stay resident. Serving ResNet-18 at concurrency 16 held 610-700 MB
  // that way, 266-300 MB with a fixed 1 MiB threshold (docs/performance.md, session 6).
  // Fixed, blocks of 1 MiB and more get their own mappings and go back to the OS when
  // freed. The environment (MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES) still decides.
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr && std::getenv("GLIBC_TUNABLES") == nullptr) {
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
  }
  // Debian's Abseil is built without NDEBUG: its mutex deadlock detection would cost
  // every lock in gRPC ~14% of server CPU (see docs/architecture.md).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // --help lists the daemon's own flags (abseil's default shows only flags defined in
  // main.cc, and ours live in server/daemon_flags.cc).
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "server/");
  };
  usage.contains_helpshort_flags = usage.contains_help_flags;
  absl::SetFlagsUsageConfig(usage);
  absl::SetProgramUsageMessage(
      "Serves ONNX models over KServe v2 gRPC, quantized on load.\n"
      "Usage: quantserve --model-repository=DIR [flags]");
  // Block the stop signals in every thread; main waits for them with sigwait.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  std::vector<std::string> load_models = qs::ExtractRepeatedFlag(&argc, argv, "load-model");
  qs::NormalizeFlagDashes(argc, argv);
  absl::ParseCommandLine(argc, argv);
  auto options = qs::DaemonOptionsFromFlags(load_models);
  if (!options.ok()) {
    std::fprintf(stderr, "quantserve: %s\n", std::string(options.status().message()).c_str());
    return 2;
  }
  auto daemon = qs::Daemon::Create(*std::move(options));
  if (!daemon.ok()) {
    std::fprintf(stderr, "quantserve: %s\n", std::string(daemon.status().message()).c_str());
    return 2;
  }
  absl::Status st = (*daemon)->Start();
  if (!st.ok()) {
    QS_LOG(ERROR) << st.message();
    return 1;
  }
  int sig = 0;
  sigwait(&stop_signals, &sig);
  QS_LOG(INFO) << "received " << (sig == SIGTERM ? "SIGTERM" : "SIGINT");
  const bool drained = (*daemon)->Shutdown();
  return drained ? 0 : 1;
}
