// Collapses the erf form of GELU as exporters write it,
//   0.5 * x * (1 + erf(x / sqrt(2)))   (Div|Mul, Erf, Add, Mul, Mul in either order),
// into one internal element-wise node (kGeluOp), one pass over the tensor instead of
// five.
#include <cmath>

#include "absl/container/flat_hash_map.h"
#include "engine/passes/passes.h"

namespace qs {
namespace {

bool ScalarIs(const Graph& g, const std::string& name, double value) {
  auto it = g.initializers.find(name);
  if (it == g.initializers.end() || it->second.num_elements() != 1 ||
      it->second.dtype() != DataType::kFloat32) {
    return false;
  }
  return std::fabs(it->second.data<float>()[0] - value) <= 1e-4 * std::fabs(value);
}

// The other input of a binary node, when one input is `name`; "" otherwise.
std::string Other(const Node& n, const std::string& name) {
  if (n.inputs.size() != 2) return "";
  if (n.inputs[0] == name) return n.inputs[1];
  if (n.inputs[1] == name) return n.inputs[0];
  return "";
}

}  // namespace

absl::Status FuseGelu(Graph* graph) {
  absl::flat_hash_map<std::string, std::vector<size_t>> readers;
  const absl::flat_hash_map<std::string, size_t> producer = Producers(*graph);
  for (size_t i = 0; i < graph->nodes.size(); ++i)
    for (const auto& in : graph->nodes[i].inputs) readers[in].push_back(i);
  for (const auto& o : graph->outputs) readers[o.name].push_back(SIZE_MAX);
  auto only_reader = [&](const std::string& v) -> const Node* {
    auto it = readers.find(v);
    if (it == readers.end() || it->second.size() != 1 || it->second[0] == SIZE_MAX)
      return nullptr;
    return &graph->nodes[it->second[0]];
  };
  std::vector<bool> removed(graph->nodes.size(), false);
  for (size_t e = 0; e < graph->nodes.size(); ++e) {
    const Node& erf = graph->nodes[e];
    if (erf.op_type != "Erf" || removed[e]) continue;
    auto pd = producer.find(erf.inputs[0]);
    if (pd == producer.end()) continue;
    const Node& div = graph->nodes[pd->second];
    if (div.inputs.size() != 2 || !only_reader(div.outputs[0])) continue;
    const std::string x = div.inputs[0];
    const bool scaled = (div.op_type == "Div" && ScalarIs(*graph, div.inputs[1], M_SQRT2)) ||
                        (div.op_type == "Mul" && ScalarIs(*graph, div.inputs[1], M_SQRT1_2));
    if (!scaled) continue;
    const Node* add = only_reader(erf.outputs[0]);
    if (add == nullptr || add->op_type != "Add" ||
        !ScalarIs(*graph, Other(*add, erf.outputs[0]), 1.0)) {
      continue;
    }
    const Node* m1 = only_reader(add->outputs[0]);
    if (m1 == nullptr || m1->op_type != "Mul") continue;
    const std::string other = Other(*m1, add->outputs[0]);
    std::vector<const Node*> drop = {&div, &erf, add, m1};
    std::string output;
    if (other == x) {  // (x * (1 + erf)) * 0.5
      const Node* m2 = only_reader(m1->outputs[0]);
      if (m2 == nullptr || m2->op_type != "Mul" ||
          !ScalarIs(*graph, Other(*m2, m1->outputs[0]), 0.5)) {
        continue;
      }
      drop.push_back(m2);
      output = m2->outputs[0];
    } else {  // (0.5 * x) * (1 + erf)
      auto ph = producer.find(other);
      if (ph == producer.end()) continue;
      const Node& half = graph->nodes[ph->second];
      if (half.op_type != "Mul" || Other(half, x).empty() ||
          !ScalarIs(*graph, Other(half, x), 0.5) || !only_reader(half.outputs[0])) {
        continue;
      }
      drop.push_back(&half);
      output = m1->outputs[0];
    }
    // Replace the last node of the pattern (in order) with the fused one, so every
    // reader of the output still comes after it.
    size_t last = 0;
    for (const Node* n : drop) last = std::max(last, static_cast<size_t>(n - graph->nodes.data()));
    for (const Node* n : drop) removed[n - graph->nodes.data()] = true;
    Node gelu;
    gelu.name = erf.name + "/gelu";
    gelu.op_type = kGeluOp;
    gelu.inputs = {x};
    gelu.outputs = {output};
    graph->nodes[last] = std::move(gelu);
    removed[last] = false;
  }
  graph->RemoveNodes(removed);
  return absl::OkStatus();
}

}  // namespace qs
