// Command-line flags of the quantserve binary (Triton's names where Triton has one).
#ifndef QUANTSERVE_SERVER_DAEMON_FLAGS_H_
#define QUANTSERVE_SERVER_DAEMON_FLAGS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/daemon.h"

namespace qs {

// Removes every "--NAME=VALUE" / "--NAME VALUE" from argv (abseil keeps only the last
// occurrence of a flag; Triton's --load-model is repeatable) and returns the values.
std::vector<std::string> ExtractRepeatedFlag(int* argc, char** argv, const std::string& name);

// Rewrites "--model-repository=x" to "--model_repository=x" in place (Triton spells
// its flags with dashes; abseil's names use underscores). Values are left untouched.
void NormalizeFlagDashes(int argc, char** argv);

// Builds DaemonOptions from the parsed flags. InvalidArgument for bad values.
absl::StatusOr<DaemonOptions> DaemonOptionsFromFlags(const std::vector<std::string>& load_models);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_DAEMON_FLAGS_H_
