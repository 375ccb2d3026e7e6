#include "engine/calibrate.h"

#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "engine/layout.h"
#include "engine/log.h"
#include "engine/ops/dnnl_util.h"
#include "engine/ops/reduced_precision.h"
#include "engine/passes/passes.h"
#include "engine/quantize/calibration.h"
#include "engine/quantize/quant_math.h"

namespace qs {

std::vector<Tensor> RandomInputs(const std::vector<ValueInfo>& inputs) {
  std::mt19937 rng(1234);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<Tensor> out;
  for (const auto& info : inputs) {
    Shape shape = info.shape;
    for (int64_t& d : shape) d = d < 0 ? 1 : d;
    Tensor t(info.dtype, shape);
    if (info.dtype == DataType::kFloat32) {
      for (int64_t i = 0; i < t.num_elements(); ++i) t.data<float>()[i] = g(rng);
    }
    out.push_back(std::move(t));
  }
  return out;
}

namespace {

absl::Status RunWithTap(const Session& session, const std::vector<Tensor>& inputs,
                        ExecutionContext::Tap tap) {
  auto ctx = session.NewContext();
  ctx->set_tap(std::move(tap));
  std::vector<Tensor> outputs;
  absl::Status st = session.Run(ctx.get(), inputs, &outputs);
  if (!st.ok()) {
    return absl::Status(st.code(), absl::StrCat("calibration run: ", st.message()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<NodeRange>> CalibrateRanges(
    const Session& fp32, const std::vector<std::vector<Tensor>>& data,
    const CompileOptions& options, const Graph& graph) {
  const size_t n = graph.nodes.size();
  std::vector<bool> candidate(n);
  for (size_t i = 0; i < n; ++i) candidate[i] = IsReducedPrecisionCandidate(graph.nodes[i], graph);
  std::vector<bool> has_residual(n);
  for (size_t i = 0; i < n; ++i) {
    has_residual[i] = candidate[i] && graph.nodes[i].attrs.GetInt(kFusedSumAttr, 0) != 0;
  }
  std::vector<RangeCollector> collectors(n), residual_collectors(n);
  auto observe = [](int pass, const Tensor* t, RangeCollector* c) {
    if (t == nullptr || t->dtype() != DataType::kFloat32) return;
    if (pass == 0) c->ObserveRange(t->data<float>(), t->num_elements());
    else c->ObserveHistogram(t->data<float>(), t->num_elements());
  };
  const auto method = static_cast<CalibrationMethod>(options.calibration_method);
  const int passes = method == CalibrationMethod::kMinMax ? 1 : 2;
  for (int pass = 0; pass < passes; ++pass) {
    for (const auto& batch : data) {
      absl::Status st = RunWithTap(
          fp32, batch,
          [&](size_t node, const std::vector<const Tensor*>& ins, const std::vector<Tensor>&) {
            if (!candidate[node] || ins.empty()) return;
            observe(pass, ins[0], &collectors[node]);
            if (has_residual[node] && ins.size() > 3) {
              observe(pass, ins[3], &residual_collectors[node]);
            }
          });
      if (!st.ok()) return st;
    }
  }
  std::vector<NodeRange> ranges(n);
  for (size_t i = 0; i < n; ++i) {
    if (!candidate[i]) continue;
    ranges[i].valid = true;
    collectors[i].Range(method, options.calibration_percentile, &ranges[i].min,
                        &ranges[i].max);
    if (has_residual[i]) {
      ranges[i].residual_valid = true;
      residual_collectors[i].Range(method, options.calibration_percentile,
                                   &ranges[i].residual_min, &ranges[i].residual_max);
    }
  }
  return ranges;
}

namespace {

// The report holds every node's FP32 output until the reduced plan has run: 47 MB per
// image for ResNet-50, 380 MB for a calibration batch of 8, which made the report the
// peak of a model's load. Two samples measure a node's SQNR as well: each of its
// tensors still holds thousands to millions of values.
constexpr int64_t kReportSamples = 2;

// The first `count` samples of `inputs` when every input of `session` has a free
// leading dimension and all of them hold more than `count` rows of it; else `inputs`.
std::vector<Tensor> LeadingSamples(const Session& session, const std::vector<Tensor>& inputs,
                                   int64_t count) {
  const std::vector<ValueInfo>& infos = session.inputs();
  if (infos.size() != inputs.size()) return inputs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    if (!infos[i].has_shape || infos[i].shape.empty() || infos[i].shape[0] >= 0 ||
        t.rank() == 0 || t.dim(0) <= count || t.dim(0) != inputs[0].dim(0)) {
      return inputs;
    }
  }
  std::vector<Tensor> out;
  for (const Tensor& t : inputs) out.push_back(t.Rows(0, count));
  return out;
}

}  // namespace

absl::StatusOr<std::vector<NodePrecision>> PrecisionReport(const Session& fp32,
                                                           const Session& reduced,
                                                           const Graph& graph,
                                                           const std::vector<Tensor>& batch) {
  const std::vector<Tensor> inputs = LeadingSamples(fp32, batch, kReportSamples);
  const size_t n = graph.nodes.size();
  std::vector<Tensor> reference(n);
  absl::Status st = RunWithTap(
      fp32, inputs,
      [&](size_t node, const std::vector<const Tensor*>&, const std::vector<Tensor>& outs) {
        if (outs.empty() || outs[0].dtype() != DataType::kFloat32) return;
        Tensor plain = ToPlain(outs[0]);
        // A channels-last output was just copied to plain: keep that copy, not a second.
        const bool copied = plain.raw_data() != outs[0].raw_data();
        reference[node] = copied ? std::move(plain) : plain.Clone();
      });
  if (!st.ok()) return st;
  std::vector<NodePrecision> report(n);
  for (size_t i = 0; i < n; ++i) {
    const Node& node = graph.nodes[i];
    report[i].name = node.name;
    report[i].op_type = node.op_type;
    const std::string p = node.attrs.GetString(kPrecisionAttr, "");
    report[i].precision = p == kPrecisionDynamic  ? "DYNAMIC_RANGE"
                          : p == kPrecisionStatic ? "INT8"
                          : p == kPrecisionBf16   ? "BF16"
                                                  : "FP32";
    report[i].sqnr_db = std::numeric_limits<double>::quiet_NaN();
  }
  // The node writing each value: a MaxPool inside a u8 chain keeps its input's
  // quantization, which its producer (a chained INT8 conv) states.
  const absl::flat_hash_map<std::string, size_t> producer = Producers(graph);
  auto quantized_by = [&](size_t i) -> const Node* {
    while (true) {
      const Node& gn = graph.nodes[i];
      if (gn.attrs.Has(kOutMinAttr)) return &gn;
      if (gn.op_type != "MaxPool" || gn.inputs.empty()) return nullptr;
      auto p = producer.find(gn.inputs[0]);
      if (p == producer.end()) return nullptr;
      i = p->second;
    }
  };
  st = RunWithTap(
      reduced, inputs,
      [&](size_t node, const std::vector<const Tensor*>&, const std::vector<Tensor>& outs) {
        if (outs.empty() || !reference[node].defined()) return;
        Tensor got = ToPlain(outs[0]);
        const Node& gn = graph.nodes[node];
        if (!gn.attrs.Has(kPrecisionAttr)) {
          // Not reduced itself, yet computed on a narrow tensor where the FP32 plan had
          // f32: a MaxPool between chained INT8 convs, or after a BF16 stem.
          if (got.dtype() == DataType::kUInt8) report[node].precision = "INT8";
          if (got.dtype() == DataType::kBFloat16) report[node].precision = "BF16";
        }
        const Node* q_node = got.dtype() == DataType::kUInt8 ? quantized_by(node) : nullptr;
        if (q_node != nullptr) {
          // A chained INT8 conv (or a MaxPool on its output): compare in real units.
          const QuantParams q = ComputeU8Params(q_node->attrs.GetFloat(kOutMinAttr, 0.f),
                                                q_node->attrs.GetFloat(kOutMaxAttr, 0.f));
          Tensor f = Tensor::Uninitialized(DataType::kFloat32, got.shape());
          DequantizeU8(got.data<uint8_t>(), got.num_elements(), q.scale, q.zero_point,
                       f.data<float>());
          got = std::move(f);
        } else if (got.dtype() == DataType::kBFloat16) {
          absl::StatusOr<Tensor> f = CastTensor(got, DataType::kFloat32);
          if (!f.ok()) return;
          got = *std::move(f);
        }
        if (got.dtype() != DataType::kFloat32) return;
        if (got.num_elements() != reference[node].num_elements()) return;
        report[node].sqnr_db = SqnrDb(reference[node].data<float>(), got.data<float>(),
                                      got.num_elements());
      });
  if (!st.ok()) return st;
  return report;
}

}  // namespace qs
