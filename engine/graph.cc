#include "engine/graph.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace qs {

Attributes::Attributes(
    const google::protobuf::RepeatedPtrField<onnx::AttributeProto>& attrs) {
  for (const auto& a : attrs) attrs_[a.name()] = a;
}

const onnx::AttributeProto* Attributes::Get(const std::string& name) const {
  auto it = attrs_.find(name);
  return it == attrs_.end() ? nullptr : &it->second;
}

int64_t Attributes::GetInt(const std::string& name, int64_t def) const {
  const auto* a = Get(name);
  return a ? a->i() : def;
}

float Attributes::GetFloat(const std::string& name, float def) const {
  const auto* a = Get(name);
  return a ? a->f() : def;
}

std::string Attributes::GetString(const std::string& name,
                                  const std::string& def) const {
  const auto* a = Get(name);
  return a ? a->s() : def;
}

std::vector<int64_t> Attributes::GetInts(const std::string& name,
                                         std::vector<int64_t> def) const {
  const auto* a = Get(name);
  if (!a) return def;
  return std::vector<int64_t>(a->ints().begin(), a->ints().end());
}

std::vector<float> Attributes::GetFloats(const std::string& name,
                                         std::vector<float> def) const {
  const auto* a = Get(name);
  if (!a) return def;
  return std::vector<float>(a->floats().begin(), a->floats().end());
}

const onnx::TensorProto* Attributes::GetTensor(const std::string& name) const {
  const auto* a = Get(name);
  return (a && a->has_t()) ? &a->t() : nullptr;
}

void Graph::RemoveNodes(const std::vector<bool>& removed) {
  std::vector<Node> kept;
  kept.reserve(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i)
    if (i >= removed.size() || !removed[i]) kept.push_back(std::move(nodes[i]));
  nodes = std::move(kept);
}

void Attributes::SetInt(const std::string& name, int64_t v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::INT);
  a.set_i(v);
  Set(a);
}

void Attributes::SetFloat(const std::string& name, float v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::FLOAT);
  a.set_f(v);
  Set(a);
}

void Attributes::SetString(const std::string& name, const std::string& v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::STRING);
  a.set_s(v);
  Set(a);
}

void Attributes::SetInts(const std::string& name, const std::vector<int64_t>& v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a.add_ints(x);
  Set(a);
}

void Attributes::SetFloats(const std::string& name, const std::vector<float>& v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::FLOATS);
  for (float f : v) a.add_floats(f);
  Set(a);
}

std::vector<std::string> Attributes::Names() const {
  std::vector<std::string> names;
  for (const auto& [k, v] : attrs_) names.push_back(k);
  return names;
}

namespace {

template <typename T, typename Field>
void CopyTyped(const Field& field, Tensor* t) {
  T* out = t->data<T>();
  for (int i = 0; i < field.size(); ++i) out[i] = static_cast<T>(field.Get(i));
}

}  // namespace

absl::StatusOr<Tensor> TensorFromProto(const onnx::TensorProto& proto) {
  if (proto.data_location() == onnx::TensorProto::EXTERNAL) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", proto.name(), "' uses external data, which is not supported"));
  }
  auto dtype_or = DataTypeFromOnnx(proto.data_type());
  if (!dtype_or.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", proto.name(), "': ", dtype_or.status().message()));
  }
  DataType dtype = *dtype_or;
  if (dtype == DataType::kString) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", proto.name(), "': string tensors are not supported"));
  }
  Shape shape;
  for (int64_t d : proto.dims()) {
    if (d < 0 || d > (int64_t{1} << 40)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", proto.name(), "' has invalid dimension ", d));
    }
    shape.push_back(d);
  }
  const size_t elem = DataTypeSize(dtype);
  // Element count with an overflow check: a malformed proto must not wrap the count
  // (a shape larger than its buffer) or make us allocate before the payload is checked.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  int64_t n = 1;
  bool overflow = false;
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) {
    n = 0;
  } else {
    for (int64_t d : shape) {
      if (n > kMax / d) {
        overflow = true;
        break;
      }
      n *= d;
    }
  }
  if (overflow || n > kMax / static_cast<int64_t>(elem)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", proto.name(), "' declares shape ", ShapeToString(shape),
        ", whose byte size overflows"));
  }
  auto mismatch = [&](int64_t got) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor '", proto.name(), "' declares shape ", ShapeToString(shape), " (",
        n, " elements) but holds ", got, " elements"));
  };
  if (proto.has_raw_data()) {
    if (proto.raw_data().size() != static_cast<size_t>(n) * elem) {
      return mismatch(static_cast<int64_t>(proto.raw_data().size() / elem));
    }
    Tensor t = Tensor::Uninitialized(dtype, shape);
    if (n > 0) std::memcpy(t.raw_data(), proto.raw_data().data(), n * elem);
    return t;
  }
  // The typed field's length is checked before the buffer is allocated.
  int64_t held;
  switch (dtype) {
    case DataType::kFloat32: held = proto.float_data_size(); break;
    case DataType::kFloat64: held = proto.double_data_size(); break;
    case DataType::kInt64: held = proto.int64_data_size(); break;
    case DataType::kUInt32:
    case DataType::kUInt64: held = proto.uint64_data_size(); break;
    default: held = proto.int32_data_size(); break;
  }
  if (held != n) return mismatch(held);
  Tensor t = Tensor::Uninitialized(dtype, shape);
  switch (dtype) {
    case DataType::kFloat32:
      CopyTyped<float>(proto.float_data(), &t);
      break;
    case DataType::kFloat64:
      CopyTyped<double>(proto.double_data(), &t);
      break;
    case DataType::kInt64:
      CopyTyped<int64_t>(proto.int64_data(), &t);
      break;
    case DataType::kUInt32:
    case DataType::kUInt64:
      if (dtype == DataType::kUInt32) {
        CopyTyped<uint32_t>(proto.uint64_data(), &t);
      } else {
        CopyTyped<uint64_t>(proto.uint64_data(), &t);
      }
      break;
    default:  // int32_data carries int8/16/32, uint8/16, bool, float16, bfloat16 bits
      switch (elem) {
        case 1: CopyTyped<uint8_t>(proto.int32_data(), &t); break;
        case 2: CopyTyped<uint16_t>(proto.int32_data(), &t); break;
        case 4: CopyTyped<int32_t>(proto.int32_data(), &t); break;
        default: return mismatch(proto.int32_data_size());
      }
      break;
  }
  return t;
}

onnx::TensorProto TensorToProto(const Tensor& tensor, const std::string& name) {
  onnx::TensorProto p;
  p.set_name(name);
  p.set_data_type(DataTypeToOnnx(tensor.dtype()));
  for (int64_t d : tensor.shape()) p.add_dims(d);
  p.set_raw_data(tensor.raw_data(), tensor.byte_size());
  return p;
}

}  // namespace qs
