// Resize (opsets 10, 11, 13) and Upsample (opsets 7, 9), in plain C++.
//
// Every supported mode is separable: an output element is a weighted sum over a
// per-axis neighbourhood (1 tap for nearest, 2 for linear, 4 for cubic) whose weights
// are products of per-axis weights. So the tensor is resampled one axis at a time,
// each pass with a per-output-coordinate table of (input index, weight) taps computed
// with the ONNX reference arithmetic (onnx/backend/test/case/node/resize.py): the
// coordinate transformation in double precision, ties resolved as the reference
// resolves them. tf_crop_and_resize's out-of-range points take extrapolation_value in
// the pass of the axis that is out of range; later passes mix only such points there
// (weights sum to 1), so the value survives as in the reference.
//
// Nearest works on any fixed-width element type (it only copies); linear and cubic
// are FP32.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>

#include "engine/ops/dnnl_util.h"
#include "engine/ops/registry.h"
#include "engine/status_macros.h"

namespace qs {
namespace {

enum class Mode { kNearest, kLinear, kCubic };
enum class Coord {
  kHalfPixel,
  kPytorchHalfPixel,
  kAlignCorners,
  kAsymmetric,
  kTfHalfPixelForNn,
  kTfCropAndResize,
};
// kSimple: Resize-10 and Upsample, which predate nearest_mode (as ONNX Runtime:
// floor when upsampling, ceil when downsampling).
enum class NearestMode { kRoundPreferFloor, kRoundPreferCeil, kFloor, kCeil, kSimple };

struct ResizeParams {
  Mode mode = Mode::kNearest;
  Coord coord = Coord::kHalfPixel;
  NearestMode nearest = NearestMode::kRoundPreferFloor;
  double cubic_a = -0.75;
  bool exclude_outside = false;
  float extrapolation_value = 0.f;
  // Input positions (-1: absent).
  int roi_input = -1;
  int scales_input = -1;
  int sizes_input = -1;
  std::vector<float> attr_scales;  // Upsample-7
};

// Resampling taps of one axis: for output coordinate j, taps [j*n, j*n+n).
struct AxisTaps {
  int64_t in = 0, out = 0;
  int n = 1;
  std::vector<int64_t> idx;
  std::vector<float> w;
  std::vector<uint8_t> extrapolate;  // per output coordinate
};

double CubicKernel(double s, double a) {
  s = std::fabs(s);
  if (s <= 1) return ((a + 2) * s - (a + 3)) * s * s + 1;
  if (s < 2) return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a;
  return 0;
}

AxisTaps ComputeTaps(const ResizeParams& p, int64_t in, int64_t out, double scale,
                     double out_width, float roi_start, float roi_end) {
  AxisTaps t;
  t.in = in;
  t.out = out;
  t.n = p.mode == Mode::kNearest ? 1 : p.mode == Mode::kLinear ? 2 : 4;
  t.idx.assign(out * t.n, 0);
  t.w.assign(out * t.n, 0.f);
  t.extrapolate.assign(out, 0);
  auto clamp = [in](int64_t i) {
    return std::min<int64_t>(std::max<int64_t>(i, 0), in - 1);
  };
  for (int64_t j = 0; j < out; ++j) {
    const double x = static_cast<double>(j);
    double xo = 0;
    switch (p.coord) {
      case Coord::kHalfPixel: xo = (x + 0.5) / scale - 0.5; break;
      case Coord::kPytorchHalfPixel:
        xo = out_width == 1 ? -0.5 : (x + 0.5) / scale - 0.5;
        break;
      case Coord::kAlignCorners:
        xo = out_width == 1 ? 0 : x * (in - 1) / (out_width - 1);
        break;
      case Coord::kAsymmetric: xo = x / scale; break;
      case Coord::kTfHalfPixelForNn: xo = (x + 0.5) / scale; break;
      case Coord::kTfCropAndResize: {
        const double span = static_cast<double>(roi_end - roi_start);
        xo = out_width == 1 ? span * (in - 1) / 2 : x * span * (in - 1) / (out_width - 1);
        xo += static_cast<double>(roi_start) * (in - 1);
        if (xo < 0 || xo > in - 1) t.extrapolate[j] = 1;
        break;
      }
    }
    if (t.extrapolate[j]) continue;
    int64_t* idx = &t.idx[j * t.n];
    float* w = &t.w[j * t.n];
    const double fl = std::floor(xo);
    const bool integral = xo == fl;
    const double ratio = xo - fl;
    const int64_t base = static_cast<int64_t>(fl);
    switch (p.mode) {
      case Mode::kNearest: {
        int64_t i = base;
        if (p.nearest == NearestMode::kSimple) {
          i = scale < 1 ? static_cast<int64_t>(std::ceil(xo)) : base;
        } else if (!integral) {
          bool up = false;
          switch (p.nearest) {
            case NearestMode::kRoundPreferFloor: up = ratio > 0.5; break;
            case NearestMode::kRoundPreferCeil: up = ratio >= 0.5; break;
            case NearestMode::kFloor: up = false; break;
            case NearestMode::kCeil: up = true; break;
            case NearestMode::kSimple: break;
          }
          i = base + (up ? 1 : 0);
        }
        idx[0] = clamp(i);
        w[0] = 1.f;
        break;
      }
      case Mode::kLinear:
        idx[0] = clamp(base);
        idx[1] = clamp(base + 1);
        w[0] = static_cast<float>(1 - ratio);
        w[1] = static_cast<float>(ratio);
        break;
      case Mode::kCubic: {
        if (integral) {  // exactly on a sample: weights (0, 0, 1, 0) in the reference
          idx[0] = idx[1] = idx[2] = idx[3] = clamp(base);
          w[0] = 1.f;
          w[1] = w[2] = w[3] = 0.f;
          break;
        }
        double cw[4];
        int64_t ci[4];
        double sum = 0;
        for (int k = 0; k < 4; ++k) {
          ci[k] = base - 1 + k;
          cw[k] = CubicKernel(ratio + 1 - k, p.cubic_a);
          if (p.exclude_outside && (ci[k] < 0 || ci[k] >= in)) cw[k] = 0;
          sum += cw[k];
        }
        for (int k = 0; k < 4; ++k) {
          idx[k] = clamp(ci[k]);
          w[k] = static_cast<float>(p.exclude_outside ? cw[k] / sum : cw[k]);
        }
        break;
      }
    }
  }
  return t;
}

// One pass along an axis: src [outer, in, inner] -> dst [outer, out, inner].
void ResampleFloat(const AxisTaps& t, int64_t outer, int64_t inner, float extrapolation,
                   const float* src, float* dst) {
#pragma omp parallel for if (outer * t.out * inner > 65536)
  for (int64_t oj = 0; oj < outer * t.out; ++oj) {
    const int64_t o = oj / t.out, j = oj % t.out;
    float* d = dst + oj * inner;
    if (t.extrapolate[j]) {
      std::fill(d, d + inner, extrapolation);
      continue;
    }
    const int64_t* idx = &t.idx[j * t.n];
    const float* w = &t.w[j * t.n];
    const float* s0 = src + (o * t.in + idx[0]) * inner;
    for (int64_t i = 0; i < inner; ++i) d[i] = w[0] * s0[i];
    for (int k = 1; k < t.n; ++k) {
      if (w[k] == 0.f) continue;
      const float* s = src + (o * t.in + idx[k]) * inner;
      const float wk = w[k];
      for (int64_t i = 0; i < inner; ++i) d[i] += wk * s[i];
    }
  }
}

// Nearest pass on raw elements of `elem` bytes.
void ResampleNearest(const AxisTaps& t, int64_t outer, int64_t inner, size_t elem,
                     const void* extrapolation, const uint8_t* src, uint8_t* dst) {
  const size_t row = static_cast<size_t>(inner) * elem;
#pragma omp parallel for if (outer * t.out * inner > 65536)
  for (int64_t oj = 0; oj < outer * t.out; ++oj) {
    const int64_t o = oj / t.out, j = oj % t.out;
    uint8_t* d = dst + oj * row;
    if (t.extrapolate[j]) {
      for (int64_t i = 0; i < inner; ++i) std::memcpy(d + i * elem, extrapolation, elem);
      continue;
    }
    std::memcpy(d, src + (o * t.in + t.idx[j]) * row, row);
  }
}

// Reads a 1-D float tensor (FP32 or FP64) into floats.
absl::StatusOr<std::vector<float>> ReadFloats(const Tensor& t) {
  std::vector<float> v(t.num_elements());
  if (t.dtype() == DataType::kFloat32) {
    std::copy(t.data<float>(), t.data<float>() + v.size(), v.begin());
  } else if (t.dtype() == DataType::kFloat64) {
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(t.data<double>()[i]);
  } else {
    return RunError("expected a float tensor, got ", DataTypeName(t.dtype()));
  }
  return v;
}

class ResizeKernel : public Kernel {
 public:
  explicit ResizeKernel(ResizeParams p) : p_(std::move(p)) {}

