#include "server/config/config_completion.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/config/data_type.h"

namespace qs {
namespace {

std::string Names(const std::vector<ValueInfo>& infos) {
  std::vector<std::string> names;
  for (const auto& i : infos) names.push_back(i.name);
  return absl::StrJoin(names, ", ");
}

bool AllBatchable(const std::vector<ValueInfo>& infos) {
  for (const auto& i : infos) {
    if (!i.has_shape || i.shape.empty() || i.shape[0] != -1) return false;
  }
  return true;
}

// Checks or fills one config tensor (ModelInput or ModelOutput share these fields).
template <typename T>
absl::Status CompleteTensor(const char* kind, const ValueInfo& graph, int max_batch,
                            T* tensor) {
  const inference::DataType want = ToConfigDataType(graph.dtype);
  if (tensor->data_type() == inference::TYPE_INVALID) {
    tensor->set_data_type(want);
  } else if (tensor->data_type() != want) {
    return absl::FailedPreconditionError(absl::StrCat(
        kind, " '", graph.name, "': config.pbtxt says ",
        inference::DataType_Name(tensor->data_type()), " but the model has ",
        inference::DataType_Name(want)));
  }
  if (!graph.has_shape) {
    if (tensor->dims_size() == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          kind, " '", graph.name,
          "' has no shape in the model; state its dims in config.pbtxt"));
    }
    return absl::OkStatus();
  }
  Shape model_dims = graph.shape;
  if (max_batch > 0) {
    if (model_dims.empty() || (model_dims[0] != -1 && model_dims[0] < max_batch)) {
      return absl::FailedPreconditionError(absl::StrCat(
          kind, " '", graph.name, "' has shape ", ShapeToString(graph.shape),
          " in the model, which has no batch dimension for max_batch_size ",
          max_batch));
    }
    model_dims.erase(model_dims.begin());
  }
  if (tensor->dims_size() == 0 && !tensor->has_reshape()) {
    for (int64_t d : model_dims) tensor->add_dims(d);
    return absl::OkStatus();
  }
  if (tensor->has_reshape()) return absl::OkStatus();  // checked at run time
  bool ok = tensor->dims_size() == static_cast<int>(model_dims.size());
  for (int i = 0; ok && i < tensor->dims_size(); ++i) {
    const int64_t c = tensor->dims(i), m = model_dims[i];
    ok = c == -1 || m == -1 || c == m;
  }
  if (!ok) {
    std::vector<int64_t> cdims(tensor->dims().begin(), tensor->dims().end());
    return absl::FailedPreconditionError(absl::StrCat(
        kind, " '", graph.name, "': config.pbtxt dims ", ShapeToString(cdims),
        " do not match the model's ", ShapeToString(model_dims),
        max_batch > 0 ? " (batch dimension excluded)" : ""));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status CompleteList(const char* kind, const std::vector<ValueInfo>& graph,
                          int max_batch,
                          google::protobuf::RepeatedPtrField<T>* tensors) {
  for (const auto& t : *tensors) {
    bool found = false;
    for (const auto& g : graph) found |= g.name == t.name();
    if (!found) {
      return absl::FailedPreconditionError(absl::StrCat(
          "config.pbtxt names ", kind, " '", t.name(), "', which the model does not have (model ",
          kind, "s: ", Names(graph), ")"));
    }
  }
  for (const auto& g : graph) {
    T* tensor = nullptr;
    for (auto& t : *tensors)
      if (t.name() == g.name) tensor = &t;
    if (tensor == nullptr) {
      tensor = tensors->Add();
      tensor->set_name(g.name);
    }
    absl::Status st = CompleteTensor(kind, g, max_batch, tensor);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CompleteModelConfig(const std::vector<ValueInfo>& graph_inputs,
                                 const std::vector<ValueInfo>& graph_outputs,
                                 const CompletionOptions& options,
                                 inference::ModelConfig* config) {
  if (config->name().empty()) {
    config->set_name(options.model_name);
  } else if (config->name() != options.model_name) {
    return absl::FailedPreconditionError(absl::StrCat(
        "config.pbtxt name '", config->name(), "' does not match the folder name '",
        options.model_name, "'"));
  }
  if (config->max_batch_size() < 0) {
    return absl::FailedPreconditionError("max_batch_size must be >= 0");
  }
  if (config->max_batch_size() == 0 && config->input_size() == 0 &&
      config->output_size() == 0 && AllBatchable(graph_inputs) &&
      AllBatchable(graph_outputs)) {
    config->set_max_batch_size(options.default_max_batch_size);
    if (config->scheduling_choice_case() ==
            inference::ModelConfig::SCHEDULING_CHOICE_NOT_SET &&
        options.default_max_batch_size > 1) {
      config->mutable_dynamic_batching();
    }
  }
  const int mb = config->max_batch_size();
  absl::Status st = CompleteList("input", graph_inputs, mb, config->mutable_input());
  if (!st.ok()) return st;
  st = CompleteList("output", graph_outputs, mb, config->mutable_output());
  if (!st.ok()) return st;
  if (config->platform().empty() && config->backend().empty()) {
    config->set_platform("onnxruntime_onnx");
  }
  return absl::OkStatus();
}

}  // namespace qs
