// Loads a model's config.pbtxt (protobuf text format of
// inference::ModelConfig).
//
// Triton configs carry many fields quantserve does not model. They are not an
// error: every unknown field is skipped and reported as a warning
// ("config.pbtxt:7:5: ignoring unknown field \"optimization.cuda\""), so a
// Triton model folder can be served unchanged. Syntax errors, type errors and
// unknown enum values are errors whose message starts with
// "<source_name>:<line>:<column>: " (1-based, as protobuf's tokenizer counts:
// bytes, a tab advancing to the next multiple of 8).
//
// Fields that parse into our ModelConfig but that the server ignores are
// listed separately by UnsupportedFieldWarnings().
#ifndef QUANTSERVE_SERVER_CONFIG_MODEL_CONFIG_LOADER_H_
#define QUANTSERVE_SERVER_CONFIG_MODEL_CONFIG_LOADER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model_config.pb.h"

namespace qs {

// Parses `text`. `source_name` (usually the file path) prefixes the locations
// in errors and warnings. Warnings about skipped unknown fields are appended
// to `*warnings` if `warnings` is not null (also when parsing fails).
// Errors: InvalidArgument with "source_name:LINE:COLUMN: <reason>".
absl::StatusOr<inference::ModelConfig> ParseModelConfigText(
    absl::string_view text, absl::string_view source_name,
    std::vector<std::string>* warnings);

// Reads and parses the file at `path` (which also serves as source_name).
// Errors: NotFound if the file does not exist, PermissionDenied if it cannot
// be read, FailedPrecondition if it is not a regular file or is too large,
// otherwise those of ParseModelConfigText.
absl::StatusOr<inference::ModelConfig> LoadModelConfigFile(
    const std::string& path, std::vector<std::string>* warnings);

// Fields present in `config` that the server accepts but does not act on
// (sequence_batching, optimization, decoupled transactions, response cache,
// GPU instance groups, foreign backends/platforms, ...). Each entry starts
// with the field path, then ": " and what happens instead, e.g.
// "instance_group[0].kind: KIND_GPU is not supported; instances run on CPU".
std::vector<std::string> UnsupportedFieldWarnings(
    const inference::ModelConfig& config);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_CONFIG_MODEL_CONFIG_LOADER_H_
