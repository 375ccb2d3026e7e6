#include "engine/onnx_import.h"

#include <fstream>
#include <unordered_set>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/log.h"
#include "engine/status_macros.h"
#include "onnx/checker.h"
#include "onnx/shape_inference/implementation.h"

namespace qs {
namespace {

// libonnx 1.12 knows IR version 8 (opset 17).
constexpr int64_t kMaxIrVersion = 8;

absl::StatusOr<ValueInfo> ConvertValueInfo(const onnx::ValueInfoProto& vi) {
  ValueInfo out;
  out.name = vi.name();
  if (!vi.type().has_tensor_type()) {
    return absl::InvalidArgumentError(
        absl::StrCat("value '", vi.name(), "' is not a tensor"));
  }
  const auto& tt = vi.type().tensor_type();
  auto dtype = DataTypeFromOnnx(tt.elem_type());
  if (!dtype.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("value '", vi.name(), "': ", dtype.status().message()));
  }
  out.dtype = *dtype;
  if (tt.has_shape()) {
    out.has_shape = true;
    for (const auto& d : tt.shape().dim()) {
      if (d.has_dim_value()) {
        if (d.dim_value() < 0 || d.dim_value() > kMaxDimension) {
          return absl::InvalidArgumentError(absl::StrCat(
              "value '", vi.name(), "' declares dimension ", d.dim_value(),
              ", above the supported maximum ", kMaxDimension));
        }
        out.shape.push_back(d.dim_value());
      } else {
        out.shape.push_back(-1);
      }
    }
  }
  return out;
}

}  // namespace

namespace {

// What every parsed model goes through: the IR version clamp, the checker and shape
// inference.
absl::StatusOr<onnx::ModelProto> CheckParsedModel(onnx::ModelProto model,
                                                  absl::string_view source) {
  if (model.ir_version() > kMaxIrVersion) {
    QS_LOG(WARNING) << source << ": IR version " << model.ir_version()
                    << " is newer than this build's ONNX (" << kMaxIrVersion
                    << "); loading it as IR " << kMaxIrVersion;
    model.set_ir_version(kMaxIrVersion);
  }
  try {
    onnx::checker::check_model(model);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": ONNX checker: ", e.what()));
  }
  try {
    onnx::ShapeInferenceOptions options(/*check_type=*/false, /*strict=*/0,
                                        /*data_prop=*/false);
    onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(),
                                       options);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": shape inference: ", e.what()));
  }
  return model;
}

absl::Status NotOnnx(absl::string_view source, int64_t bytes) {
  return absl::InvalidArgumentError(absl::StrCat(
      source, ": not a valid ONNX protobuf (truncated or corrupt file, ", bytes,
      " bytes)"));
}

}  // namespace

absl::StatusOr<onnx::ModelProto> ParseOnnxModel(absl::string_view bytes,
                                                absl::string_view source) {
  onnx::ModelProto model;
  if (bytes.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": file is empty"));
  }
  if (!model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return NotOnnx(source, static_cast<int64_t>(bytes.size()));
  }
  return CheckParsedModel(std::move(model), source);
}

absl::StatusOr<onnx::ModelProto> LoadOnnxModel(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open file"));
  const std::streamoff size = in.tellg();
  in.seekg(0);
  if (size < 0 || !in) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read file"));
  if (size == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": file is empty"));
  // Parsed from the stream: reading the file into memory first held it twice over
  // (a stringstream and its str() copy) next to the parsed model, 300 MB to load
  // ResNet-50's 100 MB.
  onnx::ModelProto model;
  if (!model.ParseFromIstream(&in)) return NotOnnx(path, size);
  return CheckParsedModel(std::move(model), path);
}

