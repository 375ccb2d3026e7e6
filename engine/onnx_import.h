// ONNX model import: file -> validated ModelProto -> Graph.
// Knows nothing of serving; every error names the source and the reason.
#ifndef QUANTSERVE_ENGINE_ONNX_IMPORT_H_
#define QUANTSERVE_ENGINE_ONNX_IMPORT_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/graph.h"
#include "onnx/onnx_pb.h"

namespace qs {

// Largest dimension we accept in a declared shape; larger ones are rejected at load
// rather than failing an allocation at run time.
inline constexpr int64_t kMaxDimension = int64_t{1} << 31;

// Reads and parses `path`, runs the ONNX checker and shape inference.
// Models newer than libonnx's IR version are clamped (with a warning) when their opsets
// are supported. Errors: NotFound (missing file), InvalidArgument (parse, checker, shape
// inference), each message starting with `path`.
absl::StatusOr<onnx::ModelProto> LoadOnnxModel(const std::string& path);
absl::StatusOr<onnx::ModelProto> ParseOnnxModel(absl::string_view bytes,
                                                absl::string_view source);

// Builds the IR: graph inputs/outputs with dtypes and shapes, initializers as Tensors,
// nodes in topological order. InvalidArgument for a cycle, a dangling input, a
// dimension above kMaxDimension, or a malformed initializer.
absl::StatusOr<Graph> ImportGraph(const onnx::ModelProto& model);

// The graph's inputs (initializers excluded) and outputs, as ImportGraph gives them,
// without converting a single initializer: for callers that need only the signature
// (ImportGraph would copy every weight). InvalidArgument for a malformed declaration.
struct GraphSignature {
  std::vector<ValueInfo> inputs;
  std::vector<ValueInfo> outputs;
};
absl::StatusOr<GraphSignature> ImportSignature(const onnx::ModelProto& model);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_ONNX_IMPORT_H_
