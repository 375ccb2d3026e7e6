#include "engine/ops/dnnl_util.h"

#include "engine/buffer_pool.h"
#include "engine/layout.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace qs {

absl::Status CheckAttributes(const Node& node,
                             std::initializer_list<absl::string_view> allowed) {
  for (const std::string& name : node.attrs.Names()) {
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      return NodeError(node, "unsupported attribute '", name,
                       "' (supported: ", absl::StrJoin(allowed, ", "), ")");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int> NormalizeAxis(int64_t axis, int rank) {
  if (axis < -rank || axis >= std::max(rank, 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("axis ", axis, " is out of range for rank ", rank));
  }
  return static_cast<int>(axis < 0 ? axis + rank : axis);
}

Tensor AccumulatorFromInput(KernelRunContext& ctx, size_t i, Layout layout) {
  const Tensor& r = *ctx.input(i);
  Tensor y = r.layout() == layout || LayoutIsTrivial(r.shape()) ? ctx.TakeInput(i) : Tensor();
  if (!y.defined()) {
    y = layout == Layout::kChannelsLast ? ToChannelsLast(r) : ToPlain(r);
    if (y.raw_data() == r.raw_data()) y = y.Clone();  // no conversion was needed: copy
  }
  y.set_layout(layout);
  return y;
}

absl::StatusOr<FusedActivation> ParseFusedActivation(const Node& node) {
  FusedActivation act;
  if (!node.attrs.Has(kFusedActivationAttr)) return act;
  const std::string kind = node.attrs.GetString(kFusedActivationAttr, "");
  if (kind == "Relu") {
    act.kind = FusedActivation::Kind::kRelu;
  } else if (kind == "Gelu") {
    act.kind = FusedActivation::Kind::kGelu;
  } else if (kind == "Clip") {
    const std::vector<float> p = node.attrs.GetFloats(kFusedActivationParamsAttr);
    if (p.size() != 2) {
      return NodeError(node, "fused Clip needs 2 bounds in '", kFusedActivationParamsAttr,
                       "'");
    }
    act.kind = FusedActivation::Kind::kClip;
    act.lo = p[0];
    act.hi = p[1];
  } else {
    return NodeError(node, "unsupported fused activation '", kind, "'");
  }
  return act;
}

void AppendActivation(const FusedActivation& act, dnnl::post_ops* ops) {
  switch (act.kind) {
    case FusedActivation::Kind::kNone: break;
    case FusedActivation::Kind::kRelu:
      ops->append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      break;
    case FusedActivation::Kind::kClip:
      // ReLU6 is oneDNN's bounded_relu; any other range is a plain clip.
      if (act.lo == 0.f && act.hi > 0.f) {
        ops->append_eltwise(1.f, dnnl::algorithm::eltwise_bounded_relu, act.hi, 0.f);
      } else {
        ops->append_eltwise(1.f, dnnl::algorithm::eltwise_clip, act.lo, act.hi);
      }
      break;
    case FusedActivation::Kind::kGelu:
      ops->append_eltwise(1.f, dnnl::algorithm::eltwise_gelu_erf, 0.f, 0.f);
      break;
  }
}

dnnl::primitive_attr MakeActivationAttr(const FusedActivation& act) {
  dnnl::primitive_attr attr;
  if (!act.none()) {
    dnnl::post_ops ops;
    AppendActivation(act, &ops);
    attr.set_post_ops(ops);
  }
  return attr;
}

dnnl::memory::dims ToDnnlDims(absl::Span<const int64_t> shape) {
  return dnnl::memory::dims(shape.begin(), shape.end());
}

bool HasNativeBf16() {
  const auto isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  const auto bf16 = static_cast<unsigned>(dnnl_cpu_isa_avx512_core_bf16);
  return (isa & bf16) == bf16;
}

dnnl::memory::format_tag PlainFormatTag(int rank) {
  using tag = dnnl::memory::format_tag;
  switch (rank) {
    case 1: return tag::a;
    case 2: return tag::ab;
    case 3: return tag::abc;
    case 4: return tag::abcd;
    case 5: return tag::abcde;
    case 6: return tag::abcdef;
    case 7: return tag::abcdefg;
    case 8: return tag::abcdefgh;
    case 9: return tag::abcdefghi;
    case 10: return tag::abcdefghij;
    case 11: return tag::abcdefghijk;
    case 12: return tag::abcdefghijkl;
    default: return tag::undef;
  }
}

dnnl::memory::desc PlainDesc(absl::Span<const int64_t> shape,
                             dnnl::memory::data_type dt) {
  if (shape.empty()) return dnnl::memory::desc({1}, dt, dnnl::memory::format_tag::a);
  // Strides rather than a tag so that any rank oneDNN accepts works.
  dnnl::memory::dims strides(shape.size());
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return dnnl::memory::desc(ToDnnlDims(shape), dt, strides);
}

dnnl::memory::desc PermutedDesc(const dnnl::memory::dims& dims,
                                absl::Span<const int> order, dnnl::memory::data_type dt) {
  dnnl::memory::dims strides(dims.size());
  int64_t s = 1;
  for (int i = static_cast<int>(order.size()) - 1; i >= 0; --i) {
    strides[order[i]] = s;
    s *= std::max<int64_t>(dims[order[i]], 1);
  }
  return dnnl::memory::desc(dims, dt, strides);
}

dnnl::memory WrapTensor(const dnnl::memory::desc& md, const Tensor& t,
                        const dnnl::engine& engine) {
  return dnnl::memory(md, engine, const_cast<void*>(t.raw_data()));
}

namespace {

// A layout carrying extra data after the values: the compensation an INT8 conv needs
// for a u8 input with a zero point (or for s8 inputs).
bool HasExtra(const dnnl::memory::desc& md) { return md.data.extra.flags != 0; }

}  // namespace

void PackedWeights::DropUnheldLocked() const {
  packed_.erase(std::remove_if(packed_.begin(), packed_.end(),
                               [](const Entry& e) { return e.buffer.unique(); }),
                packed_.end());
}

int64_t PackedWeights::packed_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t bytes = 0;
  for (const Entry& e : packed_) bytes += static_cast<int64_t>(e.buffer.byte_size());
  return bytes;
}

dnnl::memory PackedWeights::Get(const dnnl::memory::desc& packed_md, DnnlResources* dnnl,
                                Tensor* owner) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (packed_md == user_md_ && weights_.defined()) {
    wrapped_ = true;  // a plan now points into weights_: it must stay
    *owner = weights_;
    return WrapTensor(user_md_, weights_, dnnl->engine);
  }
  for (const Entry& e : packed_) {
    if (e.md == packed_md) {
      *owner = e.buffer;  // held now, so it stays
      dnnl::memory m(packed_md, dnnl->engine, const_cast<void*>(e.buffer.raw_data()));
      DropUnheldLocked();
      return m;
    }
  }
  // A byte tensor as the owner: 64-byte aligned, and shared by reference counting.
  // Weights live as long as the kernel, not one context's run: not from its pool.
  BufferPool::Scope no_pool(nullptr);
  Tensor buffer = Tensor::Uninitialized(
      DataType::kUInt8,
      {static_cast<int64_t>(std::max<size_t>(packed_md.get_size(), 1))});
  // The unpacked copy, or once it is released a packed layout (one stays: the last one
  // requested). oneDNN 2.6 reorders between any two layouts of the same values, but not
  // always between layouts carrying compensation (AcdB64a4b to AcdB48a4b, both with
  // zero-point compensation, fails to create): when either side carries some, the
  // values go through a temporary copy in the user layout (a reorder to plain reads
  // the values and ignores the compensation).
  const dnnl::engine& eng = dnnl->engine;
  dnnl::memory src = weights_.defined()
                         ? WrapTensor(user_md_, weights_, eng)
                         : dnnl::memory(packed_.front().md, eng,
                                        const_cast<void*>(packed_.front().buffer.raw_data()));
  Tensor unpacked;  // the temporary user-layout copy, when one is needed
  if (!weights_.defined() && (HasExtra(packed_md) || HasExtra(src.get_desc()))) {
    unpacked = Tensor::Uninitialized(
        DataType::kUInt8, {static_cast<int64_t>(std::max<size_t>(user_md_.get_size(), 1))});
    dnnl::memory user(user_md_, eng, unpacked.raw_data());
    dnnl::reorder(src, user).execute(dnnl->stream, src, user);
    src = user;
  }
  dnnl::memory dst(packed_md, eng, buffer.raw_data());
  dnnl::reorder(src, dst).execute(dnnl->stream, src, dst);
  dnnl->stream.wait();
  // The new layout stays (and is a source of later reorders once the unpacked copy is
  // released); the ones no plan holds any more go.
  DropUnheldLocked();
  packed_.push_back({packed_md, buffer});
  *owner = std::move(buffer);
  if (release_unpacked_ && !wrapped_) weights_ = Tensor();
  return dst;
}

