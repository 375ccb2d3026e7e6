#include "server/repository/model_repository.h"

#include <filesystem>
#include <system_error>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/log.h"
#include "server/config/model_config_loader.h"
#include "server/repository/model_name.h"
#include "server/repository/version_policy.h"

namespace qs {
namespace fs = std::filesystem;

const char* ModelStateName(ModelState state) {
  switch (state) {
    case ModelState::kLoading: return "LOADING";
    case ModelState::kReady: return "READY";
    case ModelState::kUnavailable: return "UNAVAILABLE";
    case ModelState::kUnloading: return "UNLOADING";
  }
  return "UNKNOWN";
}

namespace {

absl::Status ClosedError(const std::string& name) {
  return absl::UnavailableError(
      absl::StrCat("server is shutting down; model '", name, "' was not loaded"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRepository>> ModelRepository::Create(Options options) {
  std::error_code ec;
  if (options.root.empty()) {
    return absl::InvalidArgumentError("--model-repository is required");
  }
  if (!fs::is_directory(options.root, ec)) {
    return absl::NotFoundError(
        absl::StrCat("model repository '", options.root, "' is not a directory"));
  }
  return std::unique_ptr<ModelRepository>(new ModelRepository(std::move(options)));
}

void ModelRepository::set_ready_hook(ModelReadyHook hook) {
  absl::MutexLock lock(&mu_);
  ready_hook_ = std::move(hook);
}

std::vector<std::string> ModelRepository::ScanModelNames() const {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(options_.root, ec)) {
    if (!entry.is_directory(ec)) continue;
    const std::string name = entry.path().filename().string();
    absl::Status st = ValidateModelName(name);
    if (!st.ok()) {
      if (name[0] != '.') QS_LOG(WARNING) << "skipping folder: " << st.message();
      continue;
    }
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string ModelRepository::Fingerprint(const std::string& name) const {
  const fs::path dir = fs::path(options_.root) / name;
  std::string fp;
  std::error_code ec;
  auto stamp = [&](const fs::path& p) {
    auto t = fs::last_write_time(p, ec);
    auto size = fs::is_regular_file(p, ec) ? fs::file_size(p, ec) : 0;
    absl::StrAppend(&fp, p.filename().string(), ":",
                    ec ? 0 : t.time_since_epoch().count(), ":", size, ";");
  };
  stamp(dir / "config.pbtxt");
  std::vector<std::string> versions;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string v = e.path().filename().string();
    if (e.is_directory(ec) && IsVersionFolderName(v)) versions.push_back(v);
  }
  std::sort(versions.begin(), versions.end());
  for (const auto& v : versions) {
    absl::StrAppend(&fp, v, "/");
    stamp(dir / v / "model.onnx");
  }
  return fp;
}

absl::Status ModelRepository::LoadModel(
    const std::string& name, const std::optional<inference::ModelConfig>& config_override) {
  absl::Status name_status = ValidateModelName(name);
  if (!name_status.ok()) return name_status;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return ClosedError(name);
    ++loads_running_;
  }
  absl::Cleanup load_finished = [this] {
    absl::MutexLock lock(&mu_);
    --loads_running_;
  };
  absl::MutexLock load_lock(&load_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return ClosedError(name);  // closed while waiting for another load
  }
  const fs::path dir = fs::path(options_.root) / name;
  std::error_code ec;
  auto set_model_error = [&](const absl::Status& st) {
    absl::MutexLock lock(&mu_);
    ModelEntry& entry = models_[name];
    entry.error = std::string(st.message());
    QS_LOG(ERROR) << "failed to load model '" << name << "': " << st.message();
    return st;
  };
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("model '", name, "' is not in the repository"));
  }
  const std::string fingerprint = Fingerprint(name);

  inference::ModelConfig config;
  if (config_override.has_value()) {
    config = *config_override;
  } else if (fs::exists(dir / "config.pbtxt", ec)) {
    std::vector<std::string> warnings;
    auto parsed = LoadModelConfigFile((dir / "config.pbtxt").string(), &warnings);
    for (const auto& w : warnings) QS_LOG(WARNING) << w;
    if (!parsed.ok()) {
      absl::Status st = parsed.status();
      {
        absl::MutexLock lock(&mu_);
        models_[name].fingerprint = fingerprint;
      }
      return set_model_error(absl::FailedPreconditionError(st.message()));
    }
    config = *std::move(parsed);
  }
  for (const auto& w : UnsupportedFieldWarnings(config)) {
    QS_LOG(WARNING) << "model '" << name << "': " << w;
  }

  std::vector<int64_t> on_disk;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string v = e.path().filename().string();
    int64_t n;
    if (e.is_directory(ec) && IsVersionFolderName(v) && absl::SimpleAtoi(v, &n)) {
      on_disk.push_back(n);
    }
  }
  const std::vector<int64_t> selected = SelectVersions(config.version_policy(), on_disk);
  if (selected.empty()) {
    {
      absl::MutexLock lock(&mu_);
      models_[name].fingerprint = fingerprint;
    }
    return set_model_error(absl::FailedPreconditionError(absl::StrCat(
        "model '", name, "' has no version folder selected by its version policy")));
  }

