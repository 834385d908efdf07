// Decoder layer forward and reverse pass: norms, mixer, FFN (dense or MoE), residuals.
#include "model/decoder_layer.h"

#include "ops/rmsnorm.h"

namespace deltatron::model {

void DecoderLayer::fwd(core::Device dev, const Config& c, const TensorMap& p,
                       const data::Pack& pack, std::vector<float>& x_ND, LayerSaved& s) const {
  const int64_t N = pack.N, D = c.hidden_size;
  s.x_in_ND = x_ND;
  s.n1_ND.resize(N * D);
  s.rstd1_N.resize(N);
  ops::rmsnorm_fwd(dev, x_ND.data(), weight(p, prefix + "input_layernorm.weight").ptr(), N, D,
                   c.rms_norm_eps, s.n1_ND.data(), s.rstd1_N.data());
  std::vector<float> mix(N * D);
  if (type == LayerType::full_attention)
    AttnBlock{prefix + "self_attn."}.fwd(dev, c, p, pack, s.n1_ND.data(), mix.data(), s.attn);
  else
    GdnBlock{prefix + "linear_attn."}.fwd(dev, c, p, pack, s.n1_ND.data(), mix.data(), s.gdn);
  for (int64_t j = 0; j < N * D; ++j) x_ND[j] += mix[j];
  s.h_ND = x_ND;
  s.n2_ND.resize(N * D);
  s.rstd2_N.resize(N);
  ops::rmsnorm_fwd(dev, x_ND.data(), weight(p, prefix + "post_attention_layernorm.weight").ptr(), N,
                   D, c.rms_norm_eps, s.n2_ND.data(), s.rstd2_N.data());
  if (c.is_moe())
    MoeBlock{moe_prefix()}.fwd(dev, c, p, N, s.n2_ND.data(), mix.data(), s.moe);
  else
    MlpBlock{moe_prefix()}.fwd(dev, c, p, N, s.n2_ND.data(), mix.data(), s.mlp);
  for (int64_t j = 0; j < N * D; ++j) x_ND[j] += mix[j];
}

void DecoderLayer::bwd(core::Device dev, const Config& c, const TensorMap& p, TensorMap& g,
                       const data::Pack& pack, const LayerSaved& s, double router_scale,
                       std::vector<float>& dx_ND) const {
  const int64_t N = pack.N, D = c.hidden_size;
  std::vector<float> dn(N * D), dres(N * D);
  if (c.is_moe())
    MoeBlock{moe_prefix()}.bwd(dev, c, p, g, N, s.moe, dx_ND.data(),
                               s.has_router_terms ? &s.router : nullptr, router_scale, dn.data());
  else
    MlpBlock{moe_prefix()}.bwd(dev, c, p, g, N, s.mlp, dx_ND.data(), dn.data());
  ops::rmsnorm_bwd(dev, s.h_ND.data(), weight(p, prefix + "post_attention_layernorm.weight").ptr(),
                   s.rstd2_N.data(), dn.data(), N, D, dres.data(),
                   grad(g, prefix + "post_attention_layernorm.weight"));
  for (int64_t j = 0; j < N * D; ++j) dx_ND[j] += dres[j];
  if (type == LayerType::full_attention)
    AttnBlock{prefix + "self_attn."}.bwd(dev, c, p, g, pack, s.attn, dx_ND.data(), dn.data());
  else
    GdnBlock{prefix + "linear_attn."}.bwd(dev, c, p, g, pack, s.gdn, dx_ND.data(), dn.data());
  ops::rmsnorm_bwd(dev, s.x_in_ND.data(), weight(p, prefix + "input_layernorm.weight").ptr(),
                   s.rstd1_N.data(), dn.data(), N, D, dres.data(),
                   grad(g, prefix + "input_layernorm.weight"));
  for (int64_t j = 0; j < N * D; ++j) dx_ND[j] += dres[j];
}

}  // namespace deltatron::model
