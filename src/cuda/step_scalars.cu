// CUDA step-scalar ops (see step_scalars.h).
//
// step_loss_sum_add: one block of 256 threads. Each tile of kTile = 2048 tokens is loaded
// cooperatively (coalesced) into shared memory (2048 floats + 2048 flags = 10 KiB), then thread 0
// walks it in token order, closing a sample's sum at each bound and adding it to the step's sum:
// the CPU's serial order, so the result is bitwise the CPU's. About N dependent f64 adds on one
// thread (8192 tokens: tens of microseconds), queued with the LM head's kernels, so no host waits.
// step_scalar_add and step_gate are single-thread kernels over a few scalars. Double arithmetic
// uses __dadd_rn / __ddiv_rn / __dsqrt_rn (correctly rounded, never contracted).
#include "core/constants.h"
#include "core/error.h"
#include "cuda/kernel_util.cuh"
#include "cuda/step_scalars.h"

namespace deltatron::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kTile = 2048;

__global__ void __launch_bounds__(kThreads)
    step_loss_sum_kernel(const float* __restrict__ loss, const int32_t* __restrict__ targets,
                         const int32_t* __restrict__ cu, int64_t S, int64_t N, double* sum) {
  __shared__ float v[kTile];
  __shared__ unsigned char keep[kTile];
  // Tokens up to the last bound (clamped to [0, N]).
  const int64_t stop = S > 0 ? min(max(int64_t(cu[S]), int64_t(0)), N) : 0;
  double total = 0, acc = 0;  // thread 0's: the step's sum, the open sample's sum
  int64_t s = 0, end = 0;     // the open sample and its end bound
  if (threadIdx.x == 0) {
    total = *sum;
    end = S > 0 ? cu[1] : 0;
  }
  for (int64_t t0 = 0; t0 < stop; t0 += kTile) {
    const int n = int(min(int64_t(kTile), stop - t0));
    __syncthreads();  // thread 0 has read the previous tile
    for (int i = threadIdx.x; i < n; i += kThreads) {
      v[i] = loss[t0 + i];
      keep[i] = targets[t0 + i] != core::kIgnoreIndex;
    }
    __syncthreads();
    if (threadIdx.x == 0)
      for (int i = 0; i < n; ++i) {
        const int64_t t = t0 + i;
        while (s < S && t >= end) {  // sample s ends before t: its sum joins the step's
          total = __dadd_rn(total, acc);
          acc = 0;
          ++s;
          end = s < S ? cu[s + 1] : 0;
        }
        if (keep[i]) acc = __dadd_rn(acc, double(v[i]));
      }
  }
  if (threadIdx.x == 0) {
    for (; s < S; ++s) {  // the last open sample, then any empty ones
      total = __dadd_rn(total, acc);
      acc = 0;
    }
    *sum = total;
  }
}

__global__ void step_scalar_add_kernel(const double* x, double* y) { *y = __dadd_rn(*y, *x); }

__global__ void step_moe_errors_kernel(const int32_t* bad, int32_t none, core::StepScalars* s) {
  if (s->moe_error != 0 || (bad[0] == none && bad[1] == none)) return;
  s->moe_error = 1;
  for (int k = 0; k < 3; ++k) s->moe_bad[k] = bad[k];
}

__global__ void step_gate_kernel(core::StepScalars* s, double max_norm, double label_tokens) {
  const double norm = __dsqrt_rn(s->grad_squares);
  float scale = 1.0f;  // train::clip_scale
  if (isfinite(norm) && max_norm > 0) {
    const double coef = __ddiv_rn(max_norm, __dadd_rn(norm, 1e-6));
    if (coef < 1.0) scale = __double2float_rn(coef);
  }
  s->grad_norm = norm;
  s->grad_scale = scale;
  const double loss = __ddiv_rn(s->ce_sum, label_tokens);
  const bool finite = isfinite(loss) && isfinite(norm) && isfinite(s->router_sum);
  s->skip = finite && s->moe_error == 0 ? 0.0 : 1.0;
}

}  // namespace

void step_loss_sum_add(const float* loss, const int32_t* targets, const int32_t* cu, int64_t S,
                       int64_t N, double* sum) {
  DT_CHECK(S >= 0 && N >= 0, "cuda::step_loss_sum_add: S=", S, " N=", N);
  step_loss_sum_kernel<<<1, kThreads>>>(loss, targets, cu, S, N, sum);
  DT_CUDA_LAUNCH_CHECK("step_loss_sum_kernel");
}

void step_scalar_add(const double* x, double* y) {
  step_scalar_add_kernel<<<1, 1>>>(x, y);
  DT_CUDA_LAUNCH_CHECK("step_scalar_add_kernel");
}

void step_moe_errors(const int32_t* bad, int32_t none, core::StepScalars* s) {
  step_moe_errors_kernel<<<1, 1>>>(bad, none, s);
  DT_CUDA_LAUNCH_CHECK("step_moe_errors_kernel");
}

void step_gate(core::StepScalars* s, double max_norm, double label_tokens) {
  step_gate_kernel<<<1, 1>>>(s, max_norm, label_tokens);
  DT_CUDA_LAUNCH_CHECK("step_gate_kernel");
}

}  // namespace deltatron::cuda
