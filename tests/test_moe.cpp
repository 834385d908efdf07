// Tests of the MoE ops and block: router and router losses against central finite differences in
// double, the block (routed + shared experts, router losses) against finite differences of a
// naive per-token double reference, MoE(E=1, k=1) == dense MLP, padding invariance, route counts,
// top-k ties, k == E, and thread-count independence.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/error.h"
#include "cpu/moe.h"
#include "data/pack.h"
#include "model/blocks.h"
#include "model/config.h"
#include "model/context.h"
#include "model/moe_block.h"
#include "model/params.h"
#include "ops/moe.h"
#include "ops/router_loss.h"
#include "ops/tensor.h"
#include "test_util.h"

namespace {

using namespace deltatron;
using dt_test::compare;
using dt_test::dot;
using dt_test::finite_diff;
using dt_test::randn;
using dt_test::uniform;
using Vec = std::vector<double>;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;

constexpr core::Device kCpu = core::Device::cpu;

// Double-precision op gradients vs central differences (h = 1e-6): see docs/tolerances.md.
constexpr double kGradTol = 1e-7;
// Float32 block gradients vs finite differences of the double reference: float32 rounding of a
// few chained GEMMs (~1e-6 relative per op) on O(1) data.
constexpr double kBlockGradTol = 2e-6;
// Float32 block forward vs the double reference.
constexpr double kBlockFwdTol = 2e-6;

void expect_grad(const Vec& got, const Vec& want, double tol, const std::string& what) {
  auto r = compare(got, want);
  EXPECT_LE(r.rel_rms, tol) << what << ": " << r.str();
  std::printf("  %-44s rel_rms %.2e  max_abs %.2e\n", what.c_str(), r.rel_rms, r.max_abs);
}

// Smallest gap p_(K) - p_(K+1) over the tokens: finite differences need a stable selection.
double min_topk_gap(const Vec& probs, int64_t N, int64_t E, int64_t K) {
  double gap = 1e300;
  for (int64_t n = 0; n < N && K < E; ++n) {
    Vec p(probs.begin() + n * E, probs.begin() + (n + 1) * E);
    std::sort(p.rbegin(), p.rend());
    gap = std::min(gap, p[K - 1] - p[K]);
  }
  return gap;
}

// ---------------------------------------------------------------------------------------------
// Router

TEST(MoeRouter, ForwardMatchesFormulaAndFloatAgrees) {
  const int64_t N = 7, E = 9, K = 3;
  Vec l = randn<double>(N * E, 1, 1.5), p(N * E), lse(N), w(N * K);
  VecI idx(N * K);
  cpu::moe_router_fwd(l.data(), N, E, K, p.data(), lse.data(), idx.data(), w.data());
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(l[n * E + e]);
    EXPECT_NEAR(lse[n], std::log(s), 1e-14);
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return l[n * E + a] > l[n * E + b]; });
    double sel = 0;
    for (int64_t j = 0; j < K; ++j) sel += std::exp(l[n * E + order[j]]);
    for (int64_t j = 0; j < K; ++j) {
      EXPECT_EQ(idx[n * K + j], order[j]) << "token " << n << " choice " << j;
      EXPECT_NEAR(w[n * K + j], std::exp(l[n * E + order[j]]) / sel, 1e-14);
    }
  }
  VecF lf(l.begin(), l.end()), pf(N * E), lsef(N), wf(N * K);
  VecI idxf(N * K);
  cpu::moe_router_fwd<float>(lf.data(), N, E, K, pf.data(), lsef.data(), idxf.data(), wf.data());
  EXPECT_EQ(idxf, idx);
  DT_EXPECT_CLOSE(pf, p, 1e-6, "float probs");
  DT_EXPECT_CLOSE(wf, w, 1e-6, "float weights");
  DT_EXPECT_CLOSE(lsef, lse, 1e-6, "float lse");
}

TEST(MoeRouter, TiesPickTheLowerExpertIndex) {
  const int64_t E = 5;
  // Row 0: experts 1, 2, 4 tie for the top; row 1: all equal; row 2: tie at the k-th place.
  Vec l = {0.5, 2, 2, 1, 2, /**/ 0, 0, 0, 0, 0, /**/ 3, 1, -1, 1, 1};
  Vec p(3 * E), lse(3);
  for (int64_t K : {2, 3}) {
    Vec w(3 * K);
    VecI idx(3 * K);
    cpu::moe_router_fwd(l.data(), 3, E, K, p.data(), lse.data(), idx.data(), w.data());
    VecI want = K == 2 ? VecI{1, 2, 0, 1, 0, 1} : VecI{1, 2, 4, 0, 1, 2, 0, 1, 3};
    EXPECT_EQ(idx, want) << "K=" << K;
    for (int64_t j = 0; j < K; ++j) EXPECT_NEAR(w[K + j], 1.0 / K, 1e-15);
  }
}

TEST(MoeRouter, KEqualsEUsesAllExpertsWithWeightsEqualToProbs) {
  const int64_t N = 6, E = 4, K = 4;
  Vec l = randn<double>(N * E, 5), p(N * E), lse(N), w(N * K);
  VecI idx(N * K);
  cpu::moe_router_fwd(l.data(), N, E, K, p.data(), lse.data(), idx.data(), w.data());
  for (int64_t n = 0; n < N; ++n) {
    VecI sorted(idx.begin() + n * K, idx.begin() + (n + 1) * K);
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, (VecI{0, 1, 2, 3}));
    for (int64_t j = 0; j < K; ++j) {
      EXPECT_NEAR(w[n * K + j], p[n * E + idx[n * K + j]], 1e-15);
      if (j > 0) {
        EXPECT_GE(w[n * K + j - 1], w[n * K + j]);
      }
    }
  }
  // Backward through the weights alone is then the full softmax backward.
  Vec dw = randn<double>(N * K, 6), dl(N * E), dp(N * E), dl2(N * E);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < K; ++j) dp[n * E + idx[n * K + j]] = dw[n * K + j];
  cpu::moe_router_bwd<double>(p.data(), idx.data(), w.data(), dw.data(), nullptr, nullptr, N, E, K,
                              dl.data());
  cpu::moe_router_bwd<double>(p.data(), idx.data(), w.data(), nullptr, dp.data(), nullptr, N, E, K,
                              dl2.data());
  DT_EXPECT_CLOSE(dl, dl2, 1e-13, "k == E: weight path == softmax path");
}

