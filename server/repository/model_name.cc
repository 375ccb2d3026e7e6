#include "server/repository/model_name.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace qs {

absl::Status ValidateModelName(absl::string_view name) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid model name '", name, "': ", why));
  };
  if (name.empty()) return bad("empty");
  if (name.size() > 255) return bad("longer than 255 characters");
  if (absl::StrContains(name, "..")) return bad("contains '..'");
  if (name[0] == '.') return bad("hidden folder (starts with '.')");
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' &&
        c != '.') {
      return bad("only letters, digits, '_', '-' and '.' are allowed");
    }
  }
  for (absl::string_view suffix : {"~", ".tmp", ".swp", ".part"}) {
    if (absl::EndsWith(name, suffix)) return bad("temporary file name");
  }
  return absl::OkStatus();
}

bool IsVersionFolderName(absl::string_view name) {
  if (name.empty() || name.size() > 18 || name[0] == '0') return false;
  for (char c : name) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

}  // namespace qs
