#include "server/repository/warmup.h"

#include <cstring>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "server/config/data_type.h"

namespace qs {
namespace {

// Shape of input `i` at `batch` rows, from the completed config (-1 dims become 1).
Shape ShapeFor(const inference::ModelConfig& config, const ValueInfo& info, int64_t batch) {
  Shape shape;
  if (config.max_batch_size() > 0) shape.push_back(batch);
  for (const auto& in : config.input()) {
    if (in.name() != info.name) continue;
    for (int64_t d : in.dims()) shape.push_back(d < 0 ? 1 : d);
  }
  return shape;
}

absl::StatusOr<WarmupSet> FromConfig(const inference::ModelWarmup& w, const LoadedModel& model,
                                     const std::string& model_dir) {
  const auto& config = model.config();
  const int64_t batch = config.max_batch_size() > 0 ? std::max<uint32_t>(1, w.batch_size()) : 0;
  WarmupSet set;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  for (const auto& info : model.session().inputs()) {
    auto it = w.inputs().find(info.name);
    if (it == w.inputs().end()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model_warmup '", w.name(), "' does not provide input '", info.name, "'"));
    }
    const auto& in = it->second;
    if (FromConfigDataType(in.data_type()) != info.dtype) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model_warmup '", w.name(), "' input '", info.name, "' has data_type ",
          inference::DataType_Name(in.data_type()), ", the model wants ",
          DataTypeName(info.dtype)));
    }
    Shape row(in.dims().begin(), in.dims().end());
    Shape shape = row;
    if (batch > 0) shape.insert(shape.begin(), batch);
    Tensor t(info.dtype, shape);
    const size_t row_bytes = NumElements(row) * DataTypeSize(info.dtype);
    if (in.has_input_data_file()) {
      const std::string path = absl::StrCat(model_dir, "/warmup/", in.input_data_file());
      std::ifstream f(path, std::ios::binary);
      std::stringstream ss;
      ss << f.rdbuf();
      const std::string bytes = ss.str();
      if (!f || bytes.size() != row_bytes) {
        return absl::FailedPreconditionError(absl::StrCat(
            "model_warmup '", w.name(), "': ", path, " must hold ", row_bytes, " bytes"));
      }
      for (int64_t b = 0; b < std::max<int64_t>(1, batch); ++b)
        std::memcpy(static_cast<char*>(t.raw_data()) + b * row_bytes, bytes.data(), row_bytes);
    } else if (in.random_data() && info.dtype == DataType::kFloat32) {
      for (int64_t i = 0; i < t.num_elements(); ++i) t.data<float>()[i] = uni(rng);
    }
    set.push_back(std::move(t));
  }
  return set;
}

}  // namespace

absl::StatusOr<std::vector<WarmupSet>> BuildWarmupSets(const LoadedModel& model,
                                                       const std::string& model_dir) {
  const auto& config = model.config();
  std::vector<WarmupSet> sets;
  if (config.model_warmup_size() > 0) {
    for (const auto& w : config.model_warmup()) {
      auto set = FromConfig(w, model, model_dir);
      if (!set.ok()) return set.status();
      for (uint32_t i = 0; i < std::max<uint32_t>(1, w.count()); ++i) sets.push_back(*set);
    }
    return sets;
  }
  std::set<int64_t> batches = {1};
  if (config.max_batch_size() > 0) {
    batches.insert(config.max_batch_size());
    for (int p : config.dynamic_batching().preferred_batch_size())
      if (p > 0 && p <= config.max_batch_size()) batches.insert(p);
  }
  for (int64_t b : batches) {
    WarmupSet set;
    for (const auto& info : model.session().inputs()) {
      set.push_back(Tensor(info.dtype, ShapeFor(config, info, b)));
    }
    sets.push_back(std::move(set));
  }
  return sets;
}

}  // namespace qs
