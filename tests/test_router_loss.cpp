// Tests of ops/router_loss (router statistics and losses on f64 views) on the CPU against today's
// host computation, bitwise: ref::MoeBlock::count_routes, make_router_terms +
// MoeBlock::router_loss and the CPU kernels cpu::moe_aux_loss_bwd / moe_z_loss_bwd, for the
// micro-batch, per-sample (seq) and global (running and final counts) recipes, with padding and a
// padding-only sample, accumulation across calls, G == 0, and the errors (bad ids, dtypes, sizes,
// devices) that leave the accumulators untouched.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/error.h"
#include "core/view.h"
#include "cpu/moe.h"
#include "data/pack.h"
#include "model/config.h"
#include "model/moe_block.h"
#include "model/router_loss.h"
#include "ops/moe.h"
#include "ops/router_loss.h"
#include "test_util.h"

namespace {

using namespace deltatron;
using core::Device;
using core::DType;
using core::View;
using Vec = std::vector<double>;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;

constexpr Device kCpu = Device::cpu;
const std::string kPrefix = "model.layers.0.mlp.";

View f64(Vec& v) { return View(v.data(), DType::f64, kCpu, {int64_t(v.size())}); }
View f32(VecF& v) { return View(v.data(), DType::f32, kCpu, {int64_t(v.size())}); }
View i32(VecI& v) { return View(v.data(), DType::i32, kCpu, {int64_t(v.size())}); }
View groups_view(std::vector<int32_t>& g) { return g.empty() ? View{} : i32(g); }

// A pack of samples: (real tokens, span) each (span - real padding tokens at the end of the
// sample), then `tail` padding tokens outside every sample.
data::Pack make_pack(const std::vector<std::pair<int, int>>& samples, int tail) {
  data::Pack p;
  p.cu_seqlens_padded = {0};
  p.cu_seqlens = {0};
  for (size_t s = 0; s < samples.size(); ++s) {
    const auto [real, span] = samples[s];
    for (int i = 0; i < span; ++i) p.is_pad.push_back(i >= real);
    p.cu_seqlens_padded.push_back(p.cu_seqlens_padded.back() + span);
    p.cu_seqlens.push_back(p.cu_seqlens.back() + real);
    p.sample_index.push_back(int64_t(s));
  }
  for (int i = 0; i < tail; ++i) p.is_pad.push_back(1);
  p.N = int64_t(p.is_pad.size());
  return p;
}

// ---- the host reference: the router-loss code of the host-vector model (before the one model),
// kept here as the specification the device-resident ops are held to ---------------------------
namespace ref {

struct MoeSaved {
  int64_t N = 0, E = 0, K = 0;
  std::vector<float> logits_NE, probs_NE, lse_N, topk_w_NK;
  std::vector<int32_t> topk_idx_NK;
};

struct RouterLossTerms {
  std::vector<int32_t> group_N;
  int64_t num_groups = 0;
  std::vector<double> F_GE, c_G;
  double z_coef = 0;
};

const int32_t* groups_ptr(const std::vector<int32_t>& g) { return g.empty() ? nullptr : g.data(); }

struct MoeBlock {
  std::string prefix;
  static void count_routes(const MoeSaved& s, const std::vector<int32_t>& group_N,
                           int64_t num_groups, int64_t E, std::vector<double>& counts_GE,
                           std::vector<double>& tokens_G) {
    if (counts_GE.empty()) counts_GE.assign(num_groups * E, 0.0);
    if (tokens_G.empty()) tokens_G.assign(num_groups, 0.0);
    cpu::moe_count_routes(s.topk_idx_NK.data(), groups_ptr(group_N), s.N, s.K, E, num_groups,
                          counts_GE.data(), tokens_G.data());
  }
  double router_loss(const MoeSaved& s, const RouterLossTerms& t) const {
    const int32_t* g = groups_ptr(t.group_N);
    double loss = 0;
    if (t.num_groups > 0)
      loss += cpu::moe_aux_loss_fwd<float>(s.probs_NE.data(), g, s.N, s.E, t.num_groups,
                                           t.F_GE.data(), t.c_G.data());
    if (t.z_coef != 0) loss += cpu::moe_z_loss_fwd<float>(s.lse_N.data(), g, s.N, t.z_coef);
    return loss;
  }
};

std::vector<int32_t> token_groups(const data::Pack& pack, bool per_sample) {
  std::vector<int32_t> g(pack.N, -1);
  for (int s = 0; s < pack.num_samples(); ++s)
    for (int32_t t = pack.cu_seqlens_padded[s]; t < pack.cu_seqlens_padded[s + 1]; ++t)
      if (!pack.is_pad[t]) g[t] = per_sample ? s : 0;
  return g;
}

struct GlobalRouterCounts {
  std::map<std::string, std::vector<double>> counts_E;
  std::map<std::string, double> tokens;
  double step_tokens = 0.0;
  void add(const std::string& moe_prefix, const MoeSaved& s, const data::Pack& pack, int64_t E) {
    std::vector<double> counts, tokens_G;
    MoeBlock::count_routes(s, token_groups(pack, false), 1, E, counts, tokens_G);
    auto& acc = counts_E[moe_prefix];
    acc.resize(E, 0.0);
    for (int64_t e = 0; e < E; ++e) acc[e] += counts[e];
    tokens[moe_prefix] += tokens_G[0];
  }
};

RouterLossTerms make_router_terms(const model::RouterLossOptions& opt, const model::Config& c,
                                  const data::Pack& pack, const MoeSaved& s,
                                  const std::string& moe_prefix, const GlobalRouterCounts* global) {
  const int64_t E = c.num_experts, k = c.num_experts_per_tok;
  RouterLossTerms t;
  const bool per_sample = opt.aux_type == model::AuxLossType::seq;
  t.group_N = token_groups(pack, per_sample);
  t.num_groups = per_sample ? pack.num_samples() : 1;
  t.z_coef = opt.z_coef * opt.z_weight;
  t.F_GE.assign(t.num_groups * E, 0.0);
  t.c_G.assign(t.num_groups, 0.0);
  if (opt.aux_coef == 0.0) return t;
  std::vector<double> counts, tokens_G;
  double step_tokens = 0.0;
  if (opt.aux_type == model::AuxLossType::global) {
    counts = global->counts_E.at(moe_prefix);
    tokens_G = {global->tokens.at(moe_prefix)};
    step_tokens = global->step_tokens;
  } else {
    MoeBlock::count_routes(s, t.group_N, t.num_groups, E, counts, tokens_G);
  }
  const double w = per_sample ? opt.seq_weight : 1.0;
  for (int64_t g = 0; g < t.num_groups; ++g) {
    const double T = tokens_G[g];
    if (T <= 0) continue;
    const double T2 = step_tokens > 0 ? T * step_tokens : T * T;
    t.c_G[g] = w * opt.aux_coef * double(E) / (double(k) * T2);
    for (int64_t e = 0; e < E; ++e) t.F_GE[g * E + e] = counts[g * E + e];
  }
  return t;
}

}  // namespace ref

model::Config moe_config(int64_t E, int64_t K) {
  model::Config c;
  c.num_experts = E;
  c.num_experts_per_tok = K;
  return c;
}

// The router outputs of random logits (the saved state the host code reads).
ref::MoeSaved routed(int64_t N, int64_t E, int64_t K, uint64_t seed) {
  ref::MoeSaved s;
  s.N = N, s.E = E, s.K = K;
  s.logits_NE = dt_test::randn<float>(N * E, seed, 1.5);
  s.probs_NE.resize(N * E);
  s.lse_N.resize(N);
  s.topk_idx_NK.resize(N * K);
  s.topk_w_NK.resize(N * K);
  cpu::moe_router_fwd<float>(s.logits_NE.data(), N, E, K, s.probs_NE.data(), s.lse_N.data(),
                             s.topk_idx_NK.data(), s.topk_w_NK.data());
  return s;
}

model::RouterLossOptions options(model::AuxLossType type, double aux_coef, double z_coef) {
  model::RouterLossOptions o;
  o.aux_type = type;
  o.aux_coef = aux_coef;
  o.seq_weight = 0.3;
  o.z_coef = z_coef;
  o.z_weight = 1.0 / 37;
  return o;
}

// The AuxCoef of make_router_terms' formula for these options.
ops::AuxCoef coef_of(const model::RouterLossOptions& o, int64_t E, int64_t K, double step_tokens) {
  const double w = o.aux_type == model::AuxLossType::seq ? o.seq_weight : 1.0;
  return {w * o.aux_coef * double(E), double(K), step_tokens};
}

// Bitwise equality of doubles / floats, reporting the first difference.
template <typename T>
void expect_bitwise(const std::vector<T>& got, const std::vector<T>& want,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0) {
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << ", expected " << want[i];
      return;
    }
}
void expect_bitwise(double got, double want, const std::string& what) {
  expect_bitwise(Vec{got}, Vec{want}, what);
}

