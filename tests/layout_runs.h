// Training runs of the parallel-layout tests (test_data_parallel, test_tensor_parallel): six
// steps of a bundled example per layout, checked against the one-rank run "one" (step losses,
// final weights and AdamW moments), and resumed on another layout from the step-3 checkpoint.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "ranks_run.h"
#include "short_run.h"
#include "train/checkpoint_dir.h"

namespace dt_test {

struct LayoutRun {
  std::string out;  // the run's output directory name; "one" is the reference
  int ranks, grad_accum;
  std::string layout;  // command-line flags of the layout
};

class LayoutRuns {
 public:
  // toml: the example; common: flags every run gets; bounds on the step losses (relative), the
  // final weights and the moments (worst tensor rel RMS).
  // weights: the checkpoint's weights file (a LoRA run's: adapter_model.safetensors).
  LayoutRuns(std::filesystem::path dir, std::string toml, std::string common, double loss_tol,
             double weight_tol, double moment_tol, std::string weights = "model.safetensors")
      : dir_(std::move(dir)),
        toml_(std::move(toml)),
        common_(std::move(common)),
        weights_(std::move(weights)),
        loss_tol_(loss_tol),
        weight_tol_(weight_tol),
        moment_tol_(moment_tol) {}

  // Runs each; resume: from the newest checkpoint left (the final one removed first). False
  // (with the run's stderr reported) when one fails.
  bool run(const std::vector<LayoutRun>& runs, bool resume = false) const {
    for (const LayoutRun& r : runs) {
      if (resume) std::filesystem::remove_all(ckpt(r.out));
      const std::filesystem::path err = dir_ / (r.out + (resume ? ".resume.err" : ".err"));
      const std::string a = args(r) + (resume ? " --resume" : "");
      if (run_ranks(r.ranks, a, err) != 0) {
        ADD_FAILURE() << r.out << ": " << read_file(err);
        return false;
      }
    }
    return true;
  }
  // After the first runs: the one-rank run's losses, and its last checkpoint kept aside.
  void keep_reference() {
    want_ = metric_losses(dir_ / "one" / "metrics.jsonl");
    ASSERT_EQ(want_.size(), 6u);
    std::filesystem::copy(ckpt("one"), ref(), std::filesystem::copy_options::recursive);
  }
  // A run's step-6 checkpoint, and the reference's (keep_reference).
  std::filesystem::path ckpt(const std::string& out) const {
    return dir_ / out / deltatron::train::checkpoint_dir_name(6);
  }
  std::filesystem::path ref() const { return dir_ / "one_step6"; }
  // `out` against the reference; first_loss: 6 when the run resumed (its metrics then hold steps
  // 1-6 and steps 4-6 again).
  void check(const std::string& out, size_t first_loss) const {
    const std::vector<double> got = metric_losses(dir_ / out / "metrics.jsonl");
    const size_t from = first_loss ? 3 : 0;
    ASSERT_EQ(got.size(), first_loss + 6 - from) << out;
    for (size_t s = from; s < 6; ++s)
      EXPECT_NEAR(got[first_loss + s - from], want_[s], loss_tol_ * want_[s])
          << out << " step " << s + 1;
    std::string name;
    const double w = worst_rel_rms(ckpt(out) / weights_, ref() / weights_, name);
    std::printf("  %s: weights after 6 steps vs one rank: worst rel RMS %.2e (%s)\n", out.c_str(),
                w, name.c_str());
    EXPECT_LE(w, weight_tol_) << out << ": " << name;
    const std::filesystem::path opt =
        std::filesystem::path("training_state") / "optimizer.safetensors";
    const double m = worst_rel_rms(ckpt(out) / opt, ref() / opt, name);
    std::printf("  %s: AdamW moments vs one rank: worst rel RMS %.2e (%s)\n", out.c_str(), m,
                name.c_str());
    EXPECT_LE(m, moment_tol_) << out << ": " << name;
  }

 private:
  std::string args(const LayoutRun& r) const {
    std::string a = "train " + toml_;
    for (std::string o : short_run_overrides(dir_, r.out)) {
      if (o.rfind("training.grad_accum=", 0) == 0)
        o = "training.grad_accum=" + std::to_string(r.grad_accum);
      a += " '--" + o + "'";
    }
    return a + " " + common_ + " " + r.layout;
  }

  std::filesystem::path dir_;
  std::string toml_, common_, weights_;
  double loss_tol_, weight_tol_, moment_tol_;
  std::vector<double> want_;
};

}  // namespace dt_test
