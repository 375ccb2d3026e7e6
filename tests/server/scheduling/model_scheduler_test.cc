// The dynamic batcher's ordering: priority levels (Triton's semantics) and FIFO within
// a level. The worker is held inside the first request's completion callback (which
// runs on the worker thread), so the queue's order is observed without any sleep.
#include "server/scheduling/model_scheduler.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "engine/session.h"
#include "gtest/gtest.h"
#include "onnx/onnx_pb.h"
#include "server/scheduling/inference_observer.h"

namespace qs {
namespace {

// y = Relu(...Relu(x)) over [batch, width], `relus` deep (intermediates of 64 KiB and
// more live in the context's arena).
onnx::ModelProto ReluModel(int relus = 1, int64_t width = 4) {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(13);
  auto* g = m.mutable_graph();
  g->set_name("relu");
  for (int i = 0; i < relus; ++i) {
    auto* n = g->add_node();
    n->set_op_type("Relu");
    n->add_input(i == 0 ? "x" : "t" + std::to_string(i - 1));
    n->add_output(i == relus - 1 ? "y" : "t" + std::to_string(i));
  }
  for (auto* vi : {g->add_input(), g->add_output()}) {
    vi->set_name(vi == &g->input(0) ? "x" : "y");
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    tt->mutable_shape()->add_dim()->set_dim_param("batch");
    tt->mutable_shape()->add_dim()->set_dim_value(width);
  }
  return m;
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = Session::Compile(ReluModel(), CompileOptions{});
    ASSERT_TRUE(s.ok()) << s.status();
    session_ = std::shared_ptr<Session>(std::move(*s));
  }

  std::unique_ptr<InferenceRequest> Request(int id, uint64_t priority,
                                            std::function<void()> on_done) {
    auto r = std::make_unique<InferenceRequest>();
    Tensor x(DataType::kFloat32, {1, 4});
    x.data<float>()[0] = static_cast<float>(id);
    r->inputs = {x};
    r->priority = priority;
    r->enqueue_time = absl::Now();
    r->done = [this, id, on_done](absl::Status st, InferenceResult res) {
      EXPECT_TRUE(st.ok()) << st;
      EXPECT_EQ(res.outputs[0].data<float>()[0], static_cast<float>(id));
      {
        absl::MutexLock lock(&mu_);
        order_.push_back(id);
      }
      if (on_done) on_done();
    };
    return r;
  }

  // Options whose workers the fixture's tracker counts (see RetireAndWait).
  SchedulerOptions TrackedOptions(int instances = 1) {
    SchedulerOptions o;
    o.tracker = &tracker_;
    o.instance_count = instances;
    return o;
  }
  // Retires `sched`; true once every worker has exited.
  bool RetireAndWait(ModelScheduler* sched) {
    sched->Retire();
    return tracker_.WaitForAll(absl::Now() + absl::Seconds(30));
  }

