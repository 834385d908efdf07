// CPU reference for the bias-free linear layer y = x W^T (cpu::gemm, row-major).
//
// All three products are one GEMM each (cpu/gemm.h: float products formed in double), row-major:
//   fwd:  y[N,O]  = x[N,I] . W[O,I]^T           gemm(NoTrans, Trans,   M=N, N=O, K=I)
//   dx:   dx[N,I] = dy[N,O] . W[O,I]   (+ dx)    gemm(NoTrans, NoTrans, M=N, N=I, K=O)
//   dW:   dW[O,I] = dy[N,O]^T . x[N,I] + dW      gemm(Trans,   NoTrans, M=O, N=I, K=N)
// The GEMM ignores C on input when beta = 0, so overwritten outputs need no prior clearing.
#include "cpu/linear.h"

#include <algorithm>

#include "core/error.h"
#include "cpu/gemm.h"

namespace deltatron::cpu {

namespace {

void check_dims(const char* op, int64_t N, int64_t I, int64_t O) {
  DT_CHECK(N >= 0 && I >= 0 && O >= 0, op, ": shape N=", N, " I=", I, " O=", O,
           " is negative");  // cpu::gemm checks the BLAS integer range
}

}  // namespace

template <typename T>
void linear_fwd(const T* x_NI, const T* W_OI, int64_t N, int64_t I, int64_t O, T* y_NO,
                bool accumulate, T alpha) {
  check_dims("linear_fwd", N, I, O);
  if (N == 0 || O == 0) return;
  if (I == 0) {
    if (!accumulate) std::fill(y_NO, y_NO + N * O, T(0));
    return;
  }
  gemm(false, true, N, O, I, alpha, x_NI, I, W_OI, I, accumulate ? T(1) : T(0), y_NO, O);
}

template <typename T>
void linear_bwd(const T* x_NI, const T* W_OI, const T* dy_NO, int64_t N, int64_t I, int64_t O,
                T* dx_NI, bool accumulate_dx, T* dW_OI, T alpha, bool accumulate_dw) {
  check_dims("linear_bwd", N, I, O);
  if (dx_NI && N > 0 && I > 0) {
    if (O > 0)
      gemm(false, false, N, I, O, alpha, dy_NO, O, W_OI, I, accumulate_dx ? T(1) : T(0), dx_NI, I);
    else if (!accumulate_dx)
      std::fill(dx_NI, dx_NI + N * I, T(0));
  }
  if (dW_OI && O > 0 && I > 0) {
    if (N > 0)
      gemm(true, false, O, I, N, alpha, dy_NO, O, x_NI, I, accumulate_dw ? T(1) : T(0), dW_OI, I);
    else if (!accumulate_dw)
      std::fill(dW_OI, dW_OI + O * I, T(0));
  }
}

template <typename T>
void bias_add(T* y_NO, const T* b_O, int64_t N, int64_t O) {
#pragma omp parallel for schedule(static) if (N * O > (1 << 15))
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) y_NO[n * O + o] += b_O[o];
}

template <typename T>
void bias_bwd(const T* dy_NO, int64_t N, int64_t O, T* db_O) {
#pragma omp parallel for schedule(static) if (N * O > (1 << 15))
  for (int64_t o = 0; o < O; ++o) {
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += double(dy_NO[n * O + o]);
    db_O[o] += T(s);
  }
}

template void bias_add<float>(float*, const float*, int64_t, int64_t);
template void bias_add<double>(double*, const double*, int64_t, int64_t);
template void bias_bwd<float>(const float*, int64_t, int64_t, float*);
template void bias_bwd<double>(const double*, int64_t, int64_t, double*);
template void linear_fwd<float>(const float*, const float*, int64_t, int64_t, int64_t, float*, bool,
                                float);
template void linear_fwd<double>(const double*, const double*, int64_t, int64_t, int64_t, double*,
                                 bool, double);
template void linear_bwd<float>(const float*, const float*, const float*, int64_t, int64_t, int64_t,
                                float*, bool, float*, float, bool);
template void linear_bwd<double>(const double*, const double*, const double*, int64_t, int64_t,
                                 int64_t, double*, bool, double*, double, bool);

}  // namespace deltatron::cpu
