// The activation account (activations.h). Every list and phase below follows the model code
// (layer.cpp, attn_block.cpp, gdn_block.cpp, mlp_block.cpp, moe_block.cpp, model.cpp) buffer by
// buffer; a change there needs the same change here (tests/test_activation_memory.cpp fails
// otherwise).
#include "model/activations.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace deltatron::model {

namespace {

using core::DType;
constexpr DType f32 = DType::f32, i32 = DType::i32;

double sz(DType t) { return double(core::dtype_size(t)); }

double all_bytes(const std::vector<SavedTensor>& ts) { return kept_bytes(ts, false); }

// Sizes of the blocks (one rank, no tensor parallelism), as bytes of one buffer of each shape.
struct Sizes {
  double N, D, e;
  // attention: q-shaped, k-shaped buffers, the rstd pair's bytes
  double hk, jk, a_r, a_lse;
  // GDN: q-shaped, v-shaped, conv-shaped, gate-shaped (dt), gate-shaped (f32), q rstd (f32)
  double qk, gv, ce, ge, g4, h4;
  double nf;  // MLP hidden
  // MoE: expert rows (F, D wide), shared hidden, router
  double pf, pd, ns, ne4, nk4;
  Sizes(const Config& c, int64_t n, DType dt) : N(double(n)), D(double(c.hidden_size)), e(sz(dt)) {
    const double H = c.num_attention_heads, J = c.num_key_value_heads, K = c.head_dim;
    hk = N * H * K * e;
    jk = N * J * K * e;
    a_r = 4 * N * (H + J);
    a_lse = 4 * N * H;
    const double Hl = c.linear_num_key_heads, G = c.linear_num_value_heads;
    qk = N * Hl * c.linear_key_head_dim * e;
    gv = N * G * c.linear_value_head_dim * e;
    ce = 2 * qk + gv;
    ge = N * G * e;
    g4 = 4 * N * G;
    h4 = 4 * N * Hl;
    nf = N * double(c.intermediate_size) * e;
    const double P = N * double(c.num_experts_per_tok);
    pf = P * double(c.moe_intermediate_size) * e;
    pd = P * D * e;
    ns = N * double(c.shared_expert_intermediate_size) * e;
    ne4 = 4 * N * double(c.num_experts);
    nk4 = 4 * N * double(c.num_experts_per_tok);
  }
};

// Bytes alive in a block's backward besides the layer's kept tensors (sel: selective
// recomputation, which rebuilds the dropped tensors there). Each is the largest of the block's
// stages, in its code order.
double attn_bwd_peak(const Sizes& s, bool sel) {
  const double r = sel ? s.a_r : 0;
  const double q = sel ? s.hk + s.jk : 0;
  return std::max({(sel ? 4 : 3) * s.hk,         // da, dgate, [gated], dgated
                   3 * s.hk + 2 * s.jk + q + r,  // + [q, k, rstd], dq, dk, dv
                   5 * s.hk + 2 * s.jk + r,      // dgate, dq, dk, dv, dqg, dq_raw
                   4 * s.hk + 3 * s.jk + r});    // dgate, dq, dk, dv, dqg, dk_raw
}

double gdn_bwd_peak(const Sizes& s, bool sel) {
  const double ph1 = 3 * s.gv + (sel ? s.gv + s.g4 : 0);  // do, dz, [yn, rstd], dyn
  const double base2 = 2 * s.gv + s.ce + 2 * s.ge;        // do, dz, dc, db, da
  // the recomputed inner tensors: c, v, q, k, rstds (q, k read out of c); then kept
  const double ia = s.ce + s.gv + 2 * s.qk + 2 * s.h4;
  const double ic = sel ? 2 * s.qk + s.gv + 2 * s.h4 + 2 * s.g4 : 0;
  const double grads = 2 * s.qk + s.gv + 2 * s.g4;  // dq, dk, dv, dg, dbeta (dq, dk into dc)
  return std::max({ph1, base2 + (sel ? std::max(ia, ic) : 0), base2 + ic + grads,
                   s.gv + 2 * s.ge + 2 * s.ce});  // dz, db, da, dc, dqkv
}

double ffn_bwd_peak(const Config& c, const Sizes& s, bool sel) {
  if (!c.is_moe()) return (sel ? 4 : 3) * s.nf;  // dgate, dup, [h], dh
  const double base = 4 * s.N * s.D + s.nk4;     // dx32, dw
  double p = std::max({2 * s.pf + s.pd,          // h, g, dye
                       6 * s.pf,                 // h, g, dgu, dgate, dup
                       4 * s.pf + 2 * s.pd});    // h, g, dgu, xg, dxg
  if (c.shared_expert_intermediate_size > 0)     // dout, dlogit (f32, dt), hs, dh, dgs, dus
    p = std::max(p, s.N * s.D * s.e + 4 * s.N + s.N * s.e + 4 * s.ns);
  p = std::max(p, 2 * s.ne4 + 4 * s.N + 4 * s.N * s.D);  // dprobs, dlse, dlogits, x32
  return base + p;
}

// Bytes alive in a block's forward besides what earlier layers keep: its own tensors (all of
// them exist until the forward ends) and its largest temporaries.
double mixer_fwd_peak(const Config& c, LayerType t, const Sizes& s, int64_t N, DType dt) {
  if (t == LayerType::full_attention)
    return std::max(all_bytes(attention_tensors(c, N, dt)), 4 * s.hk);  // or qg, q_raw, gate
  const double ia = s.ce + s.gv + 2 * s.qk + 2 * s.h4;                  // c, v, q, k, rstds
  return std::max(all_bytes(gdn_tensors(c, N, dt)), s.ce + s.gv + 2 * s.ge + ia);
}

double ffn_fwd_peak(const Config& c, const Sizes& s, int64_t N, DType dt) {
  const double all = all_bytes(ffn_tensors(c, N, dt));
  if (!c.is_moe()) return all;                                               // gate, up, h
  double extra = std::max(s.ne4 + 4 * s.N * s.D,                             // logits, x32
                          s.pf + s.pd + 2 * s.pf);                           // h, xg, gu
  if (c.shared_expert_intermediate_size > 0) extra = std::max(extra, s.ns);  // hs
  return all + extra;
}

using LayerPeaks = LayerActivation;

LayerPeaks layer_peaks(const Config& c, LayerType t, int64_t N, DType dt, bool sel) {
  const Sizes s(c, N, dt);
  const std::vector<SavedTensor> norms = layer_norm_tensors(c, N, dt);
  const std::vector<SavedTensor> mixer =
      t == LayerType::full_attention ? attention_tensors(c, N, dt) : gdn_tensors(c, N, dt);
  const std::vector<SavedTensor> ffn = ffn_tensors(c, N, dt);
  LayerPeaks p;
  p.kept = kept_bytes(norms, sel) + kept_bytes(mixer, sel) + kept_bytes(ffn, sel);
  p.all = all_bytes(norms) + all_bytes(mixer) + all_bytes(ffn);
  const double nd_e = s.N * s.D * s.e, nd4 = 4 * s.N * s.D, n4 = 4 * s.N;
  // Forward: x_in, n1, rstd1 + the mixer; then x_in, rstd1, [n1], the mixer's kept, h, n2, rstd2
  // + the FFN.
  p.fwd = std::max(nd4 + nd_e + n4 + mixer_fwd_peak(c, t, s, N, dt),
                   nd4 + n4 + (sel ? 0 : nd_e) + kept_bytes(mixer, sel) + nd4 + nd_e + n4 +
                       ffn_fwd_peak(c, s, N, dt));
  // Backward: dy, dn + the recomputed norm output (its rstd is freed at once) + the block.
  const double norm_re = sel ? nd_e : 0;
  const double mixer_bwd =
      t == LayerType::full_attention ? attn_bwd_peak(s, sel) : gdn_bwd_peak(s, sel);
  p.bwd = 2 * nd_e + norm_re + std::max(ffn_bwd_peak(c, s, sel), mixer_bwd);
  return p;
}

// A new peak takes the phase's name (with the layer's index when layer >= 0), built only then.
void track(ActivationAccount& a, double bytes, const char* phase, int64_t layer = -1) {
  if (bytes > a.peak) {
    a.peak = bytes;
    a.peak_phase = layer < 0 ? phase : phase + std::to_string(layer);
  }
}

std::string gib(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
  return buf;
}
std::string mib(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1ull << 20));
  return buf;
}

}  // namespace

