// Triton's version policy: which of the versions on disk to serve.
#ifndef QUANTSERVE_SERVER_REPOSITORY_VERSION_POLICY_H_
#define QUANTSERVE_SERVER_REPOSITORY_VERSION_POLICY_H_

#include <cstdint>
#include <vector>

#include "model_config.pb.h"

namespace qs {

// `available` in any order; the result is sorted ascending. Default (no policy set):
// latest 1. latest N: the N highest. all: every version. specific: the listed versions
// that exist (missing ones are the caller's to report).
std::vector<int64_t> SelectVersions(const inference::ModelVersionPolicy& policy,
                                    std::vector<int64_t> available);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_REPOSITORY_VERSION_POLICY_H_
