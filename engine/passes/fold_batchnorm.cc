#include <cmath>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/passes/passes.h"

namespace qs {
namespace {

bool IsF32Const(const Graph& g, const std::string& name, int64_t n) {
  auto it = g.initializers.find(name);
  return it != g.initializers.end() && it->second.dtype() == DataType::kFloat32 &&
         it->second.num_elements() == n;
}

}  // namespace

absl::Status FoldBatchNormIntoConv(Graph* graph) {
  absl::flat_hash_map<std::string, int> consumers = CountReaders(*graph);
  absl::flat_hash_map<std::string, size_t> producer = Producers(*graph);

  absl::flat_hash_set<size_t> removed;
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    Node& bn = graph->nodes[i];
    if (bn.op_type != "BatchNormalization" || bn.inputs.size() < 5 ||
        bn.outputs.size() != 1 || bn.attrs.GetInt("training_mode", 0) != 0)
      continue;
    auto p = producer.find(bn.inputs[0]);
    if (p == producer.end()) continue;
    Node& conv = graph->nodes[p->second];
    if (conv.op_type != "Conv" || consumers[bn.inputs[0]] != 1) continue;
    auto w_it = graph->initializers.find(conv.inputs[1]);
    if (w_it == graph->initializers.end() || w_it->second.dtype() != DataType::kFloat32)
      continue;
    const Tensor& w = w_it->second;
    const int64_t oc = w.dim(0);
    if (!IsF32Const(*graph, bn.inputs[1], oc) || !IsF32Const(*graph, bn.inputs[2], oc) ||
        !IsF32Const(*graph, bn.inputs[3], oc) || !IsF32Const(*graph, bn.inputs[4], oc))
      continue;
    const bool has_bias = conv.inputs.size() > 2 && !conv.inputs[2].empty();
    if (has_bias && !IsF32Const(*graph, conv.inputs[2], oc)) continue;
    const float eps = bn.attrs.GetFloat("epsilon", 1e-5f);
    const float* gamma = graph->initializers[bn.inputs[1]].data<float>();
    const float* beta = graph->initializers[bn.inputs[2]].data<float>();
    const float* mean = graph->initializers[bn.inputs[3]].data<float>();
    const float* var = graph->initializers[bn.inputs[4]].data<float>();
    // New tensors (the originals may be shared with other nodes).
    Tensor nw = w.Clone();
    Tensor nb(DataType::kFloat32, {oc});
    const int64_t per_oc = w.num_elements() / oc;
    for (int64_t o = 0; o < oc; ++o) {
      const float s = gamma[o] / std::sqrt(var[o] + eps);
      float* row = nw.data<float>() + o * per_oc;
      for (int64_t k = 0; k < per_oc; ++k) row[k] *= s;
      const float b = has_bias ? graph->initializers[conv.inputs[2]].data<float>()[o] : 0.f;
      nb.data<float>()[o] = (b - mean[o]) * s + beta[o];
    }
    const std::string wname = conv.name + "/bn_folded_weight";
    const std::string bname = conv.name + "/bn_folded_bias";
    graph->initializers[wname] = nw;
    graph->initializers[bname] = nb;
    conv.inputs.resize(3);
    conv.inputs[1] = wname;
    conv.inputs[2] = bname;
    conv.outputs[0] = bn.outputs[0];
    removed.insert(i);
  }
  if (!removed.empty()) {
    std::vector<Node> kept;
    for (size_t i = 0; i < graph->nodes.size(); ++i)
      if (!removed.count(i)) kept.push_back(std::move(graph->nodes[i]));
    graph->nodes = std::move(kept);
  }
  return absl::OkStatus();
}

}  // namespace qs
