// Which model folder names the repository accepts.
#ifndef QUANTSERVE_SERVER_REPOSITORY_MODEL_NAME_H_
#define QUANTSERVE_SERVER_REPOSITORY_MODEL_NAME_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace qs {

// OK for a name usable as a model folder and in requests: 1-255 characters of
// [A-Za-z0-9_.-], not starting with '.', containing no "..", and not an editor or
// temporary name (ending in '~', ".tmp", ".swp", ".part"). InvalidArgument otherwise,
// with the reason. Path separators and ".." are rejected, so a name can never escape
// the repository root.
absl::Status ValidateModelName(absl::string_view name);

// True for a version folder name Triton accepts: digits only, no leading zero.
bool IsVersionFolderName(absl::string_view name);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_REPOSITORY_MODEL_NAME_H_
