// The engine's graph IR: ONNX nodes in topological order, initializers as Tensors.
// Small and explicit on purpose; passes (engine/passes/) rewrite it before planning.
#ifndef QUANTSERVE_ENGINE_GRAPH_H_
#define QUANTSERVE_ENGINE_GRAPH_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/tensor.h"
#include "onnx/onnx_pb.h"

namespace qs {

// Name, element type and shape of a graph input or output. Unknown dims are -1.
struct ValueInfo {
  std::string name;
  DataType dtype = DataType::kUndefined;
  Shape shape;
  bool has_shape = false;  // false: rank unknown
};

// Read-only view of a node's ONNX attributes with typed, defaulted accessors.
class Attributes {
 public:
  Attributes() = default;
  explicit Attributes(const google::protobuf::RepeatedPtrField<onnx::AttributeProto>& attrs);

  bool Has(const std::string& name) const { return attrs_.count(name) > 0; }
  int64_t GetInt(const std::string& name, int64_t def) const;
  float GetFloat(const std::string& name, float def) const;
  std::string GetString(const std::string& name, const std::string& def) const;
  std::vector<int64_t> GetInts(const std::string& name,
                               std::vector<int64_t> def = {}) const;
  std::vector<float> GetFloats(const std::string& name,
                               std::vector<float> def = {}) const;
  // nullptr when absent.
  const onnx::TensorProto* GetTensor(const std::string& name) const;
  const onnx::AttributeProto* Get(const std::string& name) const;
  // Names in sorted order (for error messages and unsupported-attribute checks).
  std::vector<std::string> Names() const;
  // Adds or replaces the attribute named attr.name(). For graph passes that annotate
  // nodes (e.g. a fused activation); kernels only read.
  void Set(const onnx::AttributeProto& attr) { attrs_[attr.name()] = attr; }
  void SetInt(const std::string& name, int64_t v);
  void SetFloat(const std::string& name, float v);
  void SetString(const std::string& name, const std::string& v);
  void SetFloats(const std::string& name, const std::vector<float>& v);
  void SetInts(const std::string& name, const std::vector<int64_t>& v);

 private:
  std::map<std::string, onnx::AttributeProto> attrs_;
};

struct Node {
  std::string name;
  std::string op_type;
  std::string domain;  // "" for the default ONNX domain
  std::vector<std::string> inputs;   // "" for an omitted optional input
  std::vector<std::string> outputs;  // "" for an omitted optional output
  Attributes attrs;
};

struct Graph {
  std::vector<ValueInfo> inputs;   // graph inputs that are not initializers
  std::vector<ValueInfo> outputs;
  std::vector<Node> nodes;         // topological order
  absl::flat_hash_map<std::string, Tensor> initializers;
  absl::flat_hash_map<std::string, ValueInfo> value_info;  // shape inference results
  int64_t opset = 0;                                       // default-domain opset

  // Drops the nodes flagged in `removed` (indexed like `nodes`), keeping the order.
  void RemoveNodes(const std::vector<bool>& removed);
};

// Converts an ONNX TensorProto (typed fields or raw_data, little-endian) to a Tensor.
// External data is not supported. InvalidArgument when the payload size does not match
// the dims, or for an unsupported element type.
absl::StatusOr<Tensor> TensorFromProto(const onnx::TensorProto& proto);
// The inverse, writing raw_data.
onnx::TensorProto TensorToProto(const Tensor& tensor, const std::string& name);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_GRAPH_H_
