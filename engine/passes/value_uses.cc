// Indexes over a graph's values shared by the passes (see passes.h).
#include "engine/passes/passes.h"

namespace qs {

absl::flat_hash_map<std::string, int> CountReaders(const Graph& graph) {
  absl::flat_hash_map<std::string, int> count;
  for (const auto& node : graph.nodes)
    for (const auto& in : node.inputs) count[in]++;
  for (const auto& o : graph.outputs) count[o.name]++;
  return count;
}

absl::flat_hash_map<std::string, size_t> Producers(const Graph& graph) {
  absl::flat_hash_map<std::string, size_t> producer;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    for (const auto& o : graph.nodes[i].outputs) {
      if (!o.empty()) producer[o] = i;
    }
  }
  return producer;
}

InputReaderMap InputReaders(const Graph& graph) {
  InputReaderMap readers;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const auto& ins = graph.nodes[i].inputs;
    for (size_t k = 0; k < ins.size(); ++k) readers[ins[k]].push_back({i, k});
  }
  return readers;
}

}  // namespace qs
