#include "server/grpc/inference_service.h"

#include <cmath>
#include <deque>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "engine/log.h"
#include "google/protobuf/util/json_util.h"
#include "server/config/data_type.h"
#include "server/grpc/status_util.h"
#include "server/grpc/tensor_codec.h"
#include "server/version.h"

namespace qs {
namespace {

grpc::ServerUnaryReactor* Finish(grpc::CallbackServerContext* ctx, const absl::Status& st) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpcStatus(st));
  return reactor;
}

void FillTensorMetadata(const std::string& name, inference::DataType type,
                        const google::protobuf::RepeatedField<int64_t>& dims, int max_batch,
                        inference::ModelMetadataResponse::TensorMetadata* out) {
  out->set_name(name);
  out->set_datatype(std::string(DataTypeName(FromConfigDataType(type))));
  if (max_batch > 0) out->add_shape(-1);
  for (int64_t d : dims) out->add_shape(d);
}

void FillDuration(const Duration2& d, inference::StatisticDuration* out) {
  out->set_count(d.count);
  out->set_ns(d.ns);
}

}  // namespace

InferenceService::InferenceService(ModelRepository* repository, const ServerState* state,
                                   Options options)
    : repository_(repository), state_(state), options_(options) {}

InferenceService::~InferenceService() {
  std::vector<BackgroundTask> tasks;
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(background_);
  }
  for (auto& t : tasks) t.thread.join();
}

