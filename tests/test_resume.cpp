// Bitwise resume of the trainer, on the device the test runs on (tests/test_device.h): the CPU in
// CI; tests/gpu/test_resume_cuda.cpp compiles this file with the model on CUDA. 6 steps straight
// vs 6 steps, last checkpoint dropped and resumed from step 3: identical losses for steps 4-6,
// identical weights, and the HF checkpoint equals the fp32 master weights.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "short_run.h"
#include "test_device.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/train_config.h"
#include "train/trainer.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

// A short run of the bundled example (tiny-moe preset: GDN, attention, MoE, MTP).
train::TrainConfig config(const fs::path& dir, const std::string& out) {
  std::vector<std::string> ov = dt_test::short_run_overrides(dir, out);
  if (dt_test::kOnCuda) ov.push_back("training.device=\"cuda\"");
  return train::load_train_config(
      (dt_test::examples_dir() / "addition" / "train_moe.toml").string(), ov);
}

TEST(Trainer, ResumeIsBitwiseAndCheckpointsReload) {
  const dt_test::TempDir tmp("resume");
  const fs::path dir = tmp.path;
  // The same 6 steps twice; the second run's last checkpoint dropped and resumed from step 3.
  const auto [straight, resumed] = dt_test::straight_and_resumed(dir, config);
  ASSERT_EQ(straight.size(), 6u);
  ASSERT_EQ(resumed.size(), 9u);  // 6 + 3 resumed steps (steps 4-6 logged twice)
  for (int s = 3; s < 6; ++s) EXPECT_EQ(resumed[6 + s - 3], straight[s]) << "step " << s + 1;

  const fs::path a = dir / "straight" / train::checkpoint_dir_name(6);
  const fs::path b = dir / "resumed" / train::checkpoint_dir_name(6);
  const io::Checkpoint ca = io::load_checkpoint(a.string()), cb = io::load_checkpoint(b.string());
  const io::SafetensorsFile master((a / "training_state" / "master_weights.safetensors").string());
  for (const auto& [name, t] : ca.params) {
    EXPECT_EQ(t.data, cb.params.at(name).data) << "resumed weights differ: " << name;
    EXPECT_EQ(t.data, master.to_float(name).data) << "HF checkpoint != master weights: " << name;
  }
  EXPECT_TRUE(fs::exists(a / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(a / train::kCompleteMarker));
}

}  // namespace
