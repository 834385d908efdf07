// The routed experts of a MoE layer under expert parallelism (model/expert_parallel.h): the
// exchange with the experts' owners and the owner's grouped GEMMs.
#pragma once

#include <string>

#include "model/moe_block.h"

namespace deltatron::model {

// After the router and the permutation (s.offsets_host, s.rows_P, s.pos, s.topk_w): resid_ND
// (f32) += the routed experts' output for this rank's tokens; fills s.ep, s.gate, s.up.
void moe_routed_fwd_ep(const Ctx& cx, const std::string& prefix, const View& x_ND,
                       const View& resid_ND, MoeSaved& s);
// dx32_ND (f32) OVERWRITTEN with the routed path's input gradient, dw_NK (f32) with the slot
// weights' gradient; the local experts' weight gradients accumulated.
void moe_routed_bwd_ep(const Ctx& cx, const std::string& prefix, const MoeSaved& s,
                       const View& dy_ND, const View& dx32_ND, const View& dw_NK);

}  // namespace deltatron::model
