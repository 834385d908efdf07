// GPU sparse MoE feed-forward block (same math and summation order as src/model/moe_block.cpp):
// fp32 router, expert-sorted token rows, grouped expert GEMMs, shared expert; router losses are
// built by the CPU router-loss code from the router outputs copied to the host.
#pragma once

#include <string>
#include <vector>

#include "gpu/context.h"
#include "model/model.h"
#include "model/moe_block.h"
#include "model/router_loss.h"

namespace deltatron::gpu {

struct MoeSaved {
  const void* x = nullptr;
  Buf logits, probs, lse, topk_idx, topk_w;  // router (fp32; topk_idx int32)
  std::vector<int64_t> offsets_E1;           // host: expert e owns rows [off[e], off[e+1])
  Buf rows_P, pos;               // permuted row -> slot n*K + j, and its inverse (int32)
  Buf gate, up;                  // routed expert pre-activations (dt)
  Buf sgate, sup, sout, slogit;  // shared expert (dt; slogit fp32)
  // Router losses: the router outputs on the host (N, E, K, probs, lse, top-k) and this layer's
  // terms; has_terms when the driver attached them.
  model::MoeSaved host;
  model::RouterLossTerms terms;
  bool has_terms = false;
  double loss_scale = 1.0;
};

// resid_ND (fp32) += MoE(x_ND); dx_ND (dt) overwritten. Router-loss gradients (if s.has_terms)
// enter the router logits' gradient, scaled by s.loss_scale.
void moe_fwd(const Ctx& cx, const std::string& prefix, const void* x_ND, float* resid_ND,
             MoeSaved& s);
void moe_bwd(const Ctx& cx, const std::string& prefix, const MoeSaved& s, const void* dy_ND,
             void* dx_ND);
// Top-k counts of the saved routing over the pack's real tokens (model::GlobalRouterCounts::add).
void moe_count(const Ctx& cx, const std::string& prefix, MoeSaved& s,
               model::GlobalRouterCounts& counts);
// Builds the layer's router-loss terms like model::model_fwd_bwd does (running global counts
// included) and adds the layer's loss to router_loss. No-op for dense models or inactive losses.
void add_router_terms(const Ctx& cx, const model::ModelOptions& opt, const std::string& prefix,
                      MoeSaved& s, double& router_loss);

}  // namespace deltatron::gpu
