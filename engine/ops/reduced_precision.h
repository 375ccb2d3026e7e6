// Engine-internal node attributes that select the reduced-precision kernels
// (ops/reduced_precision.cc); set by the precision pass (passes/assign_precision.cc).
#ifndef QUANTSERVE_ENGINE_OPS_REDUCED_PRECISION_H_
#define QUANTSERVE_ENGINE_OPS_REDUCED_PRECISION_H_

#include <string>

namespace qs {

inline constexpr char kPrecisionAttr[] = "qs_precision";
inline constexpr char kPrecisionDynamic[] = "dynamic";
inline constexpr char kPrecisionStatic[] = "static";
inline constexpr char kPrecisionBf16[] = "bf16";
// Calibrated activation range of input 0 (static INT8).
inline constexpr char kActMinAttr[] = "qs_act_min";
inline constexpr char kActMaxAttr[] = "qs_act_max";
// Static conv: write the output as u8 quantized over this range (its consumers' input
// range), set by the precision pass when every consumer is a static INT8 conv.
inline constexpr char kOutMinAttr[] = "qs_out_min";
inline constexpr char kOutMaxAttr[] = "qs_out_max";
// Static conv with a fused residual (input 3) that arrives as u8: its quantization range
// (the range its producer writes it in), set by the precision pass.
inline constexpr char kResMinAttr[] = "qs_res_min";
inline constexpr char kResMaxAttr[] = "qs_res_max";
// BF16 conv: write the output as bf16 (every consumer is a BF16 conv, or, in an INT8
// plan, a MaxPool whose readers are all static INT8 convs).
inline constexpr char kOutBf16Attr[] = "qs_out_bf16";

// Registry key of the reduced-precision variant of `op_type`.
inline std::string ReducedPrecisionKey(const std::string& op_type) {
  return op_type + "@reduced";
}

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_OPS_REDUCED_PRECISION_H_
