// Reading and writing NumPy .npy files (format versions 1.0-3.0, little-endian,
// C order) as Tensors. Used by the bench tool, calibration data and tests.
#ifndef QUANTSERVE_ENGINE_NPY_H_
#define QUANTSERVE_ENGINE_NPY_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/tensor.h"

namespace qs {

// Errors: NotFound (cannot open), InvalidArgument (bad header, Fortran order,
// big-endian or unsupported dtype, truncated data), each naming `path`.
absl::StatusOr<Tensor> ReadNpy(const std::string& path);
absl::Status WriteNpy(const std::string& path, const Tensor& tensor);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_NPY_H_
