// inference.GRPCInferenceService on gRPC's callback API.
//
// Handlers never block on computation: ModelInfer validates, decodes and enqueues into
// the model's scheduler, and the scheduler's worker finishes the call. Repository
// load/unload (which compile models) run on a background thread.
#ifndef QUANTSERVE_SERVER_GRPC_INFERENCE_SERVICE_H_
#define QUANTSERVE_SERVER_GRPC_INFERENCE_SERVICE_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "grpc_service.grpc.pb.h"
#include "server/repository/model_repository.h"
#include "server/server_state.h"

namespace qs {

class InferenceService final : public inference::GRPCInferenceService::CallbackService {
 public:
  struct Options {
    bool explicit_model_control = false;  // RepositoryModelLoad/Unload allowed
  };
  // `repository` and `state` are not owned and must outlive the service.
  InferenceService(ModelRepository* repository, const ServerState* state, Options options);
  // Joins pending repository operations.
  ~InferenceService() override;

  using Ctx = grpc::CallbackServerContext;
  grpc::ServerUnaryReactor* ServerLive(Ctx*, const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse*) override;
  grpc::ServerUnaryReactor* ServerReady(Ctx*, const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse*) override;
  grpc::ServerUnaryReactor* ModelReady(Ctx*, const inference::ModelReadyRequest*,
                                       inference::ModelReadyResponse*) override;
  grpc::ServerUnaryReactor* ServerMetadata(Ctx*, const inference::ServerMetadataRequest*,
                                           inference::ServerMetadataResponse*) override;
  grpc::ServerUnaryReactor* ModelMetadata(Ctx*, const inference::ModelMetadataRequest*,
                                          inference::ModelMetadataResponse*) override;
  grpc::ServerUnaryReactor* ModelConfig(Ctx*, const inference::ModelConfigRequest*,
                                        inference::ModelConfigResponse*) override;
  grpc::ServerUnaryReactor* ModelInfer(Ctx*, const inference::ModelInferRequest*,
                                       inference::ModelInferResponse*) override;
  grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse>*
  ModelStreamInfer(Ctx* ctx) override;
  grpc::ServerUnaryReactor* ModelStatistics(Ctx*, const inference::ModelStatisticsRequest*,
                                            inference::ModelStatisticsResponse*) override;
  grpc::ServerUnaryReactor* RepositoryIndex(Ctx*, const inference::RepositoryIndexRequest*,
                                            inference::RepositoryIndexResponse*) override;
  grpc::ServerUnaryReactor* RepositoryModelLoad(
      Ctx*, const inference::RepositoryModelLoadRequest*,
      inference::RepositoryModelLoadResponse*) override;
  grpc::ServerUnaryReactor* RepositoryModelUnload(
      Ctx*, const inference::RepositoryModelUnloadRequest*,
      inference::RepositoryModelUnloadResponse*) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryStatus(
      Ctx*, const inference::SystemSharedMemoryStatusRequest*,
      inference::SystemSharedMemoryStatusResponse*) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryRegister(
      Ctx*, const inference::SystemSharedMemoryRegisterRequest*,
      inference::SystemSharedMemoryRegisterResponse*) override;
  grpc::ServerUnaryReactor* SystemSharedMemoryUnregister(
      Ctx*, const inference::SystemSharedMemoryUnregisterRequest*,
      inference::SystemSharedMemoryUnregisterResponse*) override;
  grpc::ServerUnaryReactor* CudaSharedMemoryStatus(
      Ctx*, const inference::CudaSharedMemoryStatusRequest*,
      inference::CudaSharedMemoryStatusResponse*) override;
  grpc::ServerUnaryReactor* CudaSharedMemoryRegister(
      Ctx*, const inference::CudaSharedMemoryRegisterRequest*,
      inference::CudaSharedMemoryRegisterResponse*) override;
  grpc::ServerUnaryReactor* CudaSharedMemoryUnregister(
      Ctx*, const inference::CudaSharedMemoryUnregisterRequest*,
      inference::CudaSharedMemoryUnregisterResponse*) override;
  grpc::ServerUnaryReactor* TraceSetting(Ctx*, const inference::TraceSettingRequest*,
                                         inference::TraceSettingResponse*) override;
  grpc::ServerUnaryReactor* LogSettings(Ctx*, const inference::LogSettingsRequest*,
                                        inference::LogSettingsResponse*) override;

 // Validates, decodes and enqueues `req` (shared by ModelInfer and ModelStreamInfer).
  // An error before enqueueing is returned and `done` is not called; otherwise `done`
  // is called exactly once, on a worker thread, after `resp` was filled on success.
  // `req` may be destroyed once this returns.
  absl::Status SubmitInference(const inference::ModelInferRequest& req, absl::Time received,
                               absl::Time deadline, std::function<bool()> is_cancelled,
                               inference::ModelInferResponse* resp,
                               std::function<void(absl::Status)> done);

 private:
  struct BackgroundTask {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;  // set as the thread's last action
  };
  grpc::ServerUnaryReactor* Unimplemented(Ctx* ctx, const char* what);
  // Runs `fn` on its own thread; threads that have finished are joined on the next call
  // and the rest by the destructor.
  void RunInBackground(std::function<void()> fn) ABSL_LOCKS_EXCLUDED(mu_);
  // One attempt of SubmitInference on a resolved handle: decode, validate, enqueue.
  absl::Status Enqueue(const inference::ModelInferRequest& req, const ModelHandle& handle,
                       absl::Time received, absl::Time deadline,
                       const std::function<bool()>& is_cancelled,
                       inference::ModelInferResponse* resp,
                       const std::function<void(absl::Status)>& done);

  ModelRepository* repository_;
  const ServerState* state_;
  const Options options_;
  absl::Mutex mu_;
  std::vector<BackgroundTask> background_ ABSL_GUARDED_BY(mu_);
};

}  // namespace qs

#endif  // QUANTSERVE_SERVER_GRPC_INFERENCE_SERVICE_H_
