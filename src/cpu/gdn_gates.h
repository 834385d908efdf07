// CPU reference for the Gated DeltaNet gates: write strength beta and log-decay g.
#pragma once

#include <cmath>
#include <cstdint>

namespace deltatron::cpu {

// PyTorch softplus (beta 1, threshold 20): x for x > 20, else log1p(exp(x)).
template <typename T>
inline T softplus(T x) {
  return x > T(20) ? x : std::log1p(std::exp(x));
}

// beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias).
template <typename T>
void gdn_gates_fwd(const T* b_NG, const T* a_NG, const T* A_log_G, const T* dt_bias_G, int64_t N,
                   int64_t G, T* beta_NG, T* g_NG);

// db, da overwritten; dA_log, ddt_bias accumulated (+=).
template <typename T>
void gdn_gates_bwd(const T* b_NG, const T* a_NG, const T* A_log_G, const T* dt_bias_G,
                   const T* dbeta_NG, const T* dg_NG, int64_t N, int64_t G, T* db_NG, T* da_NG,
                   T* dA_log_G, T* ddt_bias_G);

}  // namespace deltatron::cpu
