// CUDA (cuBLASLt) bias-free linear layer: the contract is ops/linear.h; pointers are device memory.
//
// Shape suffixes: N tokens, I input features, O output features; row-major, W stored [O, I].
// Inputs (x, W, dy) are float32 or bfloat16 (`in`); outputs (y, dx, dW) are float32. Products
// accumulate in float32 (CUBLAS_COMPUTE_32F: no TF32, so float32 inputs give float32 results).
// Work is queued on the legacy default stream and is asynchronous to the host.
#pragma once

#include <cstdint>

namespace deltatron::cuda {

enum class DType { f32, bf16 };

// y_NO = x_NI W_OI^T, overwritten.
void linear_fwd(DType in, const void* x_NI, const void* W_OI, int64_t N, int64_t I, int64_t O,
                float* y_NO);

// dx_NI (= or += when accumulate_dx) dy_NO W_OI, skipped when nullptr;
// dW_OI += dy_NO^T x_NI, skipped when nullptr.
void linear_bwd(DType in, const void* x_NI, const void* W_OI, const void* dy_NO, int64_t N,
                int64_t I, int64_t O, float* dx_NI, bool accumulate_dx, float* dW_OI);

// Number of cached cuBLASLt plans (one per distinct shape, transpose, dtype, alignment, beta).
int64_t linear_plan_count();

}  // namespace deltatron::cuda