  std::shared_ptr<Session> session_;
  WorkerTracker tracker_;
  absl::Mutex mu_;
  std::vector<int> order_ ABSL_GUARDED_BY(mu_);
};

TEST_F(SchedulerTest, HigherPriorityLevelsRunFirstFifoWithinALevel) {
  inference::ModelConfig config;
  config.set_max_batch_size(1);  // one request per execution: the order is visible
  config.mutable_dynamic_batching()->set_priority_levels(3);
  config.mutable_dynamic_batching()->set_default_priority_level(2);
  SchedulerOptions options = TrackedOptions();
  auto sched = ModelScheduler::Start(session_, session_.get(), config, options);
  ASSERT_TRUE(sched.ok()) << sched.status();

  absl::Notification first_running, release;
  ASSERT_TRUE((*sched)
                  ->Enqueue(Request(1, 0, [&] {
                    first_running.Notify();
                    release.WaitForNotification();
                  }))
                  .ok());
  first_running.WaitForNotification();  // the worker is inside request 1's callback
  ASSERT_TRUE((*sched)->Enqueue(Request(2, 3, nullptr)).ok());  // lowest level
  ASSERT_TRUE((*sched)->Enqueue(Request(3, 0, nullptr)).ok());  // default: level 2
  ASSERT_TRUE((*sched)->Enqueue(Request(4, 1, nullptr)).ok());  // highest
  ASSERT_TRUE((*sched)->Enqueue(Request(5, 2, nullptr)).ok());  // level 2, after 3
  ASSERT_TRUE((*sched)->Enqueue(Request(6, 99, nullptr)).ok());  // clamped to 3, after 2
  release.Notify();
  ASSERT_TRUE(RetireAndWait(sched->get()));
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(order_, (std::vector<int>{1, 4, 3, 5, 2, 6}));
}

TEST_F(SchedulerTest, WithoutLevelsTheQueueIsFifo) {
  inference::ModelConfig config;
  config.set_max_batch_size(1);
  SchedulerOptions options = TrackedOptions();
  auto sched = ModelScheduler::Start(session_, session_.get(), config, options);
  ASSERT_TRUE(sched.ok()) << sched.status();
  absl::Notification first_running, release;
  ASSERT_TRUE((*sched)
                  ->Enqueue(Request(1, 0, [&] {
                    first_running.Notify();
                    release.WaitForNotification();
                  }))
                  .ok());
  first_running.WaitForNotification();
  ASSERT_TRUE((*sched)->Enqueue(Request(2, 3, nullptr)).ok());
  ASSERT_TRUE((*sched)->Enqueue(Request(3, 1, nullptr)).ok());
  release.Notify();
  ASSERT_TRUE(RetireAndWait(sched->get()));
  absl::MutexLock lock(&mu_);
  EXPECT_EQ(order_, (std::vector<int>{1, 2, 3}));
}

TEST_F(SchedulerTest, WarmupInputsAreReleasedOnceTheWorkersHaveRunThem) {
  inference::ModelConfig config;
  config.set_max_batch_size(8);
  SchedulerOptions options = TrackedOptions(2);
  Tensor probe(DataType::kFloat32, {8, 4});
  options.warmup = {{probe}};
  auto sched = ModelScheduler::Start(session_, session_.get(), config, options);
  ASSERT_TRUE(sched.ok()) << sched.status();
  options.warmup.clear();
  // Only `probe` is left holding the buffer: the scheduler kept no copy of the set.
  EXPECT_TRUE(probe.unique());
  ASSERT_TRUE(RetireAndWait(sched->get()));
}

// Records where each batched execution's first input lives, and keeps the inputs of
// the executions it is told to (as the drift monitor keeps a sample).
class InputRecorder : public InferenceObserver {
 public:
  void OnSuccess(int64_t, absl::Duration, const InferenceTimings&) override {}
  void OnFailure(FailureReason, absl::Duration) override {}
  void OnExecution(int64_t, const InferenceTimings&) override {}
  void OnQueueDepth(int64_t) override {}
  void OnInFlight(int64_t) override {}
  void OnActivationBytes(int64_t bytes) override {
    absl::MutexLock lock(&mu_);
    activation_reports.push_back(bytes);
  }
  void OnOutputs(const std::vector<Tensor>& inputs, const std::vector<Tensor>&) override {
    absl::MutexLock lock(&mu_);
    data.push_back(inputs[0].raw_data());
    if (keep_next) kept = inputs[0];
    keep_next = false;
  }
  absl::Mutex mu_;
  std::vector<const void*> data ABSL_GUARDED_BY(mu_);
  bool keep_next ABSL_GUARDED_BY(mu_) = false;
  Tensor kept ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> activation_reports ABSL_GUARDED_BY(mu_);
};

// The activation bytes reported for a model are its workers' contexts' own figure
// (engine: ExecutionContext::activation_memory), summed, from the end of warmup.
TEST_F(SchedulerTest, ActivationBytesAreTheSumOverTheWorkersContexts) {
  inference::ModelConfig config;
  config.set_max_batch_size(8);
  SchedulerOptions options = TrackedOptions(2);
  options.warmup = {{Tensor(DataType::kFloat32, {8, 4096})},
                    {Tensor(DataType::kFloat32, {1, 4096})}};
  auto recorder = std::make_shared<InputRecorder>();
  options.observer = recorder;
  auto compiled = Session::Compile(ReluModel(3, 4096), CompileOptions{});
  ASSERT_TRUE(compiled.ok()) << compiled.status();
  std::shared_ptr<Session> session(std::move(*compiled));
  // One context warmed the same way, outside any scheduler: the reference figure.
  auto ctx = session->NewContext();
  for (const auto& inputs : options.warmup) {
    std::vector<Tensor> out;
    ASSERT_TRUE(session->Warmup(ctx.get(), inputs, &out).ok());
  }
  const ExecutionContext::ActivationMemory one = ctx->activation_memory();
  const int64_t per_context = static_cast<int64_t>(one.arena_bytes + one.cached_bytes);
  ASSERT_GT(per_context, 0);

  auto sched = ModelScheduler::Start(session, session.get(), config, options);
  ASSERT_TRUE(sched.ok()) << sched.status();
  {
    absl::MutexLock lock(&recorder->mu_);
    ASSERT_FALSE(recorder->activation_reports.empty());  // reported before Start returned
    EXPECT_EQ(recorder->activation_reports.back(), 2 * per_context);
  }
  ASSERT_TRUE(RetireAndWait(sched->get()));
  absl::MutexLock lock(&recorder->mu_);
  EXPECT_EQ(recorder->activation_reports.back(), 0);  // both workers exited
}

// A worker concatenates batched inputs into one buffer it reuses from batch to batch,
// but never while anything still holds the previous batch's inputs: a kept sample
// keeps its values. Batch 0 is one request; each later batch is two requests queued
// while the worker is held in the first callback of the batch before.
TEST_F(SchedulerTest, BatchBufferIsReusedUnlessTheLastBatchIsStillHeld) {
  inference::ModelConfig config;
  config.set_max_batch_size(8);
  config.mutable_dynamic_batching();
  SchedulerOptions options = TrackedOptions();
  auto recorder = std::make_shared<InputRecorder>();
  options.observer = recorder;
  auto sched = ModelScheduler::Start(session_, session_.get(), config, options);
  ASSERT_TRUE(sched.ok()) << sched.status();

  constexpr int kBatches = 5, kKept = 3;  // batch 3 is requests 6 and 7
  absl::Notification running[kBatches], release[kBatches];
  auto holding = [&](int b) {
    return [&, b] {
      running[b].Notify();
      release[b].WaitForNotification();
    };
  };
  ASSERT_TRUE((*sched)->Enqueue(Request(1, 0, holding(0))).ok());
  for (int b = 1; b < kBatches; ++b) {
    running[b - 1].WaitForNotification();  // the worker is in batch b-1's callback
    {
      absl::MutexLock lock(&recorder->mu_);
      recorder->keep_next = b == kKept;
    }
    ASSERT_TRUE((*sched)->Enqueue(Request(2 * b, 0, holding(b))).ok());
    ASSERT_TRUE((*sched)->Enqueue(Request(2 * b + 1, 0, nullptr)).ok());
    release[b - 1].Notify();
  }
  running[kBatches - 1].WaitForNotification();
  release[kBatches - 1].Notify();
  ASSERT_TRUE(RetireAndWait(sched->get()));

  {
    absl::MutexLock lock(&mu_);
    ASSERT_EQ(order_, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9}));
  }
  absl::MutexLock lock(&recorder->mu_);
  ASSERT_EQ(recorder->data.size(), static_cast<size_t>(kBatches));  // pairs were batched
  EXPECT_EQ(recorder->data[2], recorder->data[1]);  // reused
  EXPECT_EQ(recorder->data[3], recorder->data[2]);
  EXPECT_NE(recorder->data[4], recorder->data[3]);  // batch 3 still held: a fresh buffer
  ASSERT_TRUE(recorder->kept.defined());
  EXPECT_EQ(recorder->kept.dim(0), 2);
  EXPECT_EQ(recorder->kept.data<float>()[0], 6.f);
  EXPECT_EQ(recorder->kept.data<float>()[4], 7.f);
  // The staging buffer counts as the model's activation memory: nothing after warmup
  // (these activations are below the pool's floor), then one buffer for two rows of
  // four floats once the first pair ran; its replacement is the same size.
  // When the worker exits, it holds nothing.
  EXPECT_EQ(recorder->activation_reports, (std::vector<int64_t>{0, 2 * 4 * 4, 0}));
}

}  // namespace
}  // namespace qs