void InferenceService::RunInBackground(std::function<void()> fn) {
  std::vector<std::thread> finished;
  {
    absl::MutexLock lock(&mu_);
    // Join the operations that have finished: until joined, an exited thread keeps its
    // stack mapped (8 MiB per repository load otherwise, for the daemon's lifetime).
    for (auto it = background_.begin(); it != background_.end();) {
      if (it->done->load(std::memory_order_acquire)) {
        finished.push_back(std::move(it->thread));
        it = background_.erase(it);
      } else {
        ++it;
      }
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::thread thread([fn = std::move(fn), done] {
      fn();
      done->store(true, std::memory_order_release);
    });
    background_.push_back({std::move(thread), std::move(done)});
  }
  for (auto& t : finished) t.join();  // returns at once: they are past their work
}

grpc::ServerUnaryReactor* InferenceService::ServerLive(Ctx* ctx,
                                                       const inference::ServerLiveRequest*,
                                                       inference::ServerLiveResponse* resp) {
  resp->set_live(state_->live());
  return Finish(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ServerReady(Ctx* ctx,
                                                        const inference::ServerReadyRequest*,
                                                        inference::ServerReadyResponse* resp) {
  resp->set_ready(state_->ready());
  return Finish(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelReady(Ctx* ctx,
                                                       const inference::ModelReadyRequest* req,
                                                       inference::ModelReadyResponse* resp) {
  auto handle = repository_->Get(req->name(), req->version());
  if (!handle.ok() && absl::IsNotFound(handle.status())) {
    return Finish(ctx, handle.status());
  }
  resp->set_ready(handle.ok() && !state_->draining());
  return Finish(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ServerMetadata(
    Ctx* ctx, const inference::ServerMetadataRequest*,
    inference::ServerMetadataResponse* resp) {
  resp->set_name("quantserve");
  resp->set_version(kQuantserveVersion);
  for (const char* ext : {"model_repository", "model_configuration", "statistics",
                          "schedule_policy", "binary_tensor_data"}) {
    resp->add_extensions(ext);
  }
  return Finish(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelMetadata(
    Ctx* ctx, const inference::ModelMetadataRequest* req,
    inference::ModelMetadataResponse* resp) {
  auto handle = repository_->Get(req->name(), req->version());
  if (!handle.ok()) return Finish(ctx, handle.status());
  const LoadedModel& model = *handle->model;
  const inference::ModelConfig& config = model.config();
  resp->set_name(model.name());
  for (const auto& v : repository_->Versions(model.name())) resp->add_versions(v);
  resp->set_platform(config.platform().empty() ? "onnx_onnxv1" : config.platform());
  for (const auto& in : config.input()) {
    FillTensorMetadata(in.name(), in.data_type(), in.dims(), config.max_batch_size(),
                       resp->add_inputs());
  }
  for (const auto& out : config.output()) {
    FillTensorMetadata(out.name(), out.data_type(), out.dims(), config.max_batch_size(),
                       resp->add_outputs());
  }
  auto& props = *resp->mutable_properties();
  props["precision"] = inference::Precision_Name(config.quantization().precision());
  const PlanStats stats = model.session().stats();
  props["weight_bytes"] = absl::StrCat(stats.weight_bytes);
  props["fp32_weight_bytes"] = absl::StrCat(stats.fp32_weight_bytes);
  props["stored_weight_bytes"] = absl::StrCat(stats.stored_weight_bytes);
  return Finish(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelConfig(Ctx* ctx,
                                                        const inference::ModelConfigRequest* req,
                                                        inference::ModelConfigResponse* resp) {
  auto handle = repository_->Get(req->name(), req->version());
  if (!handle.ok()) return Finish(ctx, handle.status());
  const LoadedModel& model = *handle->model;
  *resp->mutable_config() = model.config();
  // The load's precision report (docs/quantization.md), for reduced-precision plans.
  const std::vector<NodePrecision>& report = model.session().precision_report();
  if (!report.empty()) {
    auto& params = *resp->mutable_config()->mutable_parameters();
    params["qs_precision_report"].set_string_value(PrecisionReportJson(report));
    const double min_sqnr = MinReducedSqnrDb(report);
    if (!std::isnan(min_sqnr)) {
      params["qs_min_sqnr_db"].set_string_value(absl::StrFormat("%.2f", min_sqnr));
    }
  }
  if (model.calibration_samples() > 0) {
    auto& params = *resp->mutable_config()->mutable_parameters();
    params["qs_calibration_samples"].set_string_value(
        absl::StrCat(model.calibration_samples()));
    params["qs_calibration_seconds"].set_string_value(absl::StrFormat(
        "%.3f", absl::ToDoubleSeconds(model.calibration_duration())));
  }
  return Finish(ctx, absl::OkStatus());
}

absl::Status InferenceService::SubmitInference(
    const inference::ModelInferRequest& req, absl::Time received, absl::Time deadline,
    std::function<bool()> is_cancelled, inference::ModelInferResponse* resp,
    std::function<void(absl::Status)> done) {
  // A reload (or a poll-mode version switch) can retire the scheduler this request
  // resolved to between Get() and Enqueue(). The model is still served, by the new
  // scheduler, so resolve again rather than refuse: a successful reload refuses nothing.
  // Each further attempt needs another swap in that window, hence the small bound.
  constexpr int kMaxAttempts = 4;
  std::shared_ptr<ModelScheduler> refused_by;  // a retired scheduler that refused it
  absl::Status st;
  for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
    if (state_->draining()) {
      st = absl::UnavailableError("server is shutting down");
      break;
    }
    auto handle = repository_->Get(req.model_name(), req.model_version());
    if (!handle.ok()) {
      // Shutdown unloads every model after it starts draining: say so, not "unknown model".
      st = state_->draining() ? absl::UnavailableError("server is shutting down")
                              : handle.status();
      break;
    }
    st = Enqueue(req, *handle, received, deadline, is_cancelled, resp, done);
    if (st.ok() || !absl::IsUnavailable(st) || handle->scheduler == nullptr ||
        !handle->scheduler->retired()) {
      return st;
    }
    refused_by = handle->scheduler;
  }
  if (refused_by != nullptr && refused_by->observer() != nullptr) {
    refused_by->observer()->OnFailure(FailureReason::kRejected, absl::Now() - received);
  }
  return st;
}

absl::Status InferenceService::Enqueue(const inference::ModelInferRequest& req,
                                       const ModelHandle& handle, absl::Time received,
                                       absl::Time deadline,
                                       const std::function<bool()>& is_cancelled,
                                       inference::ModelInferResponse* resp,
                                       const std::function<void(absl::Status)>& done) {
  if (handle.scheduler == nullptr) return absl::UnavailableError("model has no scheduler");
  InferenceObserver* observer = handle.scheduler->observer();
  auto decoded = DecodeRequest(req, *handle.model);
  if (!decoded.ok()) {
    if (observer) observer->OnFailure(FailureReason::kInvalid, absl::Now() - received);
    return decoded.status();
  }
  auto request = std::make_unique<InferenceRequest>();
  request->inputs = std::move(decoded->inputs);
  request->batch_size = decoded->batch_size;
  request->enqueue_time = received;
  request->deadline = deadline;
  auto timeout = req.parameters().find("timeout");
  if (timeout != req.parameters().end()) {
    const auto& p = timeout->second;
    const int64_t us = p.has_int64_param() ? p.int64_param()
                                           : static_cast<int64_t>(p.uint64_param());
    if (us < 0) return absl::InvalidArgumentError("parameter 'timeout' must be >= 0");
    // Triton's semantics: microseconds; it can only shorten the deadline.
    if (us > 0) {
      request->deadline = std::min(request->deadline, received + absl::Microseconds(us));
    }
  }
  auto priority = req.parameters().find("priority");
  if (priority != req.parameters().end()) {
    const auto& p = priority->second;
    if (p.has_int64_param() && p.int64_param() < 0) {
      return absl::InvalidArgumentError("parameter 'priority' must be >= 0");
    }
    request->priority = p.has_int64_param() ? static_cast<uint64_t>(p.int64_param())
                                            : p.uint64_param();
  }
  request->is_cancelled = is_cancelled;
  std::shared_ptr<const LoadedModel> model = handle.model;
  request->done = [resp, model, id = req.id(), indices = decoded->output_indices,
                   done](absl::Status st, InferenceResult result) {
    if (st.ok()) {
      resp->set_model_name(model->name());
      resp->set_model_version(absl::StrCat(model->version()));
      resp->set_id(id);
      EncodeOutputs(result.outputs, indices, *model, resp);
    }
    done(st);
  };
  absl::Status st = handle.scheduler->Enqueue(std::move(request));
  // A refusal by a retired scheduler may still succeed on its successor: SubmitInference
  // counts it if it does not.
  if (!st.ok() && observer && !handle.scheduler->retired()) {
    observer->OnFailure(FailureReason::kRejected, absl::Now() - received);
  }
  return st;
}

grpc::ServerUnaryReactor* InferenceService::ModelInfer(Ctx* ctx,
                                                       const inference::ModelInferRequest* req,
                                                       inference::ModelInferResponse* resp) {
  const absl::Time received = absl::Now();
  absl::Time deadline = absl::InfiniteFuture();
  if (ctx->deadline() != std::chrono::system_clock::time_point::max()) {
    deadline = absl::FromChrono(ctx->deadline());
  }
  auto* reactor = ctx->DefaultReactor();
  absl::Status st = SubmitInference(
      *req, received, deadline, [ctx] { return ctx->IsCancelled(); }, resp,
      [reactor](absl::Status done) { reactor->Finish(ToGrpcStatus(done)); });
  if (!st.ok()) reactor->Finish(ToGrpcStatus(st));
  return reactor;
}

namespace {

// One ModelStreamInfer call: every request read is submitted as it arrives; responses
// are written in completion order (matched by id), one write in flight at a time. An
// error answers that request with error_message and keeps the stream open. Finish is
// called once the client half-closed and every submitted request has been answered.
class StreamInferReactor final
    : public grpc::ServerBidiReactor<inference::ModelInferRequest,
                                     inference::ModelStreamInferResponse> {
 public:
  StreamInferReactor(InferenceService* service, grpc::CallbackServerContext* ctx)
      : service_(service), ctx_(ctx) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      bool finish;
      {
        absl::MutexLock lock(&mu_);
        reads_done_ = true;
        finish = ShouldFinishLocked();
      }
      if (finish) Finish(grpc::Status::OK);  // may delete this: nothing after it
      return;
    }
    auto response = std::make_unique<inference::ModelStreamInferResponse>();
    auto* infer = response->mutable_infer_response();
    infer->set_id(request_.id());  // so an error response still carries the id
    auto* raw = response.release();
    {
      absl::MutexLock lock(&mu_);
      ++outstanding_;
    }
    absl::Time deadline = absl::InfiniteFuture();
    if (ctx_->deadline() != std::chrono::system_clock::time_point::max()) {
      deadline = absl::FromChrono(ctx_->deadline());
    }
    grpc::CallbackServerContext* ctx = ctx_;
    absl::Status st = service_->SubmitInference(
        request_, absl::Now(), deadline, [ctx] { return ctx->IsCancelled(); }, infer,
        [this, raw](absl::Status done) { Complete(raw, done); });
    if (!st.ok()) Complete(raw, st);
    StartRead(&request_);  // the submitted request no longer needs request_
  }

  void OnWriteDone(bool ok) override {
    bool finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) write_failed_ = true;
      WriteNextLocked();
      finish = ShouldFinishLocked();
    }
    if (finish) Finish(grpc::Status::OK);
  }

  void OnDone() override { delete this; }

 private:
  void Complete(inference::ModelStreamInferResponse* raw, const absl::Status& st) {
    std::unique_ptr<inference::ModelStreamInferResponse> response(raw);
    if (!st.ok()) {
      const std::string id = response->infer_response().id();
      response->Clear();
      response->set_error_message(std::string(st.message()));
      response->mutable_infer_response()->set_id(id);
    }
    bool finish;
    {
      absl::MutexLock lock(&mu_);
      pending_.push_back(std::move(response));
      --outstanding_;
      WriteNextLocked();
      finish = ShouldFinishLocked();
    }
    // Finish can run OnDone (delete this) at once, so it comes after the lock is gone.
    if (finish) Finish(grpc::Status::OK);
  }

  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || pending_.empty()) return;
    if (write_failed_) {
      pending_.clear();
      return;
    }
    current_ = std::move(pending_.front());
    pending_.pop_front();
    writing_ = true;
    StartWrite(current_.get());
  }

  // True exactly once: when the client half-closed and every response is written.
  bool ShouldFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || !reads_done_ || outstanding_ > 0 || writing_ || !pending_.empty())
      return false;
    finished_ = true;
    return true;
  }

  InferenceService* service_;
  grpc::CallbackServerContext* ctx_;
  inference::ModelInferRequest request_;
  absl::Mutex mu_;
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<std::unique_ptr<inference::ModelStreamInferResponse>> pending_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<inference::ModelStreamInferResponse> current_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerBidiReactor<inference::ModelInferRequest, inference::ModelStreamInferResponse>*
InferenceService::ModelStreamInfer(Ctx* ctx) {
  return new StreamInferReactor(this, ctx);
}

grpc::ServerUnaryReactor* InferenceService::ModelStatistics(
    Ctx* ctx, const inference::ModelStatisticsRequest* req,
    inference::ModelStatisticsResponse* resp) {
  if (!req->name().empty()) {
    auto handle = repository_->Get(req->name(), req->version());
    if (!handle.ok() && absl::IsNotFound(handle.status())) return Finish(ctx, handle.status());
  }
  for (const ModelHandle& h : repository_->ReadyHandles()) {
    if (!req->name().empty() && h.model->name() != req->name()) continue;
    if (!req->version().empty() && absl::StrCat(h.model->version()) != req->version())
      continue;
    if (h.scheduler == nullptr) continue;
    const ModelStatsSnapshot s = h.scheduler->stats().Snapshot();
    auto* ms = resp->add_model_stats();
    ms->set_name(h.model->name());
    ms->set_version(absl::StrCat(h.model->version()));
    ms->set_last_inference(s.last_inference_ms);
    ms->set_inference_count(s.inference_count);
    ms->set_execution_count(s.execution_count);
    auto* is = ms->mutable_inference_stats();
    FillDuration(s.success, is->mutable_success());
    FillDuration(s.fail, is->mutable_fail());
    FillDuration(s.queue, is->mutable_queue());
    FillDuration(s.compute_input, is->mutable_compute_input());
    FillDuration(s.compute_infer, is->mutable_compute_infer());
    FillDuration(s.compute_output, is->mutable_compute_output());
    for (const auto& [size, b] : s.batches) {
      auto* bs = ms->add_batch_stats();
      bs->set_batch_size(size);
      FillDuration(b.compute_input, bs->mutable_compute_input());
      FillDuration(b.compute_infer, bs->mutable_compute_infer());
      FillDuration(b.compute_output, bs->mutable_compute_output());
    }
  }
  return Finish(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::RepositoryIndex(
    Ctx* ctx, const inference::RepositoryIndexRequest* req,
    inference::RepositoryIndexResponse* resp) {
  for (const auto& e : repository_->Index(req->ready())) {
    auto* m = resp->add_models();
    m->set_name(e.name);
    m->set_version(e.version);
    m->set_state(ModelStateName(e.state));
    m->set_reason(e.reason);
  }
  return Finish(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::RepositoryModelLoad(
    Ctx* ctx, const inference::RepositoryModelLoadRequest* req,
    inference::RepositoryModelLoadResponse*) {
  if (!options_.explicit_model_control) {
    return Finish(ctx, absl::FailedPreconditionError(
                           "explicit model load/unload needs --model-control-mode=explicit"));
  }
  if (state_->draining()) {
    return Finish(ctx, absl::UnavailableError("server is shutting down; no model loads"));
  }
  std::optional<inference::ModelConfig> override_config;
  auto it = req->parameters().find("config");
  if (it != req->parameters().end()) {
    inference::ModelConfig config;
    auto st = google::protobuf::util::JsonStringToMessage(it->second.string_param(), &config);
    if (!st.ok()) {
      return Finish(ctx, absl::InvalidArgumentError(
                             absl::StrCat("parameter 'config' is not a valid ModelConfig JSON: ",
                                          st.message().ToString())));
    }
    override_config = std::move(config);
  }
  auto* reactor = ctx->DefaultReactor();
  // Compiling a model takes seconds: never on a gRPC thread.
  RunInBackground([this, reactor, name = req->model_name(), override_config] {
    absl::Status st = repository_->LoadModel(name, override_config);
    reactor->Finish(ToGrpcStatus(st));
  });
  return reactor;
}

grpc::ServerUnaryReactor* InferenceService::RepositoryModelUnload(
    Ctx* ctx, const inference::RepositoryModelUnloadRequest* req,
    inference::RepositoryModelUnloadResponse*) {
  if (!options_.explicit_model_control) {
    return Finish(ctx, absl::FailedPreconditionError(
                           "explicit model load/unload needs --model-control-mode=explicit"));
  }
  return Finish(ctx, repository_->UnloadModel(req->model_name()));
}

grpc::ServerUnaryReactor* InferenceService::Unimplemented(Ctx* ctx, const char* what) {
  return Finish(ctx, absl::UnimplementedError(absl::StrCat(
                         what, " is not supported by quantserve; send tensors in the request "
                               "(raw_input_contents)")));
}

grpc::ServerUnaryReactor* InferenceService::SystemSharedMemoryStatus(
    Ctx* ctx, const inference::SystemSharedMemoryStatusRequest*,
    inference::SystemSharedMemoryStatusResponse*) {
  return Unimplemented(ctx, "system shared memory");
}
grpc::ServerUnaryReactor* InferenceService::SystemSharedMemoryRegister(
    Ctx* ctx, const inference::SystemSharedMemoryRegisterRequest*,
    inference::SystemSharedMemoryRegisterResponse*) {
  return Unimplemented(ctx, "system shared memory");
}
grpc::ServerUnaryReactor* InferenceService::SystemSharedMemoryUnregister(
    Ctx* ctx, const inference::SystemSharedMemoryUnregisterRequest*,
    inference::SystemSharedMemoryUnregisterResponse*) {
  return Unimplemented(ctx, "system shared memory");
}
grpc::ServerUnaryReactor* InferenceService::CudaSharedMemoryStatus(
    Ctx* ctx, const inference::CudaSharedMemoryStatusRequest*,
    inference::CudaSharedMemoryStatusResponse*) {
  return Unimplemented(ctx, "CUDA shared memory");
}
grpc::ServerUnaryReactor* InferenceService::CudaSharedMemoryRegister(
    Ctx* ctx, const inference::CudaSharedMemoryRegisterRequest*,
    inference::CudaSharedMemoryRegisterResponse*) {
  return Unimplemented(ctx, "CUDA shared memory");
}
grpc::ServerUnaryReactor* InferenceService::CudaSharedMemoryUnregister(
    Ctx* ctx, const inference::CudaSharedMemoryUnregisterRequest*,
    inference::CudaSharedMemoryUnregisterResponse*) {
  return Unimplemented(ctx, "CUDA shared memory");
}
grpc::ServerUnaryReactor* InferenceService::TraceSetting(Ctx* ctx,
                                                         const inference::TraceSettingRequest*,
                                                         inference::TraceSettingResponse*) {
  return Finish(ctx, absl::UnimplementedError("tracing is not supported by quantserve"));
}
grpc::ServerUnaryReactor* InferenceService::LogSettings(Ctx* ctx,
                                                        const inference::LogSettingsRequest*,
                                                        inference::LogSettingsResponse*) {
  return Finish(ctx, absl::UnimplementedError(
                         "log settings are set with --log-verbose at start-up"));
}

}  // namespace qs