TEST(MoeRouter, BackwardMatchesFiniteDiff) {
  const int64_t N = 7, E = 9, K = 3;
  Vec l = randn<double>(N * E, 10, 2.0);
  Vec Pw = randn<double>(N * K, 11), Pp = randn<double>(N * E, 12), Pl = randn<double>(N, 13);
  Vec p(N * E), lse(N), w(N * K);
  VecI idx(N * K);
  cpu::moe_router_fwd(l.data(), N, E, K, p.data(), lse.data(), idx.data(), w.data());
  ASSERT_GT(min_topk_gap(p, N, E, K), 1e-3) << "choose data with a stable top-k";
  const VecI idx0 = idx;

  // Each incoming gradient alone, then all three together.
  struct Case {
    const char* what;
    bool use_w, use_p, use_l;
  };
  for (const Case& cs : {Case{"router dlogits via top-k weights", true, false, false},
                         Case{"router dlogits via probs", false, true, false},
                         Case{"router dlogits via lse", false, false, true},
                         Case{"router dlogits via all three", true, true, true}}) {
    Vec dl(N * E, 99.0);  // must be overwritten
    cpu::moe_router_bwd<double>(p.data(), idx.data(), w.data(), cs.use_w ? Pw.data() : nullptr,
                                cs.use_p ? Pp.data() : nullptr, cs.use_l ? Pl.data() : nullptr, N,
                                E, K, dl.data());
    auto fd = finite_diff(l, [&] {
      Vec pp(N * E), ll(N), ww(N * K);
      VecI ii(N * K);
      cpu::moe_router_fwd(l.data(), N, E, K, pp.data(), ll.data(), ii.data(), ww.data());
      EXPECT_EQ(ii, idx0) << "selection changed under the perturbation";
      return (cs.use_w ? dot(Pw, ww) : 0) + (cs.use_p ? dot(Pp, pp) : 0) +
             (cs.use_l ? dot(Pl, ll) : 0);
    });
    expect_grad(dl, fd, kGradTol, cs.what);
    if (cs.use_w && !cs.use_p && !cs.use_l) {  // only the selected logits receive gradient
      for (int64_t n = 0; n < N; ++n)
        for (int64_t e = 0; e < E; ++e)
          if (std::find(idx.begin() + n * K, idx.begin() + (n + 1) * K, e) ==
              idx.begin() + (n + 1) * K) {
            EXPECT_EQ(dl[n * E + e], 0.0) << "unselected logit " << n << "," << e;
          }
    }
  }
}

TEST(MoeRouter, NonFiniteLogitsThrow) {
  VecF l = {0.f, NAN, 1.f, 2.f}, p(4), lse(1), w(2);
  VecI idx(2);
  EXPECT_THROW(
      cpu::moe_router_fwd<float>(l.data(), 1, 4, 2, p.data(), lse.data(), idx.data(), w.data()),
      core::Error);
  EXPECT_THROW(
      cpu::moe_router_fwd<float>(l.data(), 1, 4, 5, p.data(), lse.data(), idx.data(), w.data()),
      core::Error);  // K > E
}

// ---------------------------------------------------------------------------------------------
// Router losses

struct Layout {
  const char* name;
  VecI group_N;
  int64_t G;
};

std::vector<Layout> loss_layouts() {
  return {
      {"one group", VecI(9, 0), 1},
      {"two samples", {0, 0, 0, 0, 1, 1, 1, 1, 1}, 2},
      {"padding and an empty group", {-1, 0, 0, -1, 2, 2, 0, 2, -1}, 3},
      {"no aux groups (z only), padding", {0, -1, 0, 0, 0, -1, 0, 0, 0}, 0},
  };
}

