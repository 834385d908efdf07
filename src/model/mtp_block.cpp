// MTP head forward and reverse pass over a pack, with per-sample rolls of ids and targets.
#include "model/mtp_block.h"

#include "ops/embedding.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"

namespace deltatron::model {

void MtpBlock::fwd(core::Device dev, const Config& c, const TensorMap& p, const data::Pack& pack,
                   const float* h_ND, MtpSaved& s) const {
  const int64_t N = pack.N, D = c.hidden_size;
  s.ids_N = data::roll_within_segments(pack.input_ids, pack.cu_seqlens_padded, 0);
  s.targets_N =
      data::roll_within_segments(pack.targets, pack.cu_seqlens_padded, data::kIgnoreIndex);
  s.e_ND.resize(N * D);
  ops::embedding_fwd(dev, s.ids_N.data(), weight(p, c.name("embed_tokens.weight")).ptr(), N,
                     c.vocab_size, D, s.e_ND.data());
  s.h_ND.assign(h_ND, h_ND + N * D);
  std::vector<float> ne(N * D), nh(N * D);
  s.rstd_e_N.resize(N);
  s.rstd_h_N.resize(N);
  ops::rmsnorm_fwd(dev, s.e_ND.data(), weight(p, "mtp.pre_fc_norm_embedding.weight").ptr(), N, D,
                   c.rms_norm_eps, ne.data(), s.rstd_e_N.data());
  ops::rmsnorm_fwd(dev, h_ND, weight(p, "mtp.pre_fc_norm_hidden.weight").ptr(), N, D,
                   c.rms_norm_eps, nh.data(), s.rstd_h_N.data());
  s.cat_N2D.resize(N * 2 * D);
  for (int64_t n = 0; n < N; ++n) {  // embedding first, hidden second
    std::copy(&ne[n * D], &ne[(n + 1) * D], &s.cat_N2D[n * 2 * D]);
    std::copy(&nh[n * D], &nh[(n + 1) * D], &s.cat_N2D[n * 2 * D + D]);
  }
  s.r_ND.resize(N * D);
  ops::linear_fwd(dev, s.cat_N2D.data(), weight(p, "mtp.fc.weight").ptr(), N, 2 * D, D,
                  s.r_ND.data());
  layer().fwd(dev, c, p, pack, s.r_ND, s.layer);
  s.m_ND.resize(N * D);
  s.rstd_m_N.resize(N);
  ops::rmsnorm_fwd(dev, s.r_ND.data(), weight(p, "mtp.norm.weight").ptr(), N, D, c.rms_norm_eps,
                   s.m_ND.data(), s.rstd_m_N.data());
}

void MtpBlock::bwd(core::Device dev, const Config& c, const TensorMap& p, TensorMap& g,
                   const data::Pack& pack, const MtpSaved& s, const float* dm_ND,
                   double router_scale, float* dh_ND) const {
  const int64_t N = pack.N, D = c.hidden_size;
  std::vector<float> dr(N * D);
  ops::rmsnorm_bwd(dev, s.r_ND.data(), weight(p, "mtp.norm.weight").ptr(), s.rstd_m_N.data(), dm_ND,
                   N, D, dr.data(), grad(g, "mtp.norm.weight"));
  layer().bwd(dev, c, p, g, pack, s.layer, router_scale, dr);
  std::vector<float> dcat(N * 2 * D), dne(N * D), dnh(N * D), tmp(N * D);
  ops::linear_bwd(dev, s.cat_N2D.data(), weight(p, "mtp.fc.weight").ptr(), dr.data(), N, 2 * D, D,
                  dcat.data(), false, grad(g, "mtp.fc.weight"));
  for (int64_t n = 0; n < N; ++n) {
    std::copy(&dcat[n * 2 * D], &dcat[n * 2 * D + D], &dne[n * D]);
    std::copy(&dcat[n * 2 * D + D], &dcat[(n + 1) * 2 * D], &dnh[n * D]);
  }
  ops::rmsnorm_bwd(dev, s.h_ND.data(), weight(p, "mtp.pre_fc_norm_hidden.weight").ptr(),
                   s.rstd_h_N.data(), dnh.data(), N, D, tmp.data(),
                   grad(g, "mtp.pre_fc_norm_hidden.weight"));
  for (int64_t j = 0; j < N * D; ++j) dh_ND[j] += tmp[j];
  ops::rmsnorm_bwd(dev, s.e_ND.data(), weight(p, "mtp.pre_fc_norm_embedding.weight").ptr(),
                   s.rstd_e_N.data(), dne.data(), N, D, tmp.data(),
                   grad(g, "mtp.pre_fc_norm_embedding.weight"));
  if (c.pad_token_id)  // padding_idx: no gradient to that row through the lookup
    for (int64_t n = 0; n < N; ++n)
      if (s.ids_N[n] == *c.pad_token_id) std::fill(&tmp[n * D], &tmp[(n + 1) * D], 0.f);
  ops::embedding_bwd(dev, s.ids_N.data(), tmp.data(), N, D, grad(g, c.name("embed_tokens.weight")));
}

}  // namespace deltatron::model
