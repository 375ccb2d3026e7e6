#include "engine/quantize/calibration.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/quantize/quant_math.h"

namespace qs {

void RangeCollector::ObserveRange(const float* x, int64_t n) {
  if (n <= 0) return;
  float lo, hi;
  MinMax(x, n, &lo, &hi);
  if (!seen_) {
    min_ = lo;
    max_ = hi;
    seen_ = true;
  } else {
    min_ = std::min(min_, lo);
    max_ = std::max(max_, hi);
  }
}

void RangeCollector::ObserveHistogram(const float* x, int64_t n) {
  if (hist_.empty()) hist_.assign(kBins, 0.0);
  const float absmax = std::max(std::fabs(min_), std::fabs(max_));
  if (!(absmax > 0.f)) return;
  const float scale = kBins / absmax;
  for (int64_t i = 0; i < n; ++i) {
    int b = static_cast<int>(std::fabs(x[i]) * scale);
    hist_[std::min(b, kBins - 1)] += 1.0;
  }
}

float EntropyThreshold(const std::vector<double>& hist, double bin_width, int levels) {
  const int bins = static_cast<int>(hist.size());
  if (bins <= levels) return static_cast<float>(bins * bin_width);
  double best_kl = std::numeric_limits<double>::infinity();
  int best_i = bins;
  std::vector<double> p, q;
  for (int i = levels; i <= bins; ++i) {
    // Reference: the first i bins, outliers folded into the last one.
    p.assign(hist.begin(), hist.begin() + i);
    double outliers = 0;
    for (int k = i; k < bins; ++k) outliers += hist[k];
    p[i - 1] += outliers;
    // Candidate: the first i bins merged into `levels` levels, each level's mass spread
    // evenly over the bins of that level that were non-zero.
    q.assign(i, 0.0);
    const double per_level = static_cast<double>(i) / levels;
    for (int l = 0; l < levels; ++l) {
      const int start = static_cast<int>(std::floor(l * per_level));
      const int end = l == levels - 1 ? i : static_cast<int>(std::floor((l + 1) * per_level));
      // Built from the unclipped bins (outliers left out), as TensorRT does: that is
      // what makes clipping cost KL.
      double mass = 0;
      int nonzero = 0;
      for (int k = start; k < end; ++k) {
        mass += hist[k];
        nonzero += hist[k] != 0;
      }
      if (nonzero == 0) continue;
      for (int k = start; k < end; ++k)
        if (hist[k] != 0) q[k] = mass / nonzero;
    }
    double psum = 0, qsum = 0;
    for (int k = 0; k < i; ++k) {
      psum += p[k];
      qsum += q[k];
    }
    if (psum <= 0 || qsum <= 0) continue;
    double kl = 0;
    for (int k = 0; k < i; ++k) {
      if (p[k] == 0) continue;
      const double pk = p[k] / psum;
      // q may be zero where p is not (outliers folded into the last bin): smooth.
      const double qk = std::max(q[k] / qsum, 1e-10);
      kl += pk * std::log(pk / qk);
    }
    if (kl < best_kl) {
      best_kl = kl;
      best_i = i;
    }
  }
  return static_cast<float>((best_i + 0.5) * bin_width);
}

float RangeCollector::Threshold(CalibrationMethod method, double percentile) const {
  const float absmax = std::max(std::fabs(min_), std::fabs(max_));
  if (hist_.empty() || !(absmax > 0.f)) return absmax;
  const double bin_width = static_cast<double>(absmax) / kBins;
  if (method == CalibrationMethod::kEntropy) {
    // Exact zeros (ReLU outputs: often half the values) are represented exactly by
    // any scale; left in, their spike drags the threshold far down.
    std::vector<double> h = hist_;
    h[0] = 0;
    // One-sided data uses all 255 u8 levels; two-sided about half of them per side.
    return EntropyThreshold(h, bin_width, min_ >= 0.f ? 255 : 128);
  }
  if (!(percentile > 0.0) || percentile > 100.0) percentile = 99.999;
  double total = 0;
  for (double h : hist_) total += h;
  const double target = total * percentile / 100.0;
  double cum = 0;
  for (int b = 0; b < kBins; ++b) {
    cum += hist_[b];
    if (cum >= target) return static_cast<float>((b + 1) * bin_width);
  }
  return absmax;
}

void RangeCollector::Range(CalibrationMethod method, double percentile, float* min,
                           float* max) const {
  *min = min_;
  *max = max_;
  if (method == CalibrationMethod::kMinMax) return;
  const float t = Threshold(method, percentile);
  *min = std::max(min_, -t);
  *max = std::min(max_, t);
}

}  // namespace qs