TEST(MoeRouterLoss, AuxAndZGradientsMatchFiniteDiff) {
  const int64_t N = 9, E = 6, K = 2;
  const double scale = 0.37, z_coef = 0.21;
  for (const Layout& lay : loss_layouts()) {
    Vec l = randn<double>(N * E, 20, 1.5);
    Vec F = uniform<double>(std::max<int64_t>(lay.G, 1) * E, 21, 0.5, 4.0);
    Vec c = uniform<double>(std::max<int64_t>(lay.G, 1), 22, 0.1, 1.0);
    auto loss = [&](Vec& logits) {
      Vec p(N * E), lse(N), w(N * K);
      VecI idx(N * K);
      cpu::moe_router_fwd(logits.data(), N, E, K, p.data(), lse.data(), idx.data(), w.data());
      return scale *
             (cpu::moe_aux_loss_fwd(p.data(), lay.group_N.data(), N, E, lay.G, F.data(), c.data()) +
              cpu::moe_z_loss_fwd(lse.data(), lay.group_N.data(), N, z_coef));
    };
    // Naive value of the loss.
    Vec p(N * E), lse(N), w(N * K);
    VecI idx(N * K);
    cpu::moe_router_fwd(l.data(), N, E, K, p.data(), lse.data(), idx.data(), w.data());
    double want = 0;
    for (int64_t t = 0; t < N; ++t) {
      const int g = lay.group_N[t];
      if (g < 0) continue;
      want += z_coef * lse[t] * lse[t];
      for (int64_t e = 0; e < E && lay.G > 0; ++e) want += c[g] * F[g * E + e] * p[t * E + e];
    }
    EXPECT_NEAR(loss(l), scale * want, 1e-14) << lay.name;

    Vec dp(N * E, 99.0), dlse(N, 99.0), dl(N * E);
    cpu::moe_aux_loss_bwd(lay.group_N.data(), N, E, lay.G, F.data(), c.data(), scale, dp.data());
    cpu::moe_z_loss_bwd(lse.data(), lay.group_N.data(), N, z_coef, scale, dlse.data());
    cpu::moe_router_bwd<double>(p.data(), idx.data(), w.data(), nullptr, dp.data(), dlse.data(), N,
                                E, K, dl.data());
    auto fd = finite_diff(l, [&] { return loss(l); });
    expect_grad(dl, fd, kGradTol, std::string("aux+z dlogits, ") + lay.name);
    for (int64_t t = 0; t < N; ++t) {
      if (lay.group_N[t] >= 0) continue;
      for (int64_t e = 0; e < E; ++e) EXPECT_EQ(dl[t * E + e], 0.0) << "padding token " << t;
    }
  }
}

TEST(MoeRouterLoss, MegatronAuxRecipeMatchesItsDefinition) {
  // aux = coeff E/(K T^2) sum_e N_e sum_t p_te == coeff E sum_e f_e P_e, f = N/(KT), P = mean p.
  const int64_t N = 11, E = 7, K = 3;
  const double coeff = 1e-3;
  VecI group_N = {0, 0, -1, 0, 0, 0, -1, 0, 0, 0, 0};  // two padding tokens
  Vec l = randn<double>(N * E, 30), p(N * E), lse(N), w(N * K);
  VecI idx(N * K);
  cpu::moe_router_fwd(l.data(), N, E, K, p.data(), lse.data(), idx.data(), w.data());
  Vec counts(E, 0.0), tokens(1, 0.0);
  cpu::moe_count_routes(idx.data(), group_N.data(), N, K, E, 1, counts.data(), tokens.data());
  const double T = tokens[0];
  EXPECT_EQ(T, 9.0);
  EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), 0.0), K * T);
  Vec c = {coeff * E / (K * T * T)};
  const double got =
      cpu::moe_aux_loss_fwd(p.data(), group_N.data(), N, E, 1, counts.data(), c.data());
  double want = 0;
  for (int64_t e = 0; e < E; ++e) {
    double P = 0;
    for (int64_t t = 0; t < N; ++t)
      if (group_N[t] >= 0) P += p[t * E + e] / T;
    want += coeff * E * (counts[e] / (K * T)) * P;
  }
  EXPECT_NEAR(got, want, 1e-15);
}

TEST(MoeRouterLoss, BadGroupIdsThrow) {
  VecF p(3 * 2, 0.5f), dp(3 * 2), lse(3, 1.f);
  std::vector<double> F(2 * 2, 1.0), c(2, 1.0), counts(4), tokens(2);
  VecI bad = {0, 2, 1}, bad_neg = {0, -2, 1};
  VecI idx = {0, 1, 1};
  EXPECT_THROW(cpu::moe_aux_loss_fwd<float>(p.data(), bad.data(), 3, 2, 2, F.data(), c.data()),
               core::Error);
  EXPECT_THROW(
      cpu::moe_aux_loss_bwd<float>(bad.data(), 3, 2, 2, F.data(), c.data(), 1.0, dp.data()),
      core::Error);
  EXPECT_THROW(cpu::moe_z_loss_fwd<float>(lse.data(), bad_neg.data(), 3, 1.0), core::Error);
  EXPECT_THROW(
      cpu::moe_count_routes(idx.data(), bad.data(), 3, 1, 2, 2, counts.data(), tokens.data()),
      core::Error);
}

// ---------------------------------------------------------------------------------------------
// Block fixtures: parameters kept in double (for the reference and finite differences) and
// rounded to float for the block, so both evaluate the same function.

using ParamsD = std::map<std::string, Vec>;
const std::string kPrefix = "model.layers.3.mlp.";

model::Config moe_config(int64_t D, int64_t E, int64_t K, int64_t F, int64_t S) {
  model::Config c;
  c.model_type = "qwen3_5_moe_text";
  c.hidden_size = D;
  c.num_experts = E;
  c.num_experts_per_tok = K;
  c.moe_intermediate_size = F;
  c.shared_expert_intermediate_size = S;
  return c;
}

Vec round_to_float(Vec v) {
  for (double& x : v) x = double(float(x));
  return v;
}

ParamsD make_params(const model::Config& c, uint64_t seed) {
  const int64_t D = c.hidden_size, E = c.num_experts, F = c.moe_intermediate_size,
                S = c.shared_expert_intermediate_size;
  ParamsD p;
  p[kPrefix + "gate.weight"] = round_to_float(randn<double>(E * D, seed + 1, 0.5));
  p[kPrefix + "experts.gate_up_proj"] = round_to_float(randn<double>(E * 2 * F * D, seed + 2, 0.4));
  p[kPrefix + "experts.down_proj"] = round_to_float(randn<double>(E * D * F, seed + 3, 0.4));
  if (S > 0) {
    p[kPrefix + "shared_expert.gate_proj.weight"] =
        round_to_float(randn<double>(S * D, seed + 4, 0.4));
    p[kPrefix + "shared_expert.up_proj.weight"] =
        round_to_float(randn<double>(S * D, seed + 5, 0.4));
    p[kPrefix + "shared_expert.down_proj.weight"] =
        round_to_float(randn<double>(D * S, seed + 6, 0.4));
    p[kPrefix + "shared_expert_gate.weight"] = round_to_float(randn<double>(D, seed + 7, 0.4));
  }
  return p;
}