LayerActivation layer_activation(const Config& c, LayerType t, int64_t N, DType dt,
                                 bool selective) {
  return layer_peaks(c, t, N, dt, selective);
}

double kept_bytes(const std::vector<SavedTensor>& ts, bool selective) {
  double b = 0;
  for (const SavedTensor& t : ts)
    if (!(selective && t.recomputed)) b += t.bytes();
  return b;
}

std::vector<SavedTensor> layer_norm_tensors(const Config& c, int64_t N, DType dt) {
  const int64_t D = c.hidden_size;
  return {{"layer input (saved)", N * D, f32, false},
          {"input_layernorm rstd", N, f32, false},
          {"input_layernorm output", N * D, dt, true},
          {"residual after the mixer (saved)", N * D, f32, false},
          {"post_attention_layernorm rstd", N, f32, false},
          {"post_attention_layernorm output", N * D, dt, true}};
}

std::vector<SavedTensor> attention_tensors(const Config& c, int64_t N, DType dt) {
  const int64_t H = c.num_attention_heads, J = c.num_key_value_heads, K = c.head_dim;
  return {
      {"attention q", N * H * K, dt, false},          {"attention gate", N * H * K, dt, false},
      {"attention k", N * J * K, dt, false},          {"attention v", N * J * K, dt, false},
      {"attention q (normed)", N * H * K, dt, true},  {"attention k (normed)", N * J * K, dt, true},
      {"attention q rstd", N * H, f32, true},         {"attention k rstd", N * J, f32, true},
      {"attention output", N * H * K, dt, false},     {"attention lse", N * H, f32, false},
      {"attention gated output", N * H * K, dt, true}};
}

