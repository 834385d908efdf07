// GPU model driver: embedding, decoder stack, final norm, fused LM head + CE, MTP head, router
// losses, and the reverse pass in exactly the opposite order (mirrors src/model/model.cpp).
#include "gpu/model.h"

#include <algorithm>
#include <memory>
#include <sstream>

#include "cuda/device.h"
#include "cuda/embedding.h"
#include "cuda/linear.h"
#include "cuda/lm_head_ce.h"
#include "cuda/norms.h"
#include "cuda/pointwise.h"
#include "gpu/layer.h"
#include "gpu/profile.h"
#include "model/lm_head.h"

namespace deltatron::gpu {

namespace {

Layer trunk_layer(const model::Config& c, int64_t i) {
  return Layer{c.name("layers." + std::to_string(i) + "."), c.layer_types[i]};
}
Layer mtp_layer() { return Layer{"mtp.layers.0.", model::LayerType::full_attention}; }

// Input ids for the embedding backward: padding_idx rows (HF's pad_token_id) get no gradient
// through the lookup, so those positions are marked -1 (skipped by the kernel).
Buf grad_ids(const model::Config& c, const std::vector<int32_t>& ids) {
  std::vector<int32_t> out(ids);
  if (c.pad_token_id)
    for (auto& id : out)
      if (id == *c.pad_token_id) id = -1;
  return upload_i32(out.data(), int64_t(out.size()), "embedding gradient ids");
}

// LM head + CE on hidden states h (dt): per-token losses to the host (as double, the CPU
// head's type); with grads, dh (dt,
// overwritten) and the head weight's gradient (scaled by `scale`).
std::vector<double> head_loss(const Ctx& cx, const void* h, const Buf& targets, float scale,
                              bool with_grads, void* dh, std::vector<uint8_t>* correct) {
  const model::Config& c = cx.c;
  const int64_t N = cx.N(), D = c.hidden_size;
  const std::string head = model::lm_head_name(c);
  Stage st("lm head + cross-entropy fwd+bwd");
  Buf loss = cx.f32(N, "per-token loss");
  Buf dloss, corr;
  if (with_grads) {
    dloss = cx.f32(N, "per-token loss weight");
    cuda::fill(DType::f32, dloss.get(), scale, N);
  }
  if (correct) corr = Buf(N, DType::f32, "argmax-correct flags");
  cuda::linear_cross_entropy(cx.dt(), h, cx.p.w(head), targets.i32(),
                             with_grads ? dloss.f32() : nullptr, N, D, c.vocab_size, loss.f32(),
                             correct ? corr.i32() : nullptr, with_grads ? dh : nullptr, false,
                             with_grads ? cx.p.g(head) : nullptr);
  std::vector<float> loss_h(N);
  copy_to_host(loss, loss_h.data());
  if (correct) {
    std::vector<int32_t> cc(N);
    copy_to_host_i32(corr, cc.data());
    correct->assign(N, 0);
    for (int64_t n = 0; n < N; ++n) (*correct)[n] = cc[n] != 0;
  }
  return std::vector<double>(loss_h.begin(), loss_h.end());
}

// MTP head input (spec 3.2): ids rolled inside each sample, e = embed(ids),
// cat = [RMSNorm_e(e) | RMSNorm_h(hf)], r = fc(cat) (the MTP layer's residual stream input).
struct MtpInput {
  std::vector<int32_t> ids;
  Buf e, cat, rstd_e, rstd_h, r;
};
MtpInput mtp_input(const Ctx& cx, const data::Pack& pack, const void* hf) {
  const model::Config& c = cx.c;
  const DType dt = cx.dt();
  const int64_t N = cx.N(), D = c.hidden_size;
  MtpInput m{data::roll_within_segments(pack.input_ids, pack.cu_seqlens_padded, 0),
             cx.f32(N * D, "MTP embedding"),
             cx.act(N * 2 * D, "MTP concat"),
             cx.f32(N, "MTP embedding norm rstd"),
             cx.f32(N, "MTP hidden norm rstd"),
             cx.f32(N * D, "MTP residual stream")};
  {
    Buf ids_d = upload_i32(m.ids.data(), N, "MTP input ids");
    cuda::embedding_fwd(dt, ids_d.i32(), cx.p.w(c.name("embed_tokens.weight")), N, c.vocab_size, D,
                        m.e.f32());
  }
  Buf ne = cx.act(N * D, "MTP normed embedding"), nh = cx.act(N * D, "MTP normed hidden");
  cuda::rmsnorm_fwd(DType::f32, m.e.get(), dt, cx.p.w("mtp.pre_fc_norm_embedding.weight"), N, D,
                    c.rms_norm_eps, ne.get(), m.rstd_e.f32());
  cuda::rmsnorm_fwd(dt, hf, dt, cx.p.w("mtp.pre_fc_norm_hidden.weight"), N, D, c.rms_norm_eps,
                    nh.get(), m.rstd_h.f32());
  cuda::copy_cols(dt, ne.get(), D, 0, m.cat.get(), 2 * D, 0, N, D);  // embedding first
  cuda::copy_cols(dt, nh.get(), D, 0, m.cat.get(), 2 * D, D, N, D);
  cuda::linear_fwd(dt, m.cat.get(), cx.p.w("mtp.fc.weight"), N, 2 * D, D, DType::f32, m.r.get(),
                   false);
  return m;
}

// Activation recomputation: after a layer's forward only its fp32 input (and the router-loss
// terms, which depend on running counts and must not be rebuilt) is kept; the backward reruns
// the layer's forward from that input first. The kernels are deterministic, so the rerun
// reproduces the dropped activations bitwise and the gradients equal the stored-activation ones.
void keep_only_input(LayerSaved& s) {
  LayerSaved slim;
  slim.x_in = std::move(s.x_in);
  slim.moe.terms = std::move(s.moe.terms);
  slim.moe.has_terms = s.moe.has_terms;
  slim.moe.loss_scale = s.moe.loss_scale;
  s = std::move(slim);
}

void recompute_layer(const Ctx& cx, const Layer& layer, LayerSaved& s) {
  Buf x = copy_f32(s.x_in.f32(), cx.N() * cx.c.hidden_size, "recomputed layer input");
  LayerSaved full;
  layer.fwd(cx, x.f32(), full);
  full.moe.terms = std::move(s.moe.terms);
  full.moe.has_terms = s.moe.has_terms;
  full.moe.loss_scale = s.moe.loss_scale;
  s = std::move(full);
}

void check_targets(const model::Config& c, const data::Pack& pack) {
  for (int64_t n = 0; n < pack.N; ++n) {
    const int32_t id = pack.input_ids[n], t = pack.targets[n];
    DT_CHECK(id >= 0 && id < c.vocab_size, "token id ", id, " at pack position ", n,
             " is outside the vocabulary [0, ", c.vocab_size, ")");
    DT_CHECK(t == data::kIgnoreIndex || (t >= 0 && t < c.vocab_size), "target ", t,
             " at pack position ", n, " is outside the vocabulary [0, ", c.vocab_size, ")");
  }
}

// Rough activation bytes of one pack (what the forward keeps for the backward), for the
// out-of-memory message.
double planned_activation_bytes(const model::Config& c, int64_t N, DType dt) {
  const double e = double(cuda::dtype_size(dt)), D = double(c.hidden_size);
  double per_layer = N * D * (8 + 2 * e);  // x_in, h (fp32), n1, n2
  const double gdn = N *
                     (2.0 * (2 * c.linear_num_key_heads * c.linear_key_head_dim +
                             c.linear_num_value_heads * c.linear_value_head_dim) +
                      4.0 * c.linear_num_value_heads * c.linear_value_head_dim) *
                     e;
  const double attn =
      N * (6.0 * c.num_attention_heads + 3.0 * c.num_key_value_heads) * c.head_dim * e;
  const double ffn = c.is_moe()
                         ? N * double(c.num_experts_per_tok) * 3.0 * c.moe_intermediate_size * e
                         : N * 3.0 * c.intermediate_size * e;
  double total = 0;
  for (auto t : c.layer_types)
    total += per_layer + ffn + (t == model::LayerType::full_attention ? attn : gdn);
  return total;
}

}  // namespace

Model::Model(const model::Config& c, const model::TensorMap& host_params, DType dt)
    : c_(c), params_((cuda::require_hopper(), host_params), dt) {
  DT_CHECK(!c_.mtp_enabled || c_.mtp_num_hidden_layers == 1,
           "mtp_num_hidden_layers = ", c_.mtp_num_hidden_layers,
           " is not supported (Qwen3.5 uses 1)");
}

model::PackLoss Model::fwd_bwd(const data::Pack& pack, bool with_grads,
                               const model::ModelOptions& opt) {
  const model::Config& c = c_;
  check_targets(c, pack);
  const int64_t N = pack.N, D = c.hidden_size, L = c.num_hidden_layers;
  {
    std::ostringstream hint;
    hint.precision(3);
    hint << "this pack has " << N << " tokens and its activations need about "
         << planned_activation_bytes(c, N, params_.dt()) / double(1ull << 30)
         << " GiB; lower the micro-batch token budget (training.micro_batch_tokens, "
            "--pack-tokens) or set training.recompute = true to fit";
    set_oom_hint(hint.str());
  }
  DevPack pk(pack);
  const Ctx cx{c, params_, pk};
  const DType dt = params_.dt();
  const std::string embed = c.name("embed_tokens.weight"), norm = c.name("norm.weight");
  model::PackLoss out;

  // Trunk forward on the fp32 residual stream.
  Buf x = cx.f32(N * D, "residual stream");
  cuda::embedding_fwd(dt, pk.ids.i32(), params_.w(embed), N, c.vocab_size, D, x.f32());
  std::vector<std::unique_ptr<LayerSaved>> saved(L);
  for (int64_t i = 0; i < L; ++i) {
    saved[i] = std::make_unique<LayerSaved>();
    trunk_layer(c, i).fwd(cx, x.f32(), *saved[i]);
    add_router_terms(cx, opt, trunk_layer(c, i).moe_prefix(), saved[i]->moe, out.router_loss);
    if (recompute_ && with_grads) keep_only_input(*saved[i]);
  }
  Buf hf = cx.act(N * D, "final norm output");
  Buf rstd_f = cx.f32(N, "final norm rstd");
  cuda::rmsnorm_fwd(DType::f32, x.get(), dt, params_.w(norm), N, D, c.rms_norm_eps, hf.get(),
                    rstd_f.f32());

  // LM head (its backward runs right away; dhf collects the hidden gradient).
  Buf dhf = with_grads ? cx.act(N * D, "final norm output gradient") : Buf();
  std::vector<uint8_t> correct;
  model::sum_per_sample(pack,
                        head_loss(cx, hf.get(), pk.targets, opt.ce_scale, with_grads, dhf.get(),
                                  opt.want_correct ? &correct : nullptr),
                        pack.targets, out.loss_sum, out.n_tokens);
  if (opt.want_correct) out.exact = model::exact_per_sample(pack, pack.targets, correct);

  // MTP head (spec 3.2): inputs and labels rolled inside each sample.
  if (c.mtp_enabled) {
    const auto targets =
        data::roll_within_segments(pack.targets, pack.cu_seqlens_padded, data::kIgnoreIndex);
    Buf tgt_d = upload_i32(targets.data(), N, "MTP targets");
    MtpInput in = mtp_input(cx, pack, hf.get());
    const Buf& r = in.r;
    LayerSaved ms;
    mtp_layer().fwd(cx, r.f32(), ms);
    add_router_terms(cx, opt, mtp_layer().moe_prefix(), ms.moe, out.router_loss);
    Buf m = cx.act(N * D, "MTP norm output"), rstd_m = cx.f32(N, "MTP norm rstd");
    cuda::rmsnorm_fwd(DType::f32, r.get(), dt, params_.w("mtp.norm.weight"), N, D, c.rms_norm_eps,
                      m.get(), rstd_m.f32());
    Buf dm = with_grads ? cx.act(N * D, "MTP norm output gradient") : Buf();
    model::sum_per_sample(
        pack, head_loss(cx, m.get(), tgt_d, opt.mtp_ce_scale, with_grads, dm.get(), nullptr),
        targets, out.mtp_loss_sum, out.mtp_n_tokens);
    if (with_grads) {
      Buf dr = cx.f32(N * D, "MTP residual gradient");
      cuda::rmsnorm_bwd(DType::f32, r.get(), dt, params_.w("mtp.norm.weight"), rstd_m.f32(),
                        dm.get(), N, D, dr.get(), false, params_.g("mtp.norm.weight"));
      mtp_layer().bwd(cx, ms, dr.f32());
      Buf dr_dt = cx.act(N * D, "MTP residual gradient (compute dtype)");
      cuda::cast(DType::f32, dr.get(), dt, dr_dt.get(), N * D);
      Buf dcat = cx.act(N * 2 * D, "MTP concat gradient");
      cuda::linear_bwd_dx(dt, dr_dt.get(), params_.w("mtp.fc.weight"), N, 2 * D, D, dt, dcat.get(),
                          false);
      cuda::linear_bwd_dw(dt, in.cat.get(), dr_dt.get(), N, 2 * D, D, params_.g("mtp.fc.weight"));
      Buf dne = cx.act(N * D, "MTP d(normed embedding)"),
          dnh = cx.act(N * D, "MTP d(normed hidden)");
      cuda::copy_cols(dt, dcat.get(), 2 * D, 0, dne.get(), D, 0, N, D);
      cuda::copy_cols(dt, dcat.get(), 2 * D, D, dnh.get(), D, 0, N, D);
      cuda::rmsnorm_bwd(dt, hf.get(), dt, params_.w("mtp.pre_fc_norm_hidden.weight"),
                        in.rstd_h.f32(), dnh.get(), N, D, dhf.get(), true,
                        params_.g("mtp.pre_fc_norm_hidden.weight"));
      Buf de = cx.f32(N * D, "MTP embedding gradient");
      cuda::rmsnorm_bwd(DType::f32, in.e.get(), dt, params_.w("mtp.pre_fc_norm_embedding.weight"),
                        in.rstd_e.f32(), dne.get(), N, D, de.get(), false,
                        params_.g("mtp.pre_fc_norm_embedding.weight"));
      Buf gids = grad_ids(c, in.ids);
      cuda::embedding_bwd(gids.i32(), de.f32(), N, D, c.vocab_size, params_.g(embed));
    }
  }
  if (!with_grads) return out;

  // Trunk backward: final norm, layers in reverse, embedding.
  Buf dx = cx.f32(N * D, "residual gradient");
  cuda::rmsnorm_bwd(DType::f32, x.get(), dt, params_.w(norm), rstd_f.f32(), dhf.get(), N, D,
                    dx.get(), false, params_.g(norm));
  dhf = Buf();
  hf = Buf();
  for (int64_t i = L - 1; i >= 0; --i) {
    if (recompute_) recompute_layer(cx, trunk_layer(c, i), *saved[i]);
    trunk_layer(c, i).bwd(cx, *saved[i], dx.f32());
    saved[i].reset();
  }
  Buf gids = grad_ids(c, pack.input_ids);
  cuda::embedding_bwd(gids.i32(), dx.f32(), N, D, c.vocab_size, params_.g(embed));
  return out;
}

void Model::count_routes(const data::Pack& pack, model::GlobalRouterCounts& counts) {
  const model::Config& c = c_;
  if (!c.is_moe()) return;
  check_targets(c, pack);
  const int64_t N = pack.N, D = c.hidden_size;
  DevPack pk(pack);
  const Ctx cx{c, params_, pk};
  const DType dt = params_.dt();
  Buf x = cx.f32(N * D, "residual stream");
  cuda::embedding_fwd(dt, pk.ids.i32(), params_.w(c.name("embed_tokens.weight")), N, c.vocab_size,
                      D, x.f32());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    LayerSaved s;
    trunk_layer(c, i).fwd(cx, x.f32(), s);
    moe_count(cx, trunk_layer(c, i).moe_prefix(), s.moe, counts);
  }
  if (!c.mtp_enabled) return;
  // The MTP layer's routes: rerun the head's forward (inputs as in fwd_bwd).
  Buf hf = cx.act(N * D, "final norm output"), rstd = cx.f32(N, "final norm rstd");
  cuda::rmsnorm_fwd(DType::f32, x.get(), dt, params_.w(c.name("norm.weight")), N, D, c.rms_norm_eps,
                    hf.get(), rstd.f32());
  MtpInput in = mtp_input(cx, pack, hf.get());
  LayerSaved ms;
  mtp_layer().fwd(cx, in.r.f32(), ms);
  moe_count(cx, mtp_layer().moe_prefix(), ms.moe, counts);
}

}  // namespace deltatron::gpu
