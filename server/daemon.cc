#include "server/daemon.h"

#include <malloc.h>

#include <algorithm>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "engine/log.h"
#include "engine/session.h"
#include "grpcpp/grpcpp.h"
#include "model_config.pb.h"
#include "prometheus/exposer.h"
#include "server/cpu_budget.h"
#include "server/grpc/health_service.h"
#include "server/grpc/inference_service.h"
#include "server/metrics/serving_metrics.h"
#include "server/repository/model_repository.h"
#include "server/repository/warmup.h"
#include "server/server_state.h"

namespace qs {

absl::StatusOr<ModelControlMode> ParseModelControlMode(const std::string& text) {
  if (text == "none") return ModelControlMode::kNone;
  if (text == "poll") return ModelControlMode::kPoll;
  if (text == "explicit") return ModelControlMode::kExplicit;
  return absl::InvalidArgumentError(absl::StrCat(
      "--model-control-mode must be none, poll or explicit, not '", text, "'"));
}

namespace {

// Drift-guard fallbacks: each reloads a model with an overriding config on its own thread
// (the repository keeps serving the old version until the new one is READY). Thread-safe;
// Close() refuses further reloads and joins the running ones.
class FallbackReloads {
 public:
  explicit FallbackReloads(ModelRepository* repository) : repository_(repository) {}
  // Returns at once (called on a drift monitor's thread).
  void Start(const std::string& model, inference::ModelConfig config) {
    absl::MutexLock lock(&mu_);
    if (closed_) return;
    threads_.emplace_back([repository = repository_, model, config = std::move(config)] {
      QS_LOG(WARNING) << "drift guard: reloading model '" << model << "' at "
                      << inference::Precision_Name(config.quantization().precision());
      absl::Status st = repository->LoadModel(model, config);
      if (!st.ok()) {
        QS_LOG(ERROR) << "drift guard: reloading model '" << model
                      << "' failed: " << st.message();
      }
    });
  }
  // After the repository is closed (UnloadAll), so running loads end promptly.
  void Close() {
    std::vector<std::thread> threads;
    {
      absl::MutexLock lock(&mu_);
      closed_ = true;
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
  }

 private:
  ModelRepository* const repository_;
  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

struct Daemon::Impl {
  DaemonOptions options;
  ServerState state;
  WorkerTracker workers;
  std::unique_ptr<ModelRepository> repository;
  std::unique_ptr<InferenceService> inference;
  std::unique_ptr<HealthService> health;
  std::unique_ptr<grpc::Server> server;
  int grpc_port = 0;
  std::shared_ptr<ServingMetrics> metrics;  // null when the endpoint is off
  // Shared with the drift monitors' fallback callback, which may outlive Shutdown.
  std::shared_ptr<FallbackReloads> fallbacks;
  std::unique_ptr<prometheus::Exposer> exposer;
  int metrics_port = -1;
  std::thread poller;
  absl::Notification stop_polling;
  absl::Mutex shutdown_mu;
  bool shut_down ABSL_GUARDED_BY(shutdown_mu) = false;
};

Daemon::Daemon(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Daemon::~Daemon() { Shutdown(); }

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Create(DaemonOptions options) {
  if (options.grpc_port < 0 || options.grpc_port > 65535) {
    return absl::InvalidArgumentError("--grpc-port must be in 0..65535");
  }
  if (options.metrics_port < -1 || options.metrics_port > 65535) {
    return absl::InvalidArgumentError("--metrics-port must be in -1..65535");
  }
  if (options.poll_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--repository-poll-secs must be > 0");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("--grpc-max-message-bytes must be > 0");
  }
  if (!options.metrics_latency_buckets.empty()) {
    absl::Status st = ValidateLatencyBuckets(options.metrics_latency_buckets);
    if (!st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--metrics-latency-buckets: ", st.message()));
    }
  }
  if (options.cpu_threads <= 0) options.cpu_threads = AvailableCpus();
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  return std::unique_ptr<Daemon>(new Daemon(std::move(impl)));
}

absl::Status Daemon::Start() {
  Impl& d = *impl_;
  const DaemonOptions& o = d.options;
  ModelRepository::Options ro;
  ro.root = o.model_repository;
  ro.default_max_batch_size = o.default_max_batch_size;
  auto repo = ModelRepository::Create(ro);
  if (!repo.ok()) return repo.status();
  d.repository = *std::move(repo);
  if (o.metrics_port >= 0) {
    ServingMetrics::Options mo;
    mo.latency_buckets = o.metrics_latency_buckets;
    mo.repository = d.repository.get();
    d.fallbacks = std::make_shared<FallbackReloads>(d.repository.get());
    mo.drift_fallback = [fallbacks = d.fallbacks](const std::string& model,
                                                  inference::ModelConfig config) {
      fallbacks->Start(model, std::move(config));
    };
    auto metrics = ServingMetrics::Create(mo);
    if (!metrics.ok()) return metrics.status();
    d.metrics = *std::move(metrics);
  }
  const int cpus = o.cpu_threads;
  WorkerTracker* tracker = &d.workers;
  ServingMetrics* metrics = d.metrics.get();
  const ServerState* state = &d.state;
  d.repository->set_ready_hook(
      [cpus, tracker, metrics, state](const std::shared_ptr<LoadedModel>& model)
          -> absl::StatusOr<std::shared_ptr<ModelScheduler>> {
        int instances = 0;
        for (const auto& g : model->config().instance_group()) instances += std::max(1, g.count());
        instances = std::max(1, instances);
        SchedulerOptions so;
        so.instance_count = instances;
        // Workers share the cores: never more OpenMP threads in total than CPUs.
        so.threads_per_worker = std::max(1, cpus / instances);
        so.tracker = tracker;
        so.abort_warmup = [state] { return state->draining(); };
        // The scheduler owns the observer: the version's series go away with it.
        if (metrics != nullptr) so.observer = metrics->ForModel(*model);
        if (instances > cpus) {
          QS_LOG(WARNING) << "model '" << model->name() << "': " << instances
                          << " instances on " << cpus << " CPUs oversubscribe the cores";
        }
        auto warmup = BuildWarmupSets(*model, model->model_dir());
        if (!warmup.ok()) return warmup.status();
        so.warmup = *std::move(warmup);
        auto started = ModelScheduler::Start(model, &model->session(), model->config(), so);
        // Warmup ran every batch bucket once: hand what calibration and timing freed
        // back to the OS.
        malloc_trim(0);
        return started;
      });

  // Serve health and metadata while models load: liveness first, readiness later.
  InferenceService::Options so;
  so.explicit_model_control = o.control_mode == ModelControlMode::kExplicit;
  d.inference = std::make_unique<InferenceService>(d.repository.get(), &d.state, so);
  d.health = std::make_unique<HealthService>(&d.state);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(absl::StrCat(o.grpc_address, ":", o.grpc_port),
                           grpc::InsecureServerCredentials(), &d.grpc_port);
  builder.SetMaxReceiveMessageSize(o.max_message_bytes);
  builder.SetMaxSendMessageSize(o.max_message_bytes);
  builder.RegisterService(d.inference.get());
  builder.RegisterService(d.health.get());
  d.server = builder.BuildAndStart();
  if (d.server == nullptr || d.grpc_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", o.grpc_address, ":",
                                               o.grpc_port));
  }
  d.state.set_live(true);
  QS_LOG(INFO) << "gRPC listening on " << o.grpc_address << ":" << d.grpc_port;

  if (o.metrics_port >= 0) {
    try {
      d.exposer = std::make_unique<prometheus::Exposer>(
          absl::StrCat(o.metrics_address, ":", o.metrics_port));
      d.exposer->RegisterCollectable(d.metrics);
      d.metrics_port = d.exposer->GetListeningPorts().front();
      QS_LOG(INFO) << "metrics on http://" << o.metrics_address << ":" << d.metrics_port
                   << "/metrics";
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("cannot start the metrics endpoint on ",
                                                 o.metrics_address, ":", o.metrics_port,
                                                 ": ", e.what()));
    }
  }

