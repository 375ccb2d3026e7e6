#include "engine/npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace qs {
namespace {

struct Descr {
  const char* code;
  DataType type;
};
constexpr Descr kDescrs[] = {
    {"f4", DataType::kFloat32}, {"f8", DataType::kFloat64}, {"f2", DataType::kFloat16},
    {"i1", DataType::kInt8},    {"i2", DataType::kInt16},   {"i4", DataType::kInt32},
    {"i8", DataType::kInt64},   {"u1", DataType::kUInt8},   {"u2", DataType::kUInt16},
    {"u4", DataType::kUInt32},  {"u8", DataType::kUInt64},  {"b1", DataType::kBool},
};

// Extracts the value text after 'key': in the header dict.
std::string Field(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return "";
  size_t colon = header.find(':', k);
  if (colon == std::string::npos) return "";
  size_t start = colon + 1;
  while (start < header.size() && header[start] == ' ') ++start;
  if (header[start] == '(') {
    size_t end = header.find(')', start);
    return header.substr(start, end - start + 1);
  }
  size_t end = header.find_first_of(",}", start);
  return header.substr(start, end - start);
}

}  // namespace

absl::StatusOr<Tensor> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", why));
  };
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    return bad("not a .npy file");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) |
                 (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else {
    if (bytes.size() < 12) return bad("truncated header");
    uint32_t len;
    std::memcpy(&len, bytes.data() + 8, 4);
    header_len = len;
    offset = 12;
  }
  if (offset + header_len > bytes.size()) return bad("truncated header");
  const std::string header = bytes.substr(offset, header_len);
  std::string descr(absl::StripSuffix(absl::StripPrefix(Field(header, "descr"), "'"), "'"));
  if (Field(header, "fortran_order") != "False") return bad("Fortran order is not supported");
  if (descr.size() != 3 || (descr[0] != '<' && descr[0] != '|'))
    return bad(absl::StrCat("unsupported dtype '", descr, "' (need little-endian)"));
  DataType dtype = DataType::kUndefined;
  for (const auto& d : kDescrs)
    if (descr.substr(1) == d.code) dtype = d.type;
  if (dtype == DataType::kUndefined) return bad(absl::StrCat("unsupported dtype '", descr, "'"));
  std::string shape_text = Field(header, "shape");
  shape_text = std::string(absl::StripSuffix(absl::StripPrefix(shape_text, "("), ")"));
  Shape shape;
  for (absl::string_view part : absl::StrSplit(shape_text, ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &d) || d < 0)
      return bad(absl::StrCat("bad shape '", shape_text, "'"));
    shape.push_back(d);
  }
  const size_t data_off = offset + header_len;
  Tensor t = Tensor::Uninitialized(dtype, shape);
  if (bytes.size() - data_off < t.byte_size()) return bad("truncated data");
  if (t.byte_size() > 0) std::memcpy(t.raw_data(), bytes.data() + data_off, t.byte_size());
  return t;
}

absl::Status WriteNpy(const std::string& path, const Tensor& tensor) {
  const char* code = nullptr;
  for (const auto& d : kDescrs)
    if (d.type == tensor.dtype()) code = d.code;
  if (code == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cannot write ", DataTypeName(tensor.dtype()), " tensors to .npy"));
  }
  std::string shape;
  for (int64_t d : tensor.shape()) absl::StrAppend(&shape, d, ",");
  if (tensor.rank() > 1) shape.pop_back();
  std::string header = absl::StrCat("{'descr': '", code[0] == 'b' || code[1] == '1' ? "|" : "<",
                                    code, "', 'fortran_order': False, 'shape': (", shape, "), }");
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  out.write("\x93NUMPY\x01\x00", 8);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.put(static_cast<char>(len & 0xff));
  out.put(static_cast<char>(len >> 8));
  out << header;
  out.write(static_cast<const char*>(tensor.raw_data()), tensor.byte_size());
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace qs
