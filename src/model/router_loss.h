// Router auxiliary losses of MoE layers: options, and the per-layer terms built from a pack.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "data/pack.h"
#include "model/config.h"
#include "model/moe_block.h"

namespace deltatron::model {

// Load-balancing loss variants (spec 4.2), each per MoE layer (the layers' terms are summed):
//   micro_batch: f and P over the real tokens of the pack (micro-batch)
//   seq:         per packed sample (not per pack), summed over samples times seq_weight
//   global:      counts N_e and token total T over a whole optimizer step (or a whole scored
//                dataset), supplied in GlobalRouterCounts
// Each is coeff * E * sum_e f_e P_e with f_e = N_e / (k T) and P_e = mean_t p_te, i.e.
// coeff * E / (k T^2) * sum_e N_e sum_t p_te. Padding tokens (pack.is_pad) are excluded from
// every count, total and mean; real tokens without a label are included.
// z-loss: z_coef * z_weight * sum over real tokens of logsumexp(router logits)^2.
enum class AuxLossType { micro_batch, seq, global };

struct RouterLossOptions {
  double aux_coef = 0.0;
  AuxLossType aux_type = AuxLossType::global;
  double seq_weight = 1.0;  // seq: multiplies each sample's term (training: 1 / samples in step)
  double z_coef = 0.0;
  double z_weight = 1.0;  // training: 1 / real tokens in the step (a mean); scoring: 1 (a sum)
  bool active() const { return aux_coef != 0.0 || z_coef != 0.0; }
};

// Top-k selection counts of real tokens per MoE layer, keyed by the layer's "...mlp." prefix.
struct GlobalRouterCounts {
  std::map<std::string, std::vector<double>> counts_E;
  std::map<std::string, double> tokens;
  // Real tokens of the whole step when the counts are running (accumulated so far): each pack's
  // coefficient is then coeff*E/(k*tokens_so_far*step_tokens), so the terms of the step's
  // packs add up to the global loss. 0: the counts are final and tokens is the total.
  double step_tokens = 0.0;
  void add(const std::string& moe_prefix, const MoeSaved& s, const data::Pack& pack,
           int64_t num_experts);
};

// The loss terms of one MoE layer for one pack. global must be non-null for AuxLossType::global.
RouterLossTerms make_router_terms(const RouterLossOptions& opt, const Config& c,
                                  const data::Pack& pack, const MoeSaved& s,
                                  const std::string& moe_prefix, const GlobalRouterCounts* global);

}  // namespace deltatron::model
