// Qwen3.5 model driver: embedding, decoder stack, final norm, LM head, MTP head, router losses,
// and the hand-written reverse pass in exactly the opposite order.
#include "model/model.h"

#include <algorithm>
#include <memory>

#include "model/decoder_layer.h"
#include "model/mtp_block.h"
#include "ops/embedding.h"
#include "ops/rmsnorm.h"

namespace deltatron::model {

namespace {

DecoderLayer trunk_layer(const Config& c, int64_t i) {
  return DecoderLayer{c.name("layers." + std::to_string(i) + "."), c.layer_types[i]};
}

void check_supported(const Config& c) {
  DT_CHECK(!c.mtp_enabled || c.mtp_num_hidden_layers == 1,
           "mtp_num_hidden_layers = ", c.mtp_num_hidden_layers,
           " is not supported (Qwen3.5 uses 1)");
}

void add_router_terms(const Config& c, const ModelOptions& opt, const data::Pack& pack,
                      const DecoderLayer& layer, LayerSaved& s, double& router_loss) {
  if (!c.is_moe() || !opt.router.active()) return;
  const GlobalRouterCounts* global = opt.global_counts;
  if (opt.running_counts && opt.router.aux_type == AuxLossType::global) {
    opt.running_counts->add(layer.moe_prefix(), s.moe, pack, c.num_experts);
    global = opt.running_counts;
  }
  s.router = make_router_terms(opt.router, c, pack, s.moe, layer.moe_prefix(), global);
  s.has_router_terms = true;
  router_loss += MoeBlock{layer.moe_prefix()}.router_loss(s.moe, s.router);
}

}  // namespace

void sum_per_sample(const data::Pack& pack, const std::vector<double>& loss_N,
                    const std::vector<int32_t>& targets_N, std::vector<double>& sum,
                    std::vector<int64_t>& count) {
  for (int s = 0; s < pack.num_samples(); ++s) {
    double acc = 0;
    int64_t n = 0;
    for (int32_t t = pack.cu_seqlens_padded[s]; t < pack.cu_seqlens_padded[s + 1]; ++t) {
      if (targets_N[t] == data::kIgnoreIndex) continue;
      acc += loss_N[t];
      ++n;
    }
    sum.push_back(acc);
    count.push_back(n);
  }
}

std::vector<uint8_t> exact_per_sample(const data::Pack& pack, const std::vector<int32_t>& targets_N,
                                      const std::vector<uint8_t>& correct_N) {
  std::vector<uint8_t> exact;
  for (int s = 0; s < pack.num_samples(); ++s) {
    bool all = true;
    for (int32_t t = pack.cu_seqlens_padded[s]; t < pack.cu_seqlens_padded[s + 1]; ++t)
      all = all && (targets_N[t] == data::kIgnoreIndex || correct_N[t] != 0);
    exact.push_back(all);
  }
  return exact;
}

PackLoss model_fwd_bwd(core::Device dev, const Config& c, const TensorMap& p,
                       const data::Pack& pack, TensorMap* g, const ModelOptions& opt) {
  check_supported(c);
  const int64_t N = pack.N, D = c.hidden_size, L = c.num_hidden_layers;
  const std::string embed = c.name("embed_tokens.weight"), norm = c.name("norm.weight");
  PackLoss out;

  // Trunk forward.
  std::vector<float> x(N * D);
  ops::embedding_fwd(dev, pack.input_ids.data(), weight(p, embed).ptr(), N, c.vocab_size, D,
                     x.data());
  std::vector<std::unique_ptr<LayerSaved>> saved(L);
  for (int64_t i = 0; i < L; ++i) {
    saved[i] = std::make_unique<LayerSaved>();
    trunk_layer(c, i).fwd(dev, c, p, pack, x, *saved[i]);
    add_router_terms(c, opt, pack, trunk_layer(c, i), *saved[i], out.router_loss);
  }
  std::vector<float> hf(N * D), rstd_f(N);
  ops::rmsnorm_fwd(dev, x.data(), weight(p, norm).ptr(), N, D, c.rms_norm_eps, hf.data(),
                   rstd_f.data());

  // Language-model head (its backward runs right away; dhf collects the hidden gradient).
  std::vector<float> dhf(g ? N * D : 0);
  std::vector<uint8_t> correct(opt.want_correct ? N : 0, 1);
  sum_per_sample(pack,
                 lm_head_loss(dev, c, p, g, N, pack.targets.data(), hf.data(), dhf.data(),
                              opt.ce_scale, opt.want_correct ? correct.data() : nullptr),
                 pack.targets, out.loss_sum, out.n_tokens);
  if (opt.want_correct) out.exact = exact_per_sample(pack, pack.targets, correct);

  // MTP head: forward, its loss, and its backward (adding into dhf).
  if (c.mtp_enabled) {
    MtpBlock mtp;
    auto ms = std::make_unique<MtpSaved>();
    mtp.fwd(dev, c, p, pack, hf.data(), *ms);
    add_router_terms(c, opt, pack, mtp.layer(), ms->layer, out.router_loss);
    std::vector<float> dm(g ? N * D : 0);
    sum_per_sample(pack,
                   lm_head_loss(dev, c, p, g, N, ms->targets_N.data(), ms->m_ND.data(), dm.data(),
                                opt.mtp_ce_scale),
                   ms->targets_N, out.mtp_loss_sum, out.mtp_n_tokens);
    if (g) mtp.bwd(dev, c, p, *g, pack, *ms, dm.data(), opt.router_scale, dhf.data());
  }
  if (!g) return out;

  // Trunk backward: final norm, layers in reverse, embedding.
  std::vector<float> dx(N * D);
  ops::rmsnorm_bwd(dev, x.data(), weight(p, norm).ptr(), rstd_f.data(), dhf.data(), N, D, dx.data(),
                   grad(*g, norm));
  for (int64_t i = L - 1; i >= 0; --i) {
    trunk_layer(c, i).bwd(dev, c, p, *g, pack, *saved[i], opt.router_scale, dx);
    saved[i].reset();
  }
  // HF builds embed_tokens with padding_idx = pad_token_id: that row gets no gradient through
  // the lookup (a tied lm_head still contributes to it).
  if (c.pad_token_id)
    for (int64_t n = 0; n < N; ++n)
      if (pack.input_ids[n] == *c.pad_token_id) std::fill(&dx[n * D], &dx[(n + 1) * D], 0.f);
  ops::embedding_bwd(dev, pack.input_ids.data(), dx.data(), N, D, grad(*g, embed));
  return out;
}

void model_count_routes(core::Device dev, const Config& c, const TensorMap& p,
                        const data::Pack& pack, GlobalRouterCounts& counts) {
  check_supported(c);
  if (!c.is_moe()) return;
  const int64_t N = pack.N, D = c.hidden_size;
  std::vector<float> x(N * D);
  ops::embedding_fwd(dev, pack.input_ids.data(), weight(p, c.name("embed_tokens.weight")).ptr(), N,
                     c.vocab_size, D, x.data());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerSaved s;
    trunk_layer(c, i).fwd(dev, c, p, pack, x, s);
    counts.add(trunk_layer(c, i).moe_prefix(), s.moe, pack, c.num_experts);
  }
  if (!c.mtp_enabled) return;
  std::vector<float> hf(N * D), rstd(N);
  ops::rmsnorm_fwd(dev, x.data(), weight(p, c.name("norm.weight")).ptr(), N, D, c.rms_norm_eps,
                   hf.data(), rstd.data());
  MtpBlock mtp;
  MtpSaved ms;
  mtp.fwd(dev, c, p, pack, hf.data(), ms);
  counts.add(mtp.layer().moe_prefix(), ms.layer.moe, pack, c.num_experts);
}

}  // namespace deltatron::model