  absl::Status Run(KernelRunContext& ctx) const override {
    const Tensor* x = ctx.input(0);
    if (x == nullptr) return RunError("missing input X");
    const int rank = x->rank();
    if (rank == 0) return RunError("X must have rank >= 1");
    if (p_.mode != Mode::kNearest && x->dtype() != DataType::kFloat32) {
      return RunError("linear and cubic modes support FP32 only, got ",
                      DataTypeName(x->dtype()));
    }
    const size_t elem = DataTypeSize(x->dtype());
    if (elem == 0) return RunError("unsupported type ", DataTypeName(x->dtype()));

    // Output size and per-axis scale, as the reference derives them.
    std::vector<double> scale(rank), out_width(rank);
    Shape out_shape(rank);
    const Tensor* sizes = p_.sizes_input >= 0 ? ctx.input(p_.sizes_input) : nullptr;
    const Tensor* scales = p_.scales_input >= 0 ? ctx.input(p_.scales_input) : nullptr;
    if (sizes != nullptr && sizes->num_elements() > 0) {
      if (sizes->dtype() != DataType::kInt64 || sizes->num_elements() != rank) {
        return RunError("sizes must be INT64 with ", rank, " elements");
      }
      for (int i = 0; i < rank; ++i) {
        out_shape[i] = sizes->data<int64_t>()[i];
        if (out_shape[i] < 0) return RunError("negative output size");
        scale[i] = x->dim(i) == 0 ? 1.0 : static_cast<double>(out_shape[i]) / x->dim(i);
        out_width[i] = scale[i] * x->dim(i);
      }
    } else {
      std::vector<float> sc = p_.attr_scales;
      if (scales != nullptr && scales->num_elements() > 0) {
        QS_ASSIGN_OR_RETURN(sc, ReadFloats(*scales));
      }
      if (static_cast<int>(sc.size()) != rank) {
        return RunError("need ", rank, " scales (or sizes), got ", sc.size());
      }
      for (int i = 0; i < rank; ++i) {
        if (!(sc[i] > 0)) return RunError("scales must be positive");
        scale[i] = sc[i];
        out_width[i] = scale[i] * x->dim(i);
        out_shape[i] = static_cast<int64_t>(std::floor(out_width[i]));
      }
    }
    std::vector<float> roi(2 * rank, 0.f);
    for (int i = 0; i < rank; ++i) roi[rank + i] = 1.f;
    if (p_.coord == Coord::kTfCropAndResize) {
      const Tensor* r = p_.roi_input >= 0 ? ctx.input(p_.roi_input) : nullptr;
      if (r == nullptr || r->num_elements() != 2 * rank) {
        return RunError("tf_crop_and_resize needs roi with ", 2 * rank, " values");
      }
      QS_ASSIGN_OR_RETURN(roi, ReadFloats(*r));
    }

    // Axes that change, downsampling first so that later passes touch less data.
    std::vector<int> axes;
    for (int i = 0; i < rank; ++i) {
      const bool identity = out_shape[i] == x->dim(i) && scale[i] == 1.0 &&
                            p_.coord != Coord::kTfCropAndResize &&
                            p_.coord != Coord::kTfHalfPixelForNn;
      if (!identity) axes.push_back(i);
    }
    std::stable_sort(axes.begin(), axes.end(), [&](int a, int b) {
      return static_cast<double>(out_shape[a]) / std::max<int64_t>(x->dim(a), 1) <
             static_cast<double>(out_shape[b]) / std::max<int64_t>(x->dim(b), 1);
    });
    if (x->num_elements() == 0 || NumElements(out_shape) == 0) {
      if (NumElements(out_shape) != 0) return RunError("cannot resize an empty tensor");
      (*ctx.outputs)[0] = Tensor(x->dtype(), out_shape);
      return absl::OkStatus();
    }

    // Extrapolation value in X's element type (nearest on non-float tensors).
    alignas(8) uint8_t extrap[8] = {};
    if (x->dtype() == DataType::kFloat32) {
      std::memcpy(extrap, &p_.extrapolation_value, sizeof(float));
    } else {
      Tensor value(DataType::kFloat32, {1});
      value.data<float>()[0] = p_.extrapolation_value;
      auto cast = CastTensor(value, x->dtype());
      if (cast.ok()) std::memcpy(extrap, cast->raw_data(), std::min<size_t>(elem, 8));
    }

    Tensor cur = *x;
    Shape cur_shape = x->shape();
    for (int axis : axes) {
      const AxisTaps taps = ComputeTaps(p_, x->dim(axis), out_shape[axis], scale[axis],
                                        out_width[axis], roi[axis], roi[rank + axis]);
      Shape next_shape = cur_shape;
      next_shape[axis] = out_shape[axis];
      Tensor next = Tensor::Uninitialized(x->dtype(), next_shape);
      int64_t outer = 1, inner = 1;
      for (int i = 0; i < axis; ++i) outer *= cur_shape[i];
      for (int i = axis + 1; i < rank; ++i) inner *= cur_shape[i];
      if (p_.mode == Mode::kNearest) {
        ResampleNearest(taps, outer, inner, elem, extrap,
                        static_cast<const uint8_t*>(cur.raw_data()),
                        static_cast<uint8_t*>(next.raw_data()));
      } else {
        ResampleFloat(taps, outer, inner, p_.extrapolation_value, cur.data<float>(),
                      next.data<float>());
      }
      cur = std::move(next);
      cur_shape = std::move(next_shape);
    }
    // No axis changes: Resize is an identity; hand out the input buffer itself
    // (tensors are immutable once produced).
    (*ctx.outputs)[0] = cur;
    return absl::OkStatus();
  }

