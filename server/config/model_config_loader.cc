#include "server/config/model_config_loader.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/text_format.h"

namespace qs {
namespace {

namespace pb = google::protobuf;
using pb::io::Tokenizer;

// A config.pbtxt is a few KiB; this only guards against reading a wrong file.
constexpr size_t kMaxConfigBytes = size_t{64} << 20;

// Same as protobuf's default recursion limit for text parsing.
constexpr int kMaxNesting = 100;

// "source:LINE:COLUMN: message" from protobuf's 0-based line and column.
std::string Located(absl::string_view source, int line, int column,
                    absl::string_view message) {
  return absl::StrCat(source, ":", line + 1, ":", column + 1, ": ", message);
}

class SilentErrorCollector : public pb::io::ErrorCollector {
 public:
  void AddError(int /*line*/, pb::io::ColumnNumber /*column*/,
                const std::string& /*message*/) override {}
};

class RecordingErrorCollector : public pb::io::ErrorCollector {
 public:
  explicit RecordingErrorCollector(absl::string_view source)
      : source_(source) {}

  void AddError(int line, pb::io::ColumnNumber column,
                const std::string& message) override {
    errors_.push_back(Located(source_, line, column, message));
  }
  void AddWarning(int line, pb::io::ColumnNumber column,
                  const std::string& message) override {
    warnings_.push_back(Located(source_, line, column, message));
  }

  const std::vector<std::string>& errors() const { return errors_; }
  const std::vector<std::string>& warnings() const { return warnings_; }

 private:
  std::string source_;
  std::vector<std::string> errors_;
  std::vector<std::string> warnings_;
};

// Protobuf 3.21's TextFormat::Parser, with AllowUnknownField(true), reports
// each unknown field as a warning but its skipper for unknown fields rejects
// three forms that Triton configs use all the time (protobuf accepts them for
// known fields):
//   * a list of messages without ':'       batch_input [ { ... } ]
//   * an empty list                        secondary_devices: [ ]
//   * a ',' or ';' after an unknown field  { name: "x", foo: 1, dims: [1] }
// So before parsing, this class walks the text with protobuf's own tokenizer,
// following the descriptors of known fields, and overwrites each unknown field
// (name, value and trailing separator) with spaces. Tabs and line breaks are
// kept, so every remaining token keeps its line and column and protobuf's
// error locations stay exact. The walk mirrors TextFormat's grammar; at the
// first spot it does not understand it stops and leaves the rest of the text
// alone, for the real parser to report.
class UnknownFieldStripper {
 public:
  struct Removed {
    int line;    // 0-based
    int column;  // 0-based, protobuf's column convention
    std::string path;
  };

  // `text` must stay alive during Run(); `out` starts as a copy of it.
  UnknownFieldStripper(absl::string_view text, std::string* out)
      : text_(text),
        out_(out),
        input_(text.data(), static_cast<int>(text.size())),
        tokenizer_(&input_, &silent_) {
    // Same settings as TextFormat::Parser (without relaxed whitespace).
    tokenizer_.set_allow_f_after_float(true);
    tokenizer_.set_comment_style(Tokenizer::SH_COMMENT_STYLE);
    line_starts_.push_back(0);
    for (size_t i = 0; i < text_.size(); ++i) {
      if (text_[i] == '\n') line_starts_.push_back(i + 1);
    }
  }

  void Run(const pb::Descriptor* root) {
    tokenizer_.Next();
    // The result does not matter: on malformed text we simply stop early.
    WalkFields(root, "", /*depth=*/0, /*top_level=*/true);
  }

  const std::vector<Removed>& removed() const { return removed_; }

 private:
  const Tokenizer::Token& Current() { return tokenizer_.current(); }
  bool AtEnd() { return Current().type == Tokenizer::TYPE_END; }
  bool LookingAt(const char* text) { return Current().text == text; }
  bool TryConsume(const char* text) {
    if (!LookingAt(text)) return false;
    tokenizer_.Next();
    return true;
  }
  void TryConsumeSeparator() {
    if (!TryConsume(";")) TryConsume(",");
  }

  static std::string Join(const std::string& path, const std::string& name) {
    return path.empty() ? name : absl::StrCat(path, ".", name);
  }

