// Qwen3.5 model driver: embedding, decoder stack, final norm, fused LM head + CE, MTP head,
// router losses, and the reverse pass in exactly the opposite order.
#include "model/model.h"

#include <memory>
#include <sstream>

#include "core/step_scalars.h"
#include "model/footprint.h"
#include "model/layer.h"
#include "model/lm_head.h"
#include "model/tp_exchange.h"
#include "model/vision_tower.h"
#include "ops/device.h"
#include "ops/linear.h"
#include "ops/rmsnorm.h"
#include "ops/step_scalars.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {

Layer trunk_layer(const Config& c, int64_t i) {
  return Layer{c.name("layers." + std::to_string(i) + "."), c.layer_types[i]};
}
Layer mtp_layer() { return Layer{"mtp.layers.0.", LayerType::full_attention}; }

// MTP head input (spec 3.2), from the pack's rolled ids: e = embed(ids),
// cat = [RMSNorm_e(e) | RMSNorm_h(hf)], r = fc(cat) (the MTP layer's residual stream input).
struct MtpInput {
  Buffer e, cat, rstd_e, rstd_h, r;
};
MtpInput mtp_input(const Ctx& cx, const View& hf) {
  const Config& c = cx.c;
  const int64_t N = cx.Nl(), D = c.hidden_size;
  const Params& p = cx.p;
  MtpInput m{cx.f32(N * D, "MTP embedding"), cx.act(N * 2 * D, "MTP concat"),
             cx.f32(N, "MTP embedding norm rstd"), cx.f32(N, "MTP hidden norm rstd"),
             cx.f32(N * D, "MTP residual stream")};
  tp_embed(cx, cx.b.mtp_ids, m.e);
  Buffer ne = cx.act(N * D, "MTP normed embedding"), nh = cx.act(N * D, "MTP normed hidden");
  ops::rmsnorm_fwd(m.e, p.w("mtp.pre_fc_norm_embedding.weight"), N, D, c.rms_norm_eps, ne,
                   m.rstd_e);
  ops::rmsnorm_fwd(hf, p.w("mtp.pre_fc_norm_hidden.weight"), N, D, c.rms_norm_eps, nh, m.rstd_h);
  ops::copy_cols(ne, D, 0, m.cat, 2 * D, 0, N, D);  // embedding first
  ops::copy_cols(nh, D, 0, m.cat, 2 * D, D, N, D);
  ops::linear_fwd(m.cat, p.w("mtp.fc.weight"), N, 2 * D, D, m.r, false);
  return m;
}

// Activation recomputation: after a layer's forward only its f32 input (and the router-loss
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
  Buffer x = cx.f32(cx.Nl() * cx.c.hidden_size, "recomputed layer input");
  ops::cast(s.x_in, x, x.numel());
  LayerSaved full;
  layer.fwd(cx, x, full);
  full.moe.terms = std::move(s.moe.terms);
  full.moe.has_terms = s.moe.has_terms;
  full.moe.loss_scale = s.moe.loss_scale;
  s = std::move(full);
}

// The calls of model/param_gather.h; no-ops without a gatherer (the store holds everything).
struct Gather {
  ParamGather* g;
  void gather(int unit, bool grads) const {
    if (g) g->gather(unit, grads);
  }
  void prefetch(int unit) const {
    if (g) g->prefetch(unit);
  }
  void release(int unit, bool grads) const {
    if (g) g->release(unit, grads);
  }
};
constexpr int kOuter = ParamGather::kOuterUnit;

void set_activation_hint(const Config& c, const Params& p, int64_t N, const ActivationOptions& o) {
  std::ostringstream hint;
  hint.precision(3);
  hint << "this pack has " << N << " tokens and its activations need about "
       << activation_bytes(c, N, p.dt(), o) / double(1ull << 30)
       << " GiB; lower the micro-batch token budget (training.micro_batch_tokens, "
          "--pack-tokens) or set training.recompute = true to fit";
  core::allocator(p.device()).set_oom_hint(hint.str());
}

}  // namespace

