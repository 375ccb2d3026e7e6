// One model version, loaded: its completed config and compiled engine session.
//
// Ownership: shared (std::shared_ptr<const LoadedModel>) between the repository and
// every request that uses it, so an unloaded version stays alive until its last
// in-flight request completes. Immutable after Load(), hence thread-safe.
#ifndef QUANTSERVE_SERVER_REPOSITORY_LOADED_MODEL_H_
#define QUANTSERVE_SERVER_REPOSITORY_LOADED_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/session.h"
#include "model_config.pb.h"

namespace qs {

struct ModelLoadRequest {
  std::string name;
  int64_t version = 0;
  std::string model_dir;   // <repo>/<name>
  inference::ModelConfig config;  // as parsed (completed by Load)
  int default_max_batch_size = 4;
};

class LoadedModel {
 public:
  // Reads <model_dir>/<version>/<default_model_filename or model.onnx>, compiles it at
  // the configured precision and completes the config from the graph. Blocks for the
  // whole load. Errors name the model, version, file and reason.
  static absl::StatusOr<std::shared_ptr<LoadedModel>> Load(ModelLoadRequest request);

  const std::string& name() const { return name_; }
  int64_t version() const { return version_; }
  const std::string& model_path() const { return model_path_; }
  const std::string& model_dir() const { return model_dir_; }
  const inference::ModelConfig& config() const { return config_; }
  const Session& session() const { return *session_; }
  absl::Duration load_duration() const { return load_duration_; }

 private:
  LoadedModel() = default;
  std::string name_;
  int64_t version_ = 0;
  std::string model_path_;
  std::string model_dir_;
  inference::ModelConfig config_;
  std::unique_ptr<Session> session_;
  absl::Duration load_duration_;
};

// Maps the config's precision enum to the engine's.
Precision ToEnginePrecision(inference::Precision precision);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_REPOSITORY_LOADED_MODEL_H_
