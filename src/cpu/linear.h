// CPU reference for the bias-free linear layer y = x W^T (BLAS GEMM).
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// y_NO = alpha x_NI W_OI^T, overwritten, or y_NO += alpha x_NI W_OI^T when accumulate (rounded
// once: cpu::gemm with beta = 1).
template <typename T>
void linear_fwd(const T* x_NI, const T* W_OI, int64_t N, int64_t I, int64_t O, T* y_NO,
                bool accumulate = false, T alpha = T(1));

// dx_NI (= or +=) alpha dy_NO W_OI, skipped when nullptr; dW_OI (+= or, without accumulate_dw,
// =) alpha dy_NO^T x_NI, skipped when nullptr.
template <typename T>
void linear_bwd(const T* x_NI, const T* W_OI, const T* dy_NO, int64_t N, int64_t I, int64_t O,
                T* dx_NI, bool accumulate_dx, T* dW_OI, T alpha = T(1), bool accumulate_dw = true);

// y_NO[n] += b_O (every row).
template <typename T>
void bias_add(T* y_NO, const T* b_O, int64_t N, int64_t O);

// db_O += sum_n dy_NO[n] (rows in order).
template <typename T>
void bias_bwd(const T* dy_NO, int64_t N, int64_t O, T* db_O);

}  // namespace deltatron::cpu
