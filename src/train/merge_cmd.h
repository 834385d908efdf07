// `deltatron merge`: fold a PEFT LoRA adapter into its base checkpoint (W + s B A per adapted
// module) and write the result as a full Hugging Face checkpoint.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "io/checkpoint.h"
#include "io/peft_adapter.h"

namespace deltatron::train {

struct MergeOptions {
  std::string model_dir;    // the base checkpoint
  std::string adapter_dir;  // adapter_config.json + adapter_model.safetensors (io/peft_adapter.h)
  std::string out_dir;
  int64_t max_shard_mb = 5000;
  bool ignore_mtp = false;  // as convert --ignore-mtp: mtp.* carried as opaque bytes
  bool overwrite = false;   // write into a non-empty directory not written by deltatron
};

// w [out, in] <- round_dtype(w + scale * b a), a [r, in], b [out, r] (f32). w holds values of
// `dtype` (F32, BF16 or F16, as load_checkpoint gives them). Each element is w (exact in double)
// plus scale times the float64 sum over k of b[o, k] a[k, i], rounded once to dtype, to nearest
// with ties to even, as torch's .to(dtype) rounds (for BF16/F16 through an f32 rounded to odd,
// which makes the two roundings one); the result is stored as the f32 of that dtype value, so a
// save writes it unchanged. A value that becomes non-finite where w was finite is a core::Error
// naming `what`.
void merge_lora_weight(core::Tensor& w, const std::string& dtype, const core::Tensor& a,
                       const core::Tensor& b, double scale, const std::string& what);

struct MergeReport {
  int64_t modules = 0;           // adapted modules merged
  int64_t renamed = 0;           // of them, named under the other layout's prefix
  bool targets_checked = false;  // the adapter matched model::lora_modules of its own options
};

// Merges every module of the adapter into ck.params with scale ad.options.scale() (alpha / r, or
// alpha / sqrt(r) with use_rslora). `where` names the adapter in errors (its weight file). Checks
// before changing anything, each a one-line core::Error naming `where` and the module:
//  - every module resolves (io::adapter_module_weight) to a parameter of the base, and not to
//    an MTP or vision-tower tensor (carried through untouched; never adapted): a module missing
//    from the base names the tensor looked for (and the tie for lm_head in a tied model);
//  - the parameter is [out, in] with lora_A [r, in] and lora_B [out, r].
// Then, where model::lora_modules resolves the adapter's target_modules on this config, the
// adapter is held to those modules (io::check_adapter_matches); a disagreement (PEFT options this
// check does not model, such as exclude_modules or a regex) is one warning line on stderr, since
// the merge applies the tensors the file holds either way. A merged value that overflows the
// base dtype is a core::Error raised while merging (ck is then partly merged: discard it).
MergeReport merge_adapter(io::Checkpoint& ck, const io::PeftAdapter& ad, const std::string& where);

// Loads the adapter and the base, merges, and writes the checkpoint as `convert` does: every
// tensor not merged keeps its name, dtype and bytes (model.visual.* and mtp.* included), merged
// ones keep their name and dtype; config.json is the base's. out_dir must be neither model_dir nor
// adapter_dir, and must be new, empty or an earlier deltatron output unless overwrite; it is
// staged and installed as in `init` (other files in it are kept). Memory: the base is held as
// f32 (4 bytes per parameter), as in convert.
void run_merge(const MergeOptions& opt);

}  // namespace deltatron::train
