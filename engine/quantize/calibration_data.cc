#include "engine/quantize/calibration_data.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "engine/npy.h"

namespace qs {
namespace fs = std::filesystem;

std::string SafeFileName(const std::string& name) {
  std::string out = name;
  for (char& c : out) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
      c = '_';
  }
  return out;
}

namespace {

absl::StatusOr<Tensor> ReadPb(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  onnx::TensorProto proto;
  if (!in || !proto.ParseFromString(ss.str())) {
    return absl::FailedPreconditionError(
        absl::StrCat(path.string(), ": not a TensorProto file"));
  }
  return TensorFromProto(proto);
}

// One set from a folder of <name>.npy or input_<k>.pb files; nullopt-like empty
// vector when the folder holds neither.
absl::StatusOr<std::vector<Tensor>> ReadSet(const fs::path& dir,
                                            const std::vector<ValueInfo>& inputs) {
  std::vector<Tensor> set;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const fs::path npy = dir / (SafeFileName(inputs[i].name) + ".npy");
    const fs::path pb = dir / absl::StrCat("input_", i, ".pb");
    absl::StatusOr<Tensor> t = fs::exists(npy) ? ReadNpy(npy.string())
                               : fs::exists(pb)
                                   ? ReadPb(pb)
                                   : absl::StatusOr<Tensor>(absl::FailedPreconditionError(
                                         absl::StrCat("calibration folder ", dir.string(),
                                                      " has no data for input '",
                                                      inputs[i].name, "' (expected ",
                                                      npy.filename().string(), ")")));
    if (!t.ok()) return t.status();
    if (t->dtype() != inputs[i].dtype) {
      auto cast = CastTensor(*t, inputs[i].dtype);
      if (!cast.ok()) return cast.status();
      t = *std::move(cast);
    }
    set.push_back(*std::move(t));
  }
  return set;
}

std::vector<fs::path> NumberedSubfolders(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (!e.is_directory()) continue;
    std::string name = e.path().filename().string();
    if (name.rfind("test_data_set_", 0) == 0) name = name.substr(14);
    int64_t n;
    if (absl::SimpleAtoi(name, &n)) found.emplace_back(n, e.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<fs::path> out;
  for (auto& f : found) out.push_back(f.second);
  return out;
}

Tensor Rows(const Tensor& t, int64_t begin, int64_t count) {
  Shape shape = t.shape();
  shape[0] = count;
  Tensor out = Tensor::Uninitialized(t.dtype(), shape);
  const size_t row = t.byte_size() / static_cast<size_t>(t.dim(0));
  std::memcpy(out.raw_data(), static_cast<const char*>(t.raw_data()) + row * begin,
              row * count);
  return out;
}

}  // namespace

absl::StatusOr<std::vector<std::vector<Tensor>>> LoadCalibrationData(
    const std::string& dir_name, const std::vector<ValueInfo>& inputs, int batch,
    int max_samples) {
  const fs::path dir(dir_name);
  if (!fs::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat("calibration folder ", dir_name, " not found"));
  }
  std::vector<std::vector<Tensor>> sets;
  const std::vector<fs::path> subs = NumberedSubfolders(dir);
  int64_t samples = 0;
  if (!subs.empty()) {
    for (const auto& sub : subs) {
      auto set = ReadSet(sub, inputs);
      if (!set.ok()) return set.status();
      samples += set->empty() || set->front().rank() == 0 ? 1 : set->front().dim(0);
      sets.push_back(*std::move(set));
      if (max_samples > 0 && samples >= max_samples) break;
    }
    return sets;
  }
  auto whole = ReadSet(dir, inputs);
  if (!whole.ok()) return whole.status();
  int64_t n = whole->empty() || whole->front().rank() == 0 ? 1 : whole->front().dim(0);
  for (const Tensor& t : *whole) {
    if (t.rank() == 0 || t.dim(0) != n) {
      return absl::FailedPreconditionError(
          "calibration inputs must share their leading (sample) dimension");
    }
  }
  if (max_samples > 0) n = std::min<int64_t>(n, max_samples);
  batch = std::max(1, batch);
  for (int64_t start = 0; start < n; start += batch) {
    const int64_t count = std::min<int64_t>(batch, n - start);
    std::vector<Tensor> set;
    for (const Tensor& t : *whole) set.push_back(Rows(t, start, count));
    sets.push_back(std::move(set));
  }
  return sets;
}

}  // namespace qs
