#ifndef QUANTSERVE_SERVER_VERSION_H_
#define QUANTSERVE_SERVER_VERSION_H_

namespace qs {
inline constexpr char kQuantserveVersion[] = "0.1.0";
}  // namespace qs

#endif  // QUANTSERVE_SERVER_VERSION_H_