model::TensorMap to_tensors(const model::Config& c, const ParamsD& pd) {
  const int64_t D = c.hidden_size, E = c.num_experts, F = c.moe_intermediate_size,
                S = c.shared_expert_intermediate_size;
  std::map<std::string, core::Shape> shapes = {{kPrefix + "gate.weight", {E, D}},
                                               {kPrefix + "experts.gate_up_proj", {E, 2 * F, D}},
                                               {kPrefix + "experts.down_proj", {E, D, F}},
                                               {kPrefix + "shared_expert.gate_proj.weight", {S, D}},
                                               {kPrefix + "shared_expert.up_proj.weight", {S, D}},
                                               {kPrefix + "shared_expert.down_proj.weight", {D, S}},
                                               {kPrefix + "shared_expert_gate.weight", {1, D}}};
  model::TensorMap out;
  for (const auto& [name, v] : pd) {
    core::Tensor t(shapes.at(name));
    EXPECT_EQ(size_t(t.numel()), v.size()) << name;
    std::copy(v.begin(), v.end(), t.data.begin());
    out.emplace(name, std::move(t));
  }
  return out;
}

Vec to_vec(const core::Tensor& t) { return Vec(t.data.begin(), t.data.end()); }

double silu_d(double v) { return v / (1 + std::exp(-v)); }

// Router-loss terms on the host, the way the block receives them (model::RouterTerms): groups,
// counts F, token totals T and c_g = numer / (k T_g^2) (0 for an empty group), z_coef.
struct HostTerms {
  VecI group_N;  // empty: every token in group 0
  int64_t num_groups = 0;
  std::vector<double> F_GE, T_G;
  double numer = 0, k = 1;
  double z_coef = 0;
  double c(int64_t g) const { return T_G[g] > 0 ? numer / (k * (T_G[g] * T_G[g])) : 0.0; }
};

// Naive per-token double reference of the block (spec 2.10) plus its router losses. Returns
// dot(P, y) + loss_scale (L_aux + L_z); y, probs written when non-null.
double reference(const model::Config& c, const ParamsD& pd, int64_t N, const Vec& x, const Vec& P,
                 const HostTerms* terms, double loss_scale, Vec* y_out = nullptr,
                 Vec* probs_out = nullptr) {
  const int64_t D = c.hidden_size, E = c.num_experts, K = c.num_experts_per_tok,
                F = c.moe_intermediate_size, S = c.shared_expert_intermediate_size;
  const Vec& Wr = pd.at(kPrefix + "gate.weight");
  const Vec& Wgu = pd.at(kPrefix + "experts.gate_up_proj");
  const Vec& Wd = pd.at(kPrefix + "experts.down_proj");
  Vec y(N * D, 0.0), probs(N * E);
  double rloss = 0;
  // One SwiGLU FFN applied to a token: down (silu(Wg x) * (Wu x)).
  auto ffn = [&](const double* Wg, const double* Wu, const double* Wdn, int64_t width,
                 const double* xt, Vec& out) {
    Vec h(width);
    for (int64_t f = 0; f < width; ++f) {
      double g = 0, u = 0;
      for (int64_t d = 0; d < D; ++d) g += Wg[f * D + d] * xt[d], u += Wu[f * D + d] * xt[d];
      h[f] = silu_d(g) * u;
    }
    out.assign(D, 0.0);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t f = 0; f < width; ++f) out[d] += Wdn[d * width + f] * h[f];
  };
  for (int64_t t = 0; t < N; ++t) {
    const double* xt = x.data() + t * D;
    Vec l(E, 0.0);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t d = 0; d < D; ++d) l[e] += Wr[e * D + d] * xt[d];
    const double m = *std::max_element(l.begin(), l.end());
    double s = 0;
    for (double v : l) s += std::exp(v - m);
    const double lse = m + std::log(s);
    double* p = probs.data() + t * E;
    for (int64_t e = 0; e < E; ++e) p[e] = std::exp(l[e] - lse);
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    double sel = 0;
    for (int64_t j = 0; j < K; ++j) sel += p[order[j]];
    Vec out;
    for (int64_t j = 0; j < K; ++j) {
      const int e = order[j];
      ffn(Wgu.data() + e * 2 * F * D, Wgu.data() + e * 2 * F * D + F * D, Wd.data() + e * D * F, F,
          xt, out);
      for (int64_t d = 0; d < D; ++d) y[t * D + d] += p[e] / sel * out[d];
    }
    if (S > 0) {
      ffn(pd.at(kPrefix + "shared_expert.gate_proj.weight").data(),
          pd.at(kPrefix + "shared_expert.up_proj.weight").data(),
          pd.at(kPrefix + "shared_expert.down_proj.weight").data(), S, xt, out);
      const Vec& wsg = pd.at(kPrefix + "shared_expert_gate.weight");
      double g = 0;
      for (int64_t d = 0; d < D; ++d) g += wsg[d] * xt[d];
      for (int64_t d = 0; d < D; ++d) y[t * D + d] += out[d] / (1 + std::exp(-g));
    }
    if (terms) {
      const int g = terms->group_N.empty() ? 0 : terms->group_N[t];
      if (g >= 0) {
        rloss += terms->z_coef * lse * lse;
        for (int64_t e = 0; e < E && terms->num_groups > 0; ++e)
          rloss += terms->c(g) * terms->F_GE[g * E + e] * p[e];
      }
    }
  }
  if (y_out) *y_out = y;
  if (probs_out) *probs_out = probs;
  return dot(P, y) + loss_scale * rloss;
}

