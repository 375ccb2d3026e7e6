#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/passes/passes.h"

namespace qs {

absl::Status RemoveIdentityNodes(Graph* graph) {
  absl::flat_hash_set<std::string> graph_outputs;
  for (const auto& o : graph->outputs) graph_outputs.insert(o.name);
  absl::flat_hash_map<std::string, std::string> alias;  // removed output -> source
  auto resolve = [&](const std::string& name) {
    auto it = alias.find(name);
    return it == alias.end() ? name : it->second;
  };
  std::vector<Node> kept;
  for (Node& node : graph->nodes) {
    for (auto& in : node.inputs) {
      if (!in.empty()) in = resolve(in);
    }
    const bool is_identity = node.op_type == "Identity" && node.domain.empty();
    // Dropout in inference is the identity on its first output; its mask output (if
    // consumed) keeps the node.
    const bool is_dropout = node.op_type == "Dropout" && node.domain.empty() &&
                            (node.outputs.size() < 2 || node.outputs[1].empty());
    if ((is_identity || is_dropout) && !node.inputs.empty() &&
        !graph_outputs.count(node.outputs[0])) {
      alias[node.outputs[0]] = node.inputs[0];
      continue;
    }
    kept.push_back(std::move(node));
  }
  graph->nodes = std::move(kept);
  return absl::OkStatus();
}

}  // namespace qs