// ---- route counts ---------------------------------------------------------------------------

TEST(RouterLoss, CountRoutesMatchesMoeBlock) {
  const int64_t E = 7, K = 3;
  const data::Pack pack = make_pack({{5, 6}, {0, 3}, {9, 9}, {4, 8}}, 2);
  const ref::MoeSaved s = routed(pack.N, E, K, 11);
  VecI idx = s.topk_idx_NK;
  for (const auto type : {model::AuxLossType::micro_batch, model::AuxLossType::seq}) {
    const auto terms =
        ref::make_router_terms(options(type, 0.01, 0), moe_config(E, K), pack, s, kPrefix, nullptr);
    VecI group = terms.group_N;
    const int64_t G = terms.num_groups;
    // Accumulated onto existing values, twice.
    Vec counts = dt_test::uniform<double>(G * E, 5, 0, 9), tokens(G, 2.0);
    for (double& x : counts) x = std::round(x);
    Vec counts_ref = counts, tokens_ref = tokens;
    for (int rep = 0; rep < 2; ++rep) {
      ops::moe_count_routes(i32(idx), i32(group), pack.N, K, E, G, f64(counts), f64(tokens));
      ref::MoeBlock::count_routes(s, group, G, E, counts_ref, tokens_ref);
    }
    const std::string what = type == model::AuxLossType::seq ? "seq groups" : "one group";
    expect_bitwise(counts, counts_ref, what + ": counts");
    expect_bitwise(tokens, tokens_ref, what + ": tokens");
  }
  // An empty group view: every token in group 0, as an empty group_N.
  Vec counts(E), tokens(1), counts_ref, tokens_ref;
  VecI none;
  ops::moe_count_routes(i32(idx), View{}, pack.N, K, E, 1, f64(counts), f64(tokens));
  ref::MoeBlock::count_routes(s, none, 1, E, counts_ref, tokens_ref);
  expect_bitwise(counts, counts_ref, "no groups: counts");
  expect_bitwise(tokens, Vec{double(pack.N)}, "no groups: tokens");
}

