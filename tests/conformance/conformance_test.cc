// ONNX backend node-test conformance runner.
//
//   conformance_test [--excluded=FILE] [--filter=REGEX] [--verbose] DATA_DIR
//   conformance_test --list-ops
//
// DATA_DIR is what tests/conformance/generate_node_tests.py --out wrote (or its
// node/ subdirectory); $QS_ONNX_NODE_DATA is used when no directory is given.
//
// Every DATA_DIR/node/test_*/ case is either skipped as not in scope, or run:
//   not in scope: a node (subgraphs included) in a non-default domain, or of an
//   op type
//     DefaultKernelRegistry() does not support; a graph input or output that is
//     not a tensor (sequence, optional, map); a case named in the exclusion
//     list (tests/conformance/excluded_cases.txt, "test_name  # reason" per
//     line).
//   run: LoadOnnxModel, Session::Compile with default (FP32) options, Run on
//   every
//     test_data_set_*/input_<i>.pb, and compare each output with output_<i>.pb
//     the way onnx's backend test runner does (numpy.testing.assert_allclose,
//     rtol=1e-3, atol=1e-7): same dtype, same shape, floats |got - expected| <=
//     atol + rtol * |expected| with NaN equal to NaN and infinities equal only
//     to themselves, integers and bools exact. Any error counts as a failure,
//     including Unimplemented from Compile: the op claims support, so every
//     node test of it has to pass. (numpy has no bfloat16: a UINT16 .pb for a
//     value the model declares BFLOAT16 holds bfloat16 bits and is read as
//     BFLOAT16.)
//
// Prints per op type "Op: N run, M passed" (a case counts toward every op type
// in its graph), each failure with its message, and last "conformance: N
// passed, M failed, K skipped". Exit status: 0 when nothing failed, 1 when a
// case failed, 2 for a usage or setup error. The name of each case is written
// to stderr before it runs, so a crash is attributable.
//
// --list-ops prints every op type the registry supports with the default-domain
// opsets it is registered for (probed through KernelRegistry::Create, one
// forked child per probe so that a factory handed the bare probe node cannot
// take the listing down).
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "engine/graph.h"
#include "engine/onnx_import.h"
#include "engine/ops/registry.h"
#include "engine/session.h"
#include "engine/status_macros.h"
#include "engine/tensor.h"
#include "onnx/onnx_pb.h"

#ifndef QS_SOURCE_DIR
#define QS_SOURCE_DIR "."
#endif

namespace qs {
namespace {

namespace fs = std::filesystem;

// onnx.backend.test.runner's defaults for node tests.
constexpr double kRtol = 1e-3;
constexpr double kAtol = 1e-7;
// Highest default-domain opset libonnx 1.12 knows.
constexpr int64_t kMaxOpset = 17;
// Exit status for usage and setup errors.
constexpr int kSetupError = 2;

struct Options {
  std::string data_dir;
  std::string excluded_path =
      std::string(QS_SOURCE_DIR) + "/tests/conformance/excluded_cases.txt";
  std::string filter;
  bool list_ops = false;
  bool verbose = false;
};

// ---------------------------------------------------------------- file helpers

absl::StatusOr<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return absl::NotFoundError(absl::StrCat(path.string(), ": cannot open"));
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

absl::StatusOr<onnx::TensorProto> ReadTensorProto(const fs::path& path) {
  QS_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  onnx::TensorProto proto;
  if (!proto.ParseFromString(bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": not a TensorProto"));
  }
  return proto;
}

// The files `prefix`<i>.pb in `dir`, ordered by i (input_10 after input_9).
std::vector<fs::path> NumberedFiles(const fs::path& dir,
                                    const std::string& prefix) {
  std::vector<std::pair<long, fs::path>> found;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() + 3 ||
        name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - 3, 3, ".pb") != 0) {
      continue;
    }
    const std::string digits =
        name.substr(prefix.size(), name.size() - prefix.size() - 3);
    if (digits.find_first_not_of("0123456789") != std::string::npos) continue;
    found.emplace_back(std::stol(digits), entry.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& [i, p] : found) out.push_back(std::move(p));
  return out;
}

