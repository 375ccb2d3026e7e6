// KServe v2 wire tensors <-> engine Tensors, with the request validation that goes with
// it. Every error is InvalidArgument naming the tensor and the expected vs actual value.
#ifndef QUANTSERVE_SERVER_GRPC_TENSOR_CODEC_H_
#define QUANTSERVE_SERVER_GRPC_TENSOR_CODEC_H_

#include <vector>

#include "absl/status/statusor.h"
#include "engine/tensor.h"
#include "grpc_service.pb.h"
#include "server/repository/loaded_model.h"

namespace qs {

struct DecodedRequest {
  std::vector<Tensor> inputs;       // in the session's input order, model dtypes
  int64_t batch_size = 1;           // leading dimension when the model batches
  std::vector<int> output_indices;  // requested outputs (session order), all if none
};

// Validates `request` against `model` (names, duplicates, datatypes, shapes, byte sizes,
// batch size, raw vs typed contents, requested outputs) and decodes the inputs,
// converting to the model's element type when the request sends another numeric type.
absl::StatusOr<DecodedRequest> DecodeRequest(const inference::ModelInferRequest& request,
                                             const LoadedModel& model);

// Fills outputs and raw_output_contents (little-endian) for `indices` of `outputs`.
void EncodeOutputs(const std::vector<Tensor>& outputs, const std::vector<int>& indices,
                   const LoadedModel& model, inference::ModelInferResponse* response);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_GRPC_TENSOR_CODEC_H_
