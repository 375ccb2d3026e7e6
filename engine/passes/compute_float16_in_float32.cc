#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "engine/passes/passes.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

constexpr int64_t kOnnxFloat = onnx::TensorProto::FLOAT;
constexpr int64_t kOnnxFloat16 = onnx::TensorProto::FLOAT16;

// Rewrites a FLOAT16 tensor attribute `name` of `node` to FP32; false when it is none.
absl::StatusOr<bool> WidenTensorAttribute(Node* node, const std::string& name) {
  const onnx::TensorProto* v = node->attrs.GetTensor(name);
  if (v == nullptr || v->data_type() != kOnnxFloat16) return false;
  QS_ASSIGN_OR_RETURN(Tensor t, TensorFromProto(*v));
  QS_ASSIGN_OR_RETURN(t, CastTensor(t, DataType::kFloat32));
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::TENSOR);
  *a.mutable_t() = TensorToProto(t, "");
  node->attrs.Set(a);
  return true;
}

// A name no value of the graph has, derived from `base`.
std::string FreshName(const absl::flat_hash_set<std::string>& taken, const std::string& base) {
  std::string name = absl::StrCat(base, "/float32");
  for (int i = 2; taken.contains(name); ++i) name = absl::StrCat(base, "/float32_", i);
  return name;
}

Node CastNode(const std::string& name, const std::string& in, const std::string& out, int64_t to) {
  Node cast;
  cast.name = name;
  cast.op_type = "Cast";
  cast.inputs = {in};
  cast.outputs = {out};
  cast.attrs.SetInt("to", to);
  return cast;
}

}  // namespace

absl::Status ComputeFloat16InFloat32(Graph* graph) {
  // The declared type of each value, before any widening: graph inputs, initializers,
  // and what shape inference found.
  auto declared = [&](const std::string& value) {
    for (const ValueInfo& v : graph->inputs) {
      if (v.name == value) return v.dtype;
    }
    if (auto it = graph->initializers.find(value); it != graph->initializers.end()) {
      return it->second.dtype();
    }
    auto it = graph->value_info.find(value);
    return it == graph->value_info.end() ? DataType::kUndefined : it->second.dtype;
  };
  auto is_float = [](DataType t) { return t == DataType::kFloat16 || t == DataType::kFloat32; };
  // Casts between FLOAT16 and FLOAT (the converters' casts at the graph's edges) become
  // identities once both are FP32: no copy, and no op the batch split stops at.
  absl::flat_hash_set<size_t> identities;
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    const Node& node = graph->nodes[i];
    if (!node.domain.empty() || node.op_type != "Cast" || node.inputs.size() != 1) continue;
    const int64_t to = node.attrs.GetInt("to", 0);
    const DataType from = declared(node.inputs[0]);
    // FLOAT16 -> FLOAT, FLOAT -> FLOAT16 and FLOAT16 -> FLOAT16 all become FP32 -> FP32.
    if ((to == kOnnxFloat16 && is_float(from)) ||
        (to == kOnnxFloat && from == DataType::kFloat16)) {
      identities.insert(i);
    }
  }
  bool any = false;
  for (auto& [name, t] : graph->initializers) {
    if (t.dtype() != DataType::kFloat16) continue;
    QS_ASSIGN_OR_RETURN(t, CastTensor(t, DataType::kFloat32));
    any = true;
  }
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    Node& node = graph->nodes[i];
    if (!node.domain.empty()) continue;
    if (identities.contains(i)) {
      node.op_type = "Identity";
      node.attrs = Attributes();
      any = true;
    } else if (node.op_type == "Cast" && node.attrs.GetInt("to", 0) == kOnnxFloat16) {
      node.attrs.SetInt("to", kOnnxFloat);
      any = true;
    } else if (node.op_type == "Constant" || node.op_type == "ConstantOfShape") {
      QS_ASSIGN_OR_RETURN(bool widened, WidenTensorAttribute(&node, "value"));
      any |= widened;
    }
  }
  for (const ValueInfo& v : graph->inputs) any |= v.dtype == DataType::kFloat16;
  for (const ValueInfo& v : graph->outputs) any |= v.dtype == DataType::kFloat16;
  if (!any) return absl::OkStatus();

  // Every value the graph names, for fresh names.
  absl::flat_hash_set<std::string> taken;
  for (const ValueInfo& v : graph->inputs) taken.insert(v.name);
  for (const auto& [name, t] : graph->initializers) taken.insert(name);
  for (const Node& node : graph->nodes) taken.insert(node.outputs.begin(), node.outputs.end());
  auto rename_reads = [&](const std::string& from, const std::string& to, size_t first) {
    for (size_t i = first; i < graph->nodes.size(); ++i) {
      for (std::string& in : graph->nodes[i].inputs) {
        if (in == from) in = to;
      }
    }
  };
  auto widen_info = [&](const std::string& from, const std::string& to) {
    auto it = graph->value_info.find(from);
    ValueInfo v = it != graph->value_info.end() ? it->second : ValueInfo{};
    v.name = to;
    v.dtype = DataType::kFloat32;
    graph->value_info[to] = v;
  };

  // Inside the graph every FLOAT16 value is now FP32.
  absl::flat_hash_set<std::string> io;
  for (const ValueInfo& v : graph->inputs) io.insert(v.name);
  for (const ValueInfo& v : graph->outputs) io.insert(v.name);
  for (auto& [name, v] : graph->value_info) {
    if (v.dtype == DataType::kFloat16 && !io.contains(name)) v.dtype = DataType::kFloat32;
  }

  // FLOAT16 graph inputs keep their declared type: a Cast to FP32 reads each.
  std::vector<Node> front;
  for (const ValueInfo& in : graph->inputs) {
    if (in.dtype != DataType::kFloat16) continue;
    const std::string wide = FreshName(taken, in.name);
    taken.insert(wide);
    rename_reads(in.name, wide, 0);
    widen_info(in.name, wide);
    front.push_back(CastNode(wide, in.name, wide, kOnnxFloat));
  }
  graph->nodes.insert(graph->nodes.begin(), std::make_move_iterator(front.begin()),
                      std::make_move_iterator(front.end()));

  // FLOAT16 graph outputs too: their producer writes an FP32 value, cast at the end.
  // (The casts are appended, so the producers' indices stay valid.)
  const absl::flat_hash_map<std::string, size_t> producers = Producers(*graph);
  for (const ValueInfo& out : graph->outputs) {
    if (out.dtype != DataType::kFloat16) continue;
    const auto p = producers.find(out.name);
    std::string wide;
    if (p != producers.end()) {
      const size_t producer = p->second;
      wide = FreshName(taken, out.name);
      taken.insert(wide);
      for (std::string& o : graph->nodes[producer].outputs) {
        if (o == out.name) o = wide;
      }
      rename_reads(out.name, wide, producer + 1);
      widen_info(out.name, wide);
    } else if (graph->initializers.contains(out.name)) {
      // A constant output, now FP32 under the output's own name: move it aside.
      wide = FreshName(taken, out.name);
      taken.insert(wide);
      auto node = graph->initializers.extract(out.name);
      graph->initializers[wide] = std::move(node.mapped());
      rename_reads(out.name, wide, 0);
    } else {
      continue;  // a FLOAT16 graph input passed through unchanged
    }
    graph->nodes.push_back(CastNode(out.name, wide, out.name, kOnnxFloat16));
  }
  return absl::OkStatus();
}

}  // namespace qs