// "test_name  # reason" per line; blank lines and lines starting with '#' are
// comments. Every entry needs a reason.
absl::StatusOr<std::map<std::string, std::string>> ReadExclusions(
    const std::string& path) {
  QS_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::map<std::string, std::string> out;
  std::istringstream lines(text);
  std::string line;
  for (int lineno = 1; std::getline(lines, line); ++lineno) {
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty() || l.front() == '#') continue;
    const size_t hash = l.find('#');
    const std::string name(absl::StripAsciiWhitespace(l.substr(0, hash)));
    const std::string reason(
        hash == absl::string_view::npos
            ? ""
            : absl::StripAsciiWhitespace(l.substr(hash + 1)));
    if (name.empty() || name.find_first_of(" \t") != std::string::npos ||
        reason.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", lineno,
                       ": expected 'test_name  # reason', got '", l, "'"));
    }
    out[name] = reason;
  }
  return out;
}

// ---------------------------------------------------------------- scope

// Every node of `graph` and of its subgraphs (If/Loop/Scan bodies).
void CollectNodes(const onnx::GraphProto& graph,
                  std::vector<const onnx::NodeProto*>* nodes) {
  for (const auto& node : graph.node()) {
    nodes->push_back(&node);
    for (const auto& attr : node.attribute()) {
      if (attr.has_g()) CollectNodes(attr.g(), nodes);
      for (const auto& g : attr.graphs()) CollectNodes(g, nodes);
    }
  }
}

enum class SkipKind { kNone, kUnsupportedOp, kNonTensor, kExcluded };

struct Scope {
  SkipKind skip = SkipKind::kNone;
  std::string reason;
  std::set<std::string> unsupported_ops;  // for kUnsupportedOp
  std::set<std::string> op_types;         // every op type in the graph
};

Scope CheckScope(const onnx::ModelProto& model, const std::string& name,
                 const std::map<std::string, std::string>& exclusions) {
  Scope scope;
  std::vector<const onnx::NodeProto*> nodes;
  CollectNodes(model.graph(), &nodes);
  const KernelRegistry& registry = DefaultKernelRegistry();
  for (const onnx::NodeProto* node : nodes) {
    scope.op_types.insert(node->op_type());
    if (!node->domain().empty() && node->domain() != "ai.onnx") {
      scope.unsupported_ops.insert(
          absl::StrCat(node->domain(), ".", node->op_type()));
    } else if (!registry.Supports(node->op_type())) {
      scope.unsupported_ops.insert(node->op_type());
    }
  }
  if (!scope.unsupported_ops.empty()) {
    scope.skip = SkipKind::kUnsupportedOp;
    scope.reason = absl::StrCat("unsupported op ",
                                absl::StrJoin(scope.unsupported_ops, ", "));
    return scope;
  }
  for (const auto* values : {&model.graph().input(), &model.graph().output()}) {
    for (const auto& vi : *values) {
      if (!vi.type().has_tensor_type()) {
        scope.skip = SkipKind::kNonTensor;
        scope.reason = absl::StrCat("'", vi.name(), "' is not a tensor");
        return scope;
      }
    }
  }
  auto it = exclusions.find(name);
  if (it != exclusions.end()) {
    scope.skip = SkipKind::kExcluded;
    scope.reason = absl::StrCat("excluded: ", it->second);
  }
  return scope;
}

// ---------------------------------------------------------------- comparison

bool IsFloat(DataType t) {
  return t == DataType::kFloat32 || t == DataType::kFloat64 ||
         t == DataType::kFloat16 || t == DataType::kBFloat16;
}

double FloatAt(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DataType::kFloat32:
      return t.data<float>()[i];
    case DataType::kFloat64:
      return t.data<double>()[i];
    case DataType::kFloat16:
      return HalfToFloat(t.data<uint16_t>()[i]);
    case DataType::kBFloat16:
      return BFloat16ToFloat(t.data<uint16_t>()[i]);
    default:
      return 0;
  }
}

// Integer and bool elements, widened. Exactly one of the pair is meaningful:
// the unsigned one for kUInt64, the signed one otherwise.
struct IntValue {
  int64_t s = 0;
  uint64_t u = 0;
  bool operator==(const IntValue& o) const { return s == o.s && u == o.u; }
};

