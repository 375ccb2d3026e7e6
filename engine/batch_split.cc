#include "engine/batch_split.h"

#include <algorithm>

#include <string>

#include "absl/container/flat_hash_set.h"
#include "engine/ops/reduced_precision.h"

namespace qs {
namespace {

// Ops whose output row i depends only on input row i (given per-sample operands).
bool SampleSeparable(const Node& n) {
  static const absl::flat_hash_set<std::string>* ops = new absl::flat_hash_set<std::string>{
      "Conv", "ConvTranspose", "MaxPool", "AveragePool", "Relu", "Clip", "LeakyRelu",
      "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "BatchNormalization", "Add", "Sub",
      "Mul", "Div"};
  if (!n.domain.empty() || !ops->contains(n.op_type)) return false;
  // MaxPool's Indices are flat offsets into the whole batch.
  return n.op_type != "MaxPool" || n.outputs.size() == 1;
}

// The longest prefix of sample-separable nodes, ending at the last one whose per-sample
// output is at least `min_sample_bytes` (see BatchSplitEnd).
size_t SeparablePrefixEnd(const Graph& graph, size_t min_sample_bytes) {
  absl::flat_hash_set<std::string> per_sample;  // values with the batch leading
  for (const auto& in : graph.inputs) {
    if (in.has_shape && in.shape.size() >= 2 && in.shape[0] < 0) per_sample.insert(in.name);
  }
  size_t end = 0;
  for (size_t i = 0; i < graph.nodes.size(); ++i) {
    const Node& node = graph.nodes[i];
    if (!SampleSeparable(node) || node.outputs.empty()) break;
    auto vi = graph.value_info.find(node.outputs[0]);
    if (vi == graph.value_info.end() || !vi->second.has_shape ||
        vi->second.shape.size() < 2) {
      break;
    }
    const size_t rank = vi->second.shape.size();
    bool ok = true;
    for (const std::string& in : node.inputs) {
      if (in.empty() || per_sample.contains(in)) continue;
      auto c = graph.initializers.find(in);
      // Constants: weights and biases, or operands that broadcast over the batch.
      ok = c != graph.initializers.end() &&
           (node.op_type == "Conv" || node.op_type == "ConvTranspose" ||
            node.op_type == "BatchNormalization" ||
            static_cast<size_t>(c->second.rank()) < rank || c->second.dim(0) == 1);
      if (!ok) break;
    }
    if (!ok) break;
    size_t sample_bytes = 4;
    for (size_t d = 1; d < vi->second.shape.size() && ok; ++d) {
      ok = vi->second.shape[d] > 0;
      if (ok) sample_bytes *= static_cast<size_t>(vi->second.shape[d]);
    }
    if (!ok) break;
    for (const std::string& out : node.outputs) per_sample.insert(out);
    if (sample_bytes >= min_sample_bytes) end = i + 1;
  }
  return end;
}

}  // namespace

bool HasIntegerNodes(const Graph& graph, size_t end) {
  for (size_t i = 0; i < std::min(end, graph.nodes.size()); ++i) {
    const std::string p = graph.nodes[i].attrs.GetString(kPrecisionAttr, "");
    if (p == kPrecisionStatic || p == kPrecisionDynamic) return true;
  }
  return false;
}

size_t BatchSplitEnd(const Graph& graph, size_t min_sample_bytes) {
  const size_t end = SeparablePrefixEnd(graph, min_sample_bytes);
  // An integer plan gains only when the prefix reaches its u8 layers: a float stem
  // alone still hands the whole batch's stem output to the next node (ResNet-18 INT8:
  // peak 17.7 -> 16.1 MB, arena 17.7 -> 25.7 MB).
  if (HasIntegerNodes(graph, graph.nodes.size()) && !HasIntegerNodes(graph, end)) return 0;
  return end;
}

}  // namespace qs
