// HF checkpoint directories: load config.json + safetensors weights into float32, save atomically.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"

namespace deltatron::io {

// A tensor kept as stored in the file (dtype string as in safetensors, bytes untouched).
struct RawTensor {
  std::string dtype;
  core::Shape shape;
  std::vector<uint8_t> bytes;
};

struct Checkpoint {
  model::Config config;
  std::map<std::string, core::Tensor> params;       // every param_specs() name -> float32
  std::map<std::string, std::string> param_dtypes;  // file dtype per param (F32/BF16/F16)
  std::map<std::string, RawTensor> passthrough;     // model.visual.* and mtp.*, bytes untouched
};

// True for tensors carried through unchanged: "mtp.*" and "model.visual.*".
bool is_passthrough_name(const std::string& name);

// Reads dir/config.json and the weights (model.safetensors or the sharded index). Every check is
// a one-line core::Error naming the directory and tensor: a MoE config ("not supported yet"),
// a missing parameter (with the expected shape), a mis-shaped one (both shapes), a parameter
// whose dtype is not F32/BF16/F16, and an unknown tensor (neither a parameter of this config
// nor a pass-through; tied models have no lm_head.weight).
Checkpoint load_checkpoint(const std::string& dir);

// Writes the checkpoint to dir: weights sharded at max_shard_bytes (one file model.safetensors
// when they fit), each parameter in param_dtypes[name] (F32 when absent; BF16 rounds to nearest
// even), pass-through tensors byte for byte, and config.raw as config.json. Atomic: everything is
// built and fsynced in a sibling temporary directory, which is renamed into place; an existing
// dir is replaced (as a whole, other files included) only after that succeeded.
void save_checkpoint(const std::string& dir, const Checkpoint& ck,
                     int64_t max_shard_bytes = 5'000'000'000);

// Atomic single-file F32 safetensors of named tensors (used for gradient dumps).
void save_tensors_f32(const std::string& path, const std::map<std::string, core::Tensor>& t);

}  // namespace deltatron::io
