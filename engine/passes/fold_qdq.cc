// QDQ models (ONNX Runtime's static "QDQ" format) onto the reduced-precision kernels.
//
// ONNX Runtime writes a statically quantized Conv / MatMul / Gemm as
//
//   x -> QuantizeLinear(s, zp) -> DequantizeLinear(s, zp) --+
//   W_q (int8/uint8 initializer) -> DequantizeLinear(s_w, zp_w) --> Conv/MatMul/Gemm -> ...
//   B_q (int32 initializer)      -> DequantizeLinear(s*s_w, 0) --+
//
// Run as written, that is FP32 math on fake-quantized values. This pass makes such a node
// an INT8 node of ops/reduced_precision.cc instead:
//  - the weight (and bias) DequantizeLinear of constants are folded into FP32
//    initializers here (the engine's own DequantizeLinear kernel evaluates them);
//  - the node reads x itself, and gets kPrecisionAttr = kPrecisionStatic with the
//    activation range of the QuantizeLinear it skipped: [(qmin - zp) * s, (qmax - zp) * s]
//    ([0, 255] for u8, [-128, 127] for s8), from which the kernel derives the same u8
//    grid (scale s; zero point zp, or zp + 128 for s8);
//  - the kernel re-quantizes the folded weights per output channel symmetrically. For
//    ONNX Runtime's default weights (int8, symmetric, per channel: scale = max|w| / 127)
//    this gives back the model's own int8 values (max |q * s| = 127 s, so the new scale
//    is s and round(q * s / s) = q). The pass checks that it does, value by value, and
//    leaves other nodes (per-tensor, asymmetric or uint8 weights, whose re-quantization
//    would round a second time) in their simulated-quantization FP32 form.
// The QuantizeLinear -> DequantizeLinear pairs the rewritten nodes no longer read are
// removed; where a static Conv's output then feeds only static Convs with the range of
// the QuantizeLinear it replaced, the producer writes u8 in that quantization
// (kOutMinAttr/kOutMaxAttr, see ChainQdqConvs). The pairs elsewhere (graph outputs,
// pooling, residual adds) stay as they are: the simulated quantization the graph
// specifies.
//
// Must run before FoldConstants (which would fold the weight DequantizeLinear nodes and
// hide the pattern) and after RemoveIdentityNodes. Nodes that the reduced-precision
// kernels cannot take (IsReducedPrecisionCandidate: 1-D/3-D Conv, Gemm with transA or
// alpha != 1, ...) keep their FP32 form, with their weights folded.
#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/layout.h"
#include "engine/ops/dnnl_util.h"
#include "engine/ops/reduced_precision.h"
#include "engine/ops/registry.h"
#include "engine/passes/passes.h"
#include "engine/quantize/quant_math.h"
#include "engine/status_macros.h"