IntValue IntAt(const Tensor& t, int64_t i) {
  IntValue v;
  switch (t.dtype()) {
    case DataType::kInt8:
      v.s = t.data<int8_t>()[i];
      break;
    case DataType::kInt16:
      v.s = t.data<int16_t>()[i];
      break;
    case DataType::kInt32:
      v.s = t.data<int32_t>()[i];
      break;
    case DataType::kInt64:
      v.s = t.data<int64_t>()[i];
      break;
    case DataType::kUInt8:
      v.s = t.data<uint8_t>()[i];
      break;
    case DataType::kUInt16:
      v.s = t.data<uint16_t>()[i];
      break;
    case DataType::kUInt32:
      v.s = t.data<uint32_t>()[i];
      break;
    case DataType::kUInt64:
      v.u = t.data<uint64_t>()[i];
      break;
    case DataType::kBool:
      v.s = t.data<uint8_t>()[i] != 0;
      break;
    default:
      break;
  }
  return v;
}

std::string ElementToString(const Tensor& t, int64_t i) {
  if (IsFloat(t.dtype())) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.9g", FloatAt(t, i));
    return buf;
  }
  const IntValue v = IntAt(t, i);
  if (t.dtype() == DataType::kBool) return v.s ? "true" : "false";
  return t.dtype() == DataType::kUInt64 ? absl::StrCat(v.u) : absl::StrCat(v.s);
}

// Flat index -> "[i,j,k]" for `shape`.
std::string IndexToString(const Shape& shape, int64_t flat) {
  std::vector<int64_t> idx(shape.size());
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = shape[d] == 0 ? 0 : flat % shape[d];
    flat = shape[d] == 0 ? 0 : flat / shape[d];
  }
  return ShapeToString(idx);
}

// numpy.testing.assert_allclose(actual=got, desired=expected, rtol, atol) for
// floats, exact equality otherwise.
absl::Status CompareTensors(const Tensor& expected, const Tensor& got) {
  if (got.dtype() != expected.dtype()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: expected ", DataTypeName(expected.dtype()),
                     ", got ", DataTypeName(got.dtype())));
  }
  if (got.shape() != expected.shape()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape: expected ", ShapeToString(expected.shape()),
                     ", got ", ShapeToString(got.shape())));
  }
  const int64_t n = expected.num_elements();
  const bool is_float = IsFloat(expected.dtype());
  int64_t mismatches = 0;
  int64_t first = -1;
  double max_abs = 0;
  for (int64_t i = 0; i < n; ++i) {
    bool ok;
    if (is_float) {
      const double a = FloatAt(got, i);
      const double b = FloatAt(expected, i);
      if (std::isnan(a) || std::isnan(b)) {
        ok = std::isnan(a) && std::isnan(b);
      } else if (std::isinf(a) || std::isinf(b)) {
        ok = a == b;
      } else {
        const double diff = std::fabs(a - b);
        ok = diff <= kAtol + kRtol * std::fabs(b);
        if (!ok) max_abs = std::max(max_abs, diff);
      }
    } else {
      ok = IntAt(got, i) == IntAt(expected, i);
    }
    if (!ok) {
      if (first < 0) first = i;
      ++mismatches;
    }
  }
  if (mismatches == 0) return absl::OkStatus();
  std::string msg = absl::StrCat(
      mismatches, " of ", n, " elements differ; first at ",
      IndexToString(expected.shape(), first), ": expected ",
      ElementToString(expected, first), ", got ", ElementToString(got, first));
  if (is_float && max_abs > 0) {
    absl::StrAppend(&msg, "; max |diff| ", max_abs, " (rtol ", kRtol, ", atol ",
                    kAtol, ")");
  }
  return absl::InvalidArgumentError(msg);
}

// ---------------------------------------------------------------- running a
// case

// numpy has no bfloat16, so onnx writes bfloat16 test data as UINT16 tensors
// holding the bfloat16 bits; read such a tensor as the BFLOAT16 the model
// declares.
void AdaptBFloat16(DataType declared, onnx::TensorProto* proto) {
  if (declared == DataType::kBFloat16 &&
      proto->data_type() == onnx::TensorProto::UINT16) {
    proto->set_data_type(onnx::TensorProto::BFLOAT16);
  }
}