// ---- aux and z losses, per recipe -----------------------------------------------------------

// One pack's loss and gradients both ways; `counts`/`tokens` are the statistics the new path
// uses (filled by the caller for the global recipe, else counted here from zero).
void check_pack(const model::RouterLossOptions& opt, const data::Pack& pack, const ref::MoeSaved& s,
                const ref::GlobalRouterCounts* global, Vec* counts_in, Vec* tokens_in,
                double step_tokens, const std::string& what) {
  const int64_t E = s.E, K = s.K, N = s.N;
  const double scale = 0.625;
  const ref::MoeBlock block{kPrefix};
  const auto terms = ref::make_router_terms(opt, moe_config(E, K), pack, s, kPrefix, global);
  const double loss_ref = block.router_loss(s, terms);
  VecF dprobs_ref(N * E), dlse_ref(N);
  const int32_t* grp = terms.group_N.data();
  cpu::moe_aux_loss_bwd<float>(grp, N, E, terms.num_groups, terms.F_GE.data(), terms.c_G.data(),
                               scale, dprobs_ref.data());
  cpu::moe_z_loss_bwd<float>(s.lse_N.data(), grp, N, terms.z_coef, scale, dlse_ref.data());

  VecI group = terms.group_N, idx = s.topk_idx_NK;
  VecF probs = s.probs_NE, lse = s.lse_N;
  const bool global_aux = opt.aux_type == model::AuxLossType::global;
  const int64_t G = global_aux ? 1 : terms.num_groups;
  Vec counts(G * E, 0.0), tokens(G, 0.0);
  if (global_aux) {
    counts = *counts_in, tokens = *tokens_in;
  } else {
    ops::moe_count_routes(i32(idx), i32(group), N, K, E, G, f64(counts), f64(tokens));
  }
  const ops::AuxCoef coef = coef_of(opt, E, K, step_tokens);
  Vec loss = {0.0};
  ops::moe_aux_loss_fwd(f32(probs), i32(group), N, E, G, f64(counts), f64(tokens), coef, f64(loss));
  ops::moe_z_loss_fwd(f32(lse), i32(group), N, terms.z_coef, f64(loss));
  expect_bitwise(loss[0], loss_ref, what + ": loss");
  std::printf("  %-44s loss %.17g\n", what.c_str(), loss[0]);
  VecF dprobs(N * E, NAN), dlse(N, NAN);
  ops::moe_aux_loss_bwd(i32(group), N, E, G, f64(counts), f64(tokens), coef, scale, f32(dprobs));
  ops::moe_z_loss_bwd(f32(lse), i32(group), N, terms.z_coef, scale, f32(dlse));
  expect_bitwise(dprobs, dprobs_ref, what + ": dprobs");
  expect_bitwise(dlse, dlse_ref, what + ": dlse");
}

