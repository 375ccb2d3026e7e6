// Folds a residual Add into the Conv that feeds it: the Conv's output buffer starts as
// a copy of the other addend and oneDNN accumulates into it (a "sum" post-op), so the
// separate Add pass over both tensors disappears. The Conv moves to the Add's place in
// the node order, where both addends are available. A following Relu is then fused by
// FuseConvActivation (post-ops run in order: sum, activation).
#include "absl/container/flat_hash_map.h"
#include "engine/ops/dnnl_util.h"
#include "engine/passes/passes.h"

namespace qs {

absl::Status FuseConvAdd(Graph* graph) {
  absl::flat_hash_map<std::string, int> consumers = CountReaders(*graph);
  absl::flat_hash_map<std::string, size_t> producer = Producers(*graph);

  std::vector<bool> removed(graph->nodes.size(), false);
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    Node& add = graph->nodes[i];
    if (add.op_type != "Add" || !add.domain.empty() || add.inputs.size() != 2 ||
        add.outputs.size() != 1) {
      continue;
    }
    for (int side = 0; side < 2; ++side) {
      auto p = producer.find(add.inputs[side]);
      if (p == producer.end() || removed[p->second]) continue;
      Node& conv = graph->nodes[p->second];
      if (conv.op_type != "Conv" || !conv.domain.empty() || conv.outputs.size() != 1 ||
          consumers[add.inputs[side]] != 1 || conv.attrs.Has(kFusedActivationAttr) ||
          conv.attrs.Has(kFusedSumAttr)) {
        continue;
      }
      // Only an element-wise add of equal shapes (no broadcasting) is a sum post-op.
      const std::string& other = add.inputs[1 - side];
      auto a = graph->value_info.find(add.inputs[side]);
      auto b = graph->value_info.find(other);
      if (a == graph->value_info.end() || b == graph->value_info.end() ||
          !a->second.has_shape || a->second.shape != b->second.shape ||
          a->second.shape.size() != 4 || other == add.inputs[side]) {
        continue;
      }
      // Channels and spatial dims must be known equal (the batch may be free).
      const Shape& s = a->second.shape;
      if (s[1] <= 0 || s[2] <= 0 || s[3] <= 0) continue;
      Node fused = conv;
      fused.attrs.SetInt(kFusedSumAttr, 1);
      fused.inputs.resize(3);  // keep an omitted bias as ""
      fused.inputs.push_back(other);
      fused.outputs[0] = add.outputs[0];
      removed[p->second] = true;
      producer[add.outputs[0]] = i;
      add = std::move(fused);
      break;
    }
  }
  graph->RemoveNodes(removed);
  return absl::OkStatus();
}

}  // namespace qs
