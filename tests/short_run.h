// The overrides of a short run of the bundled example (6 steps of 2 x 256-token micro-batches,
// saved every 3 steps, no evaluation), written into dir/out with its data cache in dir/cache:
// the trainer and resume tests' common run.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace dt_test {

inline std::vector<std::string> short_run_overrides(const std::filesystem::path& dir,
                                                    const std::string& out) {
  return {"training.out_dir=\"" + (dir / out).string() + "\"",
          "training.steps=6",
          "training.warmup_steps=2",
          "training.micro_batch_tokens=256",
          "training.grad_accum=2",
          "training.save_every=3",
          "training.keep_last=5",
          "training.eval_every=0",
          "data.cache_dir=\"" + (dir / "cache").string() + "\""};
}

}  // namespace dt_test
