// CPU reference for the fused LM head + cross-entropy: the label rows of the pack, gathered in
// chunks, through linear_fwd, cross_entropy_fwd / _bwd (dlogits in place of the logits) and
// linear_bwd. The chunking and the kernel order are those of model::lm_head_loss, so a model
// switched to this op computes bitwise the same losses and gradients.
#include "cpu/lm_head_ce.h"

#include <algorithm>
#include <vector>

#include "core/constants.h"
#include "core/error.h"
#include "cpu/cross_entropy.h"
#include "cpu/linear.h"

namespace deltatron::cpu {

namespace {
constexpr int64_t kLogitBudget = int64_t(1) << 22;  // logits per chunk (16 MiB in float32)
}

template <typename T>
void linear_cross_entropy(const T* x_ND, const T* W_VD, const int32_t* targets_N, const T* dloss_N,
                          int64_t N, int64_t D, int64_t V, T* loss_N, int32_t* correct_N, T* dx_ND,
                          bool accumulate_dx, T* dW_VD) {
  DT_CHECK(N >= 0 && D >= 0 && V > 0, "linear_cross_entropy: need N >= 0, D >= 0, V > 0, got N=", N,
           " D=", D, " V=", V);
  DT_CHECK(dloss_N || (!dx_ND && !dW_VD),
           "linear_cross_entropy: dx or dW requested without dloss (forward only)");
  std::vector<int64_t> rows;  // the label-carrying tokens
  for (int64_t n = 0; n < N; ++n)
    if (targets_N[n] != core::kIgnoreIndex) rows.push_back(n);
  std::fill(loss_N, loss_N + N, T(0));
  if (correct_N) std::fill(correct_N, correct_N + N, 0);
  if (dx_ND && !accumulate_dx) std::fill(dx_ND, dx_ND + N * D, T(0));
  const bool backward = dloss_N && (dx_ND || dW_VD);
  const int64_t chunk = std::max<int64_t>(1, kLogitBudget / V);
  std::vector<T> x, logits, lse, loss, dloss, dx;
  std::vector<int32_t> tgt;
  for (size_t r0 = 0; r0 < rows.size(); r0 += chunk) {
    const int64_t M = std::min<int64_t>(chunk, rows.size() - r0);
    x.resize(M * D);
    tgt.resize(M);
    for (int64_t m = 0; m < M; ++m) {
      std::copy(x_ND + rows[r0 + m] * D, x_ND + (rows[r0 + m] + 1) * D, &x[m * D]);
      tgt[m] = targets_N[rows[r0 + m]];
    }
    logits.resize(M * V);
    lse.resize(M);
    loss.resize(M);
    linear_fwd<T>(x.data(), W_VD, M, D, V, logits.data());
    cross_entropy_fwd<T>(logits.data(), tgt.data(), M, V, loss.data(), lse.data());
    for (int64_t m = 0; m < M; ++m) loss_N[rows[r0 + m]] = loss[m];
    if (correct_N)
      for (int64_t m = 0; m < M; ++m) {
        const T* row = &logits[m * V];
        correct_N[rows[r0 + m]] = std::max_element(row, row + V) - row == tgt[m];
      }
    if (!backward) continue;
    dloss.resize(M);
    for (int64_t m = 0; m < M; ++m) dloss[m] = dloss_N[rows[r0 + m]];
    // dlogits overwrite the logits in place (allowed by the cross_entropy_bwd contract).
    cross_entropy_bwd<T>(logits.data(), tgt.data(), lse.data(), dloss.data(), M, V, logits.data());
    dx.resize(dx_ND ? M * D : 0);
    linear_bwd<T>(x.data(), W_VD, logits.data(), M, D, V, dx_ND ? dx.data() : nullptr, false,
                  dW_VD);
    if (!dx_ND) continue;
    for (int64_t m = 0; m < M; ++m) {
      T* out = dx_ND + rows[r0 + m] * D;
      const T* in = &dx[m * D];
      if (accumulate_dx)
        for (int64_t d = 0; d < D; ++d) out[d] += in[d];
      else
        std::copy(in, in + D, out);
    }
  }
}

template void linear_cross_entropy<float>(const float*, const float*, const int32_t*, const float*,
                                          int64_t, int64_t, int64_t, float*, int32_t*, float*, bool,
                                          float*);
template void linear_cross_entropy<double>(const double*, const double*, const int32_t*,
                                           const double*, int64_t, int64_t, int64_t, double*,
                                           int32_t*, double*, bool, double*);

}  // namespace deltatron::cpu
