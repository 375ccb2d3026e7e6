#include "server/config/data_type.h"

namespace qs {
namespace {

struct Row {
  DataType engine;
  inference::DataType config;
};
constexpr Row kRows[] = {
    {DataType::kBool, inference::TYPE_BOOL},     {DataType::kUInt8, inference::TYPE_UINT8},
    {DataType::kUInt16, inference::TYPE_UINT16}, {DataType::kUInt32, inference::TYPE_UINT32},
    {DataType::kUInt64, inference::TYPE_UINT64}, {DataType::kInt8, inference::TYPE_INT8},
    {DataType::kInt16, inference::TYPE_INT16},   {DataType::kInt32, inference::TYPE_INT32},
    {DataType::kInt64, inference::TYPE_INT64},   {DataType::kFloat16, inference::TYPE_FP16},
    {DataType::kFloat32, inference::TYPE_FP32},  {DataType::kFloat64, inference::TYPE_FP64},
    {DataType::kString, inference::TYPE_STRING}, {DataType::kBFloat16, inference::TYPE_BF16},
};

}  // namespace

inference::DataType ToConfigDataType(DataType type) {
  for (const Row& r : kRows)
    if (r.engine == type) return r.config;
  return inference::TYPE_INVALID;
}

DataType FromConfigDataType(inference::DataType type) {
  for (const Row& r : kRows)
    if (r.config == type) return r.engine;
  return DataType::kUndefined;
}

}  // namespace qs