absl::Status RunDataSet(const Session& session, ExecutionContext* ctx,
                        const fs::path& dir) {
  std::vector<fs::path> input_files = NumberedFiles(dir, "input_");
  std::vector<fs::path> output_files = NumberedFiles(dir, "output_");
  const auto& inputs = session.inputs();
  const auto& outputs = session.outputs();
  if (input_files.size() != inputs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir.filename().string(), " has ", input_files.size(),
                     " inputs, the compiled model ", inputs.size()));
  }
  if (output_files.size() != outputs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir.filename().string(), " has ", output_files.size(),
                     " outputs, the compiled model ", outputs.size()));
  }
  // onnx writes input_<i> for graph input i, named after it; match by name when
  // the names are there, by position otherwise.
  std::vector<onnx::TensorProto> protos;
  for (const fs::path& p : input_files) {
    QS_ASSIGN_OR_RETURN(onnx::TensorProto proto, ReadTensorProto(p));
    protos.push_back(std::move(proto));
  }
  std::vector<Tensor> in_tensors;
  for (size_t i = 0; i < inputs.size(); ++i) {
    onnx::TensorProto* proto = &protos[i];
    for (auto& candidate : protos) {
      if (candidate.name() == inputs[i].name) proto = &candidate;
    }
    AdaptBFloat16(inputs[i].dtype, proto);
    auto t = TensorFromProto(*proto);
    if (!t.ok()) {
      return absl::Status(
          t.status().code(),
          absl::StrCat("input '", inputs[i].name,
                       "': TensorFromProto: ", t.status().message()));
    }
    in_tensors.push_back(*std::move(t));
  }
  std::vector<Tensor> got;
  absl::Status st = session.Run(ctx, in_tensors, &got);
  if (!st.ok())
    return absl::Status(st.code(), absl::StrCat("Run: ", st.message()));
  if (got.size() != outputs.size()) {
    return absl::InternalError(absl::StrCat(
        "Run returned ", got.size(), " outputs, expected ", outputs.size()));
  }
  std::vector<std::string> errors;
  for (size_t i = 0; i < outputs.size(); ++i) {
    QS_ASSIGN_OR_RETURN(onnx::TensorProto proto,
                        ReadTensorProto(output_files[i]));
    AdaptBFloat16(outputs[i].dtype, &proto);
    auto expected = TensorFromProto(proto);
    if (!expected.ok()) {
      return absl::Status(
          expected.status().code(),
          absl::StrCat("expected output ", i,
                       ": TensorFromProto: ", expected.status().message()));
    }
    absl::Status cmp = CompareTensors(*expected, got[i]);
    if (!cmp.ok()) {
      errors.push_back(absl::StrCat("output ", i, " '", outputs[i].name,
                                    "': ", cmp.message()));
    }
  }
  if (!errors.empty()) {
    return absl::InvalidArgumentError(absl::StrJoin(errors, "; "));
  }
  return absl::OkStatus();
}