// A host buffer holding v.
template <class T>
core::Buffer host_buffer(const std::vector<T>& v, core::DType dt) {
  core::Buffer b(kCpu, dt, {int64_t(v.size())}, "test tensor");
  if (!v.empty()) ops::copy_from_host(b, v.data());
  return b;
}

template <class T>
std::vector<T> to_host(const core::View& v) {
  std::vector<T> out(v.numel());
  if (!out.empty()) ops::copy_to_host(v, out.data());
  return out;
}

// One sample of N tokens (ids 0): the pack the block's context is built on.
data::Pack one_sample_pack(int64_t N) {
  data::Sample smp;
  smp.input_ids.assign(N, 0);
  smp.labels.assign(N, -100);
  return data::make_pack({&smp}, {0}, 1);
}

model::Config with_vocab(model::Config c) {
  c.vocab_size = std::max<int64_t>(c.vocab_size, 8);
  return c;
}

// A block's context on the CPU: its parameters, a one-sample pack of N tokens and the Ctx over
// them.
struct BlockEnv {
  model::Config c;
  model::Params P;
  data::Pack pack;
  model::Batch b;
  model::Ctx cx;
  BlockEnv(const model::Config& c0, const model::TensorMap& params, int64_t N)
      : c(with_vocab(c0)),
        P(kCpu, core::DType::f32, params),
        pack(one_sample_pack(N)),
        b(c, pack, kCpu),
        cx{c, P, b} {}
};

struct BlockRun {
  VecF y;
  VecI topk_idx;
  VecF dx;
  model::TensorMap grads;
  double rloss = 0;
  HostTerms terms;  // the router-loss terms used
};

// Builds the router-loss terms from the forward's routing (top-k ids [N*K]); none: no losses.
using TermsFn = std::function<std::optional<HostTerms>(const VecI& topk_idx)>;

// The block on the CPU: y = MoE(x) (added to a zero residual stream), the router losses of
// `terms` (if any), then the backward for the output gradient dy.
BlockRun run_block_fn(const model::Config& c0, const model::TensorMap& params, int64_t N,
                      const VecF& x, const VecF& dy, const TermsFn& make_terms, double loss_scale) {
  BlockEnv env(c0, params, N);
  const model::Config& c = env.c;
  const model::Ctx& cx = env.cx;
  const int64_t D = c.hidden_size;
  BlockRun r;
  core::Buffer xb = host_buffer(x, core::DType::f32);
  core::Buffer y = host_buffer(VecF(N * D, 0.f), core::DType::f32);
  model::MoeSaved s;
  model::moe_fwd(cx, kPrefix, xb, y, s);
  r.y = to_host<float>(y);
  r.topk_idx = to_host<int32_t>(s.topk_idx);
  core::Buffer group;
  const std::optional<HostTerms> made = make_terms(r.topk_idx);
  if (made) {
    const HostTerms* terms = &*made;
    r.terms = *made;
    group = host_buffer(terms->group_N.empty() ? VecI(N, 0) : terms->group_N, core::DType::i32);
    model::RouterTerms& t = s.terms;
    t.group_N = group;
    t.num_groups = terms->num_groups;
    t.own_counts = host_buffer(terms->F_GE, core::DType::f64);
    t.own_tokens = host_buffer(terms->T_G, core::DType::f64);
    t.counts_GE = t.own_counts;
    t.tokens_G = t.own_tokens;
    t.coef = ops::AuxCoef{terms->numer, terms->k, 0.0};
    t.z_coef = terms->z_coef;
    core::Buffer loss = host_buffer(std::vector<double>{0.0}, core::DType::f64);
    if (t.num_groups > 0)
      ops::moe_aux_loss_fwd(s.probs, t.group_N, N, c.num_experts, t.num_groups, t.counts_GE,
                            t.tokens_G, t.coef, loss);
    if (t.z_coef != 0) ops::moe_z_loss_fwd(s.lse, t.group_N, N, t.z_coef, loss);
    r.rloss = to_host<double>(loss)[0];
    s.has_terms = true;
    s.loss_scale = loss_scale;
  }
  core::Buffer dyb = host_buffer(dy, core::DType::f32);
  core::Buffer dx = host_buffer(VecF(N * D, 77.f), core::DType::f32);  // must be overwritten
  model::moe_bwd(cx, kPrefix, s, dyb, dx);
  r.dx = to_host<float>(dx);
  r.grads = model::zeros_like(params);
  env.P.download_grads(r.grads);
  return r;
}

BlockRun run_block(const model::Config& c, const model::TensorMap& params, int64_t N, const VecF& x,
                   const VecF& dy, const HostTerms* terms, double loss_scale) {
  return run_block_fn(
      c, params, N, x, dy,
      [&](const VecI&) { return terms ? std::optional<HostTerms>(*terms) : std::nullopt; },
      loss_scale);
}

