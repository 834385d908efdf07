// HF checkpoint layouts: the only place where file tensor names/layouts become parameters and back.
//
// Parameters (model::param_specs) use one canonical layout; files may differ. Today the only
// difference is the routed experts of a MoE module (prefix M = "<layer>.mlp.experts."):
//   fused       M.gate_up_proj [E, 2F, D] (rows [0, F) gate, [F, 2F) up), M.down_proj [E, D, F]
//               -- the canonical layout, also what Qwen3.5 MoE releases use for the decoder;
//   per-expert  M.{e}.gate_proj.weight [F, D], M.{e}.up_proj.weight [F, D],
//               M.{e}.down_proj.weight [D, F] for e < E -- Qwen3.5 MoE releases' MTP layer.
// Per-expert modules are converted as HF's conversion mapping does: stack on dim 0, gate || up on
// dim 1. Each module's layout (and each per-expert tensor's dtype) is remembered in the
// Checkpoint so that a save writes back exactly the layout and dtypes that were read.
// LoRA adapters name modules by their PEFT module path, which differs from the checkpoint's names
// only in the language model's prefix when the adapter was trained on the other of the text and
// multimodal layouts (adapter_module_weight).
// Legend: E experts, F expert FFN width, D hidden.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace deltatron::io {

struct Checkpoint;

enum class ExpertLayout { fused, per_expert };

// How one MoE module's routed experts are stored in the checkpoint files.
struct ExpertsFormat {
  ExpertLayout layout = ExpertLayout::fused;
  // per_expert only: file dtype of each per-expert tensor (full name -> "BF16", ...). A tensor
  // without an entry is written in its canonical parameter's param_dtypes entry (else F32).
  // Fused tensors are parameters themselves: their dtype is in Checkpoint::param_dtypes.
  std::map<std::string, std::string> dtypes;
};

// Keyed by module prefix "<layer>.mlp.experts." (model::expert_module_prefixes). A module
// without an entry is fused.
using ExpertsFormats = std::map<std::string, ExpertsFormat>;

// How a canonical parameter is assembled from file tensors (and split back into them).
enum class Assembly {
  copy,           // one file tensor with the parameter's own name and shape
  stack_gate_up,  // files gate_0, up_0, gate_1, up_1, ... ([F, D] each) -> [E, 2F, D]
  stack_down,     // files down_0, down_1, ... ([D, F] each) -> [E, D, F]
};

struct ParamSource {
  model::ParamSpec param;  // canonical name and shape
  Assembly how = Assembly::copy;
  std::vector<model::ParamSpec> files;  // file tensor names and shapes, in assembly order
  std::string module;                   // stacked: the expert module prefix; copy: empty
};

// The file tensor names of expert e in module prefix m ("<layer>.mlp.experts.").
std::string expert_tensor_name(const std::string& m, int64_t e, const char* proj);

// One entry per parameter of model::param_specs(c), in that order, each with the file tensors
// it is made of under the given formats. Every file tensor appears in exactly one entry.
std::vector<ParamSource> layout_plan(const model::Config& c, const ExpertsFormats& formats);

// Detects each MoE module's layout (model::expert_module_prefixes(c)) from the names in a
// checkpoint. Fused when M.gate_up_proj or M.down_proj is present, per-expert when any M.{e}.*
// is (e decimal digits), fused when neither (so that the missing-tensor error names the fused
// tensor). Both at once: a core::Error naming `source`, the module and one tensor of each kind.
// The returned formats have empty dtypes.
ExpertsFormats detect_expert_formats(const model::Config& c, const std::vector<std::string>& names,
                                     const std::string& source);

// Assembles the parameter of `src` from its file tensors (float32, in src.files order, shapes
// already checked). copy moves the single tensor through.
core::Tensor assemble_param(const ParamSource& src, std::vector<core::Tensor> files);

// Splits a canonical parameter (shape src.param.shape) into its file tensors, in src.files order.
std::vector<core::Tensor> split_param(const ParamSource& src, const core::Tensor& param);

// A short explanation for a checkpoint tensor name that no parameter consumes, when the layout
// knows why (per-expert index >= num_experts, a per-expert tensor of a fused module, ...);
// empty otherwise.
std::string explain_unknown_tensor(const model::Config& c, const ExpertsFormats& formats,
                                   const std::string& name);

// Converts a canonical tensor map (parameters or their gradients, keyed by parameter name) to the
// checkpoint's names and layout: per-expert modules of ck.expert_formats are split into
// M.{e}.{gate,up,down}_proj.weight; everything else keeps its name. Every key must be a
// parameter of ck.config with the parameter's shape (core::Error naming it otherwise).
std::map<std::string, core::Tensor> to_checkpoint_names(
    const Checkpoint& ck, const std::map<std::string, core::Tensor>& canonical);

// The weight an adapter module (a PEFT module path) adapts: "<module>.weight" under this
// checkpoint's names. The language model's modules are "model.layers.N..." in a text model
// (Qwen3_5ForCausalLM, config prefix "model.") and "model.language_model.layers.N..." in a
// multimodal one (Qwen3_5ForConditionalGeneration), and its checkpoints name the tensors the same
// way; a module spelled for the other layout is renamed to this one's prefix
// ("model.layers.3.mlp.up_proj" -> "model.language_model.layers.3.mlp.up_proj.weight" under a
// multimodal config, and back). model.visual.*, mtp.*, lm_head and every other name only get
// ".weight". The name need not exist: the caller checks.
std::string adapter_module_weight(const model::Config& c, const std::string& module);

}  // namespace deltatron::io
