#include <algorithm>
#include <optional>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "engine/half_convert.h"
#include "engine/ops/dnnl_util.h"
#include "engine/ops/reduced_precision.h"
#include "engine/passes/passes.h"

namespace qs {

bool IsReducedPrecisionCandidate(const Node& node, const Graph& graph) {
  if (!node.domain.empty() || node.inputs.size() < 2) return false;
  auto w = graph.initializers.find(node.inputs[1]);
  if (w == graph.initializers.end() || w->second.dtype() != DataType::kFloat32) return false;
  const Tensor& weights = w->second;
  auto const_or_absent = [&](size_t i) {
    return node.inputs.size() <= i || node.inputs[i].empty() ||
           graph.initializers.count(node.inputs[i]) > 0;
  };
  if (node.op_type == "Conv") {
    return weights.rank() == 4 && const_or_absent(2);
  }
  if (node.op_type == "MatMul") return weights.rank() == 2 && const_or_absent(2);
  if (node.op_type == "Gemm") {
    if (weights.rank() != 2 || node.attrs.GetInt("transA", 0) != 0 ||
        node.attrs.GetFloat("alpha", 1.f) != 1.f || !const_or_absent(2)) {
      return false;
    }
    if (node.inputs.size() > 2 && !node.inputs[2].empty()) {
      const int64_t n = node.attrs.GetInt("transB", 0) ? weights.dim(0) : weights.dim(1);
      return graph.initializers.at(node.inputs[2]).num_elements() == n;
    }
    return true;
  }
  return false;
}

namespace {

// A conv over fewer than 4 input channels: the first layer of an image model.
bool IsImageStem(const Node& node, const Graph& graph) {
  if (node.op_type != "Conv") return false;
  const Tensor& w = graph.initializers.at(node.inputs[1]);
  return w.dim(1) * node.attrs.GetInt("group", 1) < 4;
}

// A conv with at most 32 input or output channels (MobileNetV2's first blocks). At BF16
// it gains no time (MobileNetV2 b8: 14.3 ms with or without these 11 convs in BF16;
// features.1's 32->16 projection alone takes 0.67 ms in BF16, 0.41 in FP32: its neighbours
// are FP32, so it converts more than it computes), and such convs sit early in the
// network, where every later layer amplifies their rounding (MobileNetV2 fixture cosine
// min 0.99769 -> 0.99990 kept FP32; docs/quantization.md).
bool IsNarrowConv(const Node& node, const Graph& graph) {
  if (node.op_type != "Conv") return false;
  constexpr int64_t kNarrowChannels = 32;
  const Tensor& w = graph.initializers.at(node.inputs[1]);
  const int64_t in = w.dim(1) * node.attrs.GetInt("group", 1);
  return std::min(in, w.dim(0)) <= kNarrowChannels;
}

bool DefaultExcluded(const Node& node, const Graph& graph,
                     const absl::flat_hash_set<std::string>& graph_outputs,
                     Precision precision) {
  for (const auto& o : node.outputs)
    if (graph_outputs.count(o)) return true;  // the head that produces a model output
  if (node.op_type == "Conv") {
    if (IsImageStem(node, graph)) return true;
    // Depthwise convolutions are memory-bound: run at run-time quantization (DYNAMIC_RANGE)
    // they gain nothing and lose accuracy. Static INT8 keeps them, since a chain of u8
    // convs through them moves a quarter of the bytes (MobileNetV2 b8: 14.2 -> 9.2 ms).
    if (node.attrs.GetInt("group", 1) > 1 && precision != Precision::kInt8) return true;
    if (precision == Precision::kBF16 && IsNarrowConv(node, graph)) return true;
  }
  return false;
}

bool IsConvAt(const Node& n, const char* precision) {
  return n.op_type == "Conv" && n.attrs.GetString(kPrecisionAttr, "") == precision;
}

// The readers of `value` (none when it has no entry); never inserts into `readers`.
const std::vector<std::pair<size_t, size_t>>& ReadersOf(const InputReaderMap& readers,
                                                        const std::string& value) {
  static const auto* const kNone = new std::vector<std::pair<size_t, size_t>>();
  const auto it = readers.find(value);
  return it == readers.end() ? *kNone : it->second;
}

// The readers (node, input index) of `value`, looking through MaxPools: max commutes with
// u8 quantization and with rounding to bf16, so a MaxPool on the narrow type yields the
// same values. False when a MaxPool on the way must stay f32 (it has an Indices output or
// is a graph output). `pooled` is set when a reader sits behind a MaxPool.
bool ReadersThroughMaxPool(const Graph& graph,
                           const absl::flat_hash_set<std::string>& graph_outputs,
                           const InputReaderMap& readers, const std::string& value,
                           std::vector<std::pair<size_t, size_t>>* out, bool* pooled) {
  for (const auto& [reader, k] : ReadersOf(readers, value)) {
    const Node& c = graph.nodes[reader];
    if (c.op_type != "MaxPool" || !c.domain.empty()) {
      out->push_back({reader, k});
      continue;
    }
    *pooled = true;
    if (c.outputs.size() != 1 || graph_outputs.count(c.outputs[0]) ||
        ReadersOf(readers, c.outputs[0]).empty() ||
        !ReadersThroughMaxPool(graph, graph_outputs, readers, c.outputs[0], out, pooled)) {
      return false;
    }
  }
  return true;
}

// INT8 plans: a BF16 conv (the image stem, see CompileOptions::int8_stem_in_bf16) read
// only by a MaxPool whose readers are all static INT8 convs, taking it as input 0 or as
// fused residual, writes bf16: half the bytes of f32 to write, pool and quantize (the
// readers quantize from bf16). ResNet-18 INT8 b8: 0.963x the time, cosine unchanged.
// Only behind a MaxPool: the bf16 value is rounded once more to u8, and near the top
// of the range bf16's spacing is the u8 step. MobileNetV2's stem, clipped to [0, 6] and
// read directly by a conv, lost 0.0023 of cosine that way (fixture min 0.97718 ->
// 0.97492, below ONNX Runtime's 0.976), for 4 % of speed; ResNet's did not move.
void Bf16StemsWriteBf16(Graph* graph, const absl::flat_hash_set<std::string>& graph_outputs,
                        const InputReaderMap& readers) {
  for (Node& node : graph->nodes) {
    if (!IsConvAt(node, kPrecisionBf16) || graph_outputs.count(node.outputs[0])) continue;
    std::vector<std::pair<size_t, size_t>> rs;
    bool pooled = false;
    const auto& direct = ReadersOf(readers, node.outputs[0]);
    if (direct.size() != 1 || graph->nodes[direct[0].first].op_type != "MaxPool" ||
        !ReadersThroughMaxPool(*graph, graph_outputs, readers, node.outputs[0], &rs,
                               &pooled) ||
        rs.empty()) {
      continue;
    }
    bool ok = true;
    for (const auto& [reader, k] : rs) {
      const Node& c = graph->nodes[reader];
      ok = ok && IsConvAt(c, kPrecisionStatic) &&
           (k == 0 || (k == 3 && c.attrs.Has(kFusedSumAttr)));
    }
    if (ok) node.attrs.SetInt(kOutBf16Attr, 1);
  }
}

// Convs at `precision` (static INT8 or BF16) whose output feeds only convs at the same
// precision, as their input 0 or as their fused residual (input 3): they write the
// consumers' input type directly (u8, or bf16), so the consumers skip converting and
// the residual stream of a ResNet stays narrow from block to block. As input 0 this is
// free for BF16 (the consumer would round to bf16 anyway); a residual is rounded once
// more than in FP32. For INT8 the u8 tensor is quantized over its consumers' calibrated
// input range (or, read only as a residual, its own calibrated range), and residual
// readers are told that quantization (kResMinAttr/kResMaxAttr). INT8 chains also pass
// through MaxPool.
void ChainConvs(Graph* graph, const char* precision, const std::vector<NodeRange>& ranges,
                const absl::flat_hash_set<std::string>& graph_outputs,
                const InputReaderMap& readers) {
  const bool int8 = std::string(precision) == kPrecisionStatic;
  auto expand = [&](const std::string& value, std::vector<std::pair<size_t, size_t>>* out,
                    bool* pooled) {
    if (!int8) {
      const auto& rs = ReadersOf(readers, value);
      out->insert(out->end(), rs.begin(), rs.end());
      return true;
    }
    return ReadersThroughMaxPool(*graph, graph_outputs, readers, value, out, pooled);
  };
  for (Node& node : graph->nodes) {
    if (!IsConvAt(node, precision) || graph_outputs.count(node.outputs[0])) {
      continue;
    }
    std::vector<std::pair<size_t, size_t>> rs;
    bool pooled = false;
    if (!expand(node.outputs[0], &rs, &pooled) || rs.empty()) continue;
    // Readers behind a MaxPool calibrated the pooled tensor: its range is not this
    // tensor's, so it may not quantize what other readers take raw.
    if (pooled && ReadersOf(readers, node.outputs[0]).size() > 1) continue;
    bool ok = true;
    // Input-0 readers calibrated this very tensor, so their ranges agree; the range
    // seen as a residual (same tensor, same data) serves when there is no such reader.
    std::optional<std::pair<float, float>> input_range, residual_range;
    for (const auto& [reader, k] : rs) {
      const Node& c = graph->nodes[reader];
      const bool as_residual = k == 3 && c.attrs.Has(kFusedSumAttr);
      ok = IsConvAt(c, precision) && (k == 0 || as_residual);
      if (!ok) break;  // one reader that needs f32 keeps the whole tensor f32
      if (!int8) continue;
      if (k == 0) {
        const std::pair<float, float> r(c.attrs.GetFloat(kActMinAttr, 0.f),
                                        c.attrs.GetFloat(kActMaxAttr, 0.f));
        ok = !input_range || *input_range == r;
        input_range = r;
      } else {
        ok = reader < ranges.size() && ranges[reader].residual_valid;
        if (ok && !residual_range) {
          residual_range = {ranges[reader].residual_min, ranges[reader].residual_max};
        }
      }
      if (!ok) break;
    }
    if (!ok) continue;
    if (!int8) {
      node.attrs.SetInt(kOutBf16Attr, 1);
      continue;
    }
    const auto [lo, hi] = input_range ? *input_range : *residual_range;
    node.attrs.SetFloat(kOutMinAttr, lo);
    node.attrs.SetFloat(kOutMaxAttr, hi);
    for (const auto& [reader, k] : rs) {
      if (k != 3) continue;
      graph->nodes[reader].attrs.SetFloat(kResMinAttr, lo);
      graph->nodes[reader].attrs.SetFloat(kResMaxAttr, hi);
    }
  }
}

}  // namespace

absl::Status AssignPrecision(const CompileOptions& options,
                             const std::vector<NodeRange>& ranges, Graph* graph) {
  const char* value = nullptr;
  switch (options.precision) {
    case Precision::kDynamicRange: value = kPrecisionDynamic; break;
    case Precision::kInt8: value = kPrecisionStatic; break;
    case Precision::kBF16: value = kPrecisionBf16; break;
    default: return absl::OkStatus();
  }
  absl::flat_hash_set<std::string> graph_outputs;
  for (const auto& o : graph->outputs) graph_outputs.insert(o.name);
  const std::unordered_set<std::string> ex_ops(options.exclude_op_types.begin(),
                                               options.exclude_op_types.end());
  const std::unordered_set<std::string> ex_nodes(options.exclude_nodes.begin(),
                                                 options.exclude_nodes.end());
  for (size_t i = 0; i < graph->nodes.size(); ++i) {
    Node& node = graph->nodes[i];
    if (!IsReducedPrecisionCandidate(node, *graph)) continue;
    if (node.attrs.Has(kPrecisionAttr)) continue;  // quantized by the model itself (QDQ)
    if (ex_ops.count(node.op_type) || ex_nodes.count(node.name)) continue;
    if (!options.disable_default_exclusions &&
        DefaultExcluded(node, *graph, graph_outputs, options.precision)) {
      if (options.precision != Precision::kInt8) continue;
      // INT8 plans run the head and the stem at a precision of their own (the head rule
      // wins for a stem that is also the head).
      using Head = CompileOptions::Int8Head;
      const bool head = graph_outputs.count(node.outputs[0]) > 0;
      if (head && options.int8_head == Head::kDynamicRange) {
        node.attrs.SetString(kPrecisionAttr, kPrecisionDynamic);
        continue;
      }
      const bool bf16 = head ? options.int8_head == Head::kBf16
                             : IsImageStem(node, *graph) && options.int8_stem_in_bf16;
      if (bf16 && HasNativeBf16()) node.attrs.SetString(kPrecisionAttr, kPrecisionBf16);
      continue;
    }
    if (options.precision == Precision::kInt8) {
      if (i >= ranges.size() || !ranges[i].valid) continue;
      node.attrs.SetFloat(kActMinAttr, ranges[i].min);
      node.attrs.SetFloat(kActMaxAttr, ranges[i].max);
    }
    node.attrs.SetString(kPrecisionAttr, value);
  }
  // Precisions only change attributes: one reader map serves both passes.
  const InputReaderMap readers = InputReaders(*graph);
  if (options.precision == Precision::kInt8) {
    ChainConvs(graph, kPrecisionStatic, ranges, graph_outputs, readers);
    Bf16StemsWriteBf16(graph, graph_outputs, readers);
  }
  if (options.precision == Precision::kBF16) {
    ChainConvs(graph, kPrecisionBf16, ranges, graph_outputs, readers);
  }
  return absl::OkStatus();
}

int64_t RoundWeightsToHalf(Graph* graph) {
  absl::flat_hash_set<std::string> done;
  int64_t saved = 0;
  for (const Node& node : graph->nodes) {
    if (node.op_type != "Conv" && node.op_type != "ConvTranspose" &&
        node.op_type != "MatMul" && node.op_type != "Gemm") {
      continue;
    }
    if (node.inputs.size() < 2 || done.count(node.inputs[1])) continue;
    auto it = graph->initializers.find(node.inputs[1]);
    if (it == graph->initializers.end() || it->second.dtype() != DataType::kFloat32) continue;
    done.insert(node.inputs[1]);
    const Tensor& w = it->second;
    // Through half and back with the vector loops (engine/half_convert.h).
    const int64_t n = w.num_elements();
    std::vector<uint16_t> half(static_cast<size_t>(n));
    FloatToHalfArray(w.data<float>(), half.data(), n);
    Tensor r = Tensor::Uninitialized(DataType::kFloat32, w.shape());
    HalfToFloatArray(half.data(), r.data<float>(), n);
    saved += w.num_elements() * 2;
    it->second = r;
  }
  return saved;
}

}  // namespace qs