  // Fields of a message until '}' / '>' (or the end, at top level).
  bool WalkFields(const pb::Descriptor* type, const std::string& path,
                  int depth, bool top_level) {
    std::map<const pb::FieldDescriptor*, int> counts;
    while (true) {
      if (top_level) {
        if (AtEnd()) return true;
      } else {
        if (LookingAt("}") || LookingAt(">")) return true;
        if (AtEnd()) return false;
      }
      if (!WalkField(type, path, depth, &counts)) return false;
    }
  }

  bool WalkField(const pb::Descriptor* type, const std::string& path, int depth,
                 std::map<const pb::FieldDescriptor*, int>* counts) {
    if (Current().type != Tokenizer::TYPE_IDENTIFIER) return false;
    const int start_line = Current().line;
    const int start_column = Current().column;
    const std::string name = Current().text;
    tokenizer_.Next();

    const pb::FieldDescriptor* field = type->FindFieldByName(name);
    if (field == nullptr) {
      if (!SkipUnknownValue(depth)) return false;
      TryConsumeSeparator();
      const Tokenizer::Token& last = tokenizer_.previous();
      Blank(start_line, start_column, last.line, last.end_column);
      removed_.push_back({start_line, start_column, Join(path, name)});
      return true;
    }

    const std::string field_path = Join(path, name);
    auto element_path = [&]() {
      if (!field->is_repeated() || field->is_map()) return field_path;
      return absl::StrCat(field_path, "[", (*counts)[field]++, "]");
    };

    if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
      TryConsume(":");  // optional before a message
      if (field->is_repeated() && TryConsume("[")) {
        if (!TryConsume("]")) {
          while (true) {
            if (!WalkMessageValue(field->message_type(), element_path(),
                                  depth)) {
              return false;
            }
            if (TryConsume("]")) break;
            if (!TryConsume(",")) return false;
          }
        }
      } else if (!WalkMessageValue(field->message_type(), element_path(),
                                   depth)) {
        return false;
      }
    } else {
      if (!TryConsume(":")) return false;  // required before a scalar
      if (field->is_repeated() && TryConsume("[")) {
        if (!TryConsume("]")) {
          while (true) {
            if (!SkipScalarValue()) return false;
            if (TryConsume("]")) break;
            if (!TryConsume(",")) return false;
          }
        }
      } else if (!SkipScalarValue()) {
        return false;
      }
    }
    TryConsumeSeparator();
    return true;
  }

  bool WalkMessageValue(const pb::Descriptor* type, const std::string& path,
                        int depth) {
    if (depth >= kMaxNesting) return false;
    const char* close;
    if (TryConsume("{")) {
      close = "}";
    } else if (TryConsume("<")) {
      close = ">";
    } else {
      return false;
    }
    if (!WalkFields(type, path, depth + 1, /*top_level=*/false)) return false;
    return TryConsume(close);
  }

  // A scalar: optional '-', then a number, an identifier or adjacent strings.
  // Types are not checked here; the real parser does that.
  bool SkipScalarValue() {
    TryConsume("-");
    switch (Current().type) {
      case Tokenizer::TYPE_STRING:
        while (Current().type == Tokenizer::TYPE_STRING) tokenizer_.Next();
        return true;
      case Tokenizer::TYPE_IDENTIFIER:
      case Tokenizer::TYPE_INTEGER:
      case Tokenizer::TYPE_FLOAT:
        tokenizer_.Next();
        return true;
      default:
        return false;
    }
  }

  // The value of an unknown field, positioned after its name.
  bool SkipUnknownValue(int depth) {
    if (depth >= kMaxNesting) return false;
    const bool colon = TryConsume(":");
    if (LookingAt("{") || LookingAt("<")) return SkipUnknownBlock(depth);
    if (LookingAt("[")) return SkipUnknownList(depth);
    return colon && SkipScalarValue();
  }

  bool SkipUnknownBlock(int depth) {
    const char* close = LookingAt("<") ? ">" : "}";
    tokenizer_.Next();
    while (!LookingAt("}") && !LookingAt(">")) {
      if (TryConsume("[")) {
        // Extension or Any type name: [a.b.c] or [type.googleapis.com/x.Y].
        while (!TryConsume("]")) {
          if (AtEnd()) return false;
          tokenizer_.Next();
        }
      } else if (Current().type == Tokenizer::TYPE_IDENTIFIER) {
        tokenizer_.Next();
      } else {
        return false;
      }
      if (!SkipUnknownValue(depth + 1)) return false;
      TryConsumeSeparator();
    }
    return TryConsume(close);
  }

