// A LoRA training run end to end, on the device the test runs on (tests/test_device.h): PEFT
// files in every checkpoint (and no copy of the frozen base), a bitwise resume, starting from an
// existing adapter, and the set-ups a LoRA run refuses.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "io/peft_adapter.h"
#include "short_run.h"
#include "test_device.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/train_config.h"
#include "train/trainer.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

// The short run of the bundled MoE + MTP example with rank-4 adapters on the default targets and
// the routed experts.
train::TrainConfig config(const fs::path& dir, const std::string& out,
                          std::vector<std::string> extra = {}) {
  std::vector<std::string> ov = dt_test::short_run_overrides(dir, out);
  ov.push_back("lora.r=4");
  ov.push_back("lora.alpha=8");
  ov.push_back("lora.experts=true");
  if (dt_test::kOnCuda) ov.push_back("training.device=\"cuda\"");
  for (auto& e : extra) ov.push_back(e);
  return train::load_train_config(
      (dt_test::examples_dir() / "addition" / "train_moe.toml").string(), ov);
}

TEST(LoraTrain, PeftCheckpointsAndBitwiseResume) {
  const dt_test::TempDir tmp("lora_train");
  const fs::path dir = tmp.path;
  const auto [straight, resumed] = dt_test::straight_and_resumed(
      dir, [](const fs::path& d, const std::string& out) { return config(d, out); });
  ASSERT_EQ(straight.size(), 6u);
  ASSERT_EQ(resumed.size(), 9u);
  for (int s = 3; s < 6; ++s) EXPECT_EQ(resumed[6 + s - 3], straight[s]) << "step " << s + 1;
  EXPECT_NE(straight[5], straight[0]);  // the adapters train

  const fs::path a = dir / "straight" / train::checkpoint_dir_name(6);
  const fs::path b = dir / "resumed" / train::checkpoint_dir_name(6);
  EXPECT_EQ(dt_test::read_file(a / io::kAdapterWeightsName),
            dt_test::read_file(b / io::kAdapterWeightsName));
  EXPECT_TRUE(fs::exists(a / io::kAdapterConfigName));
  EXPECT_TRUE(fs::exists(a / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(a / "training_state"));
  EXPECT_FALSE(fs::exists(a / "model.safetensors"));  // the frozen base is not copied
  const io::PeftAdapter ad = io::load_peft_adapter(a.string());
  EXPECT_EQ(ad.options.r, 4);
  EXPECT_EQ(ad.target_parameters.size(), 2u);  // routed experts, PEFT 0.21's layout
  EXPECT_EQ(ad.options.alpha, 8);
  // Default targets on the MoE example: 4 per attention layer, 5 per GDN layer, 3 per shared
  // expert; every lora_B has moved off PEFT's zero init.
  const auto cfg = nlohmann::json::parse(dt_test::read_file(a / io::kAdapterConfigName));
  EXPECT_EQ(cfg["peft_type"], "LORA");
  for (const auto& [m, t] : ad.b) {
    bool moved = false;
    for (float v : t.data) moved = moved || v != 0.f;
    EXPECT_TRUE(moved) << m;
  }

  // A new run from that adapter: its options are the adapter's; a disagreeing lora.r is refused.
  const std::string from = "lora.adapter=\"" + a.string() + "\"";
  train::run_train(
      config(dir, "from_adapter", {from, "training.steps=1", "training.warmup_steps=0"}), false);
  EXPECT_TRUE(
      fs::exists(dir / "from_adapter" / train::checkpoint_dir_name(1) / io::kAdapterWeightsName));
  const std::string err = dt_test::error_of([&] {
    train::run_train(
        config(dir, "bad_r", {from, "lora.r=8", "training.steps=1", "training.warmup_steps=0"}),
        false);
  });
  EXPECT_NE(err.find("lora.r"), std::string::npos) << err;
  EXPECT_NE(err.find("disagrees"), std::string::npos) << err;
}

TEST(LoraTrain, RefusesStateOptionsForTheFrozenBase) {
  const dt_test::TempDir tmp("lora_cfg");
  const std::string err =
      dt_test::error_of([&] { config(tmp.path, "x", {"training.offload=\"moments\""}); });
  EXPECT_NE(err.find("LoRA"), std::string::npos) << err;
  const std::string drop = dt_test::error_of([&] { config(tmp.path, "x", {"lora.dropout=1.5"}); });
  EXPECT_NE(drop.find("lora.dropout"), std::string::npos) << drop;
}

}  // namespace