namespace qs {

namespace {

struct QParams {
  float scale = 1.f;
  int32_t zero_point = 0;
  DataType type = DataType::kUInt8;
  bool operator==(const QParams& o) const {
    return scale == o.scale && zero_point == o.zero_point && type == o.type;
  }
};

const Tensor* Initializer(const Graph& g, const std::string& name) {
  if (name.empty()) return nullptr;
  auto it = g.initializers.find(name);
  return it == g.initializers.end() ? nullptr : &it->second;
}

// The per-tensor scale and zero point of a QuantizeLinear/DequantizeLinear node, when
// they are constant scalars with a u8/s8 zero point (or none: u8, 0).
std::optional<QParams> ScalarParams(const Node& n, const Graph& g) {
  if (n.inputs.size() < 2) return std::nullopt;
  const Tensor* s = Initializer(g, n.inputs[1]);
  if (s == nullptr || s->dtype() != DataType::kFloat32 || s->num_elements() != 1) {
    return std::nullopt;
  }
  QParams p;
  p.scale = s->data<float>()[0];
  if (!(p.scale > 0.f) || !std::isfinite(p.scale)) return std::nullopt;
  if (n.inputs.size() > 2 && !n.inputs[2].empty()) {
    const Tensor* z = Initializer(g, n.inputs[2]);
    if (z == nullptr || z->num_elements() != 1) return std::nullopt;
    p.type = z->dtype();
    if (p.type == DataType::kUInt8) {
      p.zero_point = z->data<uint8_t>()[0];
    } else if (p.type == DataType::kInt8) {
      p.zero_point = z->data<int8_t>()[0];
    } else {
      return std::nullopt;
    }
  }
  return p;
}

bool AllInputsConstant(const Node& n, const Graph& g) {
  for (const auto& in : n.inputs) {
    if (!in.empty() && Initializer(g, in) == nullptr) return false;
  }
  return true;
}

// Evaluates `n` (every input constant) with the engine's kernel; output 0, plain.
absl::StatusOr<Tensor> Evaluate(const Node& n, const Graph& g, DnnlResources* dnnl) {
  KernelInit init;
  init.node = &n;
  init.opset = g.opset;
  std::vector<const Tensor*> inputs;
  for (const auto& in : n.inputs) {
    inputs.push_back(Initializer(g, in));
    init.constants.push_back(inputs.back());
    init.input_infos.push_back(nullptr);
  }
  QS_ASSIGN_OR_RETURN(auto kernel, DefaultKernelRegistry().Create(init));
  auto state = kernel->NewState();
  std::vector<Tensor> outs(n.outputs.size());
  KernelRunContext ctx;
  ctx.inputs = inputs;
  ctx.outputs = &outs;
  ctx.state = state.get();
  ctx.dnnl = dnnl;
  QS_RETURN_IF_ERROR(kernel->Run(ctx));
  return ToPlain(outs[0]);
}

// True for a DequantizeLinear whose input is a constant int8 tensor with zero points
// all 0 (absent or constant).
bool SymmetricInt8(const Node& dq, const Graph& g) {
  if (!AllInputsConstant(dq, g) || dq.inputs.empty()) return false;
  const Tensor* q = Initializer(g, dq.inputs[0]);
  if (q == nullptr || q->dtype() != DataType::kInt8) return false;
  if (dq.inputs.size() > 2 && !dq.inputs[2].empty()) {
    const Tensor* z = Initializer(g, dq.inputs[2]);
    if (z->dtype() != DataType::kInt8) return false;
    for (int64_t i = 0; i < z->num_elements(); ++i)
      if (z->data<int8_t>()[i] != 0) return false;
  }
  return true;
}

// True when the reduced-precision kernel, quantizing the folded FP32 weights `w` per
// output channel (quant_math.h, as ops/reduced_precision.cc does), gets back exactly the
// model's int8 values `q`: then the int8 product is the model's own. This holds for
// ONNX Runtime's symmetric per-channel weights (every channel reaches +-127); per-tensor
// weights would be rounded a second time onto another grid, so such nodes keep the
// simulated-quantization FP32 form (same results as ONNX Runtime).
bool RequantizesExactly(const Node& node, const Tensor& q, const Tensor& w) {
  if (q.num_elements() != w.num_elements()) return false;
  bool per_row;  // output channel = dim 0 (Conv, Gemm transB=1), else last dim
  if (node.op_type == "Conv") {
    per_row = true;
  } else if (node.op_type == "Gemm") {
    per_row = node.attrs.GetInt("transB", 0) != 0;
  } else {
    per_row = false;
  }
  const QuantizedWeights r =
      per_row ? QuantizeWeightsPerChannel(w, w.dim(0)) : QuantizeWeightsPerColumn(w);
  return std::equal(q.data<int8_t>(), q.data<int8_t>() + q.num_elements(),
                    r.values.data<int8_t>());
}

bool IsStaticConv(const Node& n) {
  return n.op_type == "Conv" && n.attrs.GetString(kPrecisionAttr, "") == kPrecisionStatic;
}

// Conv -> QuantizeLinear(s, zp) -> DequantizeLinear -> INT8 Conv(s) chains: once the
// consumers read the Conv's output directly, a Conv whose every reader is a static INT8
// conv (as input 0, all with one range) writes u8 in that quantization (kOutMinAttr/
// kOutMaxAttr: output scale, dst zero point, saturation = the QuantizeLinear the model
// had there), and the readers skip quantizing. The same rule as the precision pass's
// INT8 chaining (assign_precision.cc).
void ChainQdqConvs(Graph* graph) {
  absl::flat_hash_set<std::string> graph_outputs;
  for (const auto& o : graph->outputs) graph_outputs.insert(o.name);
  InputReaderMap readers = InputReaders(*graph);
  for (Node& node : graph->nodes) {
    if (!IsStaticConv(node) || node.attrs.Has(kFusedSumAttr) ||
        node.attrs.Has(kFusedActivationAttr) || node.attrs.Has(kOutMinAttr) ||
        graph_outputs.count(node.outputs[0])) {
      continue;
    }
    const auto& rs = readers[node.outputs[0]];
    if (rs.empty()) continue;
    bool ok = true;
    float lo = 0.f, hi = 0.f;
    for (size_t j = 0; ok && j < rs.size(); ++j) {
      const Node& c = graph->nodes[rs[j].first];
      ok = IsStaticConv(c) && rs[j].second == 0;
      if (!ok) break;
      const float clo = c.attrs.GetFloat(kActMinAttr, 0.f);
      const float chi = c.attrs.GetFloat(kActMaxAttr, 0.f);
      if (j == 0) {
        lo = clo;
        hi = chi;
      } else {
        ok = clo == lo && chi == hi;
      }
    }
    if (!ok) continue;
    node.attrs.SetFloat(kOutMinAttr, lo);
    node.attrs.SetFloat(kOutMaxAttr, hi);
  }
}

}  // namespace

absl::Status FoldQdqIntoReducedPrecision(Graph* graph) {
  absl::flat_hash_map<std::string, size_t> producer = Producers(*graph);
  absl::flat_hash_set<std::string> graph_outputs;
  for (const auto& o : graph->outputs) graph_outputs.insert(o.name);
  auto produced_by = [&](const std::string& name, const char* op) -> Node* {
    auto it = producer.find(name);
    if (it == producer.end()) return nullptr;
    Node* n = &graph->nodes[it->second];
    return n->op_type == op && n->domain.empty() ? n : nullptr;
  };
  // A DequantizeLinear of constants whose output `name` feeds the node: folded into an
  // initializer of that name (its other readers see the same values).
  std::vector<bool> folded(graph->nodes.size(), false);
  DnnlResources dnnl;
  auto fold_dq = [&](const std::string& name, bool weights) -> absl::StatusOr<bool> {
    Node* dq = produced_by(name, "DequantizeLinear");
    if (dq == nullptr || graph_outputs.count(name) || !AllInputsConstant(*dq, *graph)) {
      return false;
    }
    const Tensor* q = Initializer(*graph, dq->inputs[0]);
    if (weights && q->dtype() != DataType::kInt8 && q->dtype() != DataType::kUInt8) {
      return false;
    }
    if (!graph->initializers.count(name)) {
      QS_ASSIGN_OR_RETURN(Tensor value, Evaluate(*dq, *graph, &dnnl));
      graph->initializers[name] = std::move(value);
    }
    folded[producer.at(name)] = true;
    return true;
  };

  for (Node& node : graph->nodes) {
    if (!node.domain.empty() || node.attrs.Has(kPrecisionAttr) || node.inputs.size() < 2 ||
        (node.op_type != "Conv" && node.op_type != "MatMul" && node.op_type != "Gemm")) {
      continue;
    }
    // Activation: DequantizeLinear(QuantizeLinear(x)) with the same scalar parameters.
    Node* dq = produced_by(node.inputs[0], "DequantizeLinear");
    if (dq == nullptr) continue;
    Node* q = produced_by(dq->inputs[0], "QuantizeLinear");
    if (q == nullptr || q->inputs.empty() || q->inputs[0].empty()) continue;
    const std::optional<QParams> dp = ScalarParams(*dq, *graph);
    const std::optional<QParams> qp = ScalarParams(*q, *graph);
    if (!dp || !qp || !(*dp == *qp)) continue;
    // Weights: DequantizeLinear of a constant int8 tensor with zero points 0. Bias:
    // constant, or a DequantizeLinear of constants.
    const Node* wdq = produced_by(node.inputs[1], "DequantizeLinear");
    if (wdq == nullptr || !SymmetricInt8(*wdq, *graph)) continue;
    const Tensor w_q = *Initializer(*graph, wdq->inputs[0]);
    QS_ASSIGN_OR_RETURN(bool w_ok, fold_dq(node.inputs[1], true));
    if (!w_ok) continue;
    if (node.op_type != "MatMul" && node.inputs.size() > 2 && !node.inputs[2].empty() &&
        Initializer(*graph, node.inputs[2]) == nullptr) {
      QS_ASSIGN_OR_RETURN(bool b_ok, fold_dq(node.inputs[2], false));
      if (!b_ok) continue;
    }
    if (!IsReducedPrecisionCandidate(node, *graph) ||
        !RequantizesExactly(node, w_q, *Initializer(*graph, node.inputs[1]))) {
      continue;
    }
    const bool u8 = qp->type == DataType::kUInt8;
    const float qmin = u8 ? 0.f : -128.f, qmax = u8 ? 255.f : 127.f;
    node.inputs[0] = q->inputs[0];
    node.attrs.SetString(kPrecisionAttr, kPrecisionStatic);
    node.attrs.SetFloat(kActMinAttr, (qmin - static_cast<float>(qp->zero_point)) * qp->scale);
    node.attrs.SetFloat(kActMaxAttr, (qmax - static_cast<float>(qp->zero_point)) * qp->scale);
  }

  std::vector<Node> kept;
  kept.reserve(graph->nodes.size());
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    if (!folded[i]) kept.push_back(std::move(graph->nodes[i]));
  }
  graph->nodes = std::move(kept);
  // The QuantizeLinear -> DequantizeLinear pairs the INT8 nodes no longer read.
  QS_RETURN_IF_ERROR(EliminateDeadNodes(graph));
  ChainQdqConvs(graph);
  return absl::OkStatus();
}

}  // namespace qs