  bool SkipUnknownList(int depth) {
    tokenizer_.Next();  // '['
    if (TryConsume("]")) return true;
    while (true) {
      if (LookingAt("{") || LookingAt("<")) {
        if (!SkipUnknownBlock(depth + 1)) return false;
      } else if (!SkipScalarValue()) {
        return false;
      }
      if (TryConsume("]")) return true;
      if (!TryConsume(",")) return false;
    }
  }

  // Byte offset of a tokenizer position (a tab advances the column to the
  // next multiple of 8, every other byte by one).
  size_t Offset(int line, int column) const {
    if (line < 0) return 0;
    if (static_cast<size_t>(line) >= line_starts_.size()) return text_.size();
    size_t offset = line_starts_[line];
    int col = 0;
    while (col < column && offset < text_.size() && text_[offset] != '\n') {
      col = text_[offset] == '\t' ? col + 8 - col % 8 : col + 1;
      ++offset;
    }
    return offset;
  }

  void Blank(int from_line, int from_column, int to_line, int to_column) {
    const size_t from = Offset(from_line, from_column);
    const size_t to = Offset(to_line, to_column);
    for (size_t i = from; i < to && i < out_->size(); ++i) {
      char& c = (*out_)[i];
      if (c != '\n' && c != '\t') c = ' ';
    }
  }

  absl::string_view text_;
  std::string* out_;
  std::vector<size_t> line_starts_;
  SilentErrorCollector silent_;
  pb::io::ArrayInputStream input_;
  Tokenizer tokenizer_;
  std::vector<Removed> removed_;
};

bool IsSupportedBackend(const std::string& backend) {
  return backend.empty() || backend == "onnxruntime" || backend == "quantserve";
}

bool IsSupportedPlatform(const std::string& platform) {
  return platform.empty() || platform == "onnxruntime_onnx" ||
         platform == "onnx_onnxv1";
}

}  // namespace

absl::StatusOr<inference::ModelConfig> ParseModelConfigText(
    absl::string_view text, absl::string_view source_name,
    std::vector<std::string>* warnings) {
  if (text.size() > kMaxConfigBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ": model config is larger than ",
                     kMaxConfigBytes, " bytes"));
  }

  std::string cleaned(text);
  UnknownFieldStripper stripper(text, &cleaned);
  stripper.Run(inference::ModelConfig::descriptor());
  if (warnings != nullptr) {
    for (const UnknownFieldStripper::Removed& r : stripper.removed()) {
      warnings->push_back(
          Located(source_name, r.line, r.column,
                  absl::StrCat("ignoring unknown field \"", r.path, "\"")));
    }
  }

  pb::TextFormat::Parser parser;
  RecordingErrorCollector collector(source_name);
  parser.RecordErrorsTo(&collector);
  // Unknown fields the stripper could not remove (only possible in text that
  // is malformed further on) are still skipped, with protobuf's warning.
  parser.AllowUnknownField(true);
  inference::ModelConfig config;
  pb::io::ArrayInputStream input(cleaned.data(),
                                 static_cast<int>(cleaned.size()));
  const bool ok = parser.Parse(&input, &config);
  if (warnings != nullptr) {
    warnings->insert(warnings->end(), collector.warnings().begin(),
                     collector.warnings().end());
  }
  if (!ok) {
    if (collector.errors().empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_name, ": cannot parse model config"));
    }
    return absl::InvalidArgumentError(collector.errors().front());
  }
  return config;
}