  ModelReadyHook hook;
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return ClosedError(name);
    ModelEntry& entry = models_[name];
    entry.error.clear();
    entry.fingerprint = fingerprint;
    for (int64_t v : selected) {
      VersionSlot& slot = entry.versions[v];
      if (slot.model == nullptr) slot.state = ModelState::kLoading;
    }
    hook = ready_hook_;
  }

  absl::Status first_error;
  std::map<int64_t, std::shared_ptr<LoadedModel>> loaded;
  for (int64_t v : selected) {
    ModelLoadRequest req;
    req.name = name;
    req.version = v;
    req.model_dir = dir.string();
    req.config = config;
    req.default_max_batch_size = options_.default_max_batch_size;
    auto model = LoadedModel::Load(std::move(req));
    absl::Status st = model.status();
    std::shared_ptr<ModelScheduler> scheduler;
    if (st.ok() && hook) {
      auto started = hook(*model);
      st = started.status();
      if (st.ok()) scheduler = *std::move(started);
    }
    absl::MutexLock lock(&mu_);
    if (closed_) {  // shut down while this version loaded: never serve it
      if (scheduler) scheduler->Retire();
      if (first_error.ok()) first_error = ClosedError(name);
      break;
    }
    VersionSlot& slot = models_[name].versions[v];
    if (st.ok()) {
      Retire(slot);  // the previous load of this version, if any
      slot.state = ModelState::kReady;
      slot.reason.clear();
      slot.model = *model;
      slot.scheduler = std::move(scheduler);
    } else {
      QS_LOG(ERROR) << st.message();
      if (first_error.ok()) first_error = st;
      // A failed reload keeps the previous version serving.
      if (slot.model == nullptr) {
        slot.state = ModelState::kUnavailable;
        slot.reason = std::string(st.message());
      }
    }
  }
  // Retire versions the policy no longer selects (their handles live on in requests).
  {
    absl::MutexLock lock(&mu_);
    if (closed_) return first_error;
    auto& versions = models_[name].versions;
    for (auto it = versions.begin(); it != versions.end();) {
      if (std::find(selected.begin(), selected.end(), it->first) == selected.end()) {
        QS_LOG(INFO) << "unloaded model '" << name << "' version " << it->first;
        Retire(it->second);
        it = versions.erase(it);
      } else {
        ++it;
      }
    }
  }
  return first_error;
}

absl::Status ModelRepository::UnloadModel(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrCat("model '", name, "' is not loaded"));
  }
  for (auto& [v, slot] : it->second.versions) Retire(slot);
  models_.erase(it);
  QS_LOG(INFO) << "unloaded model '" << name << "'";
  return absl::OkStatus();
}

