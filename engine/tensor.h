// Tensors of the engine: element type, shape, and a 64-byte-aligned buffer.
//
// A Tensor is a cheap handle: copies share the same buffer (reference counted), so
// handing a tensor to another stage never copies data. Use Clone() for a deep copy.
// Thread-safety: a Tensor handle is not synchronized; distinct handles to the same buffer
// may be read concurrently, but writers must own the buffer exclusively.
#ifndef QUANTSERVE_ENGINE_TENSOR_H_
#define QUANTSERVE_ENGINE_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace qs {

// Element types. The numbering is ours; use the conversion functions for ONNX or wire names.
enum class DataType {
  kUndefined = 0,
  kFloat32,
  kFloat16,
  kBFloat16,
  kFloat64,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt8,
  kUInt16,
  kUInt32,
  kUInt64,
  kBool,
  kString,  // not computable by the engine; only reported in metadata
};

// Bytes per element (0 for kUndefined and kString).
size_t DataTypeSize(DataType type);
// KServe v2 datatype name: "FP32", "INT64", "BYTES", ...
absl::string_view DataTypeName(DataType type);
// Inverse of DataTypeName; InvalidArgument for an unknown name.
absl::StatusOr<DataType> DataTypeFromName(absl::string_view name);
// ONNX TensorProto.DataType <-> DataType. InvalidArgument for types we do not support.
absl::StatusOr<DataType> DataTypeFromOnnx(int32_t onnx_type);
int32_t DataTypeToOnnx(DataType type);

using Shape = std::vector<int64_t>;

// Memory order of a tensor of rank >= 3 whose dim 1 is channels. kChannelsLast stores
// [N, spatial..., C] while shape() stays the logical ONNX [N, C, spatial...]. Only
// kernels that declare it (kernel.h LayoutPolicy) ever see a channels-last tensor; the
// session converts for the others and at the graph outputs.
enum class Layout : uint8_t { kPlain, kChannelsLast };

// Product of the dimensions (1 for a scalar). Dimensions must be >= 0.
int64_t NumElements(absl::Span<const int64_t> shape);
// "[1,3,224,224]"; -1 printed as "-1".
std::string ShapeToString(absl::Span<const int64_t> shape);

class Tensor {
 public:
  // An empty tensor: dtype kUndefined, no buffer.
  Tensor() = default;
  // Allocates a zero-filled buffer for `shape` (64-byte aligned).
  Tensor(DataType dtype, Shape shape);
  // Wraps memory owned by `owner` (kept alive as long as any handle exists).
  static Tensor Wrap(DataType dtype, Shape shape, void* data,
                     std::shared_ptr<void> owner);
  // Allocates without zero-filling (for outputs that are fully overwritten).
  static Tensor Uninitialized(DataType dtype, Shape shape);

  DataType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i]; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t num_elements() const { return NumElements(shape_); }
  size_t byte_size() const { return num_elements() * DataTypeSize(dtype_); }
  bool defined() const { return dtype_ != DataType::kUndefined; }

  void* raw_data() { return data_; }
  const void* raw_data() const { return data_; }
  template <typename T>
  T* data() {
    return static_cast<T*>(data_);
  }
  template <typename T>
  const T* data() const {
    return static_cast<const T*>(data_);
  }

  Layout layout() const { return layout_; }
  void set_layout(Layout layout) { layout_ = layout; }

  // Same buffer, new shape with the same element count (checked by the caller).
  Tensor Reshaped(Shape shape) const;
  // Deep copy into a new buffer.
  Tensor Clone() const;
  // Rows [begin, begin + n) along dimension 0, copied into a new tensor of the same
  // layout (both layouts keep a row's bytes contiguous). Rank >= 1, range checked by
  // the caller.
  Tensor Rows(int64_t begin, int64_t n) const;
  // True when this handle is the only owner of its buffer (safe to write in place).
  bool unique() const { return buffer_.use_count() == 1; }

 private:
  DataType dtype_ = DataType::kUndefined;
  Layout layout_ = Layout::kPlain;
  Shape shape_;
  std::shared_ptr<void> buffer_;
  void* data_ = nullptr;
};

// Element-wise conversion between numeric types (float16/bfloat16 included);
// InvalidArgument when either type is not numeric.
absl::StatusOr<Tensor> CastTensor(const Tensor& in, DataType to);

// IEEE half and bfloat16 conversions (round to nearest even).
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);
float BFloat16ToFloat(uint16_t b);
uint16_t FloatToBFloat16(float f);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_TENSOR_H_
