// Chunked lm_head + cross-entropy forward and backward over label-carrying rows only.
#include "model/lm_head.h"

#include <algorithm>

#include "data/sample.h"
#include "ops/cross_entropy.h"
#include "ops/linear.h"

namespace deltatron::model {

namespace {
constexpr int64_t kLogitBudget = int64_t(1) << 22;  // floats of logits per chunk (16 MiB)
}

std::string lm_head_name(const Config& c) {
  return c.tie_word_embeddings ? c.name("embed_tokens.weight") : std::string("lm_head.weight");
}

std::vector<double> lm_head_loss(core::Device dev, const Config& c, const TensorMap& p,
                                 TensorMap* g, int64_t N, const int32_t* targets_N,
                                 const float* h_ND, float* dh_ND, float grad_scale,
                                 uint8_t* correct_N) {
  const int64_t D = c.hidden_size, V = c.vocab_size;
  const float* W = weight(p, lm_head_name(c)).ptr();
  float* dW = g ? grad(*g, lm_head_name(c)) : nullptr;
  std::vector<int64_t> rows;
  for (int64_t n = 0; n < N; ++n)
    if (targets_N[n] != data::kIgnoreIndex) rows.push_back(n);
  std::vector<double> loss_N(N, 0.0);
  if (g) std::fill(dh_ND, dh_ND + N * D, 0.f);
  const int64_t chunk = std::max<int64_t>(1, kLogitBudget / V);
  std::vector<float> h, logits, lse, loss, dloss, dh;
  std::vector<int32_t> tgt;
  for (size_t r0 = 0; r0 < rows.size(); r0 += chunk) {
    const int64_t M = std::min<int64_t>(chunk, rows.size() - r0);
    h.resize(M * D);
    tgt.resize(M);
    for (int64_t m = 0; m < M; ++m) {
      std::copy(h_ND + rows[r0 + m] * D, h_ND + (rows[r0 + m] + 1) * D, &h[m * D]);
      tgt[m] = targets_N[rows[r0 + m]];
    }
    logits.resize(M * V);
    lse.resize(M);
    loss.resize(M);
    ops::linear_fwd(dev, h.data(), W, M, D, V, logits.data());
    ops::cross_entropy_fwd(dev, logits.data(), tgt.data(), M, V, loss.data(), lse.data());
    for (int64_t m = 0; m < M; ++m) loss_N[rows[r0 + m]] = loss[m];
    if (correct_N)
      for (int64_t m = 0; m < M; ++m) {
        const float* row = &logits[m * V];
        correct_N[rows[r0 + m]] = std::max_element(row, row + V) - row == tgt[m];
      }
    if (!g) continue;
    dloss.assign(M, grad_scale);
    // dlogits overwrite logits in place (allowed by the cross_entropy_bwd contract).
    ops::cross_entropy_bwd(dev, logits.data(), tgt.data(), lse.data(), dloss.data(), M, V,
                           logits.data());
    dh.resize(M * D);
    ops::linear_bwd(dev, h.data(), W, logits.data(), M, D, V, dh.data(), false, dW);
    for (int64_t m = 0; m < M; ++m)
      std::copy(&dh[m * D], &dh[(m + 1) * D], dh_ND + rows[r0 + m] * D);
  }
  return loss_N;
}

}  // namespace deltatron::model