// The dense MLP block on the CPU (y = MLP(x) on a zero residual stream, then its backward).
BlockRun run_mlp(const model::Config& c0, const model::TensorMap& params, int64_t N, const VecF& x,
                 const VecF& dy) {
  BlockEnv env(c0, params, N);
  const model::Config& c = env.c;
  const model::Ctx& cx = env.cx;
  const int64_t D = c.hidden_size;
  BlockRun r;
  core::Buffer xb = host_buffer(x, core::DType::f32);
  core::Buffer y = host_buffer(VecF(N * D, 0.f), core::DType::f32);
  model::MlpSaved s;
  model::mlp_fwd(cx, "mlp.", xb, y, s);
  r.y = to_host<float>(y);
  core::Buffer dyb = host_buffer(dy, core::DType::f32);
  core::Buffer dx = host_buffer(VecF(N * D, 77.f), core::DType::f32);
  model::mlp_bwd(cx, "mlp.", s, dyb, dx);
  r.dx = to_host<float>(dx);
  r.grads = model::zeros_like(params);
  env.P.download_grads(r.grads);
  return r;
}

struct BlockCase {
  const char* name;
  int64_t E, K, S;
};

TEST(MoeBlock, ForwardAndBackwardMatchDoubleReferenceAndFiniteDiff) {
  const int64_t N = 11, D = 13, F = 6;
  const double loss_scale = 0.7;
  HostTerms terms;
  terms.group_N = {0, 0, 0, -1, 1, 1, 1, 1, -1, 1, 0};
  terms.num_groups = 2;
  terms.z_coef = 0.05;
  terms.T_G = {2.0, 1.5};  // c = {0.2, 0.3 x 4/9 x 1.5} with numer 1.6, k 2
  terms.numer = 1.6;
  terms.k = 2.0;
  for (const BlockCase& bc :
       {BlockCase{"E5 k2 shared", 5, 2, 7}, BlockCase{"E4 k4 (k==E)", 4, 4, 0},
        BlockCase{"E6 k1 shared", 6, 1, 3}}) {
    SCOPED_TRACE(bc.name);
    std::printf(" block %s\n", bc.name);
    const model::Config c = moe_config(D, bc.E, bc.K, F, bc.S);
    terms.F_GE = uniform<double>(2 * bc.E, 40, 0.5, 3.0);
    ParamsD pd = make_params(c, 100);
    Vec x = round_to_float(randn<double>(N * D, 50)), P = round_to_float(randn<double>(N * D, 51));
    Vec y_ref, probs_ref;
    const double L_ref = reference(c, pd, N, x, P, &terms, loss_scale, &y_ref, &probs_ref);
    ASSERT_GT(min_topk_gap(probs_ref, N, bc.E, bc.K), 1e-3) << "choose data with a stable top-k";

    const model::TensorMap params = to_tensors(c, pd);
    BlockRun r = run_block(c, params, N, VecF(x.begin(), x.end()), VecF(P.begin(), P.end()), &terms,
                           loss_scale);
    auto ry = compare(r.y, y_ref);
    EXPECT_LE(ry.rel_rms, kBlockFwdTol) << "y: " << ry.str();
    std::printf("  %-44s rel_rms %.2e\n", "y vs double reference", ry.rel_rms);
    const double L_got = dot(P, Vec(r.y.begin(), r.y.end())) + loss_scale * r.rloss;
    EXPECT_NEAR(L_got, L_ref, 1e-5 * std::abs(L_ref)) << "loss";

    auto fd_x = finite_diff(x, [&] { return reference(c, pd, N, x, P, &terms, loss_scale); });
    expect_grad(Vec(r.dx.begin(), r.dx.end()), fd_x, kBlockGradTol, "dx");
    for (auto& [name, v] : pd) {
      auto fd = finite_diff(v, [&] { return reference(c, pd, N, x, P, &terms, loss_scale); });
      expect_grad(to_vec(r.grads.at(name)), fd, kBlockGradTol, "d" + name.substr(kPrefix.size()));
    }
  }
}

TEST(MoeBlock, OneExpertTopOneEqualsDenseMlp) {
  const int64_t N = 9, D = 13, F = 7;
  model::Config c = moe_config(D, 1, 1, F, 0);
  c.intermediate_size = F;
  VecF gate = randn<float>(F * D, 60, 0.4), up = randn<float>(F * D, 61, 0.4),
       down = randn<float>(D * F, 62, 0.4), x = randn<float>(N * D, 63),
       dy = randn<float>(N * D, 64);
  model::TensorMap mp, ep;
  auto put = [](model::TensorMap& m, const std::string& n, core::Shape s, const VecF& v) {
    core::Tensor t(std::move(s));
    t.data = v;
    m.emplace(n, std::move(t));
  };
  put(mp, "mlp.gate_proj.weight", {F, D}, gate);
  put(mp, "mlp.up_proj.weight", {F, D}, up);
  put(mp, "mlp.down_proj.weight", {D, F}, down);
  VecF gu = gate;
  gu.insert(gu.end(), up.begin(), up.end());
  put(ep, kPrefix + "gate.weight", {1, D}, randn<float>(D, 65));
  put(ep, kPrefix + "experts.gate_up_proj", {1, 2 * F, D}, gu);
  put(ep, kPrefix + "experts.down_proj", {1, D, F}, down);

  const BlockRun mlp = run_mlp(c, mp, N, x, dy);
  const VecF &y_mlp = mlp.y, &dx_mlp = mlp.dx;
  const model::TensorMap& mg = mlp.grads;

  BlockRun r = run_block(c, ep, N, x, dy, nullptr, 1.0);
  auto report = [](const char* what, const VecF& got, const VecF& want) {
    auto e = compare(got, want);
    EXPECT_LE(e.max_abs, 1e-6 * std::max(1.0, std::abs(e.b_worst))) << what << ": " << e.str();
    std::printf("  %-44s max_abs %.2e\n", what, e.max_abs);
  };
  report("E=1 y vs MLP", r.y, y_mlp);
  report("E=1 dx vs MLP", r.dx, dx_mlp);
  const VecF& dgu = r.grads.at(kPrefix + "experts.gate_up_proj").data;
  report("E=1 dgate vs MLP", VecF(dgu.begin(), dgu.begin() + F * D),
         mg.at("mlp.gate_proj.weight").data);
  report("E=1 dup vs MLP", VecF(dgu.begin() + F * D, dgu.end()), mg.at("mlp.up_proj.weight").data);
  report("E=1 ddown vs MLP", r.grads.at(kPrefix + "experts.down_proj").data,
         mg.at("mlp.down_proj.weight").data);
  for (float g : r.grads.at(kPrefix + "gate.weight").data) EXPECT_EQ(g, 0.f) << "router grad";
}

