// PEFT LoRA adapters on disk (issue 13): adapter_config.json and adapter_model.safetensors as
// PEFT writes them, so PEFT, vLLM and SGLang load deltatron's adapters and deltatron loads theirs.
//
// Tensors: "base_model.model.<module>.lora_A.weight" [r, in] and "...lora_B.weight" [out, r] for
// every adapted module (the HF module path, model::LoraModule::name). The config: peft_type
// "LORA", r, lora_alpha, lora_dropout, use_rslora, target_modules (the adapted modules' own
// names), bias "none", task_type "CAUSAL_LM", base_model_name_or_path, and PEFT's other defaults.
#pragma once

#include <string>
#include <vector>

#include "model/adapters.h"
#include "model/lora.h"
#include "model/weights.h"

namespace deltatron::io {

inline constexpr const char* kAdapterConfigName = "adapter_config.json";
inline constexpr const char* kAdapterWeightsName = "adapter_model.safetensors";

struct PeftAdapter {
  model::LoraOptions options;  // targets: target_modules as stored
  std::string base_model;      // base_model_name_or_path ("" writes null)
  // By PEFT module name: lora_A [r, in], lora_B [out, r], f32. Routed experts (PEFT 0.21's
  // target_parameters on the fused expert tensors, lora.ParamWrapper): lora_A [r E, in] (expert e
  // owns rows [e r, (e+1) r)), lora_B [out, r E] (expert e owns columns k E + e, k < r); with both
  // expert parameters targeted, gate_up_proj's module is "<layer>.mlp.experts.base_layer" and
  // down_proj's "<layer>.mlp.experts" (PEFT nests the wrappers in registration order).
  model::TensorMap a, b;
  std::vector<std::string> target_parameters;  // as stored (empty: none)
};

// Whether a PEFT module name is a routed-expert wrapper ("<layer>.mlp.experts[.base_layer]"), and
// the fused parameter it adapts when both expert parameters are targeted
// ("<layer>.mlp.experts.gate_up_proj" for ".base_layer", else "...down_proj").
bool is_expert_module(const std::string& module);
std::string expert_param_of(const std::string& module);
// lora_B of an expert module, [out, r E] (expert e: columns k E + e), as [E, out, r], and back.
core::Tensor expert_b_to_model(const core::Tensor& b, int64_t r, int64_t E);
core::Tensor expert_b_to_peft(const core::Tensor& t);

// The PEFT tensor names of a module.
std::string peft_a_name(const std::string& module);
std::string peft_b_name(const std::string& module);

// Writes both files into dir (each atomically; dir must exist). target_modules lists the
// modules' own names (sorted, distinct), which PEFT matches back to exactly these modules.
void save_peft_adapter(const std::string& dir, const PeftAdapter& adapter);

// Reads both files (F32, BF16 or F16 tensors, read as f32). Errors name the file and the key or
// tensor: not a LORA adapter, options PEFT features this build does not apply (DoRA, biases,
// per-module ranks, fan_in_fan_out), a tensor that is not lora_A / lora_B of a module, a module
// with only one of the two, a shape that disagrees with r.
PeftAdapter load_peft_adapter(const std::string& dir);
// The same without the tensors (a and b empty): adapter_config.json alone, checked as above.
PeftAdapter load_peft_config(const std::string& dir);

// The adapter fits the model's adapted modules exactly: every module has A [r, in] and B [out, r]
// and the adapter has no other module. `where` names the adapter in errors.
void check_adapter_matches(const PeftAdapter& adapter, const std::vector<model::LoraModule>& mods,
                           const std::string& where);

// The adapter as a model's LoRA set-up (model/adapters.h): its options, with targets = the full
// names of its linear modules (so a model adapts exactly these, whatever target_modules said) and
// experts = true for routed-expert adapters (both fused parameters; one alone is refused), and
// its tensors keyed by model::lora_a_key / lora_b_key in the model's layout.
model::LoraSetup to_lora_setup(const PeftAdapter& adapter);
// The same, held to a model: every module of the adapter is a linear layer of c with the
// adapter's shapes (check_adapter_matches; `where` names the adapter in errors); dropout as given.
model::LoraSetup to_lora_setup(const PeftAdapter& adapter, const model::Config& c, double dropout,
                               const std::string& where);

// A model's adapters (keyed as model/adapters.h) as a PEFT adapter of `mods`.
PeftAdapter to_peft_adapter(const model::LoraOptions& options, const model::TensorMap& adapters,
                            const std::vector<model::LoraModule>& mods,
                            const std::string& base_model);

}  // namespace deltatron::io
