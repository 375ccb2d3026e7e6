// Folds what follows a MatMul into it, each step only when the previous output has no
// other reader: with W a constant FP32 [K, N], `Add(., b)` with b a constant holding N
// values (shape [N] or [1, ..., 1, N]) becomes an engine-internal third input (oneDNN
// bias); with two activations (attention scores), a Div or Mul by a scalar constant
// becomes kMatMulScaleAttr (eltwise_linear); then an Add of another activation of the
// same shape (the residual) becomes input 3 with kFusedSumAttr (oneDNN sum post-op,
// accumulating in place when the residual's buffer is donated); then a kGeluOp or Relu
// becomes the fused activation. Transformer layers lose a full pass over the output per
// folded node, at any precision.
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

absl::Status FuseMatMulPostOps(Graph* graph) {
  absl::flat_hash_map<std::string, std::vector<size_t>> readers;
  for (size_t i = 0; i < graph->nodes.size(); ++i)
    for (const auto& in : graph->nodes[i].inputs) readers[in].push_back(i);
  for (const auto& o : graph->outputs) readers[o.name].push_back(SIZE_MAX);
  // Positions already rewritten (absorbed nodes, and the fused nodes placed there): the
  // reader lists built above no longer describe them.
  std::vector<bool> removed(graph->nodes.size(), false), rewritten(graph->nodes.size(), false);
  // The one node reading `value`, or SIZE_MAX (several readers, a graph output, a node
  // an earlier fusion rewrote).
  auto only_reader = [&](const std::string& value) -> size_t {
    auto it = readers.find(value);
    if (it == readers.end() || it->second.size() != 1) return SIZE_MAX;
    const size_t j = it->second[0];
    return j == SIZE_MAX || rewritten[j] ? SIZE_MAX : j;
  };
  // Inferred type and shape; graph inputs are not in value_info.
  auto value_info = [&](const std::string& v) -> const ValueInfo* {
    auto it = graph->value_info.find(v);
    if (it != graph->value_info.end()) return &it->second;
    for (const auto& in : graph->inputs)
      if (in.name == v) return &in;
    return nullptr;
  };
  auto value_shape = [&](const std::string& v) -> const Shape* {
    const ValueInfo* vi = value_info(v);
    return vi != nullptr && vi->has_shape ? &vi->shape : nullptr;
  };

  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    const Node& mm = graph->nodes[i];
    // (A node fused here earlier and placed further on keeps op MatMul: rewritten.)
    if (mm.op_type != "MatMul" || !mm.domain.empty() || mm.inputs.size() != 2 ||
        mm.outputs.size() != 1 || rewritten[i]) {
      continue;
    }
    // The kernels fuse FP32 only (an FP32 constant W implies an FP32 A).
    const Tensor* w = Constant(*graph, mm.inputs[1]);
    const bool const_w = w != nullptr && w->dtype() == DataType::kFloat32 && w->rank() == 2;
    const ValueInfo* a_info = value_info(mm.inputs[0]);
    if (!const_w && (a_info == nullptr || a_info->dtype != DataType::kFloat32)) continue;
    Node f = graph->nodes[i];
    // The fused node takes the place of the last node it absorbs: by then every input
    // of the absorbed nodes (e.g. a residual) exists.
    size_t pos = i;
    auto absorb = [&](size_t j) {
      f.outputs[0] = graph->nodes[j].outputs[0];
      removed[j] = true;
      rewritten[j] = true;
      pos = j;
    };
    // The binary node reading the current output alone, and its other operand.
    auto next_binary = [&](const char* op, std::string* other) -> size_t {
      const size_t j = only_reader(f.outputs[0]);
      if (j == SIZE_MAX) return SIZE_MAX;
      const Node& n = graph->nodes[j];
      if (n.op_type != op || !n.domain.empty() || n.inputs.size() != 2 ||
          n.inputs[0] == n.inputs[1]) {
        return SIZE_MAX;
      }
      const bool first = n.inputs[0] == f.outputs[0];
      *other = first ? n.inputs[1] : n.inputs[0];
      if (std::string(op) == "Div" && !first) return SIZE_MAX;  // c / x is no scale
      return j;
    };
    std::string other;
    if (const_w) {  // bias
      const size_t j = next_binary("Add", &other);
      const Tensor* b = j == SIZE_MAX ? nullptr : Constant(*graph, other);
      // A bias of higher rank than the product would raise the Add's output rank.
      const Shape* out = value_shape(f.outputs[0]);
      const size_t out_rank = out != nullptr ? out->size() : 1;
      if (IsBias(b, w->dim(1)) && static_cast<size_t>(b->rank()) <= out_rank) {
        std::string bias = other;
        if (b->rank() != 1) {  // the kernels take a 1-D bias
          bias = absl::StrCat(other, "/qs_bias_1d");
          if (!graph->initializers.count(bias)) {
            graph->initializers[bias] = b->Reshaped({w->dim(1)});
          }
        }
        f.inputs.push_back(bias);
        absorb(j);
      }
    } else if (!Constant(*graph, f.inputs[0])) {  // attention scores: a scalar scale
      for (const char* op : {"Div", "Mul"}) {
        const size_t j = next_binary(op, &other);
        const Tensor* c = j == SIZE_MAX ? nullptr : Constant(*graph, other);
        if (c == nullptr || c->dtype() != DataType::kFloat32 || c->num_elements() != 1 ||
            (std::string(op) == "Div" && c->data<float>()[0] == 0.f)) {
          continue;
        }
        const float v = c->data<float>()[0];
        f.attrs.SetFloat(kMatMulScaleAttr, std::string(op) == "Div" ? 1.f / v : v);
        absorb(j);
        break;
      }
    }
    {  // a residual Add of the same shape (oneDNN sum post-op)
      const size_t j = next_binary("Add", &other);
      const Shape* a = value_shape(f.outputs[0]);
      const Shape* r = value_shape(other);
      // Equal shapes with every dim known but the leading (batch) one: a symbolic dim
      // could still broadcast at run time, which the sum post-op cannot.
      bool same = j != SIZE_MAX && !Constant(*graph, other) && a != nullptr && r != nullptr &&
                  *a == *r && !a->empty();
      for (size_t d = 1; same && d < a->size(); ++d) same = (*a)[d] > 0;
      if (same) {
        f.inputs.resize(3);  // keep an absent bias as ""
        f.inputs.push_back(other);
        f.attrs.SetInt(kFusedSumAttr, 1);
        absorb(j);
      }
    }
    {  // the activation
      const size_t j = only_reader(f.outputs[0]);
      if (j != SIZE_MAX) {
        const Node& act = graph->nodes[j];
        const bool gelu = act.op_type == kGeluOp;
        const bool relu = act.op_type == "Relu" && act.domain.empty();
        if ((gelu || relu) && act.outputs.size() == 1) {
          f.attrs.SetString(kFusedActivationAttr, gelu ? "Gelu" : "Relu");
          absorb(j);
        }
      }
    }
    if (pos == i) continue;
    // Readers of the new output now see the fused node.
    removed[i] = true;
    removed[pos] = false;
    rewritten[i] = true;
    graph->nodes[pos] = std::move(f);
  }
  graph->RemoveNodes(removed);
  return absl::OkStatus();
}

}  // namespace qs