// ---------------------------------------------------------------------------------------------
// Padding: group -1 tokens leave every router statistic and its gradients unchanged.

// Router-loss terms the way the driver builds per-sample aux (seq_aux): F = top-k counts of the
// group (ops::moe_count_routes), c = coeff E / (K T_g^2), plus a z-loss averaged over the
// counted tokens.
HostTerms seq_aux_terms(const VecI& topk_idx, const VecI& group_N, int64_t G, int64_t E,
                        int64_t K) {
  const int64_t N = int64_t(group_N.size());
  core::Buffer idx = host_buffer(topk_idx, core::DType::i32);
  core::Buffer grp = host_buffer(group_N, core::DType::i32);
  core::Buffer cnt = host_buffer(std::vector<double>(G * E, 0.0), core::DType::f64);
  core::Buffer tok = host_buffer(std::vector<double>(G, 0.0), core::DType::f64);
  ops::moe_count_routes(idx, grp, N, K, E, G, cnt, tok);
  HostTerms t;
  t.group_N = group_N;
  t.num_groups = G;
  t.F_GE = to_host<double>(cnt);
  t.T_G = to_host<double>(tok);
  const double coeff = 0.05;
  t.numer = coeff * double(E);
  t.k = double(K);
  double total = 0;
  for (double T : t.T_G) total += T;
  t.z_coef = 0.01 / std::max(1.0, total);
  return t;
}

TEST(MoeBlock, PaddingTokensChangeNothingButUnlabelledRealTokensDo) {
  const int64_t Nr = 9, D = 13, F = 6, E = 6, K = 2, S = 5, G = 2;
  const model::Config c = moe_config(D, E, K, F, S);
  const model::TensorMap params = to_tensors(c, make_params(c, 200));
  VecF xr = randn<float>(Nr * D, 70), dyr = randn<float>(Nr * D, 71);
  VecI gr = {0, 0, 0, 0, 1, 1, 1, 1, 1};
  // Padded pack: 4 pad tokens (large, arbitrary hidden values, zero output gradient) at the
  // start, between the samples and at the end. pos[i] = padded position of real token i.
  const std::vector<int> pad_at = {0, 5, 11, 12};
  const int64_t Np = Nr + int64_t(pad_at.size());
  VecF xp(Np * D), dyp(Np * D, 0.f);
  VecF junk = randn<float>(Np * D, 72, 5.0);
  VecI gp(Np, -1);
  std::vector<int64_t> pos;
  for (int64_t t = 0, i = 0; t < Np; ++t) {
    if (std::find(pad_at.begin(), pad_at.end(), t) != pad_at.end()) {
      std::copy(junk.begin() + t * D, junk.begin() + (t + 1) * D, xp.begin() + t * D);
      continue;
    }
    std::copy(xr.begin() + i * D, xr.begin() + (i + 1) * D, xp.begin() + t * D);
    std::copy(dyr.begin() + i * D, dyr.begin() + (i + 1) * D, dyp.begin() + t * D);
    gp[t] = gr[i];
    pos.push_back(t);
    ++i;
  }
  auto seq = [&](const VecI& groups) -> TermsFn {
    return [=](const VecI& idx) { return std::optional(seq_aux_terms(idx, groups, G, E, K)); };
  };

  // Backward twice: router losses alone (dy = 0), and with the real tokens' output gradient.
  for (bool with_dy : {false, true}) {
    SCOPED_TRACE(with_dy ? "router loss + dy" : "router loss only");
    const BlockRun rr =
        run_block_fn(c, params, Nr, xr, with_dy ? dyr : VecF(Nr * D, 0.f), seq(gr), 1.0);
    const BlockRun rp =
        run_block_fn(c, params, Np, xp, with_dy ? dyp : VecF(Np * D, 0.f), seq(gp), 1.0);
    EXPECT_EQ(rp.terms.F_GE, rr.terms.F_GE) << "route counts";
    EXPECT_EQ(rp.terms.T_G, rr.terms.T_G);
    EXPECT_EQ(rp.terms.z_coef, rr.terms.z_coef);
    EXPECT_NEAR(rp.rloss, rr.rloss, 1e-6 * rr.rloss) << "router loss";
    std::printf("  %-44s rel %.2e\n", "padded vs unpadded router loss",
                std::abs(rp.rloss - rr.rloss) / rr.rloss);
    VecF dx_real(Nr * D);
    for (int64_t i = 0; i < Nr; ++i)
      std::copy(rp.dx.begin() + pos[i] * D, rp.dx.begin() + (pos[i] + 1) * D,
                dx_real.begin() + i * D);
    auto e = compare(dx_real, rr.dx);
    EXPECT_LE(e.rel_rms, 1e-6) << "dx of real tokens: " << e.str();
    std::printf("  %-44s rel_rms %.2e\n",
                with_dy ? "padded dx (real rows), +dy" : "padded dx (real rows)", e.rel_rms);
    for (int t : pad_at)
      for (int64_t d = 0; d < D; ++d) EXPECT_EQ(rp.dx[t * D + d], 0.f) << "pad token " << t;
    for (const auto& [name, g] : rr.grads) {
      auto eg = compare(rp.grads.at(name).data, g.data);
      EXPECT_LE(eg.rel_rms, 1e-6) << name << ": " << eg.str();
      std::printf("  %-44s rel_rms %.2e\n", ("padded d" + name.substr(kPrefix.size())).c_str(),
                  eg.rel_rms);
    }
  }

  // The same extra tokens as REAL tokens without labels (group >= 0, zero output gradient):
  // they are counted, so counts, losses and router gradients change.
  VecI gu = gp;
  for (int t : pad_at) gu[t] = t < 6 ? 0 : 1;
  const BlockRun rr = run_block_fn(c, params, Nr, xr, VecF(Nr * D, 0.f), seq(gr), 1.0);
  const BlockRun ru = run_block_fn(c, params, Np, xp, VecF(Np * D, 0.f), seq(gu), 1.0);
  EXPECT_NE(ru.terms.F_GE, rr.terms.F_GE);
  EXPECT_GT(std::abs(ru.rloss - rr.rloss), 1e-3 * rr.rloss)
      << "unlabelled real tokens must change the router loss";
  auto eu =
      compare(ru.grads.at(kPrefix + "gate.weight").data, rr.grads.at(kPrefix + "gate.weight").data);
  EXPECT_GT(eu.rel_rms, 1e-2) << "unlabelled real tokens must change the router gradient";
}

