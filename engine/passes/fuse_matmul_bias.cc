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

absl::Status FuseMatMulBiasActivation(Graph* graph) {
  absl::flat_hash_map<std::string, std::vector<size_t>> readers;
  for (size_t i = 0; i < graph->nodes.size(); ++i)
    for (const auto& in : graph->nodes[i].inputs) readers[in].push_back(i);
  for (const auto& o : graph->outputs) readers[o.name].push_back(SIZE_MAX);
  // The one node reading `value`, or nullptr (several readers, a graph output).
  auto only_reader = [&](const std::string& value) -> size_t {
    auto it = readers.find(value);
    return it != readers.end() && it->second.size() == 1 ? it->second[0] : SIZE_MAX;
  };

  // Inferred shapes; graph inputs are not in value_info.
  auto value_shape = [&](const std::string& v) -> const Shape* {
    auto it = graph->value_info.find(v);
    if (it != graph->value_info.end()) return it->second.has_shape ? &it->second.shape : nullptr;
    for (const auto& in : graph->inputs)
      if (in.name == v) return in.has_shape ? &in.shape : nullptr;
    return nullptr;
  };

  std::vector<bool> removed(graph->nodes.size(), false);
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    if (graph->nodes[i].op_type != "MatMul" || !graph->nodes[i].domain.empty() ||
        graph->nodes[i].inputs.size() != 2 || graph->nodes[i].outputs.size() != 1) {
      continue;
    }
    Node f = graph->nodes[i];
    // The fused node takes the place of the last node it absorbs: by then every input
    // of the absorbed nodes (e.g. a residual) exists.
    size_t pos = i;
    auto absorb = [&](size_t j) {
      f.outputs[0] = graph->nodes[j].outputs[0];
      removed[j] = true;
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
    const Tensor* w = Constant(*graph, f.inputs[1]);
    const bool const_w = w != nullptr && w->dtype() == DataType::kFloat32 && w->rank() == 2;
    std::string other;
    if (const_w) {  // bias
      const size_t j = next_binary("Add", &other);
      const Tensor* b = j == SIZE_MAX ? nullptr : Constant(*graph, other);
      if (IsBias(b, w->dim(1))) {
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
      if (j != SIZE_MAX && !Constant(*graph, other) && a != nullptr && r != nullptr &&
          *a == *r) {
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
    graph->nodes[pos] = std::move(f);
  }
  graph->RemoveNodes(removed);
  return absl::OkStatus();
}

}  // namespace qs
