// CPU reference for the MoE op family: router, router losses, token permutation, shared gate.
//
// Router backward, one token (p = softmax(l) over all E, S = selected set, w = p_S / sum p_S):
//   w_j = exp(l_j) / sum_{i in S} exp(l_i) is a softmax over the selected logits only, so
//     dl_j += w_j (dw_j - sum_{i in S} w_i dw_i)   for j in S, nothing for j not in S.
//   p_e is a softmax over all logits:  dl_e += p_e (dp_e - sum_e' p_e' dp_e').
//   lse = logsumexp(l):                dl_e += dlse p_e.
// Sums that decide a loss value or a normaliser are kept in double. Every loop over tokens is
// either independent per token (OpenMP) or serial, so results never depend on the thread count.
#include "cpu/moe.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "cpu/activation.h"

namespace deltatron::cpu {

namespace {

// Below this many elements a thread team costs more than it saves.
constexpr int64_t kParallelMin = 1 << 15;

// Group id of token t: group_N == nullptr means every token is in group 0.
inline int32_t group_of(const int32_t* group_N, int64_t t) { return group_N ? group_N[t] : 0; }

// Group ids must lie in [-1, G); G < 0 checks only the lower bound (z-loss: groups unused).
void check_groups(const char* op, const int32_t* group_N, int64_t N, int64_t G) {
  for (int64_t t = 0; t < N; ++t) {
    const int32_t g = group_of(group_N, t);
    DT_CHECK(g >= -1 && (G < 0 || g < G), op, ": group id ", g, " of token ", t,
             " is outside [-1, ", G, ")");
  }
}

void check_experts(const char* op, const int32_t* topk_idx_NK, int64_t N, int64_t K, int64_t E) {
  for (int64_t i = 0; i < N * K; ++i)
    DT_CHECK(topk_idx_NK[i] >= 0 && topk_idx_NK[i] < E, op, ": expert id ", topk_idx_NK[i],
             " of token ", i / K, " is outside [0, ", E, ")");
}

void check_router_dims(const char* op, int64_t N, int64_t E, int64_t K) {
  DT_CHECK(N >= 0 && E > 0 && K > 0 && K <= E, op, ": need N >= 0 and 0 < K <= E, got N=", N,
           " E=", E, " K=", K);
}

}  // namespace

template <typename T>
void moe_router_fwd(const T* logits_NE, int64_t N, int64_t E, int64_t K, T* probs_NE, T* lse_N,
                    int32_t* topk_idx_NK, T* topk_w_NK) {
  check_router_dims("moe_router_fwd", N, E, K);
  DT_CHECK(E <= std::numeric_limits<int32_t>::max(), "moe_router_fwd: too many experts ", E);
  std::atomic<int64_t> bad{-1};
#pragma omp parallel if (N * E > kParallelMin)
  {
    std::vector<int32_t> order(E);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* l = logits_NE + n * E;
      T* p = probs_NE + n * E;
      bool finite = true;
      for (int64_t e = 0; e < E; ++e) finite = finite && std::isfinite(l[e]);
      if (!finite) {
        bad.store(n);
        std::fill(p, p + E, T(0));
        lse_N[n] = T(0);
        for (int64_t j = 0; j < K; ++j) {
          topk_idx_NK[n * K + j] = int32_t(j);
          topk_w_NK[n * K + j] = T(0);
        }
        continue;
      }
      const T m = *std::max_element(l, l + E);
      double s = 0;
      for (int64_t e = 0; e < E; ++e) s += double(std::exp(l[e] - m));
      const T lse = T(double(m) + std::log(s));
      lse_N[n] = lse;
      for (int64_t e = 0; e < E; ++e) p[e] = std::exp(l[e] - lse);
      // Top-k by probability, descending; equal probabilities keep the lower expert index first.
      for (int64_t e = 0; e < E; ++e) order[e] = int32_t(e);
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [p](int32_t a, int32_t b) {
        return p[a] > p[b] || (p[a] == p[b] && a < b);
      });
      double sel = 0;
      for (int64_t j = 0; j < K; ++j) sel += double(p[order[j]]);
      for (int64_t j = 0; j < K; ++j) {
        topk_idx_NK[n * K + j] = order[j];
        topk_w_NK[n * K + j] = T(double(p[order[j]]) / sel);
      }
    }
  }
  DT_CHECK(bad.load() < 0, "moe_router_fwd: router logits of token ", bad.load(),
           " are not finite");
}

