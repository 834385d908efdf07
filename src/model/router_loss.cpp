// Builds the per-layer router-loss terms (groups, counts, coefficients) for each variant.
#include "model/router_loss.h"

#include "core/error.h"

namespace deltatron::model {

namespace {

// Group of every token: -1 for padding, else 0 (one group) or the token's sample (per sample).
std::vector<int32_t> token_groups(const data::Pack& pack, bool per_sample) {
  std::vector<int32_t> g(pack.N, -1);
  for (int s = 0; s < pack.num_samples(); ++s)
    for (int32_t t = pack.cu_seqlens_padded[s]; t < pack.cu_seqlens_padded[s + 1]; ++t)
      if (!pack.is_pad[t]) g[t] = per_sample ? s : 0;
  return g;
}

}  // namespace

void GlobalRouterCounts::add(const std::string& moe_prefix, const MoeSaved& s,
                             const data::Pack& pack, int64_t E) {
  std::vector<double> counts, tokens_G;
  MoeBlock::count_routes(s, token_groups(pack, false), 1, E, counts, tokens_G);
  auto& acc = counts_E[moe_prefix];
  acc.resize(E, 0.0);
  for (int64_t e = 0; e < E; ++e) acc[e] += counts[e];
  tokens[moe_prefix] += tokens_G[0];
}

RouterLossTerms make_router_terms(const RouterLossOptions& opt, const Config& c,
                                  const data::Pack& pack, const MoeSaved& s,
                                  const std::string& moe_prefix, const GlobalRouterCounts* global) {
  const int64_t E = c.num_experts, k = c.num_experts_per_tok;
  RouterLossTerms t;
  const bool per_sample = opt.aux_type == AuxLossType::seq;
  t.group_N = token_groups(pack, per_sample);
  t.num_groups = per_sample ? pack.num_samples() : 1;
  t.z_coef = opt.z_coef * opt.z_weight;
  t.F_GE.assign(t.num_groups * E, 0.0);
  t.c_G.assign(t.num_groups, 0.0);
  if (opt.aux_coef == 0.0) return t;

  std::vector<double> counts, tokens_G;
  double step_tokens = 0.0;
  if (opt.aux_type == AuxLossType::global) {
    DT_CHECK(global != nullptr, "global router aux loss needs the step's routing counts");
    auto it = global->counts_E.find(moe_prefix);
    DT_CHECK(it != global->counts_E.end(), "no global routing counts for ", moe_prefix);
    counts = it->second;
    tokens_G = {global->tokens.at(moe_prefix)};
    step_tokens = global->step_tokens;
  } else {
    MoeBlock::count_routes(s, t.group_N, t.num_groups, E, counts, tokens_G);
  }
  const double w = per_sample ? opt.seq_weight : 1.0;
  for (int64_t g = 0; g < t.num_groups; ++g) {
    const double T = tokens_G[g];
    if (T <= 0) continue;  // a padding-only or empty group contributes nothing
    const double T2 = step_tokens > 0 ? T * step_tokens : T * T;
    t.c_G[g] = w * opt.aux_coef * double(E) / (double(k) * T2);
    for (int64_t e = 0; e < E; ++e) t.F_GE[g * E + e] = counts[g * E + e];
  }
  return t;
}

}  // namespace deltatron::model