absl::Status RunCase(const fs::path& case_dir) {
  const std::string model_path = (case_dir / "model.onnx").string();
  auto model = LoadOnnxModel(model_path);
  if (!model.ok()) {
    return absl::Status(
        model.status().code(),
        absl::StrCat("LoadOnnxModel: ", model.status().message()));
  }
  auto session = Session::Compile(*model, CompileOptions{});
  if (!session.ok()) {
    return absl::Status(session.status().code(),
                        absl::StrCat("Compile: ", session.status().message()));
  }
  std::vector<fs::path> sets;
  for (const auto& entry : fs::directory_iterator(case_dir)) {
    if (entry.is_directory() &&
        entry.path().filename().string().rfind("test_data_set_", 0) == 0) {
      sets.push_back(entry.path());
    }
  }
  std::sort(sets.begin(), sets.end());
  if (sets.empty()) return absl::NotFoundError("no test_data_set_* directory");
  auto ctx = (*session)->NewContext();
  for (const fs::path& set : sets) {
    absl::Status st = RunDataSet(**session, ctx.get(), set);
    if (!st.ok()) {
      return sets.size() == 1
                 ? st
                 : absl::Status(st.code(), absl::StrCat(set.filename().string(),
                                                        ": ", st.message()));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- --list-ops

// Whether DefaultKernelRegistry() has a factory for `op` at `opset`: Create()
// on a bare probe node either returns the registry's own "unsupported op" error
// (no factory for that opset) or reaches a factory. The probe runs in a child
// process because a factory may assume inputs or attributes the probe node
// lacks.
bool RegisteredAt(const std::string& op, int64_t opset) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    std::exit(kSetupError);
  }
  if (pid == 0) {
    alarm(10);
    Node node;
    node.name = "probe";
    node.op_type = op;
    KernelInit init;
    init.node = &node;
    init.opset = opset;
    auto kernel = DefaultKernelRegistry().Create(init);
    const bool unregistered =
        !kernel.ok() && absl::IsUnimplemented(kernel.status()) &&
        kernel.status().message() == absl::StrCat("unsupported op ", op,
                                                  " (node 'probe', opset ",
                                                  opset, ")");
    _exit(unregistered ? 3 : 0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return !(WIFEXITED(status) && WEXITSTATUS(status) == 3);
}

// [1,2,3,7,8] -> "1-3, 7-8".
std::string FormatRanges(const std::vector<int64_t>& opsets) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < opsets.size();) {
    size_t j = i;
    while (j + 1 < opsets.size() && opsets[j + 1] == opsets[j] + 1) ++j;
    parts.push_back(opsets[i] == opsets[j]
                        ? absl::StrCat(opsets[i])
                        : absl::StrCat(opsets[i], "-", opsets[j]));
    i = j + 1;
  }
  return parts.empty() ? "none" : absl::StrJoin(parts, ", ");
}

int ListOps() {
  const KernelRegistry& registry = DefaultKernelRegistry();
  const std::vector<std::string> ops = registry.OpTypes();
  std::printf("%-28s opsets\n", "op");
  for (const std::string& op : ops) {
    std::vector<int64_t> opsets;
    for (int64_t v = 1; v <= kMaxOpset; ++v) {
      if (RegisteredAt(op, v)) opsets.push_back(v);
    }
    std::printf("%-28s %s\n", op.c_str(), FormatRanges(opsets).c_str());
  }
  std::printf("%zu op types\n", ops.size());
  return 0;
}

// ---------------------------------------------------------------- main

struct OpStats {
  int run = 0;
  int passed = 0;
};

int Usage(const char* argv0) {
  std::fprintf(
      stderr,
      "usage: %s [--excluded=FILE] [--filter=REGEX] [--verbose] DATA_DIR\n"
      "       %s --list-ops\n"
      "DATA_DIR: generate_node_tests.py --out DIR (default: "
      "$QS_ONNX_NODE_DATA)\n",
      argv0, argv0);
  return kSetupError;
}

int Main(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--list-ops") {
      opt.list_ops = true;
    } else if (arg == "--verbose" || arg == "-v") {
      opt.verbose = true;
    } else if (absl::ConsumePrefix(&arg, "--excluded=")) {
      opt.excluded_path = std::string(arg);
    } else if (absl::ConsumePrefix(&arg, "--filter=")) {
      opt.filter = std::string(arg);
    } else if (arg == "--help" || arg == "-h" || absl::StartsWith(arg, "-") ||
               !opt.data_dir.empty()) {
      return Usage(argv[0]);
    } else {
      opt.data_dir = std::string(arg);
    }
  }
  if (opt.list_ops) return ListOps();
  if (opt.data_dir.empty()) {
    const char* env = std::getenv("QS_ONNX_NODE_DATA");
    if (env == nullptr || *env == '\0') return Usage(argv[0]);
    opt.data_dir = env;
  }
  fs::path node_dir = opt.data_dir;
  if (fs::is_directory(node_dir / "node")) node_dir /= "node";
  if (!fs::is_directory(node_dir)) {
    std::fprintf(stderr, "%s: not a directory\n", node_dir.string().c_str());
    return kSetupError;
  }
  auto exclusions = ReadExclusions(opt.excluded_path);
  if (!exclusions.ok()) {
    std::fprintf(stderr, "%s\n",
                 std::string(exclusions.status().message()).c_str());
    return kSetupError;
  }
  std::regex filter;
  try {
    filter = std::regex(opt.filter);
  } catch (const std::regex_error& e) {
    std::fprintf(stderr, "--filter: %s\n", e.what());
    return kSetupError;
  }

  std::vector<std::string> cases;
  for (const auto& entry : fs::directory_iterator(node_dir)) {
    if (fs::is_regular_file(entry.path() / "model.onnx")) {
      cases.push_back(entry.path().filename().string());
    }
  }
  std::sort(cases.begin(), cases.end());
  if (cases.empty()) {
    std::fprintf(stderr,
                 "%s: no test cases (run generate_node_tests.py --out)\n",
                 node_dir.string().c_str());
    return kSetupError;
  }
  for (const auto& [name, reason] : *exclusions) {
    if (!std::binary_search(cases.begin(), cases.end(), name)) {
      std::fprintf(stderr, "warning: excluded case %s is not in %s\n",
                   name.c_str(), node_dir.string().c_str());
    }
  }

  std::map<std::string, OpStats> per_op;
  for (const std::string& op : DefaultKernelRegistry().OpTypes()) per_op[op];
  std::vector<std::pair<std::string, std::string>> failures;
  std::map<std::string, int>
      missing_ops;  // unsupported op -> cases it kept out
  int passed = 0, failed = 0, skipped = 0, filtered = 0;
  int skipped_unsupported = 0, skipped_non_tensor = 0, skipped_excluded = 0;

  for (const std::string& name : cases) {
    if (!opt.filter.empty() && !std::regex_search(name, filter)) {
      ++filtered;
      continue;
    }
    const fs::path case_dir = node_dir / name;
    // Scope is decided on the raw proto (no checker), so that a model we would
    // not run anyway cannot fail on its way in.
    onnx::ModelProto raw;
    {
      auto bytes = ReadFile(case_dir / "model.onnx");
      if (!bytes.ok() || !raw.ParseFromString(*bytes)) {
        failures.emplace_back(name, "model.onnx: cannot read or parse");
        ++failed;
        continue;
      }
    }
    const Scope scope = CheckScope(raw, name, *exclusions);
    if (scope.skip != SkipKind::kNone) {
      ++skipped;
      switch (scope.skip) {
        case SkipKind::kUnsupportedOp:
          ++skipped_unsupported;
          for (const auto& op : scope.unsupported_ops) ++missing_ops[op];
          break;
        case SkipKind::kNonTensor:
          ++skipped_non_tensor;
          break;
        case SkipKind::kExcluded:
          ++skipped_excluded;
          break;
        case SkipKind::kNone:
          break;
      }
      if (opt.verbose)
        std::printf("SKIP %s: %s\n", name.c_str(), scope.reason.c_str());
      continue;
    }

    std::fprintf(stderr, "[ RUN  ] %s\n", name.c_str());
    std::fflush(stderr);
    absl::Status st;
    try {
      st = RunCase(case_dir);
    } catch (const std::exception& e) {
      st = absl::InternalError(absl::StrCat("uncaught exception: ", e.what()));
    }
    for (const std::string& op : scope.op_types) {
      OpStats& s = per_op[op];
      ++s.run;
      if (st.ok()) ++s.passed;
    }
    if (st.ok()) {
      ++passed;
      if (opt.verbose) std::printf("PASS %s\n", name.c_str());
    } else {
      ++failed;
      failures.emplace_back(name, st.ToString());
      if (opt.verbose)
        std::printf("FAIL %s: %s\n", name.c_str(), st.ToString().c_str());
    }
  }

  std::printf(
      "\nper op type (a case counts toward every op type in its graph):\n");
  for (const auto& [op, s] : per_op) {
    std::printf("%s: %d run, %d passed\n", op.c_str(), s.run, s.passed);
  }
  if (!missing_ops.empty()) {
    std::vector<std::string> parts;
    for (const auto& [op, n] : missing_ops)
      parts.push_back(absl::StrCat(op, " ", n));
    std::printf("\nunsupported ops (cases skipped because of each): %s\n",
                absl::StrJoin(parts, ", ").c_str());
  }
  std::printf(
      "\nskipped: %d unsupported op or domain, %d non-tensor inputs/outputs, "
      "%d "
      "excluded (%s)\n",
      skipped_unsupported, skipped_non_tensor, skipped_excluded,
      opt.excluded_path.c_str());
  if (filtered > 0) {
    std::printf("not selected by --filter: %d\n", filtered);
  }
  if (!failures.empty()) {
    std::printf("\nfailures:\n");
    for (const auto& [name, msg] : failures) {
      std::printf("FAILED %s: %s\n", name.c_str(), msg.c_str());
    }
  }
  std::printf("\nconformance: %d passed, %d failed, %d skipped\n", passed,
              failed, skipped);
  std::fflush(stdout);
  return failed > 0 ? 1 : 0;
}

}  // namespace
}  // namespace qs

int main(int argc, char** argv) { return qs::Main(argc, argv); }
