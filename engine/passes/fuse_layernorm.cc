// Collapses LayerNorm over the last axis as PyTorch's ONNX exporter writes it below
// opset 17 (which has no LayerNormalization op),
//   m = ReduceMean(X), d = X - m, v = ReduceMean(Pow(d, 2) | Mul(d, d)),
//   y = d / Sqrt(v + eps) [* gamma] [+ beta],
// into one kLayerNormOp node (the LayerNormalization kernel): one pass per row instead
// of nine nodes that each write a full tensor, two of them reductions.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "engine/passes/passes.h"

namespace qs {
namespace {

constexpr size_t kNoNode = SIZE_MAX;

// A default-domain node of `op_type` with one output (all the pattern's ops have one).
bool Is(const Node& n, const char* op_type) {
  return n.op_type == op_type && n.domain.empty() && n.outputs.size() == 1;
}

// The other input of a binary node, when one input is `name`; "" otherwise.
std::string Other(const Node& n, const std::string& name) {
  if (n.inputs.size() != 2) return "";
  if (n.inputs[0] == name) return n.inputs[1];
  if (n.inputs[1] == name) return n.inputs[0];
  return "";
}

// A one-element constant of rank 0 or 1 (higher ranks would broadcast the result to a
// larger rank, so they are not the scalar of the pattern).
const Tensor* ScalarConstant(const Graph& g, const std::string& name) {
  auto it = g.initializers.find(name);
  if (it == g.initializers.end() || it->second.num_elements() != 1 || it->second.rank() > 1) {
    return nullptr;
  }
  return &it->second;
}

// Pow's exponent may have any numeric type (2, 2.0, int64 2, ...).
bool IsTwo(const Tensor& t) {
  switch (t.dtype()) {
    case DataType::kFloat32:
      return t.data<float>()[0] == 2.f;
    case DataType::kFloat64:
      return t.data<double>()[0] == 2.0;
    case DataType::kInt32:
      return t.data<int32_t>()[0] == 2;
    case DataType::kInt64:
      return t.data<int64_t>()[0] == 2;
    default:
      return false;
  }
}

// The shape and type of a value as shape inference or the graph declared them;
// nullptr when unknown. Graph inputs and outputs are not in value_info.
const ValueInfo* FindValueInfo(const Graph& g, const std::string& name) {
  auto it = g.value_info.find(name);
  if (it != g.value_info.end()) return &it->second;
  for (const auto& vi : g.inputs) {
    if (vi.name == name) return &vi;
  }
  for (const auto& vi : g.outputs) {
    if (vi.name == name) return &vi;
  }
  return nullptr;
}

// True for a ReduceMean over the last axis alone (axes [-1] or [rank-1]) with
// keepdims=1. `rank` is -1 when unknown. Up to opset 17 the axes are an attribute;
// opset 18 moved them to a (constant) input 1.
bool IsLastAxisMean(const Graph& g, const Node& n, int64_t rank) {
  if (!Is(n, "ReduceMean") || n.inputs.empty() || n.attrs.GetInt("keepdims", 1) != 1) {
    return false;
  }
  std::vector<int64_t> axes;
  if (n.attrs.Has("axes")) {
    if (n.inputs.size() != 1) return false;
    axes = n.attrs.GetInts("axes");
  } else {
    if (n.inputs.size() != 2) return false;
    auto it = g.initializers.find(n.inputs[1]);
    if (it == g.initializers.end() || it->second.dtype() != DataType::kInt64) return false;
    const Tensor& t = it->second;
    axes.assign(t.data<int64_t>(), t.data<int64_t>() + t.num_elements());
  }
  return axes.size() == 1 && (axes[0] == -1 || (rank > 0 && axes[0] == rank - 1));
}

// A constant FP32 vector of `size` elements (any size when `size` < 0).
const Tensor* AffineConstant(const Graph& g, const std::string& name, int64_t size) {
  auto it = g.initializers.find(name);
  if (it == g.initializers.end() || it->second.dtype() != DataType::kFloat32 ||
      it->second.rank() != 1 || it->second.dim(0) == 0 ||
      (size >= 0 && it->second.dim(0) != size)) {
    return nullptr;
  }
  return &it->second;
}

}  // namespace

absl::Status FuseLayerNorm(Graph* graph) {
  // Readers of each value, one entry per reading node (Mul(d, d) reads d once), and
  // kNoNode for a graph output.
  absl::flat_hash_map<std::string, std::vector<size_t>> readers;
  const absl::flat_hash_map<std::string, size_t> producer = Producers(*graph);
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    for (const auto& in : graph->nodes[i].inputs) {
      auto& r = readers[in];
      if (r.empty() || r.back() != i) r.push_back(i);
    }
  }
  for (const auto& o : graph->outputs) readers[o.name].push_back(kNoNode);
  auto only_reader = [&](const std::string& v) -> size_t {
    auto it = readers.find(v);
    if (it == readers.end() || it->second.size() != 1) return kNoNode;
    return it->second[0];
  };
  // For the ones/zeros this pass adds: a name no value of the graph has.
  auto is_free = [&](const std::string& name) {
    return !graph->initializers.count(name) && !readers.count(name) && !producer.count(name) &&
           std::none_of(graph->inputs.begin(), graph->inputs.end(),
                        [&](const ValueInfo& vi) { return vi.name == name; });
  };

