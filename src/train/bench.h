// `deltatron bench`: training-step throughput of a preset on one device (a GPU, or the CPU for a
// smoke run), on packed batches drawn
// from a realistic SFT length distribution.
#pragma once

#include <cstdint>
#include <string>

#include "train/bench_vl.h"

namespace deltatron::train {

struct BenchOptions {
  std::string preset = "2b";
  int64_t layers = 0;  // > 0: override num_hidden_layers (e.g. 35b-a3b with 8)
  int64_t micro_batch_tokens = 8192;
  int64_t warmup = 3, steps = 10;   // untimed, timed optimizer steps (one micro-batch each)
  std::string device = "cuda";      // cuda | cpu
  std::string precision = "bf16";   // bf16 | fp32 (cuda)
  bool mtp = false;                 // keep the preset's MTP head (off by default, like the peer)
  bool recompute = false;           // activation recomputation per layer
  bool recompute_selective = true;  // cheap intermediates recomputed (model/activations.h)
  std::string master = "fp32";      // fp32 | remainder (training.master)
  std::string moments = "fp32";     // fp32 | bf16 (training.moments)
  std::string offload = "none";     // none | moments | master+moments (training.offload)
  // LoRA (docs/lora.md): the base frozen in the compute dtype, adapters of rank lora_r on
  // lora_targets (comma list; empty: the defaults) trained with AdamW.
  bool lora = false;
  int64_t lora_r = 16;
  double lora_alpha = 32;
  std::string lora_targets;
  bool lora_experts = false;  // adapters on the routed experts too
  double median_len = 600, sigma = 0.8;
  int64_t min_len = 64, max_len = 2048;
  uint64_t seed = 1;
  std::string lengths_in;   // read the steps' sample lengths (JSON) instead of drawing
  std::string lengths_out;  // write the per-step sample lengths (JSON) for the peer
  std::string json_out;     // write the results (JSON)
  // Images (bench_vl.h): off (text batches) | frozen | merger | full (what the tower trains; a
  // preset with a vision_config, e.g. 2b-vl). The samples then come from `vl` (its
  // micro_batch_tokens and seed are set from the fields above), lengths_in / lengths_out are
  // VL batch files.
  std::string vision = "off";
  VlDrawOptions vl;
};

void run_bench(const BenchOptions& opt);

}  // namespace deltatron::train