  int failed = 0;
  if (o.control_mode == ModelControlMode::kExplicit) {
    const bool all = std::find(o.load_models.begin(), o.load_models.end(), "*") !=
                     o.load_models.end();
    if (all) {
      failed = d.repository->LoadAll();
    } else {
      for (const auto& name : o.load_models) failed += d.repository->LoadModel(name).ok() ? 0 : 1;
    }
  } else {
    failed = d.repository->LoadAll();
  }
  if (failed > 0) QS_LOG(WARNING) << failed << " model(s) failed to load; see above";
  d.state.set_startup_done();
  // Each load trimmed the heap from inside its ready hook; what the loads freed after
  // that (their temporaries, the last model's calibration state) goes back now.
  malloc_trim(0);
  QS_LOG(INFO) << "server ready";

  if (o.control_mode == ModelControlMode::kPoll) {
    d.poller = std::thread([&d] {
      while (!d.stop_polling.WaitForNotificationWithTimeout(d.options.poll_interval)) {
        d.repository->Poll();
      }
    });
  }
  return absl::OkStatus();
}

bool Daemon::Shutdown() {
  Impl& d = *impl_;
  {
    absl::MutexLock lock(&d.shutdown_mu);
    if (d.shut_down) return true;
    d.shut_down = true;
  }
  if (!d.state.live()) return true;  // never started
  QS_LOG(INFO) << "shutting down: draining for up to "
               << absl::FormatDuration(d.options.exit_timeout);
  const absl::Time deadline = absl::Now() + d.options.exit_timeout;
  d.state.set_draining();
  d.stop_polling.Notify();
  if (d.poller.joinable()) d.poller.join();
  // Schedulers stop accepting; their workers finish what is queued and exit.
  if (d.repository) d.repository->UnloadAll();
  // A load still compiling retires what it starts (the repository is closed): wait for
  // it, so that the workers it started are among those waited for below.
  const bool loads_done = d.repository == nullptr || d.repository->WaitForLoads(deadline);
  // Drift fallbacks started before the close have returned (their loads were waited
  // for above, or fail at once on the closed repository).
  if (d.fallbacks) d.fallbacks->Close();
  const bool drained = d.workers.WaitForAll(deadline) && loads_done;
  if (drained) {
    QS_LOG(INFO) << "queued and running requests finished; stopping the gRPC server";
  } else {
    QS_LOG(WARNING) << "exit timeout reached with requests still running";
  }
  if (d.server) {
    // Every accepted inference has finished by now; what is left are idle or
    // half-open streams, which get a short grace period before gRPC cancels them
    // (an open ModelStreamInfer would otherwise hold the exit for seconds).
    const absl::Time grace = std::min(deadline, absl::Now() + absl::Milliseconds(500));
    d.server->Shutdown(absl::ToChronoTime(std::max(grace, absl::Now())));
    d.server->Wait();
    d.server.reset();  // before the services it references
  }
  QS_LOG(INFO) << "gRPC server stopped";
  d.inference.reset();
  d.health.reset();
  d.exposer.reset();
  d.state.set_live(false);
  QS_LOG(INFO) << "stopped";
  return drained;
}

int Daemon::grpc_port() const { return impl_->grpc_port; }
int Daemon::metrics_port() const { return impl_->metrics_port; }

}  // namespace qs