absl::StatusOr<GraphSignature> ImportSignature(const onnx::ModelProto& model) {
  const auto& gp = model.graph();
  absl::flat_hash_set<std::string> initializers;
  for (const auto& init : gp.initializer()) initializers.insert(init.name());
  GraphSignature sig;
  for (const auto& vi : gp.input()) {
    if (initializers.count(vi.name())) continue;  // a constant, not a model input
    QS_ASSIGN_OR_RETURN(ValueInfo info, ConvertValueInfo(vi));
    sig.inputs.push_back(std::move(info));
  }
  for (const auto& vi : gp.output()) {
    QS_ASSIGN_OR_RETURN(ValueInfo info, ConvertValueInfo(vi));
    sig.outputs.push_back(std::move(info));
  }
  return sig;
}

absl::StatusOr<Graph> ImportGraph(const onnx::ModelProto& model) {
  Graph g;
  for (const auto& op : model.opset_import()) {
    if (op.domain().empty() || op.domain() == "ai.onnx") g.opset = op.version();
  }
  const auto& gp = model.graph();
  for (const auto& init : gp.initializer()) {
    auto t = TensorFromProto(init);
    if (!t.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("initializer: ", t.status().message()));
    }
    g.initializers[init.name()] = *std::move(t);
  }
  QS_ASSIGN_OR_RETURN(GraphSignature sig, ImportSignature(model));
  g.inputs = std::move(sig.inputs);
  g.outputs = std::move(sig.outputs);
  for (const auto& vi : gp.value_info()) {
    auto info = ConvertValueInfo(vi);
    if (info.ok()) g.value_info[vi.name()] = *std::move(info);
  }

  // Topological sort (Kahn). The checker already enforces order for valid models,
  // but we re-derive it so that a cycle or dangling input gets a precise message.
  absl::flat_hash_set<std::string> available;
  for (const auto& in : g.inputs) available.insert(in.name);
  for (const auto& [name, t] : g.initializers) available.insert(name);
  absl::flat_hash_map<std::string, int> producer;
  const int n = gp.node_size();
  for (int i = 0; i < n; ++i) {
    for (const auto& o : gp.node(i).output()) {
      if (!o.empty()) producer[o] = i;
    }
  }
  for (int i = 0; i < n; ++i) {
    const auto& node = gp.node(i);
    for (const auto& in : node.input()) {
      if (!in.empty() && !available.count(in) && !producer.count(in)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "node '", node.name(), "' (", node.op_type(), ") reads '", in,
            "', which no node, input or initializer produces"));
      }
    }
  }
  std::vector<int> pending(n, 0);
  std::vector<std::vector<int>> consumers(n);
  for (int i = 0; i < n; ++i) {
    std::unordered_set<int> deps;
    for (const auto& in : gp.node(i).input()) {
      auto it = producer.find(in);
      if (!in.empty() && !available.count(in) && it != producer.end())
        deps.insert(it->second);
    }
    pending[i] = static_cast<int>(deps.size());
    for (int d : deps) consumers[d].push_back(i);
  }
  std::vector<int> ready;
  for (int i = n - 1; i >= 0; --i) {
    if (pending[i] == 0) ready.push_back(i);
  }
  std::vector<int> order;
  while (!ready.empty()) {
    int i = ready.back();
    ready.pop_back();
    order.push_back(i);
    for (int c : consumers[i]) {
      if (--pending[c] == 0) ready.push_back(c);
    }
  }
  if (static_cast<int>(order.size()) != n) {
    for (int i = 0; i < n; ++i) {
      if (pending[i] > 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "graph has a cycle through node '", gp.node(i).name(), "' (",
            gp.node(i).op_type(), ")"));
      }
    }
  }
  for (int i : order) {
    const auto& np = gp.node(i);
    Node node;
    node.name = np.name().empty() ? absl::StrCat(np.op_type(), "_", i) : np.name();
    node.op_type = np.op_type();
    node.domain = np.domain() == "ai.onnx" ? "" : np.domain();
    node.inputs.assign(np.input().begin(), np.input().end());
    node.outputs.assign(np.output().begin(), np.output().end());
    node.attrs = Attributes(np.attribute());
    g.nodes.push_back(std::move(node));
  }
  for (const auto& out : g.outputs) {
    if (!producer.count(out.name) && !available.count(out.name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "graph output '", out.name, "' is not produced by any node"));
    }
  }
  return g;
}

}  // namespace qs