template <typename T>
void moe_router_bwd(const T* probs_NE, const int32_t* topk_idx_NK, const T* topk_w_NK,
                    const T* dw_NK, const T* dprobs_NE, const T* dlse_N, int64_t N, int64_t E,
                    int64_t K, T* dlogits_NE) {
  check_router_dims("moe_router_bwd", N, E, K);
  check_experts("moe_router_bwd", topk_idx_NK, N, K, E);
#pragma omp parallel for schedule(static) if (N * E > kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* p = probs_NE + n * E;
    T* dl = dlogits_NE + n * E;
    std::fill(dl, dl + E, T(0));
    if (dprobs_NE) {
      const T* dp = dprobs_NE + n * E;
      double a = 0;
      for (int64_t e = 0; e < E; ++e) a += double(p[e]) * double(dp[e]);
      for (int64_t e = 0; e < E; ++e) dl[e] = T(double(p[e]) * (double(dp[e]) - a));
    }
    if (dlse_N)
      for (int64_t e = 0; e < E; ++e) dl[e] += dlse_N[n] * p[e];
    if (dw_NK) {
      const T* w = topk_w_NK + n * K;
      const T* dw = dw_NK + n * K;
      double b = 0;
      for (int64_t j = 0; j < K; ++j) b += double(w[j]) * double(dw[j]);
      for (int64_t j = 0; j < K; ++j)
        dl[topk_idx_NK[n * K + j]] += T(double(w[j]) * (double(dw[j]) - b));
    }
  }
}

template <typename T>
double moe_aux_loss_fwd(const T* probs_NE, const int32_t* group_N, int64_t N, int64_t E, int64_t G,
                        const double* F_GE, const double* c_G) {
  DT_CHECK(G >= 0, "moe_aux_loss_fwd: negative number of groups ", G);
  if (G == 0) return 0.0;
  check_groups("moe_aux_loss_fwd", group_N, N, G);
  double loss = 0;  // serial, token order: the value is independent of the thread count
  for (int64_t t = 0; t < N; ++t) {
    const int32_t g = group_of(group_N, t);
    if (g < 0) continue;
    const T* p = probs_NE + t * E;
    const double* f = F_GE + g * E;
    double acc = 0;
    for (int64_t e = 0; e < E; ++e) acc += f[e] * double(p[e]);
    loss += c_G[g] * acc;
  }
  return loss;
}

template <typename T>
void moe_aux_loss_bwd(const int32_t* group_N, int64_t N, int64_t E, int64_t G, const double* F_GE,
                      const double* c_G, double scale, T* dprobs_NE) {
  DT_CHECK(G >= 0, "moe_aux_loss_bwd: negative number of groups ", G);
  if (G > 0) check_groups("moe_aux_loss_bwd", group_N, N, G);
#pragma omp parallel for schedule(static) if (N * E > kParallelMin)
  for (int64_t t = 0; t < N; ++t) {
    const int32_t g = group_of(group_N, t);
    T* dp = dprobs_NE + t * E;
    if (g < 0 || G == 0) {
      std::fill(dp, dp + E, T(0));
      continue;
    }
    const double a = scale * c_G[g];
    for (int64_t e = 0; e < E; ++e) dp[e] = T(a * F_GE[g * E + e]);
  }
}

template <typename T>
double moe_z_loss_fwd(const T* lse_N, const int32_t* group_N, int64_t N, double z_coef) {
  check_groups("moe_z_loss_fwd", group_N, N, -1);
  double s = 0;
  for (int64_t t = 0; t < N; ++t)
    if (group_of(group_N, t) >= 0) s += double(lse_N[t]) * double(lse_N[t]);
  return z_coef * s;
}

template <typename T>
void moe_z_loss_bwd(const T* lse_N, const int32_t* group_N, int64_t N, double z_coef, double scale,
                    T* dlse_N) {
  check_groups("moe_z_loss_bwd", group_N, N, -1);
  for (int64_t t = 0; t < N; ++t)
    dlse_N[t] = group_of(group_N, t) >= 0 ? T(scale * 2 * z_coef * double(lse_N[t])) : T(0);
}

