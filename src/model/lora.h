// LoRA targets (issue 13): which linear layers of a Qwen3.5 model get an adapter, resolved once
// from the config and the `[lora]` options, so that no layer type is silently left out (the common
// bug on this architecture: target lists that miss the Gated DeltaNet projections in three of
// every four layers).
//
// A target names a module as PEFT does: module m matches target t when m == t or m ends with
// "." + t ("q_proj" matches "model.layers.3.self_attn.q_proj"). The defaults: attention q_proj,
// k_proj, v_proj, o_proj; all five GDN projections in_proj_qkv, in_proj_z, in_proj_a, in_proj_b,
// out_proj; the dense MLP's and the shared expert's gate_proj, up_proj, down_proj. "all-linear":
// every linear layer of the decoder layers. lora.experts = true adds both fused routed-expert
// parameters of every MoE decoder layer (PEFT's target_parameters). Never adapted unless named:
// the MoE router
// (mlp.gate), shared_expert_gate, lm_head. Embeddings, the MTP head (absent from HF models, so
// from PEFT adapters) and model.visual.* are never adapted. A named target that matches no linear
// layer is an error listing the model's linear layers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace deltatron::model {

struct LoraOptions {
  int64_t r = 16;
  double alpha = 32;
  double dropout = 0;
  // Empty: lora_default_targets(); {"all-linear"}; or module names.
  std::vector<std::string> targets;
  bool experts = false;  // routed experts (per-expert adapters inside the grouped GEMMs)
  bool rslora = false;   // scale alpha / sqrt(r) instead of alpha / r
  double scale() const;
};

const std::vector<std::string>& lora_default_targets();

// One adapted linear layer y = x W^T (W [out, in]): y += scale * (x A^T) B^T, A [r, in], B [out,
// r].
struct LoraModule {
  std::string name;    // the HF module path, "model.layers.3.self_attn.q_proj"
  std::string weight;  // its weight parameter, name + ".weight"
  std::string target;  // the target it matched ("q_proj")
  std::string block;   // "linear_attention" | "full_attention" | "mlp" | "shared_expert" |
                       // "experts" | "head"
  int64_t layer = -1;  // decoder layer index (-1: lm_head)
  int64_t in = 0, out = 0;
  // Routed experts (lora.experts): name = weight = the fused parameter
  // ("model.layers.3.mlp.experts.gate_up_proj" [E, out, in]); per expert e an adapter
  // A_e [r, in], B_e [out, r], applied inside the grouped expert GEMMs (model/expert_lora.h).
  int64_t experts = 0;
};

// The adapted modules in parameter order; `where` names the options in errors. Checks r >= 1,
// alpha > 0, 0 <= dropout < 1 and every target.
std::vector<LoraModule> lora_modules(const Config& c, const LoraOptions& o,
                                     const std::string& where);

// Trainable adapter parameters: sum of r * (in + out) (times the experts of an expert module).
int64_t lora_param_count(const std::vector<LoraModule>& mods, int64_t r);

// One line per block kind, "full_attention: 6 layers x 4 (q_proj k_proj v_proj o_proj)", in the
// order linear_attention, full_attention, mlp, shared_expert, head.
std::vector<std::string> lora_report(const std::vector<LoraModule>& mods);

}  // namespace deltatron::model
