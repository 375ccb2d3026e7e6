#include "server/repository/loaded_model.h"

#include <malloc.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "engine/log.h"
#include "engine/onnx_import.h"
#include "engine/quantize/calibration_data.h"
#include "server/config/config_completion.h"

namespace qs {
namespace {

constexpr int kMaxCalibrationBatch = 8;
constexpr int kDefaultCalibrationSamples = 64;
constexpr double kDefaultPercentile = 99.999;

const char* MethodName(int method) {
  switch (method) {
    case 1: return "PERCENTILE";
    case 2: return "ENTROPY";
    default: return "MINMAX";
  }
}

std::string FormatSqnr(double db) {
  if (std::isnan(db)) return "n/a";
  if (std::isinf(db)) return db > 0 ? "inf dB (exact)" : "-inf dB";
  return absl::StrFormat("%.1f dB", db);
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
        } else {
          out += c;
        }
    }
  }
  out += "\"";
  return out;
}

// Reads the calibration samples named by the config. `label` names the model version.
absl::StatusOr<std::vector<std::vector<Tensor>>> ReadCalibration(
    const std::string& label, const ModelLoadRequest& request, const std::string& path,
    const onnx::ModelProto& proto, const inference::QuantizationConfig& q,
    Precision precision) {
  const std::string& data_dir = q.calibration().data_dir();
  const std::string config_path =
      absl::StrCat("the model's config (", request.model_dir, "/config.pbtxt)");
  // The graph's inputs, as the engine will see them (the signature only: importing the
  // whole graph here copied every weight, 102 MB for ResNet-50, just for the names).
  auto graph = ImportSignature(proto);
  if (!graph.ok()) {
    return absl::Status(graph.status().code(),
                        absl::StrCat(label, ": ", path, ": ", graph.status().message()));
  }
  std::vector<std::string> input_files;
  for (const auto& in : graph->inputs) {
    input_files.push_back(absl::StrCat(SafeFileName(in.name), ".npy"));
  }
  if (data_dir.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        label, ": precision ", PrecisionName(precision),
        " needs calibration data and none is configured; add to ", config_path,
        ": quantization { precision: ", PrecisionName(precision),
        " calibration { data_dir: \"calibration\" } } and put ",
        absl::StrJoin(input_files, ", "), " in ", request.model_dir,
        "/calibration (representative samples, samples first). INT8 never calibrates "
        "on random data."));
  }
  const std::string dir =
      data_dir.front() == '/' ? data_dir : absl::StrCat(request.model_dir, "/", data_dir);
  // The batch size the server will run: completion may choose it when the config is
  // silent, so complete a copy of the config now.
  inference::ModelConfig completed = request.config;
  CompletionOptions completion;
  completion.model_name = request.name;
  completion.default_max_batch_size = request.default_max_batch_size;
  absl::Status st =
      CompleteModelConfig(graph->inputs, graph->outputs, completion, &completed);
  if (!st.ok()) return absl::Status(st.code(), absl::StrCat(label, ": ", st.message()));
  const int batch = std::max(1, std::min(kMaxCalibrationBatch, completed.max_batch_size()));
  const int max_samples = q.calibration().max_samples() > 0
                              ? static_cast<int>(std::min<uint32_t>(
                                    q.calibration().max_samples(),
                                    std::numeric_limits<int>::max()))
                              : kDefaultCalibrationSamples;
  auto data = LoadCalibrationData(dir, graph->inputs, batch, max_samples);
  if (!data.ok()) {
    if (absl::IsNotFound(data.status())) {
      return absl::FailedPreconditionError(absl::StrCat(
          label, ": calibration folder ", dir, " not found (", config_path,
          " has quantization.calibration.data_dir: \"", data_dir,
          "\", resolved against the model folder ", request.model_dir,
          "); create it with ", absl::StrJoin(input_files, ", "),
          " (representative samples, samples first), or set data_dir to an existing "
          "folder (relative to the model folder, or absolute). ",
          precision == Precision::kInt8
              ? "INT8 never calibrates on random data."
              : "Remove data_dir to report precision on random inputs."));
    }
    return absl::Status(data.status().code(),
                        absl::StrCat(label, ": calibration data in ", dir,
                                     " (quantization.calibration.data_dir \"", data_dir,
                                     "\"): ", data.status().message()));
  }
  if (data->empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(label, ": calibration folder ", dir, " holds no samples"));
  }
  return data;
}

