// `deltatron score`: per-sample summed cross-entropy (and optionally parameter gradients).
#pragma once

#include <cstdint>
#include <string>

#include "core/device.h"

namespace deltatron::train {

struct ScoreOptions {
  std::string model_dir;
  std::string data_path;
  std::string output_path;
  std::string grad_out;       // empty: no gradients
  int64_t pack_tokens = 8192;  // token budget per pack
  int64_t pad_multiple = 1;    // align every sample's span to this multiple
  core::Device device = core::Device::cpu;
  bool quiet = false;
};

// Loads the checkpoint and data, scores every sample (packed in input order), then writes
// output_path (JSONL: {"index", "loss_sum", "n_tokens"} per input line, in order) and, if asked,
// grad_out (F32 safetensors, HF names: the gradient of the sum of all loss_sum). Everything is
// validated and computed before anything is written.
void run_score(const ScoreOptions& opt);

}  // namespace deltatron::train
