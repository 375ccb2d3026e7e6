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
#include <vector>

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
  //
  // Quantization (config.quantization): the precision, exclusions and calibration
  // method go to the engine's CompileOptions. calibration.data_dir (relative to
  // model_dir, or absolute) is read with LoadCalibrationData in batches of
  // max(1, min(8, max_batch_size)) rows, at most calibration.max_samples samples
  // (0: 64). INT8 requires it: a missing data_dir or folder fails the load (INT8 never
  // calibrates on random data). DYNAMIC_RANGE and BF16 use it, when given, for the
  // precision report. The load is logged with the per-node precision report.
  static absl::StatusOr<std::shared_ptr<LoadedModel>> Load(ModelLoadRequest request);

  const std::string& name() const { return name_; }
  int64_t version() const { return version_; }
  const std::string& model_path() const { return model_path_; }
  const std::string& model_dir() const { return model_dir_; }
  const inference::ModelConfig& config() const { return config_; }
  const Session& session() const { return *session_; }
  absl::Duration load_duration() const { return load_duration_; }
  // Calibration samples read for the load (0 when none) and the time the compile took
  // with them (INT8: the calibration runs, the reduced plan and the precision report).
  int64_t calibration_samples() const { return calibration_samples_; }
  absl::Duration calibration_duration() const { return calibration_duration_; }

 private:
  LoadedModel() = default;
  std::string name_;
  int64_t version_ = 0;
  std::string model_path_;
  std::string model_dir_;
  inference::ModelConfig config_;
  std::unique_ptr<Session> session_;
  absl::Duration load_duration_;
  int64_t calibration_samples_ = 0;
  absl::Duration calibration_duration_;
};

// Maps the config's precision enum to the engine's.
Precision ToEnginePrecision(inference::Precision precision);

// The reduced-precision nodes of a precision report (precision other than "FP32").
std::vector<const NodePrecision*> ReducedPrecisionNodes(
    const std::vector<NodePrecision>& report);

// The lowest finite-or-infinite SQNR (dB) over the reduced-precision nodes whose SQNR
// was measured; NaN when there is none (FP32 and FP16 plans, or nothing measured).
double MinReducedSqnrDb(const std::vector<NodePrecision>& report);

// The report as compact JSON, one object per node in plan order:
//   [{"node":"fc1","op":"Gemm","precision":"INT8","sqnr_db":41.73},...]
// sqnr_db is rounded to 0.01 dB; "Infinity" (a string, as in the protobuf JSON
// mapping) when the output equals FP32's, null when not measured (non-float output).
std::string PrecisionReportJson(const std::vector<NodePrecision>& report);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_REPOSITORY_LOADED_MODEL_H_