int64_t CountSamples(const std::vector<std::vector<Tensor>>& data) {
  int64_t n = 0;
  for (const auto& set : data) {
    n += set.empty() || set.front().rank() == 0 ? 1 : set.front().dim(0);
  }
  return n;
}

std::string Bytes(int64_t b) {
  if (b >= 10 * 1024 * 1024) return absl::StrFormat("%.1f MiB", b / 1048576.0);
  if (b >= 10 * 1024) return absl::StrFormat("%.1f KiB", b / 1024.0);
  return absl::StrCat(b, " B");
}

void LogPrecisionReport(const std::string& label, Precision precision,
                        const std::vector<NodePrecision>& report) {
  if (precision == Precision::kFP32) return;
  if (report.empty()) {
    QS_LOG(INFO) << label << ": " << PrecisionName(precision)
                 << ": weights rounded to half precision, computed in FP32 (no per-node "
                    "report)";
    return;
  }
  std::map<std::string, int> count;
  for (const auto& n : report) count[n.precision]++;
  const auto reduced = ReducedPrecisionNodes(report);
  const NodePrecision* worst = nullptr;
  for (const NodePrecision* n : reduced) {
    QS_LOG(INFO) << label << ":   node '" << n->name << "' (" << n->op_type << ") "
                 << n->precision << ", SQNR " << FormatSqnr(n->sqnr_db);
    if (!std::isnan(n->sqnr_db) && (worst == nullptr || n->sqnr_db < worst->sqnr_db)) {
      worst = n;
    }
  }
  std::vector<std::string> parts;
  for (const auto& [p, c] : count) parts.push_back(absl::StrCat(c, " ", p));
  QS_LOG(INFO) << label << ": precision report: " << absl::StrJoin(parts, ", ")
               << " of " << report.size() << " nodes; min SQNR "
               << (worst == nullptr ? std::string("n/a")
                                    : absl::StrCat(FormatSqnr(worst->sqnr_db), " (node '",
                                                   worst->name, "')"));
  if (reduced.empty()) {
    QS_LOG(WARNING) << label << ": precision " << PrecisionName(precision)
                    << " requested but every node stayed FP32 (exclusions, or no "
                       "Conv/Gemm/MatMul with constant weights)";
  }
}

}  // namespace

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

  const inference::QuantizationConfig& q = request.config.quantization();
  CompileOptions options;
  options.precision = ToEnginePrecision(q.precision());
  options.max_batch_size = request.config.max_batch_size();
  options.calibration_method = static_cast<int>(q.calibration().method());
  options.calibration_percentile =
      q.calibration().percentile() > 0 ? q.calibration().percentile() : kDefaultPercentile;
  if (q.calibration().percentile() < 0 || options.calibration_percentile > 100) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "quantization.calibration.percentile is ", q.calibration().percentile(),
        "; it must be in (0, 100] (0 = default ", kDefaultPercentile, ")")));
  }
  options.exclude_op_types.assign(q.exclude_op_types().begin(), q.exclude_op_types().end());
  options.exclude_nodes.assign(q.exclude_nodes().begin(), q.exclude_nodes().end());
  options.disable_default_exclusions = q.disable_default_exclusions();
  options.int8_stem_in_bf16 = !q.int8_stem_fp32();
  if (q.int8_head_fp32()) options.int8_head = qs::CompileOptions::Int8Head::kFp32;

  const bool uses_calibration = options.precision == Precision::kInt8 ||
                                options.precision == Precision::kDynamicRange ||
                                options.precision == Precision::kBF16;
  int64_t samples = 0;
  if (uses_calibration &&
      (options.precision == Precision::kInt8 || !q.calibration().data_dir().empty())) {
    const absl::Time read_start = absl::Now();
    auto data = ReadCalibration(label, request, path, *proto, q, options.precision);
    if (!data.ok()) return data.status();
    options.calibration = *std::move(data);
    samples = CountSamples(options.calibration);
    QS_LOG(INFO) << "loading " << label << " at " << PrecisionName(options.precision)
                 << ": calibrating on " << samples << " samples ("
                 << options.calibration.size() << " batches, "
                 << (options.precision == Precision::kInt8
                         ? MethodName(options.calibration_method)
                         : "report only")
                 << ") read in " << absl::FormatDuration(absl::Now() - read_start);
  } else if (!q.calibration().data_dir().empty()) {
    QS_LOG(INFO) << label << ": quantization.calibration.data_dir is not used at "
                 << PrecisionName(options.precision);
  } else if (options.precision != Precision::kFP32) {
    QS_LOG(INFO) << "loading " << label << " at " << PrecisionName(options.precision);
  }
  const absl::Time compile_start = absl::Now();
  // The proto is not needed after the import: Compile frees it before calibrating.
  auto session = Session::Compile(*std::move(proto), options);
  if (!session.ok()) {
    return fail(absl::Status(session.status().code(),
                             absl::StrCat(path, ": ", session.status().message())));
  }
  const absl::Duration compile_duration = absl::Now() - compile_start;
  if (options.precision != Precision::kFP32) {
    QS_LOG(INFO) << label << ": compiled at " << PrecisionName(options.precision) << " in "
                 << absl::FormatDuration(compile_duration);
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
  // Calibration and the precision report allocate (and free) the FP32 plan and every
  // activation of a calibration batch; glibc keeps those pages unless asked to return
  // them, which would make a quantized model look bigger than its FP32 original.
  malloc_trim(0);
  model->calibration_samples_ = samples;
  model->calibration_duration_ = samples > 0 ? compile_duration : absl::ZeroDuration();
  const PlanStats stats = model->session_->stats();
  LogPrecisionReport(label, options.precision, model->session_->precision_report());
  std::string calibration = "no calibration";
  if (samples > 0) {
    calibration = absl::StrCat("calibration ", samples, " samples ",
                               options.precision == Precision::kInt8
                                   ? MethodName(options.calibration_method)
                                   : "(report only)",
                               ", ", absl::FormatDuration(compile_duration));
  }
  QS_LOG(INFO) << "loaded " << label << " from " << path << " in "
               << absl::FormatDuration(model->load_duration_) << " ("
               << PrecisionName(options.precision) << ", " << stats.num_nodes
               << " kernels from " << stats.num_graph_nodes << " nodes, weights "
               << Bytes(stats.weight_bytes) << " held vs " << Bytes(stats.fp32_weight_bytes)
               << " at FP32 ("
               << absl::StrFormat("%.1f%%", stats.fp32_weight_bytes > 0
                                                ? 100.0 * stats.weight_bytes /
                                                      stats.fp32_weight_bytes
                                                : 100.0)
               << ")"
               << (stats.stored_weight_bytes != stats.weight_bytes
                       ? absl::StrCat(", ", Bytes(stats.stored_weight_bytes), " as stored")
                       : std::string())
               << ", " << calibration << ")";
  return model;
}