void ModelRepository::UnloadAll() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  for (auto& [name, entry] : models_)
    for (auto& [v, slot] : entry.versions) Retire(slot);
  models_.clear();
}

bool ModelRepository::WaitForLoads(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return loads_running_ == 0; };
  return mu_.AwaitWithDeadline(absl::Condition(&idle), deadline);
}

void ModelRepository::Retire(VersionSlot& slot) {
  if (slot.scheduler) slot.scheduler->Retire();
  slot.scheduler.reset();
}

std::vector<ModelHandle> ModelRepository::ReadyHandles() const {
  std::vector<ModelHandle> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [name, entry] : models_)
    for (const auto& [v, slot] : entry.versions)
      if (slot.state == ModelState::kReady) out.push_back({slot.model, slot.scheduler});
  return out;
}

int ModelRepository::LoadAll() {
  int failed = 0;
  for (const auto& name : ScanModelNames()) {
    if (!LoadModel(name).ok()) ++failed;
  }
  return failed;
}

void ModelRepository::Poll() {
  const std::vector<std::string> names = ScanModelNames();
  std::vector<std::string> known;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, entry] : models_) known.push_back(name);
  }
  for (const auto& name : known) {
    if (std::find(names.begin(), names.end(), name) == names.end()) {
      (void)UnloadModel(name);
    }
  }
  for (const auto& name : names) {
    std::string old_fp;
    bool exists;
    {
      absl::MutexLock lock(&mu_);
      auto it = models_.find(name);
      exists = it != models_.end();
      if (exists) old_fp = it->second.fingerprint;
    }
    if (!exists || old_fp != Fingerprint(name)) (void)LoadModel(name);
  }
}

absl::StatusOr<ModelHandle> ModelRepository::Get(
    const std::string& name, const std::string& version) const {
  absl::MutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end()) {
    return absl::NotFoundError(absl::StrCat("unknown model '", name, "'"));
  }
  const ModelEntry& entry = it->second;
  if (version.empty()) {
    for (auto v = entry.versions.rbegin(); v != entry.versions.rend(); ++v) {
      if (v->second.state == ModelState::kReady)
        return ModelHandle{v->second.model, v->second.scheduler};
    }
    return absl::UnavailableError(absl::StrCat(
        "model '", name, "' has no ready version",
        entry.error.empty() ? "" : absl::StrCat(": ", entry.error)));
  }
  int64_t v;
  if (!absl::SimpleAtoi(version, &v)) {
    return absl::InvalidArgumentError(
        absl::StrCat("model version '", version, "' is not a number"));
  }
  auto vit = entry.versions.find(v);
  if (vit == entry.versions.end()) {
    return absl::NotFoundError(
        absl::StrCat("unknown version ", version, " of model '", name, "'"));
  }
  if (vit->second.state != ModelState::kReady) {
    return absl::UnavailableError(absl::StrCat(
        "model '", name, "' version ", version, " is ",
        ModelStateName(vit->second.state),
        vit->second.reason.empty() ? "" : absl::StrCat(": ", vit->second.reason)));
  }
  return ModelHandle{vit->second.model, vit->second.scheduler};
}

std::vector<ModelIndexEntry> ModelRepository::Index(bool ready_only) const {
  std::vector<ModelIndexEntry> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [name, entry] : models_) {
    if (entry.versions.empty() && !ready_only) {
      out.push_back({name, "", ModelState::kUnavailable, entry.error});
    }
    for (const auto& [v, slot] : entry.versions) {
      if (ready_only && slot.state != ModelState::kReady) continue;
      out.push_back({name, absl::StrCat(v), slot.state, slot.reason});
    }
  }
  return out;
}

std::vector<std::string> ModelRepository::Versions(const std::string& name) const {
  std::vector<std::string> out;
  absl::MutexLock lock(&mu_);
  auto it = models_.find(name);
  if (it == models_.end()) return out;
  for (const auto& [v, slot] : it->second.versions) out.push_back(absl::StrCat(v));
  return out;
}

}  // namespace qs
