#include "server/grpc/health_service.h"

namespace qs {

grpc::ServerUnaryReactor* HealthService::Check(
    grpc::CallbackServerContext* context,
    const grpc::health::v1::HealthCheckRequest* request,
    grpc::health::v1::HealthCheckResponse* response) {
  auto* reactor = context->DefaultReactor();
  const std::string& service = request->service();
  if (!service.empty() && service != "inference.GRPCInferenceService") {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 "unknown service '" + service + "'"));
    return reactor;
  }
  // "" is liveness (Triton's semantics); the named service is readiness, so a
  // Kubernetes readiness probe on it keeps traffic away until the start-up loads finish.
  const bool serving = service.empty() ? state_->live() && !state_->draining()
                                       : state_->ready();
  response->set_status(serving ? grpc::health::v1::HealthCheckResponse::SERVING
                               : grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace qs
