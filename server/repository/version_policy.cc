#include "server/repository/version_policy.h"

#include <algorithm>

namespace qs {

std::vector<int64_t> SelectVersions(const inference::ModelVersionPolicy& policy,
                                    std::vector<int64_t> available) {
  std::sort(available.begin(), available.end());
  available.erase(std::unique(available.begin(), available.end()), available.end());
  switch (policy.policy_choice_case()) {
    case inference::ModelVersionPolicy::kAll:
      return available;
    case inference::ModelVersionPolicy::kSpecific: {
      std::vector<int64_t> out;
      for (int64_t v : policy.specific().versions()) {
        if (std::binary_search(available.begin(), available.end(), v)) out.push_back(v);
      }
      std::sort(out.begin(), out.end());
      out.erase(std::unique(out.begin(), out.end()), out.end());
      return out;
    }
    case inference::ModelVersionPolicy::kLatest:
    default: {
      size_t n = 1;
      if (policy.has_latest() && policy.latest().num_versions() > 0) {
        n = policy.latest().num_versions();
      }
      if (available.size() > n) available.erase(available.begin(), available.end() - n);
      return available;
    }
  }
}

}  // namespace qs