TEST(RouterLoss, MicroBatchAndSeqMatchHostTerms) {
  const int64_t E = 9, K = 3;
  // A padding-only sample (an empty group for seq aux), padding inside samples and at the end.
  const data::Pack pack = make_pack({{6, 8}, {0, 4}, {11, 11}, {3, 5}}, 3);
  const ref::MoeSaved s = routed(pack.N, E, K, 21);
  using model::AuxLossType;
  for (const auto type : {AuxLossType::micro_batch, AuxLossType::seq}) {
    const std::string name = type == AuxLossType::seq ? "seq" : "micro_batch";
    check_pack(options(type, 0.02, 0), pack, s, nullptr, nullptr, nullptr, 0, name + " aux");
    check_pack(options(type, 0, 1e-3), pack, s, nullptr, nullptr, nullptr, 0, name + " z");
    check_pack(options(type, 0.02, 1e-3), pack, s, nullptr, nullptr, nullptr, 0, name + " aux+z");
  }
}

TEST(RouterLoss, GlobalRunningAndFinalCountsMatchHostTerms) {
  const int64_t E = 6, K = 3;
  const std::vector<data::Pack> packs = {make_pack({{7, 8}, {2, 4}}, 1),
                                         make_pack({{5, 5}, {0, 2}, {9, 10}}, 0),
                                         make_pack({{12, 12}}, 4)};
  std::vector<ref::MoeSaved> saved;
  double step_tokens = 0;
  for (size_t i = 0; i < packs.size(); ++i) {
    saved.push_back(routed(packs[i].N, E, K, 31 + i));
    for (uint8_t pad : packs[i].is_pad) step_tokens += !pad;
  }
  const auto opt = options(model::AuxLossType::global, 0.05, 2e-3);

  // Running counts: each pack's counts join the step's before its loss (the trainer's order).
  ref::GlobalRouterCounts running;
  running.step_tokens = step_tokens;
  Vec counts(E, 0.0), tokens(1, 0.0);
  for (size_t i = 0; i < packs.size(); ++i) {
    running.add(kPrefix, saved[i], packs[i], E);
    VecI idx = saved[i].topk_idx_NK;
    VecI group =
        ref::make_router_terms(opt, moe_config(E, K), packs[i], saved[i], kPrefix, &running)
            .group_N;
    ops::moe_count_routes(i32(idx), i32(group), packs[i].N, K, E, 1, f64(counts), f64(tokens));
    expect_bitwise(counts, running.counts_E.at(kPrefix), "running counts");
    expect_bitwise(tokens[0], running.tokens.at(kPrefix), "running tokens");
    check_pack(opt, packs[i], saved[i], &running, &counts, &tokens, step_tokens,
               "global running, pack " + std::to_string(i));
  }
  // Final counts (step_tokens = 0): the whole step's totals.
  ref::GlobalRouterCounts final_counts = running;
  final_counts.step_tokens = 0;
  for (size_t i = 0; i < packs.size(); ++i)
    check_pack(opt, packs[i], saved[i], &final_counts, &counts, &tokens, 0,
               "global final, pack " + std::to_string(i));
}

