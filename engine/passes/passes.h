// Graph rewrites run by Session::Compile, in this order. Each lives in its own file.
#ifndef QUANTSERVE_ENGINE_PASSES_PASSES_H_
#define QUANTSERVE_ENGINE_PASSES_PASSES_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "engine/calibrate.h"
#include "engine/graph.h"
#include "engine/session.h"

namespace qs {

// Indexes over the graph's values as of the call (a pass that rewrites nodes keeps its
// copy up to date itself). CountReaders: per value, the node inputs reading it, a graph
// output counting as one more. Producers: per value, the index of the node writing it.
// InputReaders: per value, every (node index, input index) reading it (graph outputs
// not included).
using InputReaderMap =
    absl::flat_hash_map<std::string, std::vector<std::pair<size_t, size_t>>>;
absl::flat_hash_map<std::string, int> CountReaders(const Graph& graph);
absl::flat_hash_map<std::string, size_t> Producers(const Graph& graph);
InputReaderMap InputReaders(const Graph& graph);

// FLOAT16 models (weights and activations in half precision, as float16 converters
// write them) compute in FP32: FLOAT16 initializers and Constant/ConstantOfShape values
// are widened (vector F16C/AVX-512 loops), Cast-to-FLOAT16 nodes cast to FLOAT, and
// FLOAT16 graph inputs and outputs keep their declared type through a Cast at the edge.
// Runs first; a no-op for graphs without FLOAT16.
absl::Status ComputeFloat16InFloat32(Graph* graph);

// Removes Identity and inference-mode Dropout, rewiring consumers (and graph outputs)
// to the node's input.
absl::Status RemoveIdentityNodes(Graph* graph);

// Rewrites QDQ-quantized Conv/MatMul/Gemm (DequantizeLinear on an int8 weight, a
// QuantizeLinear/DequantizeLinear pair on the activation) into the static INT8 kernels
// when re-quantizing the folded weights reproduces the model's own int8 values; others
// stay in simulated (FP32) form. Runs before FoldConstants, which would hide the pattern.
absl::Status FoldQdqIntoReducedPrecision(Graph* graph);

// Evaluates every node whose inputs are all constants (initializers or folded values)
// with the engine's own kernels, and turns its outputs into initializers. Shape
// subgraphs over static shapes fold away here.
absl::Status FoldConstants(Graph* graph);

// Folds BatchNormalization into a preceding Conv whose output has no other consumer.
absl::Status FoldBatchNormIntoConv(Graph* graph);

// Folds a Relu, or a Clip with constant bounds, that follows a Conv whose output has no
// other consumer into the Conv (engine-internal attribute "qs_fused_activation", run
// by the Conv kernel as a oneDNN post-op).
absl::Status FuseConvActivation(Graph* graph);

// Folds a residual Add of equal shapes into the Conv producing one addend (oneDNN sum
// post-op); run before FuseConvActivation.
absl::Status FuseConvAdd(Graph* graph);

// The internal op FuseGelu produces: y = 0.5 x (1 + erf(x / sqrt 2)).
inline constexpr char kGeluOp[] = "QsGeluErf";
// The internal op FuseLayerNorm produces: LayerNormalization (opset 17) over the last
// axis, inputs X, gamma, beta and attributes axis=-1, epsilon, at any opset.
inline constexpr char kLayerNormOp[] = "QsLayerNorm";

// Collapses the erf-GELU subgraph exporters write into one kGeluOp node.
absl::Status FuseGelu(Graph* graph);

// Collapses LayerNorm over the last axis as PyTorch exports it below opset 17
// (ReduceMean, Sub, Pow or Mul, ReduceMean, Add eps, Sqrt, Div, then an optional Mul by
// gamma and Add of beta, all constant) into one kLayerNormOp node: one pass over each
// row instead of about nine element-wise and reduce nodes. Only chains whose
// intermediates nothing else reads; without gamma/beta it adds ones/zeros, sized from
// X's inferred last dimension.
absl::Status FuseLayerNorm(Graph* graph);

// Folds what follows a MatMul into its oneDNN primitive, step by step while each value
// has one reader: a constant bias [N] (MatMul with constant 2-D weights [K, N]; becomes
// input 2), a scalar scale (activation x activation), a residual Add of the same shape
// (input 3, sum post-op) and a kGeluOp or Relu (fused activation).
absl::Status FuseMatMulPostOps(Graph* graph);

// Folds a Transpose that only feeds an activation x activation MatMul (attention's
// K^T, and the head split of Q, K, V) into the MatMul, which then reads the untransposed
// tensor through strides (kPermAAttr/kPermBAttr): no copy of the operand.
absl::Status FoldTransposeIntoMatMul(Graph* graph);

// Removes nodes whose outputs reach no graph output, and unused initializers.
absl::Status EliminateDeadNodes(Graph* graph);

// True for Conv (2-D), MatMul and Gemm nodes whose weights (and bias) are constant
// FP32: the nodes that may run at reduced precision.
bool IsReducedPrecisionCandidate(const Node& node, const Graph& graph);

// Marks candidates for options.precision (DYNAMIC_RANGE, INT8 with `ranges`, BF16),
// honouring the exclusions in `options`; at INT8 the default-excluded image stem may run
// in BF16 (CompileOptions::int8_stem_in_bf16). Then chains narrow tensors (u8/bf16)
// between reduced-precision convs.
absl::Status AssignPrecision(const CompileOptions& options,
                             const std::vector<NodeRange>& ranges, Graph* graph);

// FP16: rounds the weights of Conv/ConvTranspose/MatMul/Gemm to IEEE half (they are
// stored as half and computed in FP32). Returns the bytes half storage saves.
int64_t RoundWeightsToHalf(Graph* graph);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_PASSES_PASSES_H_
