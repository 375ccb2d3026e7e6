// Reads INT8 calibration data from a folder, in any of the layouts users have:
//  1. <dir>/<input name>.npy, one file per model input, leading dimension = samples;
//  2. <dir>/<N>/<input name>.npy, numbered subfolders, each one batch;
//  3. ONNX test-data style: <dir>/input_<k>.pb or <dir>/test_data_set_<N>/input_<k>.pb,
//     TensorProto files matched to the inputs by position.
// In file names every character outside [A-Za-z0-9._-] of an input name is '_'.
#ifndef QUANTSERVE_ENGINE_QUANTIZE_CALIBRATION_DATA_H_
#define QUANTSERVE_ENGINE_QUANTIZE_CALIBRATION_DATA_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/graph.h"

namespace qs {

// Batches of at most `batch` samples (layout 1 is split; 2 and 3 are used as they are),
// at most `max_samples` samples in all (0 = no limit). Errors: NotFound for a missing
// folder, FailedPrecondition naming the input whose data is missing or mismatched.
absl::StatusOr<std::vector<std::vector<Tensor>>> LoadCalibrationData(
    const std::string& dir, const std::vector<ValueInfo>& inputs, int batch,
    int max_samples);

std::string SafeFileName(const std::string& name);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_QUANTIZE_CALIBRATION_DATA_H_
