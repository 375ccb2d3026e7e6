#include "server/grpc/tensor_codec.h"

#include <cstring>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "server/config/data_type.h"

namespace qs {
namespace {

absl::Status Bad(const std::string& name, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("input '", name, "': ", what));
}

// Number of typed elements the contents hold for `type`.
int64_t TypedCount(const inference::InferTensorContents& c, DataType type) {
  switch (type) {
    case DataType::kBool: return c.bool_contents_size();
    case DataType::kInt8:
    case DataType::kInt16:
    case DataType::kInt32: return c.int_contents_size();
    case DataType::kInt64: return c.int64_contents_size();
    case DataType::kUInt8:
    case DataType::kUInt16:
    case DataType::kUInt32: return c.uint_contents_size();
    case DataType::kUInt64: return c.uint64_contents_size();
    case DataType::kFloat32: return c.fp32_contents_size();
    case DataType::kFloat64: return c.fp64_contents_size();
    default: return -1;
  }
}

template <typename T, typename Field>
void Copy(const Field& f, Tensor* t) {
  T* out = t->data<T>();
  for (int i = 0; i < f.size(); ++i) out[i] = static_cast<T>(f.Get(i));
}

void FillTyped(const inference::InferTensorContents& c, Tensor* t) {
  switch (t->dtype()) {
    case DataType::kBool: Copy<uint8_t>(c.bool_contents(), t); break;
    case DataType::kInt8: Copy<int8_t>(c.int_contents(), t); break;
    case DataType::kInt16: Copy<int16_t>(c.int_contents(), t); break;
    case DataType::kInt32: Copy<int32_t>(c.int_contents(), t); break;
    case DataType::kInt64: Copy<int64_t>(c.int64_contents(), t); break;
    case DataType::kUInt8: Copy<uint8_t>(c.uint_contents(), t); break;
    case DataType::kUInt16: Copy<uint16_t>(c.uint_contents(), t); break;
    case DataType::kUInt32: Copy<uint32_t>(c.uint_contents(), t); break;
    case DataType::kUInt64: Copy<uint64_t>(c.uint64_contents(), t); break;
    case DataType::kFloat32: Copy<float>(c.fp32_contents(), t); break;
    case DataType::kFloat64: Copy<double>(c.fp64_contents(), t); break;
    default: break;
  }
}

}  // namespace

