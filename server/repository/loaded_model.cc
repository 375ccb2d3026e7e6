#include "server/repository/loaded_model.h"

#include <sys/stat.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/log.h"
#include "engine/onnx_import.h"
#include "server/config/config_completion.h"

namespace qs {

Precision ToEnginePrecision(inference::Precision precision) {
  switch (precision) {
    case inference::DYNAMIC_RANGE: return Precision::kDynamicRange;
    case inference::INT8: return Precision::kInt8;
    case inference::FP16: return Precision::kFP16;
    case inference::BF16: return Precision::kBF16;
    default: return Precision::kFP32;
  }
}

absl::StatusOr<std::shared_ptr<LoadedModel>> LoadedModel::Load(ModelLoadRequest request) {
  const absl::Time start = absl::Now();
  const std::string label = absl::StrCat("model '", request.name, "' version ",
                                         request.version);
  auto fail = [&](const absl::Status& st) {
    return absl::Status(st.code(), absl::StrCat(label, ": ", st.message()));
  };
  std::string file = request.config.default_model_filename();
  if (file.empty()) file = "model.onnx";
  std::string path =
      absl::StrCat(request.model_dir, "/", request.version, "/", file);
  struct stat sb;
  if (::stat(path.c_str(), &sb) == 0 && S_ISDIR(sb.st_mode)) {
    path = absl::StrCat(path, "/model.onnx");  // Triton's model.onnx/ folder form
  }
  auto proto = LoadOnnxModel(path);
  if (!proto.ok()) return fail(proto.status());

  CompileOptions options;
  options.precision = ToEnginePrecision(request.config.quantization().precision());
  options.max_batch_size = request.config.max_batch_size();
  auto session = Session::Compile(*proto, options);
  if (!session.ok()) {
    return fail(absl::Status(session.status().code(),
                             absl::StrCat(path, ": ", session.status().message())));
  }
  CompletionOptions completion;
  completion.model_name = request.name;
  completion.default_max_batch_size = request.default_max_batch_size;
  absl::Status st = CompleteModelConfig((*session)->inputs(), (*session)->outputs(),
                                        completion, &request.config);
  if (!st.ok()) return fail(st);

  auto model = std::shared_ptr<LoadedModel>(new LoadedModel());
  model->name_ = request.name;
  model->version_ = request.version;
  model->model_path_ = path;
  model->model_dir_ = request.model_dir;
  model->config_ = std::move(request.config);
  model->session_ = *std::move(session);
  model->load_duration_ = absl::Now() - start;
  const PlanStats stats = model->session_->stats();
  QS_LOG(INFO) << "loaded " << label << " from " << path << " in "
               << absl::FormatDuration(model->load_duration_) << " ("
               << stats.num_nodes << " kernels from " << stats.num_graph_nodes
               << " nodes, " << stats.weight_bytes << " weight bytes)";
  return model;
}

}  // namespace qs