// c_g itself over many token totals, step totals and shapes: one token routed with p = e_0 and
// F_0 = 1 makes the aux loss exactly c_0, compared with make_router_terms' c_G[0].
TEST(RouterLoss, AuxCoefficientMatchesMakeRouterTerms) {
  const data::Pack pack = make_pack({{1, 1}}, 0);
  int64_t checked = 0;
  for (const auto [E, K] : {std::pair<int64_t, int64_t>{6, 3}, {9, 2}, {128, 8}, {7, 5}})
    for (const double aux_coef : {0.01, 0.037, 1e-3})
      for (const double step : {0.0, 97.0, 1234.0, 65536.0})
        for (int T = 0; T <= 150; T += T < 20 ? 1 : 7) {
          ref::MoeSaved s;
          s.N = 1, s.E = E, s.K = K;
          ref::GlobalRouterCounts global;
          global.counts_E[kPrefix] = Vec(E, 1.0);
          global.tokens[kPrefix] = T;
          global.step_tokens = step;
          const auto opt = options(model::AuxLossType::global, aux_coef, 0);
          const auto terms =
              ref::make_router_terms(opt, moe_config(E, K), pack, s, kPrefix, &global);
          VecF probs(E, 0.f);
          probs[0] = 1.f;
          VecI group = {0};
          Vec counts(E, 1.0), tokens = {double(T)}, loss = {0.0};
          ops::moe_aux_loss_fwd(f32(probs), i32(group), 1, E, 1, f64(counts), f64(tokens),
                                coef_of(opt, E, K, step), f64(loss));
          expect_bitwise(loss[0], terms.c_G[0],
                         "c_0 for E=" + std::to_string(E) + " K=" + std::to_string(K) +
                             " T=" + std::to_string(T) + " step=" + std::to_string(step));
          ++checked;
        }
  EXPECT_GT(checked, 1000);
}

// ---- accumulation, G == 0, empty groups -------------------------------------------------------

TEST(RouterLoss, LossAccumulatesAcrossCalls) {
  const int64_t E = 5, K = 2;
  const data::Pack pack = make_pack({{4, 6}, {7, 7}}, 1);
  const ref::MoeSaved s = routed(pack.N, E, K, 41);
  VecI group(pack.N), idx = s.topk_idx_NK;
  for (int64_t t = 0; t < pack.N; ++t) group[t] = pack.is_pad[t] ? -1 : t < 6 ? 0 : 1;
  VecF probs = s.probs_NE, lse = s.lse_N;
  Vec counts(2 * E), tokens(2);
  ops::moe_count_routes(i32(idx), i32(group), pack.N, K, E, 2, f64(counts), f64(tokens));
  const ops::AuxCoef coef{0.1 * double(E), double(K), 0};
  // Each term alone from zero, then all onto a running total.
  Vec a = {0.0}, z = {0.0}, total = {1.25};
  ops::moe_aux_loss_fwd(f32(probs), i32(group), pack.N, E, 2, f64(counts), f64(tokens), coef,
                        f64(a));
  ops::moe_z_loss_fwd(f32(lse), i32(group), pack.N, 1e-2, f64(z));
  EXPECT_GT(a[0], 0);
  EXPECT_GT(z[0], 0);
  ops::moe_aux_loss_fwd(f32(probs), i32(group), pack.N, E, 2, f64(counts), f64(tokens), coef,
                        f64(total));
  ops::moe_z_loss_fwd(f32(lse), i32(group), pack.N, 1e-2, f64(total));
  ops::moe_aux_loss_fwd(f32(probs), i32(group), pack.N, E, 2, f64(counts), f64(tokens), coef,
                        f64(total));
  expect_bitwise(total[0], ((1.25 + a[0]) + z[0]) + a[0], "accumulated loss");
}

