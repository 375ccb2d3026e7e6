// Dispatch from a runtime DataType to the C++ type that computes it, shared by the
// plain-C++ kernels (binary, index, reduce).
#ifndef QUANTSERVE_ENGINE_OPS_TYPE_DISPATCH_H_
#define QUANTSERVE_ENGINE_OPS_TYPE_DISPATCH_H_

#include <cstdint>

#include "engine/tensor.h"

namespace qs {

template <typename T>
struct Tag {
  using type = T;
};

inline bool IsHalf(DataType t) {
  return t == DataType::kFloat16 || t == DataType::kBFloat16;
}

// Calls f(Tag<T>()) for the ten plain numeric types, plus bool (as uint8_t) when
// `with_bool`. Returns false for anything else (half types are converted by the caller
// before dispatch).
template <typename F>
bool VisitNumeric(DataType t, bool with_bool, F&& f) {
  switch (t) {
    case DataType::kFloat32: f(Tag<float>()); return true;
    case DataType::kFloat64: f(Tag<double>()); return true;
    case DataType::kInt8: f(Tag<int8_t>()); return true;
    case DataType::kInt16: f(Tag<int16_t>()); return true;
    case DataType::kInt32: f(Tag<int32_t>()); return true;
    case DataType::kInt64: f(Tag<int64_t>()); return true;
    case DataType::kUInt8: f(Tag<uint8_t>()); return true;
    case DataType::kUInt16: f(Tag<uint16_t>()); return true;
    case DataType::kUInt32: f(Tag<uint32_t>()); return true;
    case DataType::kUInt64: f(Tag<uint64_t>()); return true;
    case DataType::kBool:
      if (!with_bool) return false;
      f(Tag<uint8_t>());
      return true;
    default: return false;
  }
}

// The ten plain numeric types only.
template <typename F>
bool VisitNumeric(DataType t, F&& f) {
  return VisitNumeric(t, /*with_bool=*/false, static_cast<F&&>(f));
}

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_OPS_TYPE_DISPATCH_H_