 private:
  const ResizeParams p_;
};

absl::StatusOr<Mode> ParseMode(const Node& node, bool allow_cubic) {
  const std::string m = node.attrs.GetString("mode", "nearest");
  if (m == "nearest") return Mode::kNearest;
  if (m == "linear" || m == "bilinear") return Mode::kLinear;
  if (m == "cubic" && allow_cubic) return Mode::kCubic;
  return NodeError(node, "unsupported mode '", m, "'");
}

absl::StatusOr<std::unique_ptr<Kernel>> MakeResize(const KernelInit& init) {
  const Node& node = *init.node;
  ResizeParams p;
  if (init.opset < 11) {
    QS_RETURN_IF_ERROR(CheckAttributes(node, {"mode"}));
    QS_ASSIGN_OR_RETURN(p.mode, ParseMode(node, /*allow_cubic=*/false));
    p.coord = Coord::kAsymmetric;
    p.nearest = NearestMode::kSimple;
    p.scales_input = 1;
    return std::unique_ptr<Kernel>(new ResizeKernel(std::move(p)));
  }
  QS_RETURN_IF_ERROR(CheckAttributes(
      node, {"coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
             "extrapolation_value", "mode", "nearest_mode"}));
  QS_ASSIGN_OR_RETURN(p.mode, ParseMode(node, /*allow_cubic=*/true));
  const std::string coord =
      node.attrs.GetString("coordinate_transformation_mode", "half_pixel");
  if (coord == "half_pixel") {
    p.coord = Coord::kHalfPixel;
  } else if (coord == "pytorch_half_pixel") {
    p.coord = Coord::kPytorchHalfPixel;
  } else if (coord == "align_corners") {
    p.coord = Coord::kAlignCorners;
  } else if (coord == "asymmetric") {
    p.coord = Coord::kAsymmetric;
  } else if (coord == "tf_half_pixel_for_nn" && init.opset < 13) {
    p.coord = Coord::kTfHalfPixelForNn;
  } else if (coord == "tf_crop_and_resize") {
    p.coord = Coord::kTfCropAndResize;
  } else {
    return NodeError(node, "unsupported coordinate_transformation_mode '", coord, "'");
  }
  const std::string nearest = node.attrs.GetString("nearest_mode", "round_prefer_floor");
  if (nearest == "round_prefer_floor") {
    p.nearest = NearestMode::kRoundPreferFloor;
  } else if (nearest == "round_prefer_ceil") {
    p.nearest = NearestMode::kRoundPreferCeil;
  } else if (nearest == "floor") {
    p.nearest = NearestMode::kFloor;
  } else if (nearest == "ceil") {
    p.nearest = NearestMode::kCeil;
  } else {
    return NodeError(node, "unsupported nearest_mode '", nearest, "'");
  }
  p.cubic_a = node.attrs.GetFloat("cubic_coeff_a", -0.75f);
  p.exclude_outside = node.attrs.GetInt("exclude_outside", 0) != 0;
  p.extrapolation_value = node.attrs.GetFloat("extrapolation_value", 0.f);
  p.roi_input = 1;
  p.scales_input = 2;
  p.sizes_input = 3;
  return std::unique_ptr<Kernel>(new ResizeKernel(std::move(p)));
}

absl::StatusOr<std::unique_ptr<Kernel>> MakeUpsample(const KernelInit& init) {
  const Node& node = *init.node;
  ResizeParams p;
  p.coord = Coord::kAsymmetric;
  p.nearest = NearestMode::kSimple;
  if (init.opset < 9) {
    QS_RETURN_IF_ERROR(CheckAttributes(node, {"mode", "scales"}));
    p.attr_scales = node.attrs.GetFloats("scales");
    if (p.attr_scales.empty()) return NodeError(node, "attribute 'scales' is required");
  } else {
    QS_RETURN_IF_ERROR(CheckAttributes(node, {"mode"}));
    p.scales_input = 1;
  }
  QS_ASSIGN_OR_RETURN(p.mode, ParseMode(node, /*allow_cubic=*/false));
  return std::unique_ptr<Kernel>(new ResizeKernel(std::move(p)));
}

}  // namespace

void RegisterResizeKernels(KernelRegistry* r) {
  r->Register("Resize", MakeResize, 10, 17);
  r->Register("Upsample", MakeUpsample, 7, 9);
}

}  // namespace qs
