// HF checkpoint directories: load config.json + safetensors weights into float32, save atomically.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/hf_layout.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace deltatron::io {

// A tensor kept as stored in the file (dtype string as in safetensors, bytes untouched).
struct RawTensor {
  std::string dtype;
  core::Shape shape;
  std::vector<uint8_t> bytes;
};

struct Checkpoint {
  model::Config config;  // config.mtp_enabled says whether the mtp.* tensors are parameters
  std::map<std::string, core::Tensor> params;  // every param_specs() name -> float32 (canonical)
  // File dtype per param (F32/BF16/F16). For experts assembled from per-expert tensors: their
  // common dtype (F32 when they differ); the per-tensor dtypes are in expert_formats.
  std::map<std::string, std::string> param_dtypes;
  std::map<std::string, RawTensor> passthrough;  // model.visual.* and (MTP off) mtp.*, untouched
  // Per MoE module as read (io/hf_layout.h): fused or per-expert, with per-expert dtypes. A save
  // writes each module back in this layout; modules without an entry are written fused.
  ExpertsFormats expert_formats;
  // preprocessor_config.json of a vision-language checkpoint (null when there is none): read
  // with the checkpoint, written back beside config.json when it is an object.
  nlohmann::json preprocessor;
};

// True for the names that may be carried through unchanged: "mtp.*" and "model.visual.*".
bool is_passthrough_name(const std::string& name);
// Pass-through under this config: model.visual.* unless c.vision_mode is on, mtp.* unless
// c.mtp_enabled.
bool is_passthrough_name(const std::string& name, const model::Config& c);
bool is_mtp_name(const std::string& name);  // "mtp.*"

// What one rank of a parallel layout keeps of a parameter (train/local_slices.h): the slice's
// shape and the runs of the full tensor's row-major elements it is made of, in order.
struct ParamSlice {
  core::Shape shape;
  std::vector<ElementRun> runs;
};
// The slice kept of parameter `name` (full shape `full`, config c as loaded); nullopt: all of it.
using SliceFn = std::function<std::optional<ParamSlice>(
    const model::Config& c, const std::string& name, const core::Shape& full)>;
// The slice's elements of a full host tensor (shape and element counts checked).
core::Tensor take_slice(const core::Tensor& full, const ParamSlice& s, const std::string& name);
// File tensor `key` of f in float32: the slice's elements alone (only their bytes read), or the
// whole tensor without one.
core::Tensor read_float_slice(const SafetensorsFile& f, const std::string& key,
                              const std::optional<ParamSlice>& s);

// The loader's host buffers, counted (what a rank allocates for the weights while loading): the
// bytes of the parameters kept, and the peak of kept + staging (a parameter assembled whole
// before its slice is taken: per-expert files, or a slice the files cannot give directly).
struct LoadStats {
  int64_t kept_bytes = 0, peak_bytes = 0;
  void add(int64_t b) { live_ += b, peak_bytes = std::max(peak_bytes, live_); }
  void sub(int64_t b) { live_ -= b; }

 private:
  int64_t live_ = 0;
};

struct LoadOptions {
  // Train without the MTP head: mtp.* stay pass-through bytes and config.mtp_enabled is false
  // (one warning line on stderr when the config declares MTP layers).
  bool ignore_mtp = false;
  // The vision tower (model/config.h VisionMode): off keeps model.visual.* pass-through bytes;
  // frozen, merger or full make them parameters (config.vision_mode is set; the config must have
  // a vision_config the engine supports, model::check_vision).
  model::VisionMode vision = model::VisionMode::off;
  // A parallel layout's slices: each parameter is read as its slice alone (a copied file tensor:
  // only the slice's bytes; an assembled one: assembled, sliced, the whole freed), so host
  // memory holds this rank's share plus one parameter, never the whole model. Empty: whole.
  SliceFn slice;
  // Where to count the loader's buffers (null: not counted).
  LoadStats* stats = nullptr;
};

// Reads dir/config.json and the weights (model.safetensors or the sharded index). Every check is
// a one-line core::Error naming the directory and tensor: a missing parameter (with the expected
// shape), a mis-shaped one (both shapes), a parameter whose dtype is not F32/BF16/F16, and an
// unknown tensor (neither a parameter of this config nor a pass-through; tied models have no
// lm_head.weight).
//  - MoE experts: each module's layout is detected and converted (io/hf_layout.h); errors for a
//    missing per-expert tensor, a module mixing fused and per-expert tensors, a per-expert index
//    >= num_experts.
//  - MTP: when config.mtp_num_hidden_layers > 0 (and not opt.ignore_mtp) the mtp.* tensors are
//    parameters and config.mtp_enabled is set; a checkpoint without any mtp.* tensor is an error
//    that suggests --ignore-mtp. Otherwise mtp.* are pass-through. model.visual.* are
//    pass-through unless opt.vision is on (then parameters, config.vision_mode = opt.vision).
Checkpoint load_checkpoint(const std::string& dir);
Checkpoint load_checkpoint(const std::string& dir, const LoadOptions& opt);

// Writes the checkpoint to dir: weights sharded at max_shard_bytes (one file model.safetensors
// when they fit), each parameter in param_dtypes[name] (F32 when absent; BF16 rounds to nearest
// even) and in the layout of expert_formats (per-expert tensors in their recorded dtypes),
// pass-through tensors byte for byte, and config.raw as config.json. What load_checkpoint read
// is written back under the same names, dtypes and bytes. Everything is built and fsynced in a
// sibling staging directory first (io/output_dir.h), so a failure leaves dir as it was; a new
// dir appears whole by one rename, an existing one has its checkpoint files (config.json and
// the weight files) replaced and every other file kept.
void save_checkpoint(const std::string& dir, const Checkpoint& ck,
                     int64_t max_shard_bytes = 5'000'000'000);

// The same files written straight into the existing directory dir (not atomic: for a directory
// that is itself being staged, like a training checkpoint's or StagedOutput's).
void write_checkpoint_files(const std::string& dir, const Checkpoint& ck,
                            int64_t max_shard_bytes = 5'000'000'000);

// Buffers counted while saving (a rank's host memory for the save beyond what it keeps): the
// peak of the live bytes.
struct SaveStats {
  int64_t peak_bytes = 0;
  void add(int64_t b) { live_ += b, peak_bytes = std::max(peak_bytes, live_); }
  void sub(int64_t b) { live_ -= b; }

 private:
  int64_t live_ = 0;
};

// The values of the elements `runs` (row-major flat indices of the full tensor, in order) of
// parameter `name` in float32, one run after the other into out.
using ParamReader =
    std::function<void(const std::string& name, std::span<const ElementRun> runs, float* out)>;

// The same files with the parameters read from `read` one file tensor at a time, as the writer
// reaches it (ck.params is not used: the shapes are the config's): a per-expert file tensor is a
// run of its parameter (io/hf_layout.h), so the writer holds one file tensor (plus its f32 values
// when stored as BF16 or F16) at a time. The bytes are those of the overload above given the
// same values. stats: counts those buffers (null: not counted).
void write_checkpoint_files(const std::string& dir, const Checkpoint& ck, const ParamReader& read,
                            int64_t max_shard_bytes = 5'000'000'000, SaveStats* stats = nullptr);

// Atomic single-file F32 safetensors of named tensors (used for gradient dumps; pass canonical
// maps through to_checkpoint_names first to get the checkpoint's names and expert layout).
void save_tensors_f32(const std::string& path, const std::map<std::string, core::Tensor>& t);

}  // namespace deltatron::io
