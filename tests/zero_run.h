// Helpers of the ZeRO tests (test_zero, test_zero3): a short run of the bundled example on N CPU
// ranks with a ZeRO stage, and its checkpoints and step losses against another run's.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"

namespace dt_test {

namespace fs = std::filesystem;
namespace train = deltatron::train;

// The short run (short_run.h) of examples/addition/<toml> into dir/out on `ranks` ranks with
// grad_accum 6 / ranks and parallel.zero = zero; extra: more arguments (e.g. --resume).
inline void train_run(const fs::path& dir, const std::string& toml, const std::string& out,
                      int ranks, int zero, const std::string& extra = "") {
  std::string args = "train " + (examples_dir() / "addition" / toml).string();
  for (std::string o : short_run_overrides(dir, out)) {
    if (o.rfind("training.grad_accum=", 0) == 0)
      o = "training.grad_accum=" + std::to_string(6 / ranks);
    args += " '--" + o + "'";
  }
  // The first 600 samples (a short run reads about 250) and no held-out set: tokenising the whole
  // file and the end-of-run evaluation would be most of a short run's time.
  const fs::path data = dir / "train.jsonl";
  if (!fs::exists(data)) {
    std::istringstream in(read_file(examples_dir() / "addition" / "train.jsonl"));
    std::ofstream o(data);
    std::string line;
    for (int i = 0; i < 600 && std::getline(in, line); ++i) o << line << "\n";
  }
  args += " '--data.train=\"" + data.string() + "\"'";
  args += " '--data.eval=\"\"' '--training.router_aux_type=\"seq\"' --parallel.zero=" +
          std::to_string(zero) + " " + extra;
  const fs::path err = dir / (out + ".err");
  ASSERT_EQ(run_ranks(ranks, args, err), 0)
      << toml << " " << out << " on " << ranks << " ranks: " << read_file(err);
}

inline std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    out.push_back(fs::relative(e.path(), dir).string());
  std::sort(out.begin(), out.end());
  return out;
}

// got's checkpoint at `step` against want's: the same files, weights and moments within `tol`.
inline void expect_checkpoint_near(const fs::path& got, const fs::path& want, int64_t step,
                                   const std::string& what, double tol) {
  const fs::path g = got / train::checkpoint_dir_name(step),
                 w = want / train::checkpoint_dir_name(step);
  EXPECT_EQ(listing(g), listing(w)) << what;
  for (const char* file : {"model.safetensors", "training_state/master_weights.safetensors",
                           "training_state/optimizer.safetensors"}) {
    std::string name;
    const double r = worst_rel_rms(g / file, w / file, name);
    std::printf("  %s step %lld %s: worst rel RMS vs one rank %.2e (%s)\n", what.c_str(),
                static_cast<long long>(step), file, r, name.c_str());
    EXPECT_LE(r, tol) << what << " " << file << ": " << name;
  }
}

inline void expect_losses_near(const std::vector<double>& got, const std::vector<double>& want,
                               const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t s = 0; s < want.size(); ++s)
    EXPECT_NEAR(got[s], want[s], 1e-5 * std::abs(want[s])) << what << " step " << s + 1;
}

}  // namespace dt_test
