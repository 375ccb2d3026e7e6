// grpc.health.v1.Health: Check for service "" answers SERVING while the server is live
// and not draining (Triton's semantics: liveness); for "inference.GRPCInferenceService"
// it answers readiness (start-up loads done, not draining). Any other name is
// NOT_FOUND, as the health protocol specifies. Watch is not implemented (Kubernetes and grpc_health_probe use Check).
#ifndef QUANTSERVE_SERVER_GRPC_HEALTH_SERVICE_H_
#define QUANTSERVE_SERVER_GRPC_HEALTH_SERVICE_H_

#include "health.grpc.pb.h"
#include "server/server_state.h"

namespace qs {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  explicit HealthService(const ServerState* state) : state_(state) {}
  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;

 private:
  const ServerState* state_;  // not owned
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_GRPC_HEALTH_SERVICE_H_
