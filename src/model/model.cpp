// Qwen3.5 decoder stack: embedding, hybrid GDN/attention layers with SwiGLU FFNs, final norm,
// chunked lm_head + cross-entropy, and the hand-written reverse pass.
#include "model/model.h"

#include <algorithm>
#include <memory>

#include "model/attn_block.h"
#include "model/gdn_block.h"
#include "model/mlp_block.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"

namespace deltatron::model {

std::string lm_head_name(const Config& c) {
  return c.tie_word_embeddings ? c.name("embed_tokens.weight") : std::string("lm_head.weight");
}

namespace {

// Activations one decoder layer keeps for its backward pass.
struct LayerSaved {
  std::vector<float> x_in_ND, rstd1_N, n1_ND;  // layer input, input_layernorm
  std::vector<float> h_ND, rstd2_N, n2_ND;     // after the mixer residual, post_attention_layernorm
  AttnSaved attn;
  GdnSaved gdn;
  MlpSaved mlp;
};

std::string layer_prefix(const Config& c, int64_t i) {
  return c.name("layers." + std::to_string(i) + ".");
}

void layer_fwd(core::Device dev, const Config& c, const TensorMap& p, const data::Pack& pack,
               int64_t i, std::vector<float>& x_ND, LayerSaved& s) {
  const int64_t N = pack.N, D = c.hidden_size;
  const std::string lp = layer_prefix(c, i);
  s.x_in_ND = x_ND;
  s.n1_ND.resize(N * D);
  s.rstd1_N.resize(N);
  ops::rmsnorm_fwd(dev, x_ND.data(), weight(p, lp + "input_layernorm.weight").ptr(), N, D,
                   c.rms_norm_eps, s.n1_ND.data(), s.rstd1_N.data());
  std::vector<float> mix(N * D);
  if (c.layer_types[i] == LayerType::full_attention)
    AttnBlock{lp + "self_attn."}.fwd(dev, c, p, pack, s.n1_ND.data(), mix.data(), s.attn);
  else
    GdnBlock{lp + "linear_attn."}.fwd(dev, c, p, pack, s.n1_ND.data(), mix.data(), s.gdn);
  for (int64_t j = 0; j < N * D; ++j) x_ND[j] += mix[j];
  s.h_ND = x_ND;
  s.n2_ND.resize(N * D);
  s.rstd2_N.resize(N);
  ops::rmsnorm_fwd(dev, x_ND.data(), weight(p, lp + "post_attention_layernorm.weight").ptr(), N,
                   D, c.rms_norm_eps, s.n2_ND.data(), s.rstd2_N.data());
  MlpBlock{lp + "mlp."}.fwd(dev, c, p, N, s.n2_ND.data(), mix.data(), s.mlp);
  for (int64_t j = 0; j < N * D; ++j) x_ND[j] += mix[j];
}

// dx_ND: on entry the gradient w.r.t. the layer output, on exit w.r.t. the layer input.
void layer_bwd(core::Device dev, const Config& c, const TensorMap& p, TensorMap& g,
               const data::Pack& pack, int64_t i, const LayerSaved& s, std::vector<float>& dx_ND) {
  const int64_t N = pack.N, D = c.hidden_size;
  const std::string lp = layer_prefix(c, i);
  std::vector<float> dn(N * D), dres(N * D);
  MlpBlock{lp + "mlp."}.bwd(dev, c, p, g, N, s.mlp, dx_ND.data(), dn.data());
  ops::rmsnorm_bwd(dev, s.h_ND.data(), weight(p, lp + "post_attention_layernorm.weight").ptr(),
                   s.rstd2_N.data(), dn.data(), N, D, dres.data(),
                   grad(g, lp + "post_attention_layernorm.weight"));
  for (int64_t j = 0; j < N * D; ++j) dx_ND[j] += dres[j];
  if (c.layer_types[i] == LayerType::full_attention)
    AttnBlock{lp + "self_attn."}.bwd(dev, c, p, g, pack, s.attn, dx_ND.data(), dn.data());
  else
    GdnBlock{lp + "linear_attn."}.bwd(dev, c, p, g, pack, s.gdn, dx_ND.data(), dn.data());
  ops::rmsnorm_bwd(dev, s.x_in_ND.data(), weight(p, lp + "input_layernorm.weight").ptr(),
                   s.rstd1_N.data(), dn.data(), N, D, dres.data(),
                   grad(g, lp + "input_layernorm.weight"));
  for (int64_t j = 0; j < N * D; ++j) dx_ND[j] += dres[j];
}

// lm_head + cross-entropy over the label-carrying rows, in chunks of rows so that a chunk's
// logits stay near kLogitBudget floats. Returns per-row losses (0 where no target) and, if
// dh_ND != nullptr, writes d(grad_scale * sum loss)/dh into dh_ND and accumulates dW.
constexpr int64_t kLogitBudget = int64_t(1) << 22;

std::vector<double> head_loss(core::Device dev, const Config& c, const TensorMap& p,
                              TensorMap* g, const data::Pack& pack, const float* h_ND,
                              float* dh_ND, float grad_scale) {
  const int64_t N = pack.N, D = c.hidden_size, V = c.vocab_size;
  const float* W = weight(p, lm_head_name(c)).ptr();
  float* dW = g ? grad(*g, lm_head_name(c)) : nullptr;
  std::vector<int64_t> rows;
  for (int64_t n = 0; n < N; ++n)
    if (pack.targets[n] != data::kIgnoreIndex) rows.push_back(n);
  std::vector<double> loss_N(N, 0.0);
  if (dh_ND) std::fill(dh_ND, dh_ND + N * D, 0.f);
  const int64_t chunk = std::max<int64_t>(1, kLogitBudget / V);
  std::vector<float> h, logits, dlogits, lse, loss, dloss, dh;
  std::vector<int32_t> tgt;
  for (size_t r0 = 0; r0 < rows.size(); r0 += chunk) {
    const int64_t M = std::min<int64_t>(chunk, rows.size() - r0);
    h.resize(M * D);
    tgt.resize(M);
    for (int64_t m = 0; m < M; ++m) {
      std::copy(h_ND + rows[r0 + m] * D, h_ND + (rows[r0 + m] + 1) * D, &h[m * D]);
      tgt[m] = pack.targets[rows[r0 + m]];
    }
    logits.resize(M * V);
    lse.resize(M);
    loss.resize(M);
    ops::linear_fwd(dev, h.data(), W, M, D, V, logits.data());
    ops::cross_entropy_fwd(dev, logits.data(), tgt.data(), M, V, loss.data(), lse.data());
    for (int64_t m = 0; m < M; ++m) loss_N[rows[r0 + m]] = loss[m];
    if (!dh_ND) continue;
    dloss.assign(M, grad_scale);
    dlogits.resize(M * V);
    ops::cross_entropy_bwd(dev, logits.data(), tgt.data(), lse.data(), dloss.data(), M, V,
                           dlogits.data());
    dh.resize(M * D);
    ops::linear_bwd(dev, h.data(), W, dlogits.data(), M, D, V, dh.data(), false, dW);
    for (int64_t m = 0; m < M; ++m)
      std::copy(&dh[m * D], &dh[(m + 1) * D], dh_ND + rows[r0 + m] * D);
  }
  return loss_N;
}

}  // namespace

PackLoss model_fwd_bwd(core::Device dev, const Config& c, const TensorMap& p,
                       const data::Pack& pack, TensorMap* g, float grad_scale) {
  const int64_t N = pack.N, D = c.hidden_size, L = c.num_hidden_layers;
  DT_CHECK(c.num_experts == 0, "MoE models are not supported yet");
  const std::string embed = c.name("embed_tokens.weight"), norm = c.name("norm.weight");

  std::vector<float> x(N * D);
  ops::embedding_fwd(dev, pack.input_ids.data(), weight(p, embed).ptr(), N, c.vocab_size, D,
                     x.data());
  std::vector<std::unique_ptr<LayerSaved>> saved(L);
  for (int64_t i = 0; i < L; ++i) {
    saved[i] = std::make_unique<LayerSaved>();
    layer_fwd(dev, c, p, pack, i, x, *saved[i]);
  }
  std::vector<float> hf(N * D), rstd_f(N);
  ops::rmsnorm_fwd(dev, x.data(), weight(p, norm).ptr(), N, D, c.rms_norm_eps, hf.data(),
                   rstd_f.data());

  std::vector<float> dhf;
  if (g) dhf.resize(N * D);
  const std::vector<double> loss_N =
      head_loss(dev, c, p, g, pack, hf.data(), g ? dhf.data() : nullptr, grad_scale);

  PackLoss out;
  for (int s = 0; s < pack.num_samples(); ++s) {
    double sum = 0;
    int64_t cnt = 0;
    for (int64_t n = pack.cu_seqlens_padded[s]; n < pack.cu_seqlens_padded[s + 1]; ++n) {
      if (pack.targets[n] == data::kIgnoreIndex) continue;
      sum += loss_N[n];
      ++cnt;
    }
    out.loss_sum.push_back(sum);
    out.n_tokens.push_back(cnt);
  }
  if (!g) return out;

  // Reverse pass: final norm, layers in reverse, embedding.
  std::vector<float> dx(N * D);
  ops::rmsnorm_bwd(dev, x.data(), weight(p, norm).ptr(), rstd_f.data(), dhf.data(), N, D,
                   dx.data(), grad(*g, norm));
  for (int64_t i = L - 1; i >= 0; --i) {
    layer_bwd(dev, c, p, *g, pack, i, *saved[i], dx);
    saved[i].reset();
  }
  ops::embedding_bwd(dev, pack.input_ids.data(), dx.data(), N, D, grad(*g, embed));
  return out;
}

}  // namespace deltatron::model
