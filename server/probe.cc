#include "server/probe.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdio>
#include <cstring>

#include "absl/flags/flag.h"
#include "health.grpc.pb.h"

// Declared for --help; main() handles it before flag parsing (no --model-repository needed).
ABSL_FLAG(std::string, probe, "",
          "HOST:PORT: instead of serving, send one grpc.health.v1 Check (2 s deadline) to a "
          "running quantserve and exit 0 if it answers SERVING, else 1 (container "
          "HEALTHCHECK).");

namespace qs {

int ProbeHealth(const std::string& target, int deadline_ms) {
  if (target.empty()) {
    std::fprintf(stderr, "quantserve --probe: needs HOST:PORT\n");
    return 2;
  }
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::milliseconds(deadline_ms));
  grpc::health::v1::HealthCheckRequest request;  // service "": the server as a whole
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) {
    std::fprintf(stderr, "quantserve --probe %s: %s (%d)\n", target.c_str(),
                 status.error_message().c_str(), static_cast<int>(status.error_code()));
    return 1;
  }
  const std::string name =
      grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    std::fprintf(stderr, "quantserve --probe %s: %s\n", target.c_str(), name.c_str());
    return 1;
  }
  std::printf("%s\n", name.c_str());
  return 0;
}

int RunProbeIfRequested(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const char* a = argv[i];
    if (std::strcmp(a, "--") == 0) break;
    for (const char* prefix : {"--probe", "-probe"}) {
      const size_t n = std::strlen(prefix);
      if (std::strncmp(a, prefix, n) != 0) continue;
      if (a[n] == '=') return ProbeHealth(a + n + 1);
      if (a[n] == '\0') return ProbeHealth(i + 1 < argc ? argv[i + 1] : "");
    }
  }
  return -1;
}

}  // namespace qs
