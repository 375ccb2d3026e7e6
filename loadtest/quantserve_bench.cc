// quantserve-bench: compiles an ONNX model with the engine and times it offline.
//
//   quantserve-bench --model FILE.onnx --batch N --threads T [--precision fp32]
//                    [--inputs DIR] [--outputs DIR] [--warmup 10] [--iters 50] [--json]
//
// --inputs DIR reads <input name>.npy per input (the batch comes from the file);
// --outputs DIR writes <output name>.npy per output. In file names every character
// outside [A-Za-z0-9._-] becomes '_'. Without --inputs, inputs are random (floats in
// [-1, 1), integers 0): valid index ranges for integer inputs are the caller's job.
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/npy.h"
#include "engine/quantize/calibration_data.h"
#include "engine/onnx_import.h"
#include "engine/session.h"

ABSL_FLAG(std::string, model, "", "ONNX model file.");
ABSL_FLAG(int, batch, 1, "Batch size for random inputs (ignored with --inputs).");
ABSL_FLAG(int, threads, 0, "OpenMP threads (0 = all CPUs).");
ABSL_FLAG(std::string, precision, "fp32", "fp32 | dynamic_range | int8 | fp16 | bf16.");
ABSL_FLAG(std::string, inputs, "", "Folder with one <input name>.npy per input.");
ABSL_FLAG(std::string, outputs, "", "Folder to write one <output name>.npy per output.");
ABSL_FLAG(int, warmup, 10, "Untimed runs before measuring.");
ABSL_FLAG(int, iters, 50, "Timed runs.");
ABSL_FLAG(bool, json, false, "Print one JSON object instead of text.");
ABSL_FLAG(bool, profile, false, "Print per-node times (text mode).");
ABSL_FLAG(std::string, calibration, "",
          "INT8 calibration folder (<input>.npy with samples first, numbered subfolders, "
          "or ONNX test-data .pb files).");
ABSL_FLAG(std::string, calibration_method, "minmax", "minmax | percentile | entropy.");
ABSL_FLAG(double, calibration_percentile, 99.999, "Percentile for --calibration_method=percentile.");
ABSL_FLAG(int, calibration_samples, 64, "Calibration samples used at most (0 = all).");
ABSL_FLAG(bool, int8_stem_bf16, true,
          "INT8: run the image stem in BF16 (CPUs with native bf16) instead of FP32.");
ABSL_FLAG(std::string, int8_head, "dynamic_range",
          "INT8: what the output head runs at: dynamic_range | bf16 (CPUs with native "
          "bf16; FP32 elsewhere) | fp32.");
ABSL_FLAG(bool, no_default_exclusions, false,
          "Quantize the output head, image stem and depthwise convolutions too.");
ABSL_FLAG(std::vector<std::string>, exclude_op_types, {}, "Op types kept in FP32.");
ABSL_FLAG(std::vector<std::string>, exclude_nodes, {}, "Node names kept in FP32.");
ABSL_FLAG(std::vector<std::string>, warmup_batches, {},
          "Batch sizes to warm up at instead of --batch (as the daemon warms up at 1, "
          "max_batch_size and the preferred sizes); the first run at --batch is then timed "
          "on its own (\"first run\"): the cost of a batch size first seen on a request.");
ABSL_FLAG(bool, batch_dim, true,
          "Treat the inputs' leading dimension as a batch (a daemon model with "
          "max_batch_size > 0); false: as max_batch_size 0 (batches never sharded).");
ABSL_FLAG(bool, report, false, "Print the per-node precision report (SQNR vs FP32).");

namespace {

std::string SafeName(const std::string& name) {
  std::string out = name;
  for (char& c : out) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
      c = '_';
  }
  return out;
}

