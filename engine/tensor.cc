#include "engine/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/buffer_pool.h"
#include "engine/half_convert.h"

namespace qs {
namespace {

struct TypeRow {
  DataType type;
  size_t size;
  const char* name;
  int32_t onnx;
};

// ONNX TensorProto.DataType numbers: FLOAT=1 UINT8=2 INT8=3 UINT16=4 INT16=5 INT32=6
// INT64=7 STRING=8 BOOL=9 FLOAT16=10 DOUBLE=11 UINT32=12 UINT64=13 BFLOAT16=16.
constexpr TypeRow kTypes[] = {
    {DataType::kFloat32, 4, "FP32", 1},   {DataType::kFloat16, 2, "FP16", 10},
    {DataType::kBFloat16, 2, "BF16", 16}, {DataType::kFloat64, 8, "FP64", 11},
    {DataType::kInt8, 1, "INT8", 3},      {DataType::kInt16, 2, "INT16", 5},
    {DataType::kInt32, 4, "INT32", 6},    {DataType::kInt64, 8, "INT64", 7},
    {DataType::kUInt8, 1, "UINT8", 2},    {DataType::kUInt16, 2, "UINT16", 4},
    {DataType::kUInt32, 4, "UINT32", 12}, {DataType::kUInt64, 8, "UINT64", 13},
    {DataType::kBool, 1, "BOOL", 9},      {DataType::kString, 0, "BYTES", 8},
};

const TypeRow* Find(DataType t) {
  for (const auto& row : kTypes) {
    if (row.type == t) return &row;
  }
  return nullptr;
}

std::shared_ptr<void> Allocate(size_t bytes, bool zero) {
  // 64-byte alignment for AVX-512 loads and oneDNN; never a zero-size request.
  size_t rounded = ((bytes + 63) / 64) * 64;
  if (rounded == 0) rounded = 64;
  if (BufferPool* pool = BufferPool::Current();
      pool != nullptr && rounded >= BufferPool::kMinPooledBytes) {
    std::shared_ptr<void> b = pool->Allocate(rounded);
    if (zero) std::memset(b.get(), 0, rounded);
    return b;
  }
  void* p = std::aligned_alloc(64, rounded);
  if (p == nullptr) throw std::bad_alloc();
  if (zero) std::memset(p, 0, rounded);
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

}  // namespace

size_t DataTypeSize(DataType type) {
  const TypeRow* row = Find(type);
  return row ? row->size : 0;
}

absl::string_view DataTypeName(DataType type) {
  const TypeRow* row = Find(type);
  return row ? row->name : "INVALID";
}

absl::StatusOr<DataType> DataTypeFromName(absl::string_view name) {
  for (const auto& row : kTypes) {
    if (name == row.name) return row.type;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown datatype '", name, "'"));
}

absl::StatusOr<DataType> DataTypeFromOnnx(int32_t onnx_type) {
  for (const auto& row : kTypes) {
    if (row.onnx == onnx_type) return row.type;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported ONNX element type ", onnx_type));
}

int32_t DataTypeToOnnx(DataType type) {
  const TypeRow* row = Find(type);
  return row ? row->onnx : 0;
}

int64_t NumElements(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(absl::Span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

Tensor::Tensor(DataType dtype, Shape shape)
    : dtype_(dtype), shape_(std::move(shape)) {
  buffer_ = Allocate(byte_size(), /*zero=*/true);
  data_ = buffer_.get();
}

Tensor Tensor::Uninitialized(DataType dtype, Shape shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.buffer_ = Allocate(t.byte_size(), /*zero=*/false);
  t.data_ = t.buffer_.get();
  return t;
}

Tensor Tensor::Wrap(DataType dtype, Shape shape, void* data,
                    std::shared_ptr<void> owner) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.buffer_ = std::move(owner);
  t.data_ = data;
  return t;
}

Tensor Tensor::Reshaped(Shape shape) const {
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::Clone() const {
  Tensor t = Uninitialized(dtype_, shape_);
  if (byte_size() > 0) std::memcpy(t.data_, data_, byte_size());
  return t;
}

Tensor Tensor::Rows(int64_t begin, int64_t n) const {
  Shape shape = shape_;
  const size_t row_bytes = shape[0] == 0 ? 0 : byte_size() / static_cast<size_t>(shape[0]);
  shape[0] = n;
  Tensor rows = Uninitialized(dtype_, shape);
  rows.set_layout(layout_);
  if (n > 0 && row_bytes > 0) {
    std::memcpy(rows.data_, static_cast<const char*>(data_) + begin * row_bytes,
                n * row_bytes);
  }
  return rows;
}

float HalfToFloat(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow
  if (abs < 0x38800000u) {  // subnormal or zero in half: multiples of 2^-24
    float af;
    std::memcpy(&af, &abs, 4);
    // Scaling by a power of two is exact; nearbyint rounds ties to even.
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(af * 16777216.0f)));
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  uint32_t mant_rest = r & 0x1fff;
  uint32_t h = r >> 13;
  if (mant_rest > 0x1000 || (mant_rest == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float BFloat16ToFloat(uint16_t b) {
  uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t FloatToBFloat16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);
  uint32_t lsb = (x >> 16) & 1;
  x += 0x7fffu + lsb;
  return static_cast<uint16_t>(x >> 16);
}

namespace {

template <typename To>
To FromDouble(double v) {
  return static_cast<To>(v);
}

double ReadAsDouble(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DataType::kFloat32: return t.data<float>()[i];
    case DataType::kFloat64: return t.data<double>()[i];
    case DataType::kFloat16: return HalfToFloat(t.data<uint16_t>()[i]);
    case DataType::kBFloat16: return BFloat16ToFloat(t.data<uint16_t>()[i]);
    case DataType::kInt8: return t.data<int8_t>()[i];
    case DataType::kInt16: return t.data<int16_t>()[i];
    case DataType::kInt32: return t.data<int32_t>()[i];
    case DataType::kInt64: return static_cast<double>(t.data<int64_t>()[i]);
    case DataType::kUInt8: return t.data<uint8_t>()[i];
    case DataType::kUInt16: return t.data<uint16_t>()[i];
    case DataType::kUInt32: return t.data<uint32_t>()[i];
    case DataType::kUInt64: return static_cast<double>(t.data<uint64_t>()[i]);
    case DataType::kBool: return t.data<uint8_t>()[i] ? 1.0 : 0.0;
    default: return 0;
  }
}

template <typename T>
void CastInto(const Tensor& in, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(ReadAsDouble(in, i));
}

}  // namespace

absl::StatusOr<Tensor> CastTensor(const Tensor& in, DataType to) {
  if (in.dtype() == to) return in;
  if (in.dtype() == DataType::kString || to == DataType::kString ||
      !in.defined() || to == DataType::kUndefined) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot cast ", DataTypeName(in.dtype()), " to ", DataTypeName(to)));
  }
  Tensor out = Tensor::Uninitialized(to, in.shape());
  const int64_t n = in.num_elements();
  // Fast paths for the common conversions; int64 goes exact through its own path.
  if (in.dtype() == DataType::kFloat16 && to == DataType::kFloat32) {
    HalfToFloatArray(in.data<uint16_t>(), out.data<float>(), n);
    return out;
  }
  if (in.dtype() == DataType::kFloat32 && to == DataType::kFloat16) {
    FloatToHalfArray(in.data<float>(), out.data<uint16_t>(), n);
    return out;
  }
  if (in.dtype() == DataType::kInt64 && to == DataType::kInt32) {
    for (int64_t i = 0; i < n; ++i)
      out.data<int32_t>()[i] = static_cast<int32_t>(in.data<int64_t>()[i]);
    return out;
  }
  switch (to) {
    case DataType::kFloat32: CastInto(in, out.data<float>(), n); break;
    case DataType::kFloat64: CastInto(in, out.data<double>(), n); break;
    case DataType::kFloat16:
      for (int64_t i = 0; i < n; ++i)
        out.data<uint16_t>()[i] = FloatToHalf(static_cast<float>(ReadAsDouble(in, i)));
      break;
    case DataType::kBFloat16:
      for (int64_t i = 0; i < n; ++i)
        out.data<uint16_t>()[i] =
            FloatToBFloat16(static_cast<float>(ReadAsDouble(in, i)));
      break;
    case DataType::kInt8: CastInto(in, out.data<int8_t>(), n); break;
    case DataType::kInt16: CastInto(in, out.data<int16_t>(), n); break;
    case DataType::kInt32: CastInto(in, out.data<int32_t>(), n); break;
    case DataType::kInt64:
      if (in.dtype() == DataType::kUInt64 || in.dtype() == DataType::kInt32) {
        for (int64_t i = 0; i < n; ++i)
          out.data<int64_t>()[i] = in.dtype() == DataType::kInt32
                                       ? in.data<int32_t>()[i]
                                       : static_cast<int64_t>(in.data<uint64_t>()[i]);
      } else {
        CastInto(in, out.data<int64_t>(), n);
      }
      break;
    case DataType::kUInt8: CastInto(in, out.data<uint8_t>(), n); break;
    case DataType::kUInt16: CastInto(in, out.data<uint16_t>(), n); break;
    case DataType::kUInt32: CastInto(in, out.data<uint32_t>(), n); break;
    case DataType::kUInt64: CastInto(in, out.data<uint64_t>(), n); break;
    case DataType::kBool:
      for (int64_t i = 0; i < n; ++i)
        out.data<uint8_t>()[i] = ReadAsDouble(in, i) != 0.0 ? 1 : 0;
      break;
    default:
      return absl::InvalidArgumentError("unsupported cast target");
  }
  return out;
}

}  // namespace qs
