// Conversions between the engine's DataType and the config's inference::DataType.
#ifndef QUANTSERVE_SERVER_CONFIG_DATA_TYPE_H_
#define QUANTSERVE_SERVER_CONFIG_DATA_TYPE_H_

#include "engine/tensor.h"
#include "model_config.pb.h"

namespace qs {

inference::DataType ToConfigDataType(DataType type);
// kUndefined for TYPE_INVALID.
DataType FromConfigDataType(inference::DataType type);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_CONFIG_DATA_TYPE_H_