void moe_count_routes(const int32_t* topk_idx_NK, const int32_t* group_N, int64_t N, int64_t K,
                      int64_t E, int64_t G, double* counts_GE, double* tokens_G) {
  DT_CHECK(G > 0, "moe_count_routes: need at least one group, got ", G);
  check_groups("moe_count_routes", group_N, N, G);
  check_experts("moe_count_routes", topk_idx_NK, N, K, E);
  for (int64_t t = 0; t < N; ++t) {
    const int32_t g = group_of(group_N, t);
    if (g < 0) continue;
    tokens_G[g] += 1;
    for (int64_t j = 0; j < K; ++j) counts_GE[g * E + topk_idx_NK[t * K + j]] += 1;
  }
}

void moe_permute(const int32_t* topk_idx_NK, int64_t N, int64_t K, int64_t E, int64_t* offsets_E1,
                 int32_t* rows_P) {
  check_router_dims("moe_permute", N, E, K);
  DT_CHECK(N * K <= std::numeric_limits<int32_t>::max(), "moe_permute: N*K = ", N * K,
           " routing slots exceed the int32 row index");
  check_experts("moe_permute", topk_idx_NK, N, K, E);
  // Counting sort by expert, stable in slot order n*K+j (so ascending token order per expert).
  std::fill(offsets_E1, offsets_E1 + E + 1, int64_t(0));
  for (int64_t i = 0; i < N * K; ++i) ++offsets_E1[topk_idx_NK[i] + 1];
  for (int64_t e = 0; e < E; ++e) offsets_E1[e + 1] += offsets_E1[e];
  std::vector<int64_t> next(offsets_E1, offsets_E1 + E);
  for (int64_t i = 0; i < N * K; ++i) rows_P[next[topk_idx_NK[i]]++] = int32_t(i);
}

template <typename T>
void moe_gather(const T* x_ND, const int32_t* rows_R, const T* w_NK, int64_t R, int64_t K,
                int64_t D, T* out_RD) {
#pragma omp parallel for schedule(static) if (R * D > kParallelMin)
  for (int64_t r = 0; r < R; ++r) {
    const T* x = x_ND + int64_t(rows_R[r] / K) * D;
    T* o = out_RD + r * D;
    if (w_NK) {
      const T w = w_NK[rows_R[r]];
      for (int64_t d = 0; d < D; ++d) o[d] = w * x[d];
    } else {
      std::copy(x, x + D, o);
    }
  }
}

template <typename T>
void moe_scatter_add(const T* src_RD, const int32_t* rows_R, const T* w_NK, int64_t R, int64_t K,
                     int64_t D, T* y_ND) {
  // Rows of one expert belong to distinct tokens, so the rows can be updated in parallel.
#pragma omp parallel for schedule(static) if (R * D > kParallelMin)
  for (int64_t r = 0; r < R; ++r) {
    T* y = y_ND + int64_t(rows_R[r] / K) * D;
    const T* s = src_RD + r * D;
    const T w = w_NK ? w_NK[rows_R[r]] : T(1);
    for (int64_t d = 0; d < D; ++d) y[d] += w * s[d];
  }
}

template <typename T>
void moe_scatter_add(const T* src_PD, const int32_t* pos_NK, const T* w_NK, int64_t N, int64_t K,
                     int64_t D, T* y_ND, bool accumulate) {
  DT_CHECK(N >= 0 && K > 0 && D >= 0, "moe_scatter_add: need N >= 0, K > 0, D >= 0, got N=", N,
           " K=", K, " D=", D);
  for (int64_t i = 0; i < N * K; ++i)
    DT_CHECK(pos_NK[i] >= 0 && pos_NK[i] < N * K, "moe_scatter_add: permuted row ", pos_NK[i],
             " of slot ", i, " is outside [0, ", N * K, ")");
#pragma omp parallel if (N * K * D > kParallelMin)
  {
    std::vector<int64_t> slots(K);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      // The token's slots in ascending permuted row (= ascending expert) order.
      for (int64_t j = 0; j < K; ++j) slots[j] = n * K + j;
      std::sort(slots.begin(), slots.end(),
                [pos_NK](int64_t a, int64_t b) { return pos_NK[a] < pos_NK[b]; });
      T* y = y_ND + n * D;
      if (!accumulate) std::fill(y, y + D, T(0));
      for (int64_t i : slots) {
        const T* s = src_PD + int64_t(pos_NK[i]) * D;
        const T w = w_NK ? w_NK[i] : T(1);
        for (int64_t d = 0; d < D; ++d) y[d] += w * s[d];
      }
    }
  }
}

