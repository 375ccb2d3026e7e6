// The model repository: scans <root>/<model>/<version>/, loads and unloads model
// versions, and resolves (name, version) for requests.
//
// Thread-safety: every method is thread-safe. Loads run on the calling thread (they
// block for the whole compile) without holding the repository lock, so other models keep
// serving; a model being reloaded keeps serving its old versions until the new ones are
// READY. Failures of one model never affect another.
#ifndef QUANTSERVE_SERVER_REPOSITORY_MODEL_REPOSITORY_H_
#define QUANTSERVE_SERVER_REPOSITORY_MODEL_REPOSITORY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "model_config.pb.h"
#include "server/repository/loaded_model.h"
#include "server/scheduling/model_scheduler.h"

namespace qs {

enum class ModelState { kLoading, kReady, kUnavailable, kUnloading };
const char* ModelStateName(ModelState state);  // Triton's strings: "READY", ...

struct ModelIndexEntry {
  std::string name;
  std::string version;  // "" when the model failed before any version was known
  ModelState state;
  std::string reason;
};

// A served version: the model and the scheduler that runs it. Holding a handle pins
// the model for the duration of a request.
struct ModelHandle {
  std::shared_ptr<const LoadedModel> model;
  std::shared_ptr<ModelScheduler> scheduler;  // null when no hook is installed
};

// Called after a version loads, before it serves: warms it up and starts its scheduler.
// An error makes the version UNAVAILABLE with that reason.
using ModelReadyHook = std::function<absl::StatusOr<std::shared_ptr<ModelScheduler>>(
    const std::shared_ptr<LoadedModel>&)>;

class ModelRepository {
 public:
  struct Options {
    std::string root;
    int default_max_batch_size = 4;
  };
  // InvalidArgument / NotFound when root is not a readable directory.
  static absl::StatusOr<std::unique_ptr<ModelRepository>> Create(Options options);

  // Names of valid model folders under root, sorted. Invalid names are logged once.
  std::vector<std::string> ScanModelNames() const;

  // Loads (or reloads) `name` from disk: config.pbtxt (or `config_override`), versions
  // by policy. Versions no longer selected are retired after the new ones are READY.
  // Returns the first error (the model then shows UNAVAILABLE with the reason); other
  // models are untouched.
  absl::Status LoadModel(const std::string& name,
                         const std::optional<inference::ModelConfig>& config_override =
                             std::nullopt);
  // Removes every version of `name` from serving; in-flight requests finish on their
  // pinned handles. NotFound if the model is unknown.
  absl::Status UnloadModel(const std::string& name);
  // Loads every model found; returns how many failed.
  int LoadAll();
  // Poll mode: loads new models, reloads changed ones, unloads removed ones.
  void Poll();
  // Shutdown: retires every version and closes the repository. Later loads fail with
  // Unavailable, and a load still compiling when this is called retires what it started
  // instead of serving it (so its workers drain and exit like every other).
  void UnloadAll();
  // After UnloadAll: waits until the loads that were running have returned (so every
  // scheduler they started is retired). False if `deadline` passed first.
  bool WaitForLoads(absl::Time deadline);

  // Resolves a request: `version` "" picks the highest READY version.
  // NotFound for an unknown model or version, Unavailable when it exists but is not READY.
  absl::StatusOr<ModelHandle> Get(const std::string& name,
                                  const std::string& version) const;
  // Every READY version's handle (for statistics and shutdown).
  std::vector<ModelHandle> ReadyHandles() const;
  std::vector<ModelIndexEntry> Index(bool ready_only) const;
  // Versions (as strings) of `name` known to the repository, ascending.
  std::vector<std::string> Versions(const std::string& name) const;

  void set_ready_hook(ModelReadyHook hook);

 private:
  struct VersionSlot {
    ModelState state = ModelState::kLoading;
    std::string reason;
    std::shared_ptr<LoadedModel> model;
    std::shared_ptr<ModelScheduler> scheduler;
  };
  // Stops a slot's scheduler (queued requests still complete).
  static void Retire(VersionSlot& slot);
  struct ModelEntry {
    std::map<int64_t, VersionSlot> versions;
    std::string error;  // model-level error (config, no versions)
    std::string fingerprint;  // what Poll compares to detect changes
  };
  explicit ModelRepository(Options options) : options_(std::move(options)) {}
  std::string Fingerprint(const std::string& name) const;

  const Options options_;
  mutable absl::Mutex mu_;
  std::map<std::string, ModelEntry> models_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;  // set by UnloadAll
  int loads_running_ ABSL_GUARDED_BY(mu_) = 0;  // LoadModel calls in progress
  ModelReadyHook ready_hook_ ABSL_GUARDED_BY(mu_);
  absl::Mutex load_mu_;  // serializes loads of the repository (one compile at a time)
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_REPOSITORY_MODEL_REPOSITORY_H_