absl::StatusOr<inference::ModelConfig> LoadModelConfigFile(
    const std::string& path, std::vector<std::string>* warnings) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    }
    return absl::ErrnoToStatus(err, path);
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, ": not a regular file"));
  }
  if (static_cast<unsigned long long>(st.st_size) > kMaxConfigBytes) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": model config is larger than ", kMaxConfigBytes, " bytes"));
  }

  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return absl::ErrnoToStatus(errno, path);
  std::string contents;
  char buffer[16384];
  while (true) {
    const size_t n = std::fread(buffer, 1, sizeof(buffer), file);
    contents.append(buffer, n);
    if (n < sizeof(buffer)) break;
    if (contents.size() > kMaxConfigBytes) break;
  }
  const bool read_error = std::ferror(file) != 0;
  const int err = errno;
  std::fclose(file);
  if (read_error) return absl::ErrnoToStatus(err, absl::StrCat(path, ": read"));
  if (contents.size() > kMaxConfigBytes) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": model config is larger than ", kMaxConfigBytes, " bytes"));
  }
  return ParseModelConfigText(contents, path, warnings);
}

std::vector<std::string> UnsupportedFieldWarnings(
    const inference::ModelConfig& config) {
  std::vector<std::string> out;
  auto add = [&out](const std::string& path, absl::string_view what) {
    out.push_back(absl::StrCat(path, ": ", what));
  };

  if (!IsSupportedPlatform(config.platform())) {
    add("platform",
        absl::StrCat("\"", config.platform(),
                     "\" is not supported; the model file is loaded as ONNX"));
  }
  if (!IsSupportedBackend(config.backend())) {
    add("backend",
        absl::StrCat("\"", config.backend(),
                     "\" is not supported; the model file is loaded as ONNX "
                     "by quantserve's engine"));
  }
  if (!config.runtime().empty()) add("runtime", "ignored");
  if (!config.cc_model_filenames().empty()) {
    add("cc_model_filenames",
        "ignored (no GPUs); default_model_filename is used");
  }
  if (config.has_sequence_batching()) {
    add("sequence_batching",
        "not supported; requests are not scheduled as sequences");
  }
  if (config.has_optimization()) add("optimization", "ignored");
  if (config.model_transaction_policy().decoupled()) {
    add("model_transaction_policy.decoupled",
        "decoupled models are not supported; each request gets exactly one "
        "response");
  }
  if (config.response_cache().enable()) {
    add("response_cache.enable", "the response cache is not supported");
  }

  for (int i = 0; i < config.instance_group_size(); ++i) {
    const inference::ModelInstanceGroup& group = config.instance_group(i);
    const std::string path = absl::StrCat("instance_group[", i, "]");
    if (group.kind() == inference::ModelInstanceGroup::KIND_GPU ||
        group.kind() == inference::ModelInstanceGroup::KIND_MODEL) {
      add(absl::StrCat(path, ".kind"),
          absl::StrCat(inference::ModelInstanceGroup::Kind_Name(group.kind()),
                       " is not supported; instances run on CPU"));
    }
    if (group.gpus_size() > 0) {
      add(absl::StrCat(path, ".gpus"), "ignored; instances run on CPU");
    }
    if (group.profile_size() > 0)
      add(absl::StrCat(path, ".profile"), "ignored");
    if (group.passive()) {
      add(absl::StrCat(path, ".passive"),
          "ignored; the instances receive requests");
    }
    if (!group.host_policy().empty()) {
      add(absl::StrCat(path, ".host_policy"), "ignored");
    }
  }

  for (int i = 0; i < config.input_size(); ++i) {
    const inference::ModelInput& input = config.input(i);
    const std::string path = absl::StrCat("input[", i, "]");
    if (input.is_shape_tensor()) {
      add(absl::StrCat(path, ".is_shape_tensor"), "ignored");
    }
    if (input.allow_ragged_batch()) {
      add(absl::StrCat(path, ".allow_ragged_batch"),
          "not supported; only requests with equal shapes are batched");
    }
    if (input.is_non_linear_format_io()) {
      add(absl::StrCat(path, ".is_non_linear_format_io"), "ignored");
    }
  }
  for (int i = 0; i < config.output_size(); ++i) {
    const inference::ModelOutput& output = config.output(i);
    const std::string path = absl::StrCat("output[", i, "]");
    if (output.is_shape_tensor()) {
      add(absl::StrCat(path, ".is_shape_tensor"), "ignored");
    }
    if (output.is_non_linear_format_io()) {
      add(absl::StrCat(path, ".is_non_linear_format_io"), "ignored");
    }
  }
  return out;
}

}  // namespace qs
