// CUDA (cuBLASLt) bias-free linear layer: the contract is ops/linear.h; pointers are device memory.
//
// Shape suffixes: N tokens, I input features, O output features; row-major, W stored [O, I].
// Inputs (x, W, dy) are float32 or bfloat16 (`in`); y and dx are stored in `out` (float32 or
// bfloat16), dW is float32. Products accumulate in float32 (CUBLAS_COMPUTE_32F: no TF32, so
// float32 inputs give float32 results).
// Work is queued on the legacy default stream and is asynchronous to the host.
#pragma once

#include <cstdint>

#include "cuda/dtype.h"

namespace deltatron::cuda {

// y_NO (= or += when accumulate) alpha x_NI W_OI^T; y stored in `out`.
void linear_fwd(DType in, const void* x_NI, const void* W_OI, int64_t N, int64_t I, int64_t O,
                DType out, void* y_NO, bool accumulate, float alpha = 1.0f);
// dx_NI (= or += when accumulate) alpha dy_NO W_OI; dx stored in `out`.
void linear_bwd_dx(DType in, const void* dy_NO, const void* W_OI, int64_t N, int64_t I, int64_t O,
                   DType out, void* dx_NI, bool accumulate, float alpha = 1.0f);
// dW_OI += alpha dy_NO^T x_NI (float32); = instead of += without accumulate (cuBLASLt beta 0:
// dW is not read).
void linear_bwd_dw(DType in, const void* x_NI, const void* dy_NO, int64_t N, int64_t I, int64_t O,
                   float* dW_OI, float alpha = 1.0f, bool accumulate = true);

// The float32-output forms used by ops/linear.cpp:

// y_NO = x_NI W_OI^T, overwritten.
void linear_fwd(DType in, const void* x_NI, const void* W_OI, int64_t N, int64_t I, int64_t O,
                float* y_NO);

// dx_NI (= or += when accumulate_dx) dy_NO W_OI, skipped when nullptr;
// dW_OI += dy_NO^T x_NI, skipped when nullptr.
void linear_bwd(DType in, const void* x_NI, const void* W_OI, const void* dy_NO, int64_t N,
                int64_t I, int64_t O, float* dx_NI, bool accumulate_dx, float* dW_OI);

// Number of cached cuBLASLt plans (one per distinct shape, transpose, dtype, alignment, beta);
// each plan made one heuristic query, so this is also the algorithm searches so far.
int64_t linear_plan_count();

// Host seconds the process spent on new plans: the heuristic queries (search_s) and the first
// cublasLtMatmul call of each new plan (first_call_s: includes loading the kernel's module when
// CUDA loads modules lazily). While these run the host queues nothing, so they become GPU idle
// time whenever the queue runs dry.
struct LinearPlanTime {
  double search_s = 0, first_call_s = 0;
};
LinearPlanTime linear_plan_time();

}  // namespace deltatron::cuda
