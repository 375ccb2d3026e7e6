// Choosing among oneDNN's implementations of a convolution by timing them.
//
// oneDNN orders its implementations by a static preference, which is not always the
// fastest on a given CPU and shape: measured here (batch 8, NHWC, FP32, 2 threads), the
// memory-bound 1x1 convolutions that end a ResNet-50 block (64->256 at 56x56 with a fused
// sum) run in 3.2 ms on jit:avx512_core against 4.5 ms on the preferred brgconv_1x1,
// while for 3x3 and channel-reducing 1x1 convolutions brgconv is the fastest.
//
// Thread-safety: FastestConvolution may be called from any thread; decisions live in a
// process-wide cache guarded by a mutex (timing itself runs outside the lock, so two
// threads may time the same key once each; the first decision stored wins).
#ifndef QUANTSERVE_ENGINE_OPS_IMPL_AUTOTUNE_H_
#define QUANTSERVE_ENGINE_OPS_IMPL_AUTOTUNE_H_

#include <string>
#include <vector>

#include "dnnl.hpp"
#include "engine/ops/kernel.h"

namespace qs {

// Timing happens only while a KernelTimingScope is alive on the calling thread (a
// server's warmup, Session::Warmup): a request never waits for it. Outside one, a
// decision already taken for `key` is used, else oneDNN's first choice (not recorded).
//
// The primitive descriptor of `desc` + `attr` positioned at the implementation that ran
// fastest here, among the first three distinct non-reference ones, timed on zero-filled
// buffers (no kernel's speed depends on the values: no sparsity shortcuts) on the calling thread with
// `dnnl`'s stream. The decision is cached under `key`, which must identify the problem
// (shapes, strides, padding, post-ops; the calling thread's omp_get_max_threads() is
// added to it, since the fastest kernel for one thread is not always that for two); problems whose output is under 1 MiB keep
// oneDNN's first choice untimed. Blocks for the timing the first time a key is seen
// (a few runs of each candidate); after 4096 decisions, new keys keep the first choice
// untimed (bounded memory and latency for models with ever new shapes). Throws dnnl::error as the primitive_desc constructor
// does. The environment variable QS_CONV_AUTOTUNE=0 turns the timing off (oneDNN's first
// choice everywhere).
// `extra_args`: the execution arguments beyond src, weights, bias and dst the attr
// asks for (post-op binary operands, ...), given zero-filled buffers of the size the
// primitive reports; when one reports no size, the first choice is kept untimed.
dnnl::convolution_forward::primitive_desc FastestConvolution(
    const dnnl::convolution_forward::desc& desc, const dnnl::primitive_attr& attr,
    DnnlResources* dnnl, const std::string& key, const std::vector<int>& extra_args = {});

// While alive (and no FirstChoiceScope is), FastestConvolution on this thread may time
// candidates for keys it has no decision for. Scopes nest.
class KernelTimingScope {
 public:
  KernelTimingScope();
  ~KernelTimingScope();
  KernelTimingScope(const KernelTimingScope&) = delete;
  KernelTimingScope& operator=(const KernelTimingScope&) = delete;

 private:
  bool previous_;
};

// While alive, FastestConvolution on this thread returns oneDNN's first choice, untimed,
// and records no decision. Compile holds one around calibration and the precision
// report: kernels differ in the last bits of FP32 results, and the calibrated ranges —
// hence a quantized model's outputs — must not depend on which kernel won a timing.
class FirstChoiceScope {
 public:
  FirstChoiceScope();
  ~FirstChoiceScope();
  FirstChoiceScope(const FirstChoiceScope&) = delete;
  FirstChoiceScope& operator=(const FirstChoiceScope&) = delete;

 private:
  bool previous_;
};

// What the scopes above allow on the calling thread. The scopes are per thread: work
// handed to the threads of a parallel region carries them with KernelChoiceScope.
struct KernelChoice {
  bool timing_allowed = false;
  bool first_choice_only = false;
};
KernelChoice CurrentKernelChoice();

// While alive, the calling thread's KernelChoice is `choice`. Scopes nest.
class KernelChoiceScope {
 public:
  explicit KernelChoiceScope(KernelChoice choice);
  ~KernelChoiceScope();
  KernelChoiceScope(const KernelChoiceScope&) = delete;
  KernelChoiceScope& operator=(const KernelChoiceScope&) = delete;

 private:
  KernelChoice previous_;
};

}  // namespace qs

#endif  // QUANTSERVE_ENGINE_OPS_IMPL_AUTOTUNE_H_
