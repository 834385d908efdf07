// GPU decoder layer forward and backward (same order as src/model/decoder_layer.cpp).
#include "gpu/layer.h"

#include "cuda/norms.h"
#include "cuda/pointwise.h"
#include "gpu/profile.h"

namespace deltatron::gpu {

void Layer::fwd(const Ctx& cx, float* x, LayerSaved& s) const {
  const DType dt = cx.dt();
  const int64_t N = cx.N(), D = cx.c.hidden_size;
  Params& p = cx.p;
  s.x_in = copy_f32(x, N * D, "layer input (saved)");
  s.n1 = cx.act(N * D, "input_layernorm output");
  s.rstd1 = cx.f32(N, "input_layernorm rstd");
  cuda::rmsnorm_fwd(DType::f32, x, dt, p.w(prefix + "input_layernorm.weight"), N, D,
                    cx.c.rms_norm_eps, s.n1.get(), s.rstd1.f32());
  if (type == model::LayerType::full_attention) {
    Stage st("attention fwd");
    attn_fwd(cx, prefix + "self_attn.", s.n1.get(), x, s.attn);
  } else {
    Stage st("gated deltanet fwd");
    gdn_fwd(cx, prefix + "linear_attn.", s.n1.get(), x, s.gdn);
  }
  s.h = copy_f32(x, N * D, "residual after the mixer (saved)");
  s.n2 = cx.act(N * D, "post_attention_layernorm output");
  s.rstd2 = cx.f32(N, "post_attention_layernorm rstd");
  cuda::rmsnorm_fwd(DType::f32, x, dt, p.w(prefix + "post_attention_layernorm.weight"), N, D,
                    cx.c.rms_norm_eps, s.n2.get(), s.rstd2.f32());
  Stage st(cx.c.is_moe() ? "moe fwd" : "mlp fwd");
  if (cx.c.is_moe())
    moe_fwd(cx, moe_prefix(), s.n2.get(), x, s.moe);
  else
    mlp_fwd(cx, moe_prefix(), s.n2.get(), x, s.mlp);
}

void Layer::bwd(const Ctx& cx, const LayerSaved& s, float* dx) const {
  const DType dt = cx.dt();
  const int64_t N = cx.N(), D = cx.c.hidden_size;
  Params& p = cx.p;
  Buf dy = cx.act(N * D, "layer output gradient (compute dtype)");
  Buf dn = cx.act(N * D, "norm output gradient");
  cuda::cast(DType::f32, dx, dt, dy.get(), N * D);
  {
    Stage st(cx.c.is_moe() ? "moe bwd" : "mlp bwd");
    if (cx.c.is_moe())
      moe_bwd(cx, moe_prefix(), s.moe, dy.get(), dn.get());
    else
      mlp_bwd(cx, moe_prefix(), s.mlp, dy.get(), dn.get());
  }
  cuda::rmsnorm_bwd(DType::f32, s.h.get(), dt, p.w(prefix + "post_attention_layernorm.weight"),
                    s.rstd2.f32(), dn.get(), N, D, dx, true,
                    p.g(prefix + "post_attention_layernorm.weight"));
  cuda::cast(DType::f32, dx, dt, dy.get(), N * D);
  if (type == model::LayerType::full_attention) {
    Stage st("attention bwd");
    attn_bwd(cx, prefix + "self_attn.", s.attn, dy.get(), dn.get());
  } else {
    Stage st("gated deltanet bwd");
    gdn_bwd(cx, prefix + "linear_attn.", s.gdn, dy.get(), dn.get());
  }
  cuda::rmsnorm_bwd(DType::f32, s.x_in.get(), dt, p.w(prefix + "input_layernorm.weight"),
                    s.rstd1.f32(), dn.get(), N, D, dx, true,
                    p.g(prefix + "input_layernorm.weight"));
}

}  // namespace deltatron::gpu
