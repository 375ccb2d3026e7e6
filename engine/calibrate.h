// Load-time runs of a model for reduced precision: activation-range calibration
// (INT8) and the per-node precision report. Used by Session::Compile.
#ifndef QUANTSERVE_ENGINE_CALIBRATE_H_
#define QUANTSERVE_ENGINE_CALIBRATE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/graph.h"
#include "engine/session.h"

namespace qs {

// Calibrated range of one node's input 0 (valid only for candidates), and of its fused
// residual (input 3 of a Conv with a fused sum).
struct NodeRange {
  bool valid = false;
  float min = 0.f, max = 0.f;
  bool residual_valid = false;
  float residual_min = 0.f, residual_max = 0.f;
};

// Random inputs for the declared inputs (floats N(0,1), integers 0; free dims 1).
std::vector<Tensor> RandomInputs(const std::vector<ValueInfo>& inputs);

// Runs `data` through `fp32` (a plan of `graph`) and returns, per graph node, the
// calibrated range of input 0 (and of a fused residual) of every reduced-precision
// candidate. Two passes for the
// histogram methods. Errors: a batch that does not fit the model (InvalidArgument).
absl::StatusOr<std::vector<NodeRange>> CalibrateRanges(
    const Session& fp32, const std::vector<std::vector<Tensor>>& data,
    const CompileOptions& options, const Graph& graph);

// Runs `batch` through both plans (built from the same graph, so node i matches node
// i) and reports each node's precision and the SQNR of its output against FP32. Only
// the batch's first two samples are run when the model's inputs have a free leading
// dimension: the FP32 output of every node is held until the comparison.
absl::StatusOr<std::vector<NodePrecision>> PrecisionReport(const Session& fp32,
                                                           const Session& reduced,
                                                           const Graph& graph,
                                                           const std::vector<Tensor>& batch);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_CALIBRATE_H_