absl::StatusOr<AutoPad> ParseAutoPad(const Node& node) {
  const std::string s = node.attrs.GetString("auto_pad", "NOTSET");
  if (s == "NOTSET" || s.empty()) return AutoPad::kNotSet;
  if (s == "SAME_UPPER") return AutoPad::kSameUpper;
  if (s == "SAME_LOWER") return AutoPad::kSameLower;
  if (s == "VALID") return AutoPad::kValid;
  return NodeError(node, "unsupported auto_pad '", s, "'");
}

absl::StatusOr<WindowGeometry> ParseWindowGeometry(const Node& node,
                                                   std::vector<int64_t> kernel,
                                                   bool allow_ceil_mode) {
  WindowGeometry g;
  const size_t n = kernel.size();
  g.kernel = std::move(kernel);
  g.strides = node.attrs.GetInts("strides", std::vector<int64_t>(n, 1));
  g.dilations = node.attrs.GetInts("dilations", std::vector<int64_t>(n, 1));
  g.pads = node.attrs.GetInts("pads", std::vector<int64_t>(2 * n, 0));
  auto auto_pad = ParseAutoPad(node);
  if (!auto_pad.ok()) return auto_pad.status();
  g.auto_pad = *auto_pad;
  g.ceil_mode = allow_ceil_mode && node.attrs.GetInt("ceil_mode", 0) != 0;
  if (g.strides.size() != n || g.dilations.size() != n || g.pads.size() != 2 * n) {
    return NodeError(node, "strides/dilations/pads do not match the ", n,
                     " spatial dims of the kernel");
  }
  for (size_t i = 0; i < n; ++i) {
    if (g.kernel[i] < 1 || g.strides[i] < 1 || g.dilations[i] < 1) {
      return NodeError(node, "kernel_shape, strides and dilations must be >= 1");
    }
  }
  for (int64_t p : g.pads) {
    if (p < 0) return NodeError(node, "negative pads are not supported");
  }
  return g;
}