TEST(MoeBlock, CountRoutesWithGroupsAccumulates) {
  const VecI idx = {0, 1, /**/ 1, 3, /**/ 2, 0, /**/ 3, 1, /**/ 0, 2, /**/ 1, 0};
  const VecI group_N = {1, 0, -1, 1, 2, 1};
  core::Buffer ib = host_buffer(idx, core::DType::i32), gb = host_buffer(group_N, core::DType::i32);
  core::Buffer counts = host_buffer(std::vector<double>(12, 0.0), core::DType::f64);
  core::Buffer tokens = host_buffer(std::vector<double>(3, 0.0), core::DType::f64);
  ops::moe_count_routes(ib, gb, 6, 2, 4, 3, counts, tokens);
  EXPECT_EQ(to_host<double>(counts),
            (std::vector<double>{0, 1, 0, 1, /**/ 2, 3, 0, 1, /**/ 1, 0, 1, 0}));
  EXPECT_EQ(to_host<double>(tokens), (std::vector<double>{1, 3, 1}));
  ops::moe_count_routes(ib, gb, 6, 2, 4, 3, counts, tokens);  // accumulates
  EXPECT_EQ(to_host<double>(counts),
            (std::vector<double>{0, 2, 0, 2, /**/ 4, 6, 0, 2, /**/ 2, 0, 2, 0}));
  EXPECT_EQ(to_host<double>(tokens), (std::vector<double>{2, 6, 2}));
  core::Buffer all = host_buffer(VecI(6, 0), core::DType::i32);  // every token in group 0
  core::Buffer all_c = host_buffer(std::vector<double>(4, 0.0), core::DType::f64);
  core::Buffer all_t = host_buffer(std::vector<double>(1, 0.0), core::DType::f64);
  ops::moe_count_routes(ib, all, 6, 2, 4, 1, all_c, all_t);
  EXPECT_EQ(to_host<double>(all_c), (std::vector<double>{4, 4, 2, 2}));
  EXPECT_EQ(to_host<double>(all_t), (std::vector<double>{6}));
  core::Buffer wrong = host_buffer(std::vector<double>(5, 0.0), core::DType::f64);
  EXPECT_THROW(ops::moe_count_routes(ib, gb, 6, 2, 4, 3, wrong, tokens), core::Error);
  EXPECT_THROW(ops::moe_count_routes(ib, gb, 6, 2, 4, 2, all_c, all_t), core::Error);
}

TEST(MoeBlock, WrongParameterShapeThrows) {
  const model::Config c = moe_config(5, 3, 2, 4, 0);
  model::TensorMap params = to_tensors(c, make_params(c, 300));
  params.at(kPrefix + "experts.down_proj") = core::Tensor({3, 4, 5});  // transposed experts
  EXPECT_THROW(run_block(c, params, 2, VecF(2 * 5, 0.1f), VecF(2 * 5, 0.f), nullptr, 1.0),
               core::Error);
}

TEST(MoeBlock, ResultsDoNotDependOnTheThreadCount) {
  // Large enough that the OpenMP loops run in parallel (N*D above the 32768 threshold).
  const int64_t N = 700, D = 64, F = 32, E = 8, K = 2, S = 16;
  const model::Config c = moe_config(D, E, K, F, S);
  const model::TensorMap params = to_tensors(c, make_params(c, 400));
  VecF x = randn<float>(N * D, 80), dy = randn<float>(N * D, 81);
  HostTerms terms;
  terms.z_coef = 1e-3;
  terms.num_groups = 1;
  terms.F_GE.assign(E, 10.0);
  terms.T_G = {10.0};
  terms.numer = 0.1;  // c = 1e-3
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  BlockRun a = run_block(c, params, N, x, dy, &terms, 1.0);
  omp_set_num_threads(std::max(2, saved));
  BlockRun b = run_block(c, params, N, x, dy, &terms, 1.0);
  omp_set_num_threads(saved);
  EXPECT_EQ(a.y, b.y);
  EXPECT_EQ(a.dx, b.dx);
  EXPECT_EQ(a.rloss, b.rloss);
  for (const auto& [name, g] : a.grads) EXPECT_EQ(g.data, b.grads.at(name).data) << name;
}

}  // namespace
