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
  model::TensorMap a, b;       // by module name: lora_A [r, in], lora_B [out, r], f32
};

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

// The adapter fits the model's adapted modules exactly: every module has A [r, in] and B [out, r]
// and the adapter has no other module. `where` names the adapter in errors.
void check_adapter_matches(const PeftAdapter& adapter, const std::vector<model::LoraModule>& mods,
                           const std::string& where);

// The adapter as a model's LoRA set-up (model/adapters.h): its options, with targets = the full
// names of its modules (so a model adapts exactly these, whatever target_modules said), and its
// tensors keyed by model::lora_a_key / lora_b_key.
model::LoraSetup to_lora_setup(const PeftAdapter& adapter);

// A model's adapters (keyed as model/adapters.h) as a PEFT adapter of `mods`.
PeftAdapter to_peft_adapter(const model::LoraOptions& options, const model::TensorMap& adapters,
                            const std::vector<model::LoraModule>& mods,
                            const std::string& base_model);

}  // namespace deltatron::io