int Fail(const absl::Status& st) {
  std::fprintf(stderr, "quantserve-bench: %s\n", std::string(st.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Times an ONNX model on the quantserve engine.");
  absl::ParseCommandLine(argc, argv);
  const std::string path = absl::GetFlag(FLAGS_model);
  if (path.empty()) return Fail(absl::InvalidArgumentError("--model is required"));
  if (absl::GetFlag(FLAGS_threads) > 0) omp_set_num_threads(absl::GetFlag(FLAGS_threads));

  qs::CompileOptions options;
  const std::string p = absl::GetFlag(FLAGS_precision);
  if (p == "fp32") {
    options.precision = qs::Precision::kFP32;
  } else if (p == "dynamic_range") {
    options.precision = qs::Precision::kDynamicRange;
  } else if (p == "int8") {
    options.precision = qs::Precision::kInt8;
  } else if (p == "fp16") {
    options.precision = qs::Precision::kFP16;
  } else if (p == "bf16") {
    options.precision = qs::Precision::kBF16;
  } else {
    return Fail(absl::InvalidArgumentError(absl::StrCat("unknown --precision ", p)));
  }
  options.disable_default_exclusions = absl::GetFlag(FLAGS_no_default_exclusions);
  options.int8_stem_in_bf16 = absl::GetFlag(FLAGS_int8_stem_bf16);
  const std::string head = absl::GetFlag(FLAGS_int8_head);
  using Head = qs::CompileOptions::Int8Head;
  if (head == "dynamic_range") {
    options.int8_head = Head::kDynamicRange;
  } else if (head == "bf16") {
    options.int8_head = Head::kBf16;
  } else if (head == "fp32") {
    options.int8_head = Head::kFp32;
  } else {
    return Fail(absl::InvalidArgumentError(
        absl::StrCat("--int8_head must be dynamic_range, bf16 or fp32, not \"", head, "\"")));
  }
  // Free leading dimensions are the batch (as a daemon config's max_batch_size says):
  // the engine may shard batches (Session::Run).
  options.max_batch_size = absl::GetFlag(FLAGS_batch_dim) ? 1 << 30 : 0;
  options.exclude_op_types = absl::GetFlag(FLAGS_exclude_op_types);
  options.exclude_nodes = absl::GetFlag(FLAGS_exclude_nodes);
  const absl::Time load_start = absl::Now();
  auto proto = qs::LoadOnnxModel(path);
  if (!proto.ok()) return Fail(proto.status());
  if (!absl::GetFlag(FLAGS_calibration).empty()) {
    auto graph = qs::ImportSignature(*proto);  // the inputs only: no weight copied
    if (!graph.ok()) return Fail(graph.status());
    auto data = qs::LoadCalibrationData(absl::GetFlag(FLAGS_calibration), graph->inputs, 8,
                                        absl::GetFlag(FLAGS_calibration_samples));
    if (!data.ok()) return Fail(data.status());
    options.calibration = *std::move(data);
    const std::string m = absl::GetFlag(FLAGS_calibration_method);
    options.calibration_method = m == "entropy" ? 2 : m == "percentile" ? 1 : 0;
    options.calibration_percentile = absl::GetFlag(FLAGS_calibration_percentile);
  }
  auto session = qs::Session::Compile(*std::move(proto), options);
  if (!session.ok()) return Fail(session.status());
  const double compile_s = absl::ToDoubleSeconds(absl::Now() - load_start);

  std::vector<qs::Tensor> inputs;
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  for (const auto& info : (*session)->inputs()) {
    if (!absl::GetFlag(FLAGS_inputs).empty()) {
      auto t = qs::ReadNpy(absl::StrCat(absl::GetFlag(FLAGS_inputs), "/", SafeName(info.name),
                                        ".npy"));
      if (!t.ok()) return Fail(t.status());
      inputs.push_back(*std::move(t));
      continue;
    }
    qs::Shape shape = info.shape;
    for (size_t d = 0; d < shape.size(); ++d) {
      if (shape[d] < 0) shape[d] = d == 0 ? absl::GetFlag(FLAGS_batch) : 1;
    }
    qs::Tensor t(info.dtype, shape);
    if (info.dtype == qs::DataType::kFloat32) {
      for (int64_t i = 0; i < t.num_elements(); ++i) t.data<float>()[i] = uni(rng);
    }
    inputs.push_back(std::move(t));
  }

  auto ctx = (*session)->NewContext();
  std::vector<qs::Tensor> outputs;
  const std::vector<std::string> warmup_batches = absl::GetFlag(FLAGS_warmup_batches);
  double first_run_ms = -1;
  if (!warmup_batches.empty()) {
    for (const std::string& b : warmup_batches) {
      int64_t wb = 0;
      if (!absl::SimpleAtoi(b, &wb) || wb < 1) {
        return Fail(absl::InvalidArgumentError(absl::StrCat("bad --warmup_batches ", b)));
      }
      std::vector<qs::Tensor> w;
      for (const qs::Tensor& t : inputs) {
        qs::Shape shape = t.shape();
        if (!shape.empty()) shape[0] = wb;
        w.push_back(qs::Tensor(t.dtype(), shape));
      }
      for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_warmup)); ++i) {
        absl::Status st = (*session)->Warmup(ctx.get(), w, &outputs);
        if (!st.ok()) return Fail(st);
      }
    }
    const absl::Time t0 = absl::Now();
    absl::Status st = (*session)->Run(ctx.get(), inputs, &outputs);
    if (!st.ok()) return Fail(st);
    first_run_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
  }
  for (int i = 0; i < absl::GetFlag(FLAGS_warmup) && warmup_batches.empty(); ++i) {
    // As the daemon warms up: kernels are chosen by timing in the first run.
    absl::Status st = (*session)->Warmup(ctx.get(), inputs, &outputs);
    if (!st.ok()) return Fail(st);
  }
  ctx->set_profiling(absl::GetFlag(FLAGS_profile));
  std::vector<double> ms;
  const int iters = std::max(1, absl::GetFlag(FLAGS_iters));
  for (int i = 0; i < iters; ++i) {
    const absl::Time t0 = absl::Now();
    absl::Status st = (*session)->Run(ctx.get(), inputs, &outputs);
    if (!st.ok()) return Fail(st);
    ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double p90 = ms[std::min(ms.size() - 1, ms.size() * 9 / 10)];
  const int64_t batch = inputs.empty() || inputs[0].rank() == 0 ? 1 : inputs[0].dim(0);
  const double throughput = batch * 1000.0 / median;

  if (!absl::GetFlag(FLAGS_outputs).empty()) {
    const auto& infos = (*session)->outputs();
    for (size_t i = 0; i < outputs.size(); ++i) {
      absl::Status st = qs::WriteNpy(
          absl::StrCat(absl::GetFlag(FLAGS_outputs), "/", SafeName(infos[i].name), ".npy"),
          outputs[i]);
      if (!st.ok()) return Fail(st);
    }
  }
  const qs::PlanStats stats = (*session)->stats();
  const qs::ExecutionContext::ActivationMemory memory = ctx->activation_memory();
  if (absl::GetFlag(FLAGS_json)) {
    std::printf(
        "{\"model\":\"%s\",\"precision\":\"%s\",\"batch\":%lld,\"threads\":%d,"
        "\"iters\":%d,\"median_ms\":%.4f,\"p90_ms\":%.4f,\"throughput\":%.2f,"
        "\"compile_s\":%.3f,\"weight_bytes\":%lld,\"peak_activation_bytes\":%lld,"
        "\"activation_arena_bytes\":%zu,\"activation_cached_bytes\":%zu,"
        "\"arena_hits\":%lld,\"first_run_ms\":%.4f,\"batch_shards\":%d}\n",
        path.c_str(), p.c_str(), static_cast<long long>(batch), omp_get_max_threads(), iters,
        median, p90, throughput, compile_s, static_cast<long long>(stats.weight_bytes),
        static_cast<long long>(ctx->peak_activation_bytes()), memory.arena_bytes,
        memory.cached_bytes, static_cast<long long>(memory.arena_hits), first_run_ms,
        ctx->batch_shard_contexts());
  } else {
    std::printf("model %s  precision %s  batch %lld  threads %d\n", path.c_str(), p.c_str(),
                static_cast<long long>(batch), omp_get_max_threads());
    std::printf("median %.3f ms  p90 %.3f ms  throughput %.1f/s  (%d runs, compile %.2f s)\n",
                median, p90, throughput, iters, compile_s);
    if (first_run_ms >= 0) std::printf("first run %.3f ms\n", first_run_ms);
    if (ctx->batch_shard_contexts() > 0) {
      std::printf("batch run as %d shards, one per thread\n", ctx->batch_shard_contexts());
    }
    std::printf("weights %lld bytes  peak activations %lld bytes  kernels %lld\n",
                static_cast<long long>(stats.weight_bytes),
                static_cast<long long>(ctx->peak_activation_bytes()),
                static_cast<long long>(stats.num_nodes));
    std::printf("activation memory held: arena %zu bytes  cache %zu bytes\n",
                memory.arena_bytes, memory.cached_bytes);
    if (absl::GetFlag(FLAGS_report)) {
      for (const auto& n : (*session)->precision_report()) {
        std::printf("  %-40s %-12s %-14s %8.2f dB\n", n.name.c_str(), n.op_type.c_str(),
                    n.precision.c_str(), n.sqnr_db);
      }
    }
    if (absl::GetFlag(FLAGS_profile)) {
      // Per timed run (a node the session runs per sample is called several times).
      for (const auto& n : ctx->profile()) {
        std::printf("  %-40s %-20s %9.3f ms\n", n.name.c_str(), n.op_type.c_str(),
                    absl::ToDoubleMilliseconds(n.total) / iters);
      }
    }
  }
  return 0;
}