std::vector<const NodePrecision*> ReducedPrecisionNodes(
    const std::vector<NodePrecision>& report) {
  std::vector<const NodePrecision*> out;
  for (const auto& n : report) {
    if (n.precision != "FP32") out.push_back(&n);
  }
  return out;
}

double MinReducedSqnrDb(const std::vector<NodePrecision>& report) {
  double min = std::numeric_limits<double>::quiet_NaN();
  for (const NodePrecision* n : ReducedPrecisionNodes(report)) {
    if (std::isnan(n->sqnr_db)) continue;
    if (std::isnan(min) || n->sqnr_db < min) min = n->sqnr_db;
  }
  return min;
}

std::string PrecisionReportJson(const std::vector<NodePrecision>& report) {
  std::string out = "[";
  for (size_t i = 0; i < report.size(); ++i) {
    const NodePrecision& n = report[i];
    if (i > 0) out += ",";
    absl::StrAppend(&out, "{\"node\":", JsonString(n.name), ",\"op\":",
                    JsonString(n.op_type), ",\"precision\":", JsonString(n.precision),
                    ",\"sqnr_db\":");
    if (std::isnan(n.sqnr_db)) {
      out += "null";
    } else if (std::isinf(n.sqnr_db)) {
      out += n.sqnr_db > 0 ? "\"Infinity\"" : "\"-Infinity\"";
    } else {
      absl::StrAppend(&out, absl::StrFormat("%.2f", n.sqnr_db));
    }
    out += "}";
  }
  out += "]";
  return out;
}

}  // namespace qs