absl::StatusOr<DecodedRequest> DecodeRequest(const inference::ModelInferRequest& request,
                                             const LoadedModel& model) {
  const inference::ModelConfig& config = model.config();
  const std::vector<ValueInfo>& session_inputs = model.session().inputs();
  const int max_batch = config.max_batch_size();
  const bool raw = request.raw_input_contents_size() > 0;
  if (raw && request.raw_input_contents_size() != request.inputs_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "raw_input_contents has ", request.raw_input_contents_size(),
        " entries but the request has ", request.inputs_size(), " inputs"));
  }
  absl::flat_hash_map<std::string, int> position;  // wire index by name
  for (int i = 0; i < request.inputs_size(); ++i) {
    const auto& in = request.inputs(i);
    if (!position.emplace(in.name(), i).second) {
      return Bad(in.name(), "appears more than once in the request");
    }
    bool known = false;
    for (const auto& s : session_inputs) known |= s.name == in.name();
    if (!known) {
      std::string names;
      for (const auto& s : session_inputs) absl::StrAppend(&names, names.empty() ? "" : ", ", s.name);
      return Bad(in.name(), absl::StrCat("model '", model.name(), "' has no such input (inputs: ",
                                         names, ")"));
    }
    if (raw && in.has_contents()) {
      return Bad(in.name(),
                 "contents must not be set when the request uses raw_input_contents");
    }
  }
  DecodedRequest out;
  int64_t batch = -1;
  for (const ValueInfo& info : session_inputs) {
    auto it = position.find(info.name);
    if (it == position.end()) {
      return Bad(info.name, "missing from the request");
    }
    const auto& in = request.inputs(it->second);
    auto wire_type = DataTypeFromName(in.datatype());
    if (!wire_type.ok() || *wire_type == DataType::kString) {
      return Bad(info.name, absl::StrCat("unsupported datatype '", in.datatype(), "'"));
    }
    // Expected shape: config dims, with the batch dimension in front when batching.
    const inference::ModelInput* cfg = nullptr;
    for (const auto& c : config.input())
      if (c.name() == info.name) cfg = &c;
    Shape shape(in.shape().begin(), in.shape().end());
    Shape expected;
    if (max_batch > 0) expected.push_back(-1);
    if (cfg != nullptr) {
      for (int64_t d : cfg->dims()) expected.push_back(d);
    }
    bool ok = shape.size() == expected.size();
    for (size_t d = 0; ok && d < shape.size(); ++d) {
      ok = shape[d] >= 0 && (expected[d] < 0 || expected[d] == shape[d]);
    }
    if (!ok) {
      return Bad(info.name, absl::StrCat("expected shape ", ShapeToString(expected),
                                         ", got ", ShapeToString(shape)));
    }
    for (int64_t d : shape) {
      if (d > (int64_t{1} << 31)) return Bad(info.name, "dimension too large");
    }
    if (max_batch > 0) {
      if (shape[0] < 1 || shape[0] > max_batch) {
        return Bad(info.name, absl::StrCat("batch size ", shape[0], " is outside 1..",
                                           max_batch, " (max_batch_size)"));
      }
      if (batch >= 0 && batch != shape[0]) {
        return Bad(info.name, absl::StrCat("batch size ", shape[0],
                                           " differs from the other inputs' ", batch));
      }
      batch = shape[0];
    }
    const int64_t count = NumElements(shape);
    Tensor t = Tensor::Uninitialized(*wire_type, shape);
    if (raw) {
      const std::string& bytes = request.raw_input_contents(it->second);
      if (bytes.size() != t.byte_size()) {
        return Bad(info.name, absl::StrCat("raw content has ", bytes.size(),
                                           " bytes but shape ", ShapeToString(shape), " of ",
                                           in.datatype(), " needs ", t.byte_size()));
      }
      if (!bytes.empty()) std::memcpy(t.raw_data(), bytes.data(), bytes.size());
    } else {
      if (*wire_type == DataType::kFloat16 || *wire_type == DataType::kBFloat16) {
        return Bad(info.name, absl::StrCat(in.datatype(),
                                           " tensors can only be sent in raw_input_contents"));
      }
      const int64_t n = TypedCount(in.contents(), *wire_type);
      if (n != count) {
        return Bad(info.name, absl::StrCat("contents hold ", n, " ", in.datatype(),
                                           " elements but shape ", ShapeToString(shape),
                                           " needs ", count));
      }
      FillTyped(in.contents(), &t);
    }
    if (*wire_type != info.dtype) {
      auto converted = CastTensor(t, info.dtype);
      if (!converted.ok()) {
        return Bad(info.name, absl::StrCat("cannot convert ", in.datatype(), " to ",
                                           DataTypeName(info.dtype)));
      }
      t = *std::move(converted);
    }
    out.inputs.push_back(std::move(t));
  }
  out.batch_size = max_batch > 0 ? batch : 1;
  const auto& session_outputs = model.session().outputs();
  for (const auto& req_out : request.outputs()) {
    int index = -1;
    for (size_t i = 0; i < session_outputs.size(); ++i)
      if (session_outputs[i].name == req_out.name()) index = static_cast<int>(i);
    if (index < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "requested output '", req_out.name(), "' is not an output of model '",
          model.name(), "'"));
    }
    out.output_indices.push_back(index);
  }
  if (out.output_indices.empty()) {
    for (size_t i = 0; i < session_outputs.size(); ++i)
      out.output_indices.push_back(static_cast<int>(i));
  }
  return out;
}

void EncodeOutputs(const std::vector<Tensor>& outputs, const std::vector<int>& indices,
                   const LoadedModel& model, inference::ModelInferResponse* response) {
  const auto& infos = model.session().outputs();
  for (int i : indices) {
    const Tensor& t = outputs[i];
    auto* out = response->add_outputs();
    out->set_name(infos[i].name);
    out->set_datatype(std::string(DataTypeName(t.dtype())));
    for (int64_t d : t.shape()) out->add_shape(d);
    // x86 is little-endian, so the buffer is already in wire order.
    response->add_raw_output_contents(static_cast<const char*>(t.raw_data()), t.byte_size());
  }
}

}  // namespace qs
