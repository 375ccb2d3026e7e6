// Activation-range calibration for INT8: MINMAX, PERCENTILE and ENTROPY (KL divergence,
// as TensorRT and ONNX Runtime do it).
//
// Two passes over the calibration data: ObserveRange() on every batch (exact min/max),
// then ObserveHistogram() on every batch (histogram of |x| over [0, max|x|] in 2048
// bins), then Range(). MINMAX needs only the first pass. Not thread-safe.
#ifndef QUANTSERVE_ENGINE_QUANTIZE_CALIBRATION_H_
#define QUANTSERVE_ENGINE_QUANTIZE_CALIBRATION_H_

#include <cstdint>
#include <vector>

namespace qs {

enum class CalibrationMethod { kMinMax, kPercentile, kEntropy };

class RangeCollector {
 public:
  static constexpr int kBins = 2048;

  void ObserveRange(const float* x, int64_t n);
  void ObserveHistogram(const float* x, int64_t n);
  bool needs_histogram(CalibrationMethod m) const { return m != CalibrationMethod::kMinMax; }

  // The calibrated [min, max]. `percentile` in (0, 100] for kPercentile (default 99.999).
  // The result always lies within the observed [min, max].
  void Range(CalibrationMethod method, double percentile, float* min, float* max) const;

  float observed_min() const { return min_; }
  float observed_max() const { return max_; }

 private:
  float Threshold(CalibrationMethod method, double percentile) const;
  float min_ = 0.f, max_ = 0.f;
  bool seen_ = false;
  std::vector<double> hist_;
};

// The KL-optimal clipping threshold for a histogram of |x| with bins of `bin_width`,
// quantized to `levels` levels (128 for 8-bit symmetric). Exposed for tests.
float EntropyThreshold(const std::vector<double>& hist, double bin_width, int levels = 128);

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_QUANTIZE_CALIBRATION_H_