absl::Status WindowGeometry::Resolve(absl::Span<const int64_t> in,
                                     std::vector<int64_t>* out,
                                     std::vector<int64_t>* pad_begin,
                                     std::vector<int64_t>* pad_end) const {
  const int n = num_spatial();
  if (static_cast<int>(in.size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("input has ", in.size(), " spatial dims, the kernel ", n));
  }
  out->assign(n, 0);
  pad_begin->assign(n, 0);
  pad_end->assign(n, 0);
  for (int i = 0; i < n; ++i) {
    const int64_t ext = (kernel[i] - 1) * dilations[i] + 1;
    const int64_t s = strides[i];
    int64_t o = 0, pb = 0, pe = 0;
    switch (auto_pad) {
      case AutoPad::kSameUpper:
      case AutoPad::kSameLower: {
        o = (in[i] + s - 1) / s;
        const int64_t total = std::max<int64_t>(0, (o - 1) * s + ext - in[i]);
        pb = auto_pad == AutoPad::kSameUpper ? total / 2 : total - total / 2;
        pe = total - pb;
        break;
      }
      case AutoPad::kValid:
        if (in[i] < ext) break;  // reported below
        o = (in[i] - ext) / s + 1;
        break;
      case AutoPad::kNotSet: {
        pb = pads[i];
        pe = pads[i + n];
        const int64_t span = in[i] + pb + pe - ext;
        if (span < 0) break;
        o = (ceil_mode ? (span + s - 1) / s : span / s) + 1;
        break;
      }
    }
    if (o < 1 && in[i] > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("spatial dim ", i, " of size ", in[i],
                       " is smaller than the window extent ", ext));
    }
    // ceil_mode may need a last window that overhangs the end padding: grow pe so
    // that out == (in + pb + pe - ext) / s + 1 (floor) holds, as oneDNN requires.
    pe = std::max(pe, std::max<int64_t>(0, o - 1) * s + ext - in[i] - pb);
    (*out)[i] = o;
    (*pad_begin)[i] = pb;
    (*pad_end)[i] = pe;
  }
  return absl::OkStatus();
}

dnnl::memory::desc ChannelsLastDesc(absl::Span<const int64_t> shape,
                                    dnnl::memory::data_type dt) {
  using tag = dnnl::memory::format_tag;
  const tag t = shape.size() == 3 ? tag::nwc : shape.size() == 4 ? tag::nhwc : tag::ndhwc;
  return dnnl::memory::desc(ToDnnlDims(shape), dt, t);
}

dnnl::memory::desc ActivationDescOf(const Tensor& t, dnnl::memory::data_type dt) {
  if (t.layout() == Layout::kChannelsLast && t.rank() >= 3 && t.rank() <= 5) {
    return ChannelsLastDesc(t.shape(), dt);
  }
  return PlainDesc(t.shape(), dt);
}

}  // namespace qs