TEST(RouterLoss, NoGroupsAndEmptyGroupView) {
  const int64_t E = 4, K = 2, N = 6;
  const ref::MoeSaved s = routed(N, E, K, 51);
  VecF probs = s.probs_NE, lse = s.lse_N;
  VecI idx = s.topk_idx_NK;
  // G == 0: no aux loss, zero gradient, and the (empty) statistics views are not read.
  Vec loss = {0.5};
  VecI group = {0, 0, -1, 0, 0, 0};
  ops::moe_aux_loss_fwd(f32(probs), i32(group), N, E, 0, View{}, View{}, {1, 2, 0}, f64(loss));
  EXPECT_EQ(loss[0], 0.5);
  VecF dprobs(N * E, NAN);
  ops::moe_aux_loss_bwd(i32(group), N, E, 0, View{}, View{}, {1, 2, 0}, 1.0, f32(dprobs));
  EXPECT_EQ(dprobs, VecF(N * E, 0.f));
  // Empty group view = every token counted, as a group_N of zeros.
  VecI zeros(N, 0);
  Vec counts(E), tokens(1), counts0(E), tokens0(1), l_empty = {0}, l_zero = {0};
  ops::moe_count_routes(i32(idx), View{}, N, K, E, 1, f64(counts), f64(tokens));
  ops::moe_count_routes(i32(idx), i32(zeros), N, K, E, 1, f64(counts0), f64(tokens0));
  expect_bitwise(counts, counts0, "empty view counts");
  const ops::AuxCoef coef{0.3, double(K), 0};
  ops::moe_aux_loss_fwd(f32(probs), View{}, N, E, 1, f64(counts), f64(tokens), coef, f64(l_empty));
  ops::moe_z_loss_fwd(f32(lse), View{}, N, 0.01, f64(l_empty));
  ops::moe_aux_loss_fwd(f32(probs), i32(zeros), N, E, 1, f64(counts), f64(tokens), coef,
                        f64(l_zero));
  ops::moe_z_loss_fwd(f32(lse), i32(zeros), N, 0.01, f64(l_zero));
  expect_bitwise(l_empty[0], l_zero[0], "empty view loss");
  VecF d_empty(N * E), d_zero(N * E), z_empty(N), z_zero(N);
  ops::moe_aux_loss_bwd(View{}, N, E, 1, f64(counts), f64(tokens), coef, 2.0, f32(d_empty));
  ops::moe_aux_loss_bwd(i32(zeros), N, E, 1, f64(counts), f64(tokens), coef, 2.0, f32(d_zero));
  ops::moe_z_loss_bwd(f32(lse), View{}, N, 0.01, 2.0, f32(z_empty));
  ops::moe_z_loss_bwd(f32(lse), i32(zeros), N, 0.01, 2.0, f32(z_zero));
  expect_bitwise(d_empty, d_zero, "empty view dprobs");
  expect_bitwise(z_empty, z_zero, "empty view dlse");
  // All padding: nothing counted, zero loss and gradients.
  VecI pad(N, -1);
  Vec c2(E), t2(1), l2 = {0};
  ops::moe_count_routes(i32(idx), i32(pad), N, K, E, 1, f64(c2), f64(t2));
  EXPECT_EQ(t2[0], 0.0);
  EXPECT_EQ(c2, Vec(E, 0.0));
  ops::moe_aux_loss_fwd(f32(probs), i32(pad), N, E, 1, f64(c2), f64(t2), coef, f64(l2));
  ops::moe_z_loss_fwd(f32(lse), i32(pad), N, 0.01, f64(l2));
  EXPECT_EQ(l2[0], 0.0);
}

// ---- errors -----------------------------------------------------------------------------------

TEST(RouterLoss, BadIdsThrowAndLeaveAccumulatorsUntouched) {
  const int64_t E = 3, K = 2, N = 4;
  VecI idx = {0, 1, 2, 0, 1, 2, 0, 1};
  VecF probs(N * E, 0.25f), lse(N, 1.f), dprobs(N * E), dlse(N);
  Vec counts(2 * E, 1.0), tokens(2, 1.0), loss = {0.5};
  const ops::AuxCoef coef{1, double(K), 0};
  VecI bad_hi = {0, 2, 1, -1}, bad_lo = {0, -2, 1, 1};
  dt_test::expect_error(
      [&] { ops::moe_count_routes(i32(idx), i32(bad_hi), N, K, E, 2, f64(counts), f64(tokens)); },
      {"moe_count_routes", "group id 2", "token 1"});
  dt_test::expect_error(
      [&] {
        ops::moe_aux_loss_fwd(f32(probs), i32(bad_lo), N, E, 2, f64(counts), f64(tokens), coef,
                              f64(loss));
      },
      {"moe_aux_loss_fwd", "group id -2", "token 1"});
  dt_test::expect_error(
      [&] {
        ops::moe_aux_loss_bwd(i32(bad_hi), N, E, 2, f64(counts), f64(tokens), coef, 1.0,
                              f32(dprobs));
      },
      {"moe_aux_loss_bwd", "group id 2"});
  dt_test::expect_error([&] { ops::moe_z_loss_fwd(f32(lse), i32(bad_lo), N, 1.0, f64(loss)); },
                        {"moe_z_loss_fwd", "group id -2"});
  dt_test::expect_error([&] { ops::moe_z_loss_bwd(f32(lse), i32(bad_lo), N, 1.0, 1.0, f32(dlse)); },
                        {"moe_z_loss_bwd", "group id -2"});
  VecI bad_expert = {0, 1, 2, 3, 1, 2, 0, 1}, ok = {0, 1, 1, 0};
  dt_test::expect_error(
      [&] {
        ops::moe_count_routes(i32(bad_expert), i32(ok), N, K, E, 2, f64(counts), f64(tokens));
      },
      {"moe_count_routes", "expert id 3", "token 1"});
  EXPECT_EQ(counts, Vec(2 * E, 1.0)) << "nothing accumulated on error";
  EXPECT_EQ(tokens, Vec(2, 1.0));
  EXPECT_EQ(loss[0], 0.5);
  // A z-loss does not check the upper bound (it has no groups).
  VecI many = {0, 5, 9, -1};
  ops::moe_z_loss_fwd(f32(lse), i32(many), N, 1.0, f64(loss));
  EXPECT_EQ(loss[0], 3.5);
}

