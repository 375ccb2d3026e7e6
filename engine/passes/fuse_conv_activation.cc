// Folds an activation into the Conv that feeds it, so oneDNN applies it as an eltwise
// post-op while the output tile is still in registers instead of a second pass over
// the whole activation tensor.
#include <cmath>
#include <limits>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/ops/dnnl_util.h"
#include "engine/passes/passes.h"

namespace qs {
namespace {

// A scalar FP32 constant, or `def` when the optional input is omitted. False when the
// input is present but not a foldable constant.
bool ScalarBound(const Graph& g, const Node& node, size_t i, float def, float* out) {
  if (i >= node.inputs.size() || node.inputs[i].empty()) {
    *out = def;
    return true;
  }
  auto it = g.initializers.find(node.inputs[i]);
  if (it == g.initializers.end() || it->second.dtype() != DataType::kFloat32 ||
      it->second.num_elements() != 1) {
    return false;
  }
  *out = it->second.data<float>()[0];
  return true;
}

// The fused form of `act`, or false when it cannot be fused.
bool AsFusedActivation(const Graph& g, const Node& act, FusedActivation* out) {
  if (!act.domain.empty() || act.outputs.size() != 1 || act.inputs.empty()) return false;
  if (act.op_type == "Relu") {
    out->kind = FusedActivation::Kind::kRelu;
    return true;
  }
  if (act.op_type != "Clip") return false;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  float lo, hi;
  if (g.opset < 11) {  // bounds are attributes before opset 11
    lo = act.attrs.GetFloat("min", -std::numeric_limits<float>::max());
    hi = act.attrs.GetFloat("max", std::numeric_limits<float>::max());
  } else if (!ScalarBound(g, act, 1, -kInf, &lo) || !ScalarBound(g, act, 2, kInf, &hi)) {
    return false;
  }
  if (std::isnan(lo) || std::isnan(hi) || lo > hi) return false;
  if (lo == 0.f && hi >= std::numeric_limits<float>::max()) {
    out->kind = FusedActivation::Kind::kRelu;
  } else {
    out->kind = FusedActivation::Kind::kClip;
    out->lo = lo;
    out->hi = hi;
  }
  return true;
}

void Annotate(const FusedActivation& act, Node* conv) {
  conv->attrs.SetString(kFusedActivationAttr,
                        act.kind == FusedActivation::Kind::kRelu ? "Relu" : "Clip");
  if (act.kind == FusedActivation::Kind::kClip) {
    conv->attrs.SetFloats(kFusedActivationParamsAttr, {act.lo, act.hi});
  }
}

}  // namespace

absl::Status FuseConvActivation(Graph* graph) {
  absl::flat_hash_map<std::string, int> consumers = CountReaders(*graph);
  absl::flat_hash_map<std::string, size_t> producer = Producers(*graph);

  std::vector<bool> removed(graph->nodes.size(), false);
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    const Node& act = graph->nodes[i];
    FusedActivation fused;
    if (!AsFusedActivation(*graph, act, &fused)) continue;
    auto p = producer.find(act.inputs[0]);
    if (p == producer.end()) continue;
    Node& conv = graph->nodes[p->second];
    // A graph output or a second reader needs the pre-activation value.
    if (conv.op_type != "Conv" || !conv.domain.empty() || conv.outputs.size() != 1 ||
        consumers[act.inputs[0]] != 1 || conv.attrs.Has(kFusedActivationAttr)) {
      continue;
    }
    Annotate(fused, &conv);
    conv.outputs[0] = act.outputs[0];
    producer[act.outputs[0]] = p->second;
    removed[i] = true;
  }
  graph->RemoveNodes(removed);
  return absl::OkStatus();
}

}  // namespace qs
