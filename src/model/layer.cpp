// Decoder layer forward and backward (see layer.h).
#include "model/layer.h"

#include "model/tp_exchange.h"
#include "ops/profile.h"
#include "ops/rmsnorm.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {
// An f32 copy of the residual x and its RMSNorm (y, rstd): one pass when x is already f32 (the
// norm writes the copy as it reads x), a cast and the norm otherwise.
void save_and_norm(const Ctx& cx, const View& x, const View& w, Buffer& saved, const char* what,
                   const View& y, const View& rstd) {
  const int64_t N = cx.Nl(), D = cx.c.hidden_size;
  saved = cx.f32(N * D, what);
  const bool fused = x.dtype == core::DType::f32;
  if (!fused) ops::cast(x, saved, N * D);
  ops::rmsnorm_fwd(x, w, N, D, cx.c.rms_norm_eps, y, rstd, fused ? saved.view() : View{});
}

// Selective recomputation of a norm output: whether the layer drops it after the block's forward.
bool drops_norms(const Ctx& cx) { return cx.selective && !cx.sp(); }

// The norm output again, from the saved f32 input (the forward's op: the same bits; its rstd
// equals the saved one and is discarded).
Buffer norm_again(const Ctx& cx, const View& x, const std::string& weight, const char* what) {
  const int64_t N = cx.Nl(), D = cx.c.hidden_size;
  Buffer n = cx.act(N * D, what);
  Buffer rstd = cx.f32(N, "norm rstd (recomputed)");
  ops::rmsnorm_fwd(x, cx.p.w(weight), N, D, cx.c.rms_norm_eps, n, rstd);
  return n;
}
}  // namespace

void Layer::fwd(const Ctx& cx, const View& x, LayerSaved& s) const {
  const int64_t N = cx.Nl(), D = cx.c.hidden_size;
  const Params& p = cx.p;
  s.n1 = cx.act(N * D, "input_layernorm output");
  s.rstd1 = cx.f32(N, "input_layernorm rstd");
  save_and_norm(cx, x, p.w(prefix + "input_layernorm.weight"), s.x_in, "layer input (saved)", s.n1,
                s.rstd1);
  const View n1 = tp_gather_tokens(cx, s.n1, D, s.n1_all, "input_layernorm output (all tokens)");
  if (type == LayerType::full_attention) {
    ops::Stage st(cx.dev(), "attention fwd");
    attn_fwd(cx, prefix + "self_attn.", n1, x, s.attn);
  } else {
    ops::Stage st(cx.dev(), "gated deltanet fwd");
    gdn_fwd(cx, prefix + "linear_attn.", n1, x, s.gdn);
  }
  if (drops_norms(cx)) s.n1 = Buffer();
  s.n2 = cx.act(N * D, "post_attention_layernorm output");
  s.rstd2 = cx.f32(N, "post_attention_layernorm rstd");
  save_and_norm(cx, x, p.w(prefix + "post_attention_layernorm.weight"), s.h,
                "residual after the mixer (saved)", s.n2, s.rstd2);
  const View n2 =
      tp_gather_tokens(cx, s.n2, D, s.n2_all, "post_attention_layernorm output (all tokens)");
  ops::Stage st(cx.dev(), cx.c.is_moe() ? "moe fwd" : "mlp fwd");
  if (cx.c.is_moe())
    moe_fwd(cx, moe_prefix(), n2, x, s.moe);
  else
    mlp_fwd(cx, moe_prefix(), n2, x, s.mlp);
  if (drops_norms(cx)) s.n2 = Buffer();
}

void Layer::bwd(const Ctx& cx, LayerSaved& s, const View& dx) const {
  const int64_t N = cx.Nl(), D = cx.c.hidden_size;
  const Params& p = cx.p;
  Buffer dy = cx.act(N * D, "layer output gradient (compute dtype)");
  Buffer dn = cx.act(N * D, "norm output gradient");
  // Sequence parallel: the blocks take every token's output gradient and give every token's
  // (partial) input gradient, reduce-scattered back to this rank's rows.
  Buffer dy_all, dn_all;
  if (cx.sp()) dn_all = cx.act(cx.N() * D, "norm output gradient (all tokens, partial)");
  const View dnb = cx.sp() ? dn_all.view() : dn.view();
  ops::cast(dx, dy, N * D);
  {
    Buffer n2;
    if (drops_norms(cx) && s.n2.numel() == 0) {
      n2 = norm_again(cx, s.h, prefix + "post_attention_layernorm.weight",
                      "post_attention_layernorm output (recomputed)");
      s.mlp.x = s.moe.x = n2.view();
    }
    const View dyb = tp_gather_tokens(cx, dy, D, dy_all, "layer output gradient (all tokens)");
    ops::Stage st(cx.dev(), cx.c.is_moe() ? "moe bwd" : "mlp bwd");
    if (cx.c.is_moe())
      moe_bwd(cx, moe_prefix(), s.moe, dyb, dnb);
    else
      mlp_bwd(cx, moe_prefix(), s.mlp, dyb, dnb);
  }
  tp_reduce_tokens(cx, dnb, dn, D);
  // dx += the norm's input gradient; dy = dx in the compute dtype for the mixer, same pass
  ops::rmsnorm_bwd(s.h, p.w(prefix + "post_attention_layernorm.weight"), s.rstd2, dn, N, D, dx,
                   true, cx.g(prefix + "post_attention_layernorm.weight"), dy);
  {
    Buffer n1;
    if (drops_norms(cx) && s.n1.numel() == 0) {
      n1 = norm_again(cx, s.x_in, prefix + "input_layernorm.weight",
                      "input_layernorm output (recomputed)");
      s.attn.x = s.gdn.x = n1.view();
    }
    const View dyb = tp_gather_tokens(cx, dy, D, dy_all, "layer output gradient (all tokens)");
    if (type == LayerType::full_attention) {
      ops::Stage st(cx.dev(), "attention bwd");
      attn_bwd(cx, prefix + "self_attn.", s.attn, dyb, dnb);
    } else {
      ops::Stage st(cx.dev(), "gated deltanet bwd");
      gdn_bwd(cx, prefix + "linear_attn.", s.gdn, dyb, dnb);
    }
  }
  tp_reduce_tokens(cx, dnb, dn, D);
  ops::rmsnorm_bwd(s.x_in, p.w(prefix + "input_layernorm.weight"), s.rstd1, dn, N, D, dx, true,
                   cx.g(prefix + "input_layernorm.weight"));
}

}  // namespace deltatron::model
