// `deltatron init`: write a random-initialised Hugging Face checkpoint for a preset.
#pragma once

#include <cstdint>
#include <string>

namespace deltatron::train {

struct InitOptions {
  std::string preset;
  std::string out_dir;
  uint64_t seed = 0;
  std::string dtype = "BF16";  // F32 | BF16 | F16
  std::string tokenizer;       // optional tokenizer.json to copy into the checkpoint
  bool config_only = false;    // write config.json only (for shapes too large for this machine)
  bool overwrite = false;      // write into a non-empty directory not written by deltatron
};

// out_dir must be new, empty, or an earlier deltatron output unless overwrite
// (io::check_output_dir); the files are staged beside it and installed when all are written,
// replacing only the checkpoint's own files (io::StagedOutput).

void run_init(const InitOptions& opt);

}  // namespace deltatron::train
