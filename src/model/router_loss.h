// Router auxiliary losses of MoE layers: options, the step's routing counts (on the model's
// device) and the per-layer terms built from a pack. The formulas are ops/router_loss.h's.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "dist/comm.h"
#include "ops/router_loss.h"

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

// Top-k selection counts of real tokens per MoE layer, keyed by the layer's "...mlp." prefix,
// held on the model's device (f64: counts [E] and the token total [1]); the model adds to them
// without copying anything to the host.
struct GlobalRouterCounts {
  struct Layer {
    core::Buffer counts_E, tokens_1;
  };
  std::map<std::string, Layer> layers;
  // Real tokens of the whole step when the counts are running (accumulated so far): each pack's
  // coefficient is then coeff*E/(k*tokens_so_far*step_tokens), so the terms of the step's
  // packs add up to the global loss. 0: the counts are final and tokens is the total.
  double step_tokens = 0.0;
  // Running counts on several data-parallel ranks (training): the ranks run the step's
  // micro-batches in rounds, micro-batch m = round x ranks + rank (train/parallel.h). null: one
  // rank. See add_in_rank_order.
  dist::Comm* ranks = nullptr;

  // The layer's counts, created zeroed on `dev` on first use.
  Layer& at(const std::string& moe_prefix, core::Device dev, int64_t num_experts);
  // Running counts over `ranks`: adds this rank's pack's counts of the layer (own_E, own_1, f64
  // on the device, the pack's alone) in one rank's order. The ranks' counts of the round are
  // all-gathered (every rank calls this for the same layers in the same order); the pack sees
  // (seen_E, seen_1, overwritten) the counts of every micro-batch up to its own in one rank's
  // order: earlier rounds' (held in the layer) plus the round's ranks <= its own; the layer then
  // holds every rank's. So each pack's terms, and the step's loss, equal one rank's.
  void add_in_rank_order(const std::string& moe_prefix, const core::View& own_E,
                         const core::View& own_1, const core::View& seen_E,
                         const core::View& seen_1);
  // The layer's counts; an error when the layer has none.
  const Layer& get(const std::string& moe_prefix) const;
  // Host copies (tests, logs): one layer's, or every layer's keyed by prefix.
  std::vector<double> counts(const std::string& moe_prefix) const;
  double tokens(const std::string& moe_prefix) const;
  std::map<std::string, std::vector<double>> host_counts() const;
  std::map<std::string, double> host_tokens() const;
};

// The loss terms of one MoE layer for one pack: groups, counts and coefficients on the device.
struct RouterTerms {
  core::View group_N;              // i32 [N]: -1 padding, else the token's group
  int64_t num_groups = 0;          // 0 = no L_aux
  core::View counts_GE, tokens_G;  // f64, the counts the coefficients use
  ops::AuxCoef coef;
  double z_coef = 0;                    // 0 = no L_z
  core::Buffer own_counts, own_tokens;  // this pack's counts (micro_batch, seq)
};

}  // namespace deltatron::model
