// The one place where absl::Status becomes grpc::Status.
#ifndef QUANTSERVE_SERVER_GRPC_STATUS_UTIL_H_
#define QUANTSERVE_SERVER_GRPC_STATUS_UTIL_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace qs {

// Canonical codes map one to one (absl and gRPC share the numbering); the message is
// kept verbatim.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace qs

#endif  // QUANTSERVE_SERVER_GRPC_STATUS_UTIL_H_
