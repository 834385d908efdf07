// `deltatron bench`: training-step throughput of a preset on one device (a GPU, or the CPU for a
// smoke run), or on the ranks of a launched job under a parallel layout (`deltatron launch --nproc
// N -- deltatron bench --zero 3 --ep N ...`), on packed batches drawn from a realistic SFT length
// distribution.
#pragma once

#include <cstdint>
#include <string>

#include "train/bench_vl.h"

namespace deltatron::train {

struct BenchOptions {
  std::string preset = "2b";
  int64_t layers = 0;  // > 0: override num_hidden_layers (e.g. 35b-a3b with 8)
  int64_t micro_batch_tokens = 8192;
  // Untimed and timed optimizer steps; steps 0: 10 drawn steps, or, with lengths_in, as many as
  // take the file's micro-batches once (ceil(file steps / micro-batches per step)).
  int64_t warmup = 3, steps = 0;
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
  // The parallel layout of a launched job (docs/parallel.md): the [parallel] keys of a training
  // config, checked by the same code (train_config.h's check_parallel); the data-parallel ranks
  // are the job's ranks / tp. A step is accum micro-batches per data-parallel rank (training.
  // grad_accum): micro-batch m of a step runs on data-parallel rank m mod dp, as in training, so
  // one rank with accum = dp runs the same steps as dp ranks with accum = 1.
  int64_t zero = 0, ep = 1, tp = 1;
  bool sp = false;
  int64_t accum = 1;
};

// Rank 0 prints the results (and writes json_out): real tokens/s of the job and per GPU, model
// TFLOP/s and MFU per GPU, the peak device memory of every rank (the largest reported), each timed
// step's loss; the other ranks print nothing.
void run_bench(const BenchOptions& opt);

}  // namespace deltatron::train