void sum_per_sample(const data::Pack& pack, const std::vector<double>& loss_N,
                    const std::vector<int32_t>& targets_N, std::vector<double>& sum,
                    std::vector<int64_t>& count) {
  const bool sums = !loss_N.empty();
  for (int s = 0; s < pack.num_samples(); ++s) {
    double acc = 0;
    int64_t n = 0;
    for (int32_t t = pack.cu_seqlens_padded[s]; t < pack.cu_seqlens_padded[s + 1]; ++t) {
      if (targets_N[t] == data::kIgnoreIndex) continue;
      if (sums) acc += loss_N[t];
      ++n;
    }
    if (sums) sum.push_back(acc);
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

namespace {
// gathered: the frozen base of a LoRA run under ZeRO 3 (its units gathered while they run).
StateOptions frozen_state(bool gathered = false) {
  StateOptions s;
  s.frozen = true;
  s.gathered = gathered;
  return s;
}

// Whether the run holds the vision tensors it does not train apart (model.h). A LoRA run's whole
// base is frozen already.
bool holds_apart(const Config& c, const StateOptions& state, const LoraSetup* lora) {
  return !lora && state.frozen_apart &&
         (c.vision_mode == VisionMode::frozen || c.vision_mode == VisionMode::merger);
}

// The main store's tensors: the trained ones when the others are held apart, else all.
NameFilter trained(const Config& c, const StateOptions& state, const LoraSetup* lora) {
  if (!holds_apart(c, state, lora)) return {};
  return [&c](const std::string& name) { return vision_trains(c, name); };
}

// The frozen store of the tensors held apart (their compute weights alone), or null.
template <typename Source>
std::unique_ptr<Params> frozen_apart(core::Device dev, core::DType dt, const Config& c,
                                     const Source& host, const StateOptions& state,
                                     const LoraSetup* lora) {
  ops::check_device(dev);
  if (!holds_apart(c, state, lora)) return nullptr;
  return std::make_unique<Params>(dev, dt, host, frozen_state(), [&c](const std::string& name) {
    return !vision_trains(c, name);
  });
}
}  // namespace

Model::Model(core::Device dev, core::DType dt, const Config& c, const TensorMap& host_params,
             const StateOptions& state, const LoraSetup* lora)
    : c_(c),
      frozen_(frozen_apart(dev, dt, c, host_params, state, lora)),
      params_(dev, dt, host_params, lora ? frozen_state(state.gathered) : state,
              trained(c, state, lora)) {
  init(state, lora);
}

Model::Model(core::Device dev, core::DType dt, const Config& c, const ParamSource& host_params,
             const StateOptions& state, const LoraSetup* lora)
    : c_(c),
      frozen_(frozen_apart(dev, dt, c, host_params, state, lora)),
      params_(dev, dt, host_params, lora ? frozen_state(state.gathered) : state,
              trained(c, state, lora)) {
  init(state, lora);
}

void Model::init(const StateOptions& state, const LoraSetup* lora) {
  const core::Device dev = params_.device();
  const core::DType dt = params_.dt();
  if (lora) {
    DT_CHECK(!state.offload_moments && !state.master_remainder,
             "a LoRA run keeps its adapters' state on the device in fp32 (training.master = "
             "fp32, training.offload = none); the frozen base holds no training state");
    adapters_ = std::make_unique<Adapters>(dev, dt, c_, *lora, state.moments);
  }
  DT_CHECK(!c_.mtp_enabled || c_.mtp_num_hidden_layers == 1,
           "mtp_num_hidden_layers = ", c_.mtp_num_hidden_layers,
           " is not supported (Qwen3.5 uses 1)");
  if (c_.vision_mode != VisionMode::off) check_vision(c_, "model config");
}

void Model::set_expert_parallel(const ExpertParallel& ep) {
  if (adapters_ && ep.on())
    for (const LoraModule& m : adapters_->modules())
      DT_CHECK(m.experts == 0 || adapters_->local_experts() == ep.num_local, m.name,
               ": the routed-expert adapters hold ",
               adapters_->local_experts() > 0 ? adapters_->local_experts() : m.experts,
               " experts, this rank owns ", ep.num_local, " (expert parallelism)");
  ep_ = ep;
}

PackLoss Model::fwd_bwd(const data::Pack& given, bool with_grads, const ModelOptions& opt) {
  const Config& c = c_;
  // Sequence parallel: a pack of a multiple of the group's size (padding slots at the end).
  const data::Pack padded = tp() && tp_.sp ? tp_pad_pack(given, tp_.size()) : data::Pack{};
  const data::Pack& pack = tp() && tp_.sp ? padded : given;
  const int64_t N = pack.N, D = c.hidden_size, L = c.num_hidden_layers;
  set_activation_hint(c, params_, N, {recompute_ && with_grads, selective_});
  const Batch b(c, pack, params_.device());
  std::unique_ptr<TpGrads> tpg;
  if (tp() && with_grads && !params_.frozen()) tpg = std::make_unique<TpGrads>(c, params_, tp_);
  std::unique_ptr<TpGrads> lora_tpg;  // LoRA: the adapter tensors whose gradients are partial
  if (tp() && with_grads && adapters_)
    lora_tpg = std::make_unique<TpGrads>(c, adapters_->params(), tp_);
  const Ctx cx{c,
               params_,
               b,
               adapters_.get(),
               with_grads ? opt.dropout_key : 0,
               ep(),
               tp(),
               tpg.get(),
               selective_,
               frozen_.get(),
               lora_tpg.get()};
  const int64_t Nl = cx.Nl();  // this rank's rows of the residual stream
  const Params& p = params_;
  const std::string norm = c.name("norm.weight");
  const Gather pg{gather_};
  pg.gather(kOuter, with_grads && !p.frozen());
  PackLoss out;
  // Training: the losses are added to the step's scalars on the device (no host read).
  const View& steps = opt.step_scalars;
  DT_CHECK(steps.empty() || !opt.want_correct,
           "Model::fwd_bwd: want_correct reads argmax flags on the host; not with step_scalars");
  const View ce_sum = steps.empty() ? View{} : steps.slice(core::kStepCeSum, 1);
  const View mtp_sum = steps.empty() ? View{} : steps.slice(core::kStepMtpSum, 1);
  Buffer router_loss(cx.dev(), core::DType::f64, {1}, "router loss");
  ops::zero(router_loss);

  // Trunk forward on the f32 residual stream; a pack with images gets the vision tower's merged
  // tokens at its image-pad positions (vision spec 4). Text-only packs skip all of it. Tensor
  // parallel: every rank of the group runs the tower whole; with sp each injects into its rows.
  Buffer x = cx.f32(Nl * D, "residual stream");
  tp_embed(cx, b.ids, x);
  const VisionBatch vb = make_vision_batch(c, pack, cx.dev());
  VisionSaved vsaved;
  if (!vb.empty()) vision_inject(cx, vb, vision_fwd(cx, vb, with_grads, vsaved), x);
  std::vector<std::unique_ptr<LayerSaved>> saved(L);
  for (int64_t i = 0; i < L; ++i) {
    saved[i] = std::make_unique<LayerSaved>();
    pg.gather(int(i), false);
    if (i + 1 < L) pg.prefetch(int(i + 1));
    trunk_layer(c, i).fwd(cx, x, *saved[i]);
    pg.release(int(i), false);
    add_router_terms(cx, opt, trunk_layer(c, i).moe_prefix(), saved[i]->moe, router_loss);
    if (recompute_ && with_grads) keep_only_input(*saved[i]);
  }
  // The MoE layers' device-side errors, read once per pack (with the MTP layer's, below).
  if (!c.mtp_enabled) check_moe_errors(cx, steps);
  Buffer hf = cx.act(Nl * D, "final norm output");
  Buffer rstd_f = cx.f32(Nl, "final norm rstd");
  ops::rmsnorm_fwd(x, p.w(norm), Nl, D, c.rms_norm_eps, hf, rstd_f);

  // LM head (its backward runs right away; dhf collects the hidden gradient). Sequence
  // parallel: the head runs on every token (gathered), each rank keeps its rows' gradient.
  Buffer dhf_all = with_grads ? cx.act(N * D, "final norm output gradient") : Buffer();
  std::vector<uint8_t> correct;
  {
    Buffer hf_all;
    const View h = tp_gather_tokens(cx, hf, D, hf_all, "final norm output (all tokens)");
    sum_per_sample(pack,
                   head_loss(cx, h, b.targets, opt.ce_scale, with_grads, dhf_all,
                             opt.want_correct ? &correct : nullptr, ce_sum),
                   pack.targets, out.loss_sum, out.n_tokens);
  }
  const View dhf = with_grads ? tp_local_rows(cx, dhf_all, D) : View{};
  if (opt.want_correct) out.exact = exact_per_sample(pack, pack.targets, correct);

  // MTP head (spec 3.2): inputs and labels rolled inside each sample (when the pack was built).
  if (c.mtp_enabled) {
    MtpInput in = mtp_input(cx, hf);
    const Buffer& r = in.r;
    LayerSaved ms;
    mtp_layer().fwd(cx, r, ms);
    add_router_terms(cx, opt, mtp_layer().moe_prefix(), ms.moe, router_loss);
    check_moe_errors(cx, steps);
    Buffer m = cx.act(Nl * D, "MTP norm output"), rstd_m = cx.f32(Nl, "MTP norm rstd");
    ops::rmsnorm_fwd(r, p.w("mtp.norm.weight"), Nl, D, c.rms_norm_eps, m, rstd_m);
    Buffer dm_all = with_grads ? cx.act(N * D, "MTP norm output gradient") : Buffer();
    {
      Buffer m_all;
      const View mh = tp_gather_tokens(cx, m, D, m_all, "MTP norm output (all tokens)");
      sum_per_sample(
          pack,
          head_loss(cx, mh, b.mtp_targets, opt.mtp_ce_scale, with_grads, dm_all, nullptr, mtp_sum),
          pack.mtp_targets, out.mtp_loss_sum, out.mtp_n_tokens);
    }
    if (with_grads) {
      const View dm = tp_local_rows(cx, dm_all, D);
      Buffer dr = cx.f32(Nl * D, "MTP residual gradient");
      ops::rmsnorm_bwd(r, p.w("mtp.norm.weight"), rstd_m, dm, Nl, D, dr, false,
                       cx.g("mtp.norm.weight"));
      mtp_layer().bwd(cx, ms, dr);
      Buffer dr_dt = cx.act(Nl * D, "MTP residual gradient (compute dtype)");
      ops::cast(dr, dr_dt, Nl * D);
      Buffer dcat = cx.act(Nl * 2 * D, "MTP concat gradient");
      ops::linear_bwd_dx(dr_dt, p.w("mtp.fc.weight"), Nl, 2 * D, D, dcat, false);
      if (!p.frozen()) ops::linear_bwd_dw(in.cat, dr_dt, Nl, 2 * D, D, cx.g("mtp.fc.weight"));
      Buffer dne = cx.act(Nl * D, "MTP d(normed embedding)");
      Buffer dnh = cx.act(Nl * D, "MTP d(normed hidden)");
      ops::copy_cols(dcat, 2 * D, 0, dne, D, 0, Nl, D);
      ops::copy_cols(dcat, 2 * D, D, dnh, D, 0, Nl, D);
      ops::rmsnorm_bwd(hf, p.w("mtp.pre_fc_norm_hidden.weight"), in.rstd_h, dnh, Nl, D, dhf, true,
                       cx.g("mtp.pre_fc_norm_hidden.weight"));
      if (!p.frozen()) {  // the embedding branch reaches parameters only
        Buffer de = cx.f32(Nl * D, "MTP embedding gradient");
        ops::rmsnorm_bwd(in.e, p.w("mtp.pre_fc_norm_embedding.weight"), in.rstd_e, dne, Nl, D, de,
                         false, cx.g("mtp.pre_fc_norm_embedding.weight"));
        tp_embed_bwd(cx, b.mtp_grad_ids, de);
      }
    }
  }
  if (c.is_moe() && opt.router.active()) {
    if (steps.empty())
      ops::copy_to_host(router_loss, &out.router_loss);
    else
      ops::step_scalar_add(router_loss, steps.slice(core::kStepRouterSum, 1));
  }
  if (!with_grads) {
    pg.release(kOuter, false);
    return out;
  }

  // Trunk backward: final norm, layers in reverse, embedding.
  Buffer dx = cx.f32(Nl * D, "residual gradient");
  ops::rmsnorm_bwd(x, p.w(norm), rstd_f, dhf, Nl, D, dx, false, cx.g(norm));
  dhf_all = Buffer();
  hf = Buffer();
  for (int64_t i = L - 1; i >= 0; --i) {
    pg.gather(int(i), !p.frozen());  // again (ZeRO 3): released after the forward
    if (i > 0) pg.prefetch(int(i - 1));
    if (recompute_) recompute_layer(cx, trunk_layer(c, i), *saved[i]);
    trunk_layer(c, i).bwd(cx, *saved[i], dx);
    saved[i].reset();
    // ZeRO 3: the layer's partial gradients summed over the tensor-parallel group while its
    // gradient is bound (the release reduces it over the data-parallel ranks).
    if (tpg && gather_) tpg->reduce_unit_into(p, int(i));
    pg.release(int(i), !p.frozen());
  }
  // The merged rows' gradient whole on every rank of a tp group (sp: gathered from the rows), so
  // the tower's gradients are whole and the same on each (model/vision_tower.h).
  if (vsaved.merger) vision_bwd(cx, vb, vsaved, vision_gather_grad(cx, vb, dx));
  if (!p.frozen()) tp_embed_bwd(cx, b.grad_ids, dx);
  if (tpg) {  // the replicated parameters' partial gradients, summed (ZeRO 3: the outer unit's)
    if (gather_)
      tpg->reduce_unit_into(p, kOuter);
    else
      tpg->reduce_into(p);
  }
  if (lora_tpg) lora_tpg->reduce_into(adapters_->params());
  pg.release(kOuter, !p.frozen());
  return out;
}

void Model::count_routes(const data::Pack& given, GlobalRouterCounts& counts) {
  const Config& c = c_;
  if (!c.is_moe()) return;
  // Tensor parallel: the forward as in fwd_bwd (sequence parallel: padded, this rank's rows);
  // every rank of the group routes every token, so each counts the group's routes once.
  const data::Pack padded = tp() && tp_.sp ? tp_pad_pack(given, tp_.size()) : data::Pack{};
  const data::Pack& pack = tp() && tp_.sp ? padded : given;
  const int64_t D = c.hidden_size;
  const Batch b(c, pack, params_.device());
  const Ctx cx{c, params_, b, adapters_.get(), 0, ep(), tp(), nullptr, selective_, frozen_.get()};
  const int64_t Nl = cx.Nl();
  const Params& p = params_;
  const Gather pg{gather_};
  pg.gather(kOuter, false);
  Buffer x = cx.f32(Nl * D, "residual stream");
  tp_embed(cx, b.ids, x);
  const int64_t L = c.num_hidden_layers;
  const VisionBatch vb = make_vision_batch(c, pack, cx.dev());
  VisionSaved vsaved;
  if (!vb.empty()) vision_inject(cx, vb, vision_fwd(cx, vb, false, vsaved), x);
  for (int64_t i = 0; i < L; ++i) {
    LayerSaved s;
    pg.gather(int(i), false);
    if (i + 1 < L) pg.prefetch(int(i + 1));
    trunk_layer(c, i).fwd(cx, x, s);
    pg.release(int(i), false);
    moe_count(cx, trunk_layer(c, i).moe_prefix(), s.moe, counts);
  }
  if (!c.mtp_enabled) {
    pg.release(kOuter, false);
    return check_moe_errors(cx);
  }
  // The MTP layer's routes: rerun the head's forward (inputs as in fwd_bwd).
  Buffer hf = cx.act(Nl * D, "final norm output"), rstd = cx.f32(Nl, "final norm rstd");
  ops::rmsnorm_fwd(x, p.w(c.name("norm.weight")), Nl, D, c.rms_norm_eps, hf, rstd);
  MtpInput in = mtp_input(cx, hf);
  LayerSaved ms;
  mtp_layer().fwd(cx, in.r, ms);
  moe_count(cx, mtp_layer().moe_prefix(), ms.moe, counts);
  pg.release(kOuter, false);
  check_moe_errors(cx);
}

std::vector<std::string> Model::moe_prefixes() const {
  std::vector<std::string> out;
  if (!c_.is_moe()) return out;
  for (int64_t i = 0; i < c_.num_hidden_layers; ++i) out.push_back(trunk_layer(c_, i).moe_prefix());
  if (c_.mtp_enabled) out.push_back(mtp_layer().moe_prefix());
  return out;
}

PackLoss model_fwd_bwd(core::Device dev, const Config& c, const TensorMap& params,
                       const data::Pack& pack, TensorMap* grads, const ModelOptions& opt) {
  Model m(dev, core::DType::f32, c, params);
  const PackLoss out = m.fwd_bwd(pack, grads != nullptr, opt);
  if (grads) {
    TensorMap g = zeros_like(params);
    m.params().download_grads(g);
    for (auto& [name, t] : g) {
      float* dst = grad(*grads, name);
      const float* src = t.ptr();
      for (int64_t i = 0; i < t.numel(); ++i) dst[i] += src[i];
    }
  }
  return out;
}

void model_count_routes(core::Device dev, const Config& c, const TensorMap& params,
                        const data::Pack& pack, GlobalRouterCounts& counts) {
  Model m(dev, core::DType::f32, c, params);
  m.count_routes(pack, counts);
}

}  // namespace deltatron::model