  std::vector<bool> removed(graph->nodes.size(), false);
  std::vector<Node>& nodes = graph->nodes;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (removed[i] || !Is(nodes[i], "ReduceMean") || nodes[i].inputs.empty()) continue;
    const std::string x = nodes[i].inputs[0];
    const ValueInfo* x_info = FindValueInfo(*graph, x);
    if (x_info != nullptr && x_info->dtype != DataType::kUndefined &&
        x_info->dtype != DataType::kFloat32) {
      continue;  // the kernel is FP32 only
    }
    const int64_t rank =
        x_info != nullptr && x_info->has_shape ? static_cast<int64_t>(x_info->shape.size()) : -1;
    if (!IsLastAxisMean(*graph, nodes[i], rank)) continue;
    // Each step checks the node kind, how it is wired, and that the value it reads has
    // no other reader (nor is a graph output): only then can the chain go.
    std::vector<size_t> chain = {i};
    const size_t sub = only_reader(nodes[i].outputs[0]);
    if (sub == kNoNode || !Is(nodes[sub], "Sub") ||
        nodes[sub].inputs != std::vector<std::string>{x, nodes[i].outputs[0]}) {
      continue;
    }
    chain.push_back(sub);
    const std::string d = nodes[sub].outputs[0];
    // d: read by the square and by the Div, nothing else.
    auto d_it = readers.find(d);
    if (d_it == readers.end() || d_it->second.size() != 2) continue;
    const std::vector<size_t>& d_readers = d_it->second;
    if (d_readers[0] == kNoNode || d_readers[1] == kNoNode) continue;
    size_t square = kNoNode;
    for (size_t r : d_readers) {
      const Node& n = nodes[r];
      if (n.inputs.size() != 2 || n.inputs[0] != d) continue;
      const Tensor* exponent = ScalarConstant(*graph, n.inputs[1]);
      if ((Is(n, "Pow") && exponent != nullptr && IsTwo(*exponent)) ||
          (Is(n, "Mul") && n.inputs[1] == d)) {
        square = r;
      }
    }
    if (square == kNoNode) continue;
    chain.push_back(square);
    const size_t var = only_reader(nodes[square].outputs[0]);
    if (var == kNoNode || nodes[var].inputs.empty() ||
        nodes[var].inputs[0] != nodes[square].outputs[0] ||
        !IsLastAxisMean(*graph, nodes[var], rank)) {
      continue;
    }
    chain.push_back(var);
    const size_t add_eps = only_reader(nodes[var].outputs[0]);
    if (add_eps == kNoNode || !Is(nodes[add_eps], "Add")) continue;
    const Tensor* eps = ScalarConstant(*graph, Other(nodes[add_eps], nodes[var].outputs[0]));
    if (eps == nullptr || eps->dtype() != DataType::kFloat32) continue;
    const float epsilon = eps->data<float>()[0];  // new constants may rehash the map
    chain.push_back(add_eps);
    const size_t sqrt = only_reader(nodes[add_eps].outputs[0]);
    if (sqrt == kNoNode || !Is(nodes[sqrt], "Sqrt")) continue;
    chain.push_back(sqrt);
    const size_t div = only_reader(nodes[sqrt].outputs[0]);
    if (div == kNoNode || !Is(nodes[div], "Div") ||
        nodes[div].inputs != std::vector<std::string>{d, nodes[sqrt].outputs[0]}) {
      continue;  // (then the Div is d's other reader)
    }
    chain.push_back(div);
    std::string output = nodes[div].outputs[0];

    // The affine part is optional: the pattern may end at the Div or at the Mul. gamma
    // and beta must match X's last dimension when it is known; when it is not, a gamma
    // of any size is taken (the original graph only runs if X's last dimension is that
    // size or 1, a degenerate LayerNorm that the fused kernel rejects).
    int64_t size = rank > 0 ? x_info->shape.back() : -1;
    std::string gamma, beta;
    const size_t mul = only_reader(output);
    if (mul != kNoNode && Is(nodes[mul], "Mul") &&
        AffineConstant(*graph, Other(nodes[mul], output), size) != nullptr) {
      gamma = Other(nodes[mul], output);
      size = graph->initializers.at(gamma).dim(0);
      chain.push_back(mul);
      output = nodes[mul].outputs[0];
      const size_t add = only_reader(output);
      if (add != kNoNode && Is(nodes[add], "Add") &&
          AffineConstant(*graph, Other(nodes[add], output), size) != nullptr) {
        beta = Other(nodes[add], output);
        chain.push_back(add);
        output = nodes[add].outputs[0];
      }
    }
    // Without gamma, the size of the ones and zeros the kernel needs comes from X.
    if (size <= 0) continue;
    if (std::any_of(chain.begin(), chain.end(), [&](size_t c) { return removed[c]; })) {
      continue;
    }

    const std::string name = nodes[i].name + "/layernorm";
    auto new_constant = [&](const std::string& suffix, float value) {
      std::string n = name + suffix;
      while (!is_free(n)) n += "_";
      Tensor t(DataType::kFloat32, {size});
      std::fill(t.data<float>(), t.data<float>() + size, value);
      graph->initializers[n] = std::move(t);
      return n;
    };
    if (gamma.empty()) gamma = new_constant("_gamma", 1.f);
    if (beta.empty()) beta = new_constant("_beta", 0.f);
    Node ln;
    ln.name = name;
    ln.op_type = kLayerNormOp;
    ln.inputs = {x, gamma, beta};
    ln.outputs = {output};
    ln.attrs.SetInt("axis", -1);
    ln.attrs.SetFloat("epsilon", epsilon);
    // At the position of the last node replaced: X is computed before the first, and
    // every reader of the output comes after the last.
    const size_t last = *std::max_element(chain.begin(), chain.end());
    for (size_t c : chain) removed[c] = true;
    nodes[last] = std::move(ln);
    removed[last] = false;
  }
  graph->RemoveNodes(removed);
  return absl::OkStatus();
}

}  // namespace qs
