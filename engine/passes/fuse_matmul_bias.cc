// Folds `Add(MatMul(A, W), b)` with W a constant FP32 [K, N] and b a constant holding N
// values (shape [N] or [1, ..., 1, N]) into the MatMul, as an engine-internal third input,
// and then a kGeluOp or Relu reading only that sum into it as a fused activation. The
// MatMul kernels run both inside the oneDNN primitive (bias, eltwise post-op), at any
// precision: transformer layers lose two full passes over every projection output.
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/ops/dnnl_util.h"
#include "engine/passes/passes.h"

namespace qs {
namespace {

const Tensor* Constant(const Graph& g, const std::string& name) {
  auto it = g.initializers.find(name);
  return it == g.initializers.end() ? nullptr : &it->second;
}

// A constant that is a bias over the last axis of size n.
bool IsBias(const Tensor* t, int64_t n) {
  if (t == nullptr || t->dtype() != DataType::kFloat32 || t->num_elements() != n ||
      t->rank() < 1 || t->shape().back() != n) {
    return false;
  }
  return true;
}

}  // namespace

absl::Status FuseMatMulBiasActivation(Graph* graph) {
  absl::flat_hash_map<std::string, std::vector<size_t>> readers;
  for (size_t i = 0; i < graph->nodes.size(); ++i)
    for (const auto& in : graph->nodes[i].inputs) readers[in].push_back(i);
  for (const auto& o : graph->outputs) readers[o.name].push_back(SIZE_MAX);
  // The one node reading `value`, or nullptr (several readers, a graph output).
  auto only_reader = [&](const std::string& value) -> size_t {
    auto it = readers.find(value);
    return it != readers.end() && it->second.size() == 1 ? it->second[0] : SIZE_MAX;
  };

  std::vector<bool> removed(graph->nodes.size(), false);
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    Node& mm = graph->nodes[i];
    if (mm.op_type != "MatMul" || !mm.domain.empty() || mm.inputs.size() != 2 ||
        mm.outputs.size() != 1) {
      continue;
    }
    const Tensor* w = Constant(*graph, mm.inputs[1]);
    if (w == nullptr || w->dtype() != DataType::kFloat32 || w->rank() != 2) continue;
    const int64_t n = w->dim(1);
    const size_t add_i = only_reader(mm.outputs[0]);
    if (add_i == SIZE_MAX) continue;
    const Node& add = graph->nodes[add_i];
    if (add.op_type != "Add" || !add.domain.empty() || add.inputs.size() != 2 ||
        add.inputs[0] == add.inputs[1]) {
      continue;
    }
    const std::string& b_name = add.inputs[0] == mm.outputs[0] ? add.inputs[1] : add.inputs[0];
    const Tensor* b = Constant(*graph, b_name);
    if (!IsBias(b, n)) continue;
    std::string bias = b_name;
    if (b->rank() != 1) {  // the kernels take a 1-D bias
      bias = absl::StrCat(b_name, "/qs_bias_1d");
      if (!graph->initializers.count(bias)) graph->initializers[bias] = b->Reshaped({n});
    }
    mm.inputs.push_back(bias);
    mm.outputs[0] = add.outputs[0];
    removed[add_i] = true;
    // The activation reading the sum, if it is the sum's only reader.
    const size_t act_i = only_reader(add.outputs[0]);
    if (act_i != SIZE_MAX) {
      const Node& act = graph->nodes[act_i];
      const bool gelu = act.op_type == kGeluOp;
      const bool relu = act.op_type == "Relu" && act.domain.empty();
      if ((gelu || relu) && act.outputs.size() == 1) {
        mm.attrs.SetString(kFusedActivationAttr, gelu ? "Gelu" : "Relu");
        mm.outputs[0] = act.outputs[0];
        removed[act_i] = true;
      }
    }
  }
  graph->RemoveNodes(removed);
  return absl::OkStatus();
}

}  // namespace qs