TEST(RouterLoss, ViewChecks) {
  const int64_t E = 3, K = 2, N = 4;
  VecI idx = {0, 1, 2, 0, 1, 2, 0, 1}, group = {0, 0, 1, -1};
  VecF probs(N * E, 0.25f), lse(N, 1.f), counts_f(2 * E);
  Vec counts(2 * E), tokens(2), loss = {0}, two(2);
  const ops::AuxCoef coef{1, double(K), 0};
  // Wrong dtype (f32 statistics), wrong element count, bf16 probabilities on the CPU.
  dt_test::expect_error(
      [&] { ops::moe_count_routes(i32(idx), i32(group), N, K, E, 2, f32(counts_f), f64(tokens)); },
      {"ops::moe_count_routes", "counts_GE is f32 [6] on cpu", "expected f64 with 6 elements"});
  dt_test::expect_error(
      [&] { ops::moe_count_routes(i32(idx), i32(group), N, K, E, 2, f64(counts), f64(loss)); },
      {"ops::moe_count_routes", "tokens_G is f64 [1] on cpu", "expected f64 with 2 elements"});
  dt_test::expect_error(
      [&] {
        ops::moe_aux_loss_fwd(f32(probs), i32(group), N, E, 2, f64(counts), f64(tokens), coef,
                              f64(two));
      },
      {"ops::moe_aux_loss_fwd", "loss_1 is f64 [2]", "expected f64 with 1 elements"});
  const View probs_bf16(probs.data(), DType::bf16, kCpu, {N * E});
  dt_test::expect_error(
      [&] {
        ops::moe_aux_loss_fwd(probs_bf16, i32(group), N, E, 2, f64(counts), f64(tokens), coef,
                              f64(loss));
      },
      {"ops::moe_aux_loss_fwd", "probs_NE is bf16", "expected f32"});
  dt_test::expect_error(
      [&] { ops::moe_z_loss_fwd(f32(lse), i32(group), N + 1, 1.0, f64(loss)); },
      {"ops::moe_z_loss_fwd", "lse_N is f32 [4]", "expected f32 with 5 elements"});
  // Mixed devices: a view on another device than the op's.
  const View group_cuda(group.data(), DType::i32, Device::cuda, {N});
  dt_test::expect_error([&] { ops::moe_z_loss_bwd(f32(lse), group_cuda, N, 1.0, 1.0, f32(lse)); },
                        {"ops::moe_z_loss_bwd", "group_N is i32 [4] on cuda", "on cpu like lse_N"});
  // G must be positive for counts and non-negative for the aux loss.
  dt_test::expect_error(
      [&] { ops::moe_count_routes(i32(idx), i32(group), N, K, E, 0, View{}, View{}); },
      {"ops::moe_count_routes", "G > 0"});
  dt_test::expect_error(
      [&] { ops::moe_aux_loss_bwd(i32(group), N, E, -1, View{}, View{}, coef, 1.0, f32(probs)); },
      {"ops::moe_aux_loss_bwd", "G >= 0"});
  EXPECT_EQ(loss[0], 0.0);
#ifndef DT_HAVE_CUDA
  // A CPU-only build refuses CUDA views with a clear error.
  const View lse_cuda(lse.data(), DType::f32, Device::cuda, {N});
  const View loss_cuda(loss.data(), DType::f64, Device::cuda, {1});
  dt_test::expect_error([&] { ops::moe_z_loss_fwd(lse_cuda, View{}, N, 1.0, loss_cuda); },
                        {"ops::moe_z_loss_fwd", "without CUDA"});
#endif
}

}  // namespace