std::vector<SavedTensor> gdn_tensors(const Config& c, int64_t N, DType dt) {
  const int64_t H = c.linear_num_key_heads, G = c.linear_num_value_heads;
  const int64_t HK = H * c.linear_key_head_dim, GV = G * c.linear_value_head_dim;
  return {{"GDN qkv projection", N * (2 * HK + GV), dt, false},
          {"GDN z", N * GV, dt, false},
          {"GDN b", N * G, dt, false},
          {"GDN a", N * G, dt, false},
          {"GDN v", N * GV, dt, true},
          {"GDN q", N * HK, dt, true},
          {"GDN k", N * HK, dt, true},
          {"GDN q rstd", N * H, f32, true},
          {"GDN k rstd", N * H, f32, true},
          {"GDN beta", N * G, f32, true},
          {"GDN g", N * G, f32, true},
          {"GDN core output", N * GV, dt, false},
          {"GDN gated norm output", N * GV, dt, true},
          {"GDN norm rstd", N * G, f32, true}};
}

std::vector<SavedTensor> ffn_tensors(const Config& c, int64_t N, DType dt) {
  if (!c.is_moe()) {
    const int64_t F = c.intermediate_size;
    return {{"MLP gate", N * F, dt, false},
            {"MLP up", N * F, dt, false},
            {"MLP hidden", N * F, dt, true}};
  }
  const int64_t D = c.hidden_size, E = c.num_experts, K = c.num_experts_per_tok;
  const int64_t F = c.moe_intermediate_size, S = c.shared_expert_intermediate_size, P = N * K;
  std::vector<SavedTensor> t = {{"router probabilities", N * E, f32, false},
                                {"router lse", N, f32, false},
                                {"router top-k experts", N * K, i32, false},
                                {"router top-k weights", N * K, f32, false},
                                {"expert row offsets", E + 1, DType::i64, false},
                                {"expert-major slot order", P, i32, false},
                                {"slot positions", P, i32, false},
                                {"expert gate", P * F, dt, false},
                                {"expert up", P * F, dt, false}};
  if (S > 0) {
    t.push_back({"shared expert gate", N * S, dt, false});
    t.push_back({"shared expert up", N * S, dt, false});
    t.push_back({"shared expert output", N * D, dt, false});
    t.push_back({"shared expert gate logit", N, f32, false});
  }
  return t;
}

std::vector<SavedTensor> layer_tensors(const Config& c, LayerType t, int64_t N, DType dt) {
  std::vector<SavedTensor> all = layer_norm_tensors(c, N, dt);
  const std::vector<SavedTensor> mixer =
      t == LayerType::full_attention ? attention_tensors(c, N, dt) : gdn_tensors(c, N, dt);
  const std::vector<SavedTensor> ffn = ffn_tensors(c, N, dt);
  all.insert(all.end(), mixer.begin(), mixer.end());
  all.insert(all.end(), ffn.begin(), ffn.end());
  return all;
}

