// `deltatron score`: per-sample summed cross-entropy (and MTP loss), optional gradients.
#pragma once

#include <cstdint>
#include <string>

#include "core/device.h"
#include "model/router_loss.h"

namespace deltatron::train {

struct ScoreOptions {
  std::string model_dir;
  std::string data_path;
  std::string output_path;
  std::string grad_out;  // empty: no gradients
  // A PEFT LoRA adapter directory (docs/lora.md): score the base with it applied; grad_out then
  // holds the gradient of every adapter tensor under the adapter file's own names.
  std::string adapter_dir;
  int64_t pack_tokens = 8192;       // token budget per pack
  int64_t pad_multiple = 1;         // align every sample's span to this multiple
  double mtp_scale = 0.1;           // weight of the MTP loss in the gradient objective
  model::RouterLossOptions router;  // off by default (coefficients 0)
  bool ignore_mtp = false;          // score a checkpoint whose config declares MTP without using it
  // The vision tower (docs/vision.md): auto (frozen when a sample has images, else off), off,
  // frozen (images embedded, no model.visual.* gradients), merger or full (their gradients too).
  std::string vision = "auto";
  std::string device = "cpu";      // cpu | cuda
  std::string precision = "bf16";  // cuda: bf16 | fp32 (debug mode of the same kernels)
  bool quiet = false;
  // Expert parallelism over groups of `ep` ranks of a launched job (docs/parallel.md): each rank
  // holds num_experts / ep of every MoE layer's routed experts. 1: off.
  int64_t ep = 1;
  // Tensor parallelism over groups of `tp` consecutive ranks (each rank holds its share of every
  // layer's heads and FFN columns; the groups are data parallel); sp: sequence parallelism inside
  // each group. 1 / false: off.
  int64_t tp = 1;
  bool sp = false;
  // ZeRO 3 over the ranks of a launched job (docs/parallel.md): each rank holds a shard of every
  // weight and gradient, each layer gathered while it runs. 0: off (every rank holds the model);
  // 3: on (stages 1 and 2 shard optimizer state, which scoring does not have).
  int64_t zero = 0;
};

// Loads the checkpoint and data, scores every sample (packed in input order), then writes
// output_path (JSONL: {"index", "loss_sum", "n_tokens"[, "mtp_loss_sum", "mtp_n_tokens"]} per
// input line, in order) and, if asked, grad_out (F32 safetensors, the checkpoint's tensor
// names and expert layout; with adapter_dir, the adapter's tensors under PEFT's names) holding the
// gradient of
//   sum_i loss_sum_i + mtp_scale * sum_i mtp_loss_sum_i + sum over MoE layers of router losses.
// Router losses are sums over the scored dataset: the global aux loss uses the routing counts
// of the whole dataset (a counting pass runs first), seq_aux sums its per-sample terms, z-loss
// sums lse^2 over real tokens; so no number depends on how samples are packed, except the
// micro_batch aux loss, whose definition is per pack. Everything is validated and computed
// before anything is written: an output that is the same file as an input (--data, a file of
// --model) or as the other output is refused up front, and a non-finite loss of any sample (or
// a non-finite gradient) is an error naming the samples, with nothing written.
void run_score(const ScoreOptions& opt);

}  // namespace deltatron::train
