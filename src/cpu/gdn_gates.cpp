// CPU reference for the Gated DeltaNet gates: write strength beta and log-decay g.
//
// Derivation, per (n, h) with u = a + dt_bias, sp = softplus(u), s_b = sigmoid(b):
//   beta = s_b                    d beta / d b = s_b (1 - s_b)
//   g = -exp(A_log) sp(u)         d g / d A_log = g,   d g / d u = -exp(A_log) sp'(u)
//   sp'(u) = sigmoid(u) below the threshold, 1 above it (PyTorch's softplus backward).
// dA_log and ddt_bias sum over tokens; threads own heads and walk tokens in order
// (deterministic), accumulating in double.
#include "cpu/gdn_gates.h"

#include "cpu/activation.h"

namespace deltatron::cpu {

constexpr int64_t kParallelMin = 32768;

template <typename T>
void gdn_gates_fwd(const T* b_NG, const T* a_NG, const T* A_log_G, const T* dt_bias_G, int64_t N,
                   int64_t G, T* beta_NG, T* g_NG) {
#pragma omp parallel for schedule(static) if (N * G > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t h = 0; h < G; ++h) {
      const int64_t i = n * G + h;
      beta_NG[i] = sigmoid(b_NG[i]);
      g_NG[i] = -std::exp(A_log_G[h]) * softplus(a_NG[i] + dt_bias_G[h]);
    }
  }
}

template <typename T>
void gdn_gates_bwd(const T* b_NG, const T* a_NG, const T* A_log_G, const T* dt_bias_G,
                   const T* dbeta_NG, const T* dg_NG, int64_t N, int64_t G, T* db_NG, T* da_NG,
                   T* dA_log_G, T* ddt_bias_G) {
#pragma omp parallel for schedule(static) if (N * G > kParallelMin)
  for (int64_t h = 0; h < G; ++h) {
    const T A = std::exp(A_log_G[h]);
    double sum_dA_log = 0, sum_ddt = 0;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = n * G + h;
      const T sb = sigmoid(b_NG[i]);
      const T u = a_NG[i] + dt_bias_G[h];
      const T dsp = u > T(20) ? T(1) : sigmoid(u);
      const T dgv = dg_NG[i];
      const T du = -dgv * A * dsp;
      sum_dA_log += double(dgv) * double(-A * softplus(u));  // dg * g
      sum_ddt += double(du);
      db_NG[i] = dbeta_NG[i] * sb * (T(1) - sb);
      da_NG[i] = du;
    }
    dA_log_G[h] += T(sum_dA_log);
    ddt_bias_G[h] += T(sum_ddt);
  }
}

template void gdn_gates_fwd<float>(const float*, const float*, const float*, const float*, int64_t,
                                   int64_t, float*, float*);
template void gdn_gates_fwd<double>(const double*, const double*, const double*, const double*,
                                    int64_t, int64_t, double*, double*);
template void gdn_gates_bwd<float>(const float*, const float*, const float*, const float*,
                                   const float*, const float*, int64_t, int64_t, float*, float*,
                                   float*, float*);
template void gdn_gates_bwd<double>(const double*, const double*, const double*, const double*,
                                    const double*, const double*, int64_t, int64_t, double*,
                                    double*, double*, double*);

}  // namespace deltatron::cpu