ActivationAccount activation_account(const Config& c, int64_t N, DType dt,
                                     const ActivationOptions& o) {
  ActivationAccount a;
  const bool sel = o.selective;
  const Sizes s(c, N, dt);
  const double nd_e = s.N * s.D * s.e, nd4 = 4 * s.N * s.D, n4 = 4 * s.N;
  // Every layer of a type keeps and peaks alike: each type's peaks once ([0] GDN, [1] attention).
  LayerPeaks per_type[2];
  for (int i = 0; i < 2; ++i) {
    const LayerType t = i == 0 ? LayerType::linear_attention : LayerType::full_attention;
    per_type[i] = layer_peaks(c, t, N, dt, sel);
    a.layer_kept[i] = per_type[i].kept;
    a.layer_all[i] = sel ? layer_peaks(c, t, N, dt, false).kept : per_type[i].kept;
  }
  const auto peaks_of = [&](LayerType t) -> const LayerPeaks& {
    return per_type[t == LayerType::full_attention ? 1 : 0];
  };
  // Always alive: the residual stream and the pack's index tensors (ids, targets, positions x3,
  // embedding-gradient ids; MTP: its ids, targets, gradient ids; MoE: two router-loss groups).
  // kSmall: the buffers of a few bytes (cu_seqlens, the router loss, the MoE error words).
  constexpr double kSmall = 4096;
  const double base = nd4 + n4 * (6 + (c.mtp_enabled ? 3 : 0) + (c.is_moe() ? 2 : 0)) + kSmall;
  // Forward, layer by layer; under whole-layer recomputation a layer keeps only its input.
  const int64_t L = c.num_hidden_layers;
  double prefix = 0;
  for (int64_t i = 0; i < L; ++i) {
    const LayerPeaks& lp = peaks_of(c.layer_types[i]);
    track(a, base + prefix + lp.fwd, "forward of layer ", i);
    prefix += o.recompute ? nd4 : lp.kept;
  }
  const double trunk = prefix;
  // Final norm, then the LM head: hf, rstd, the head's gradient (all tokens), its losses.
  const double head = nd_e + n4 + nd_e;
  track(a, base + trunk + head + 2 * n4, "LM head");
  double mtp_kept = 0;
  if (c.mtp_enabled) {
    // Its input (e, cat, two rstd, r; ne and nh while it is made), its layer, its head, its
    // backward (dr, the layer's, then dr in dt, dcat, dne, dnh, de).
    const LayerPeaks& m = peaks_of(LayerType::full_attention);
    const double in = nd4 + 2 * nd_e + 2 * n4 + nd4;
    const double at = base + trunk + head;
    track(a, at + in + 2 * nd_e, "MTP input");
    track(a, at + in + m.fwd, "MTP layer forward");
    const double after = at + in + m.kept + nd_e + n4 + nd_e;  // m, rstd_m, dm_all
    track(a, after + 2 * n4, "MTP head");
    track(a, after + nd4 + m.bwd, "MTP layer backward");
    track(a, after + nd4 + nd_e + 2 * nd_e + 2 * nd_e + nd4, "MTP input backward");
    mtp_kept = m.kept;
  }
  a.kept = trunk + mtp_kept;
  // Backward: the final norm's rstd and dx (f32) besides the layers still kept.
  for (int64_t i = L - 1; i >= 0; --i) {
    const LayerPeaks& lp = peaks_of(c.layer_types[i]);
    prefix -= o.recompute ? nd4 : lp.kept;
    const double at = base + n4 + nd4 + prefix;
    if (o.recompute) track(a, at + nd4 + lp.fwd, "recomputed forward of layer ", i);
    track(a, at + lp.kept + lp.bwd, "backward of layer ", i);
  }
  return a;
}

std::string describe_activations(const Config& c, int64_t N, DType dt, const ActivationOptions& o,
                                 const ActivationAccount& a) {
  std::ostringstream s;
  int64_t n[2] = {0, 0};
  for (LayerType t : c.layer_types) ++n[t == LayerType::full_attention ? 1 : 0];
  s << "activations at N = " << N << " tokens (" << core::dtype_name(dt) << "), selective "
    << "recomputation " << (o.selective ? "on" : "off")
    << (o.recompute ? ", whole-layer recomputation on" : "") << ":\n";
  const char* names[2] = {"gated deltanet layer", "attention layer"};
  for (int i = 0; i < 2; ++i) {
    if (n[i] == 0) continue;
    s << "    " << names[i] << " x" << n[i] << ": keeps " << mib(a.layer_kept[i]);
    if (o.selective)
      s << " (" << mib(a.layer_all[i])
        << " without selective recomputation: " << mib(a.layer_all[i] - a.layer_kept[i])
        << " recomputed)";
    s << "\n";
  }
  s << "    kept by every layer" << (c.mtp_enabled ? " and the MTP layer" : "") << ": "
    << gib(a.kept) << "; peak of the pack's activation buffers " << gib(a.peak) << " ("
    << a.peak_phase << ")";
  return s.str();
}

}  // namespace deltatron::model
