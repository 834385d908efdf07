// A LoRA run's adapters on the model's device (issue 13, docs/lora.md): the adapted modules
// (model/lora.h), their scale, and one trainable parameter store (model/params.h) of the
// lora_A [r, in] and lora_B [out, r] tensors, keyed "<module>.lora_A.weight" and
// "<module>.lora_B.weight" (PEFT's names without the "base_model.model." prefix). The adapters
// train in fp32 (fp32 masters; on CUDA in bf16 compute, their bf16 compute copies feed the
// GEMMs); the base model's store is frozen.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/lora.h"
#include "model/params.h"
#include "model/weights.h"

namespace deltatron::model {

// The adapter store's keys of a module. An expert module's tensors are A [E, r, in] and
// B [E, out, r] (expert e's A_e and B_e contiguous; io/peft_adapter converts PEFT's layout).
std::string lora_a_key(const std::string& module);
std::string lora_b_key(const std::string& module);

// PEFT's initialisation (init_lora_weights = True): A Kaiming-uniform with a = sqrt(5), i.e.
// uniform in [-1/sqrt(in), 1/sqrt(in)), B zero; deterministic in `seed` (one counter-based stream
// per module, so the values do not depend on the order or number of modules).
TensorMap lora_init(const std::vector<LoraModule>& mods, int64_t r, uint64_t seed);

// What a LoRA model needs besides the base weights: the options and the adapters' host values
// (lora_init's, a PEFT adapter's, or a checkpoint's), keyed as above.
// Expert parallelism (model/expert_parallel.h): the routed-expert adapters hold this rank's
// experts only, A [local_experts, r, in] and B [local_experts, out, r] (train::keep_local_experts);
// 0: every expert.
// Tensor parallelism (model/tensor_parallel.h): the adapters are this rank's slices of a group
// of tp ranks (train::keep_local_shards); 1: whole.
struct LoraSetup {
  LoraOptions options;
  TensorMap adapters;
  int64_t local_experts = 0;
  int64_t tp = 1;
};

class Adapters {
 public:
  // Checks that `s.adapters` has exactly the modules' tensors with their shapes (an error names
  // the tensor; routed-expert adapters with s.local_experts experts when set, split tensors as
  // this rank's slices of s.tp ranks); lm_head adapters
  // are refused (the LM head is fused with the loss), and lora.dropout > 0 with routed-expert
  // adapters (not implemented). state: the adapters' AdamW moments (training.moments); their
  // masters are fp32.
  Adapters(core::Device dev, core::DType dt, const Config& c, const LoraSetup& s,
           core::DType moments = core::DType::f32);

  const std::vector<LoraModule>& modules() const { return mods_; }
  const LoraOptions& options() const { return opt_; }
  int64_t r() const { return opt_.r; }
  float scale() const { return scale_; }
  // The experts the routed-expert adapters hold (LoraSetup::local_experts; 0: every expert).
  int64_t local_experts() const { return local_experts_; }
  // The module whose weight parameter is `weight` ("...q_proj.weight"), or nullptr.
  const LoraModule* find(const std::string& weight) const;
  // A module's position in modules() (it keys the module's dropout masks).
  int64_t index(const LoraModule* m) const { return m - mods_.data(); }
  Params& params() { return params_; }
  const Params& params() const { return params_; }

 private:
  LoraOptions opt_;
  std::vector<LoraModule> mods_;
  std::map<std::string, size_t> by_weight_;
  float scale_;
  int64_t local_experts_;
  Params params_;
};

}  // namespace deltatron::model