template <typename T>
void moe_expert_weight_bwd(const T* h_RF, const T* g_RF, const int32_t* rows_R, const T* w_NK,
                           int64_t R, int64_t K, int64_t F, T* dw_NK, T* dh_RF) {
#pragma omp parallel for schedule(static) if (R * F > kParallelMin)
  for (int64_t r = 0; r < R; ++r) {
    const T* h = h_RF + r * F;
    const T* g = g_RF + r * F;
    T* dh = dh_RF + r * F;
    double dot = 0;
    for (int64_t f = 0; f < F; ++f) dot += double(g[f]) * double(h[f]);
    dw_NK[rows_R[r]] = T(dot);
    const T w = w_NK[rows_R[r]];
    for (int64_t f = 0; f < F; ++f) dh[f] = w * g[f];  // after the dot: dh may alias g
  }
}

template <typename T>
void moe_shared_gate_fwd(const T* o_ND, const T* g_N, int64_t N, int64_t D, T* y_ND) {
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t t = 0; t < N; ++t) {
    const T s = sigmoid(g_N[t]);
    for (int64_t d = 0; d < D; ++d) y_ND[t * D + d] += o_ND[t * D + d] * s;
  }
}

template <typename T>
void moe_shared_gate_bwd(const T* o_ND, const T* g_N, const T* dy_ND, int64_t N, int64_t D,
                         T* do_ND, T* dg_N) {
#pragma omp parallel for schedule(static) if (N * D > kParallelMin)
  for (int64_t t = 0; t < N; ++t) {
    const T s = sigmoid(g_N[t]);
    double dot = 0;
    for (int64_t d = 0; d < D; ++d) dot += double(dy_ND[t * D + d]) * double(o_ND[t * D + d]);
    for (int64_t d = 0; d < D; ++d) do_ND[t * D + d] = dy_ND[t * D + d] * s;
    dg_N[t] = T(dot * double(s) * (1.0 - double(s)));
  }
}

#define DT_INSTANTIATE(T)                                                                         \
  template void moe_router_fwd<T>(const T*, int64_t, int64_t, int64_t, T*, T*, int32_t*, T*);     \
  template void moe_router_bwd<T>(const T*, const int32_t*, const T*, const T*, const T*,         \
                                  const T*, int64_t, int64_t, int64_t, T*);                       \
  template double moe_aux_loss_fwd<T>(const T*, const int32_t*, int64_t, int64_t, int64_t,        \
                                      const double*, const double*);                              \
  template void moe_aux_loss_bwd<T>(const int32_t*, int64_t, int64_t, int64_t, const double*,     \
                                    const double*, double, T*);                                   \
  template double moe_z_loss_fwd<T>(const T*, const int32_t*, int64_t, double);                   \
  template void moe_z_loss_bwd<T>(const T*, const int32_t*, int64_t, double, double, T*);         \
  template void moe_gather<T>(const T*, const int32_t*, const T*, int64_t, int64_t, int64_t, T*); \
  template void moe_scatter_add<T>(const T*, const int32_t*, const T*, int64_t, int64_t, int64_t, \
                                   T*);                                                           \
  template void moe_scatter_add<T>(const T*, const int32_t*, const T*, int64_t, int64_t, int64_t, \
                                   T*, bool);                                                     \
  template void moe_expert_weight_bwd<T>(const T*, const T*, const int32_t*, const T*, int64_t,   \
                                         int64_t, int64_t, T*, T*);                               \
  template void moe_shared_gate_fwd<T>(const T*, const T*, int64_t, int64_t, T*);                 \
  template void moe_shared_gate_bwd<T>(const T*, const T*, const T*, int64_t, int64_t, T*, T*);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
