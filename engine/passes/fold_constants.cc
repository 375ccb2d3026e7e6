#include "absl/container/flat_hash_set.h"
#include "engine/layout.h"
#include "engine/ops/registry.h"
#include "engine/passes/passes.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

bool IsNondeterministic(const Node& node) {
  return node.op_type.rfind("Random", 0) == 0 || node.op_type == "Multinomial";
}

}  // namespace

absl::Status FoldConstants(Graph* graph) {
  absl::flat_hash_set<std::string> graph_outputs;
  for (const auto& o : graph->outputs) graph_outputs.insert(o.name);
  const KernelRegistry& registry = DefaultKernelRegistry();
  DnnlResources dnnl;
  std::vector<Node> kept;
  for (Node& node : graph->nodes) {
    bool all_const = !IsNondeterministic(node) && node.domain.empty() &&
                     registry.Supports(node.op_type);
    for (const auto& in : node.inputs) {
      if (!in.empty() && !graph->initializers.count(in)) all_const = false;
    }
    for (const auto& out : node.outputs) {
      if (graph_outputs.count(out)) all_const = false;  // keep outputs computed
    }
    if (!all_const) {
      kept.push_back(std::move(node));
      continue;
    }
    KernelInit init;
    init.node = &node;
    init.opset = graph->opset;
    std::vector<const Tensor*> inputs;
    for (const auto& in : node.inputs) {
      const Tensor* t = in.empty() ? nullptr : &graph->initializers.at(in);
      init.constants.push_back(t);
      init.input_infos.push_back(nullptr);
      inputs.push_back(t);
    }
    QS_ASSIGN_OR_RETURN(auto kernel, registry.Create(init));
    auto state = kernel->NewState();
    std::vector<Tensor> outs(node.outputs.size());
    KernelRunContext ctx;
    ctx.inputs = inputs;
    ctx.outputs = &outs;
    ctx.state = state.get();
    ctx.dnnl = &dnnl;
    absl::Status st = kernel->Run(ctx);
    if (!st.ok()) {
      return NodeError(node, "constant folding failed: ", st.message());
    }
    for (size_t i = 0; i < node.outputs.size(); ++i) {
      // Constants are stored plain: later passes read their bytes directly.
      if (!node.outputs[i].empty()) graph->initializers[node.outputs[i]] = ToPlain(outs[i]);
    }
  }
  graph->nodes = std::move(kept);
  return absl::OkStatus();
}

}  // namespace qs
