// `deltatron convert`: load a Hugging Face checkpoint and write it back (round trip, re-shard,
// or change the MoE expert layout).
#pragma once

#include <cstdint>
#include <string>

namespace deltatron::train {

struct ConvertOptions {
  std::string model_dir;
  std::string out_dir;
  std::string experts = "keep";  // keep | fused | per-expert
  int64_t max_shard_mb = 5000;
  bool ignore_mtp = false;
  bool overwrite = false;  // write into a non-empty directory not written by deltatron
};

// Every tensor is written back in its original dtype; model.visual.* and (MTP off) mtp.* bytes
// are copied untouched. With experts = keep, a load/convert round trip is byte-identical per
// tensor. out_dir must not be model_dir, and must be new, empty or an earlier deltatron output
// unless overwrite; it is staged and installed as in `init` (other files in it are kept).
void run_convert(const ConvertOptions& opt);

}  // namespace deltatron::train
