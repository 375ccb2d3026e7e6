#include "absl/container/flat_hash_set.h"
#include "engine/passes/passes.h"

namespace qs {

absl::Status EliminateDeadNodes(Graph* graph) {
  absl::flat_hash_set<std::string> needed;
  for (const auto& o : graph->outputs) needed.insert(o.name);
  std::vector<bool> live(graph->nodes.size(), false);
  for (int i = static_cast<int>(graph->nodes.size()) - 1; i >= 0; --i) {
    const Node& node = graph->nodes[i];
    for (const auto& o : node.outputs) {
      if (!o.empty() && needed.count(o)) live[i] = true;
    }
    if (live[i]) {
      for (const auto& in : node.inputs) {
        if (!in.empty()) needed.insert(in);
      }
    }
  }
  std::vector<Node> kept;
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    if (live[i]) kept.push_back(std::move(graph->nodes[i]));
  }
  graph->nodes = std::move(kept);
  for (auto it = graph->initializers.begin(); it != graph->initializers.end();) {
    if (!needed.count(it->first)) {
      graph->initializers.erase(it++);
    } else {
      ++it;
    }
  }
  return absl::OkStatus();
}

}  // namespace qs
