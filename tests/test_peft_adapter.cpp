// PEFT adapter files (io/peft_adapter.h): a round trip keeps every bit, options and names as PEFT
// writes them; the files of a PEFT-style config load; unsupported PEFT features, stray tensors,
// half modules and wrong shapes are named; an adapter is checked against the model's modules.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/peft_adapter.h"
#include "io/safetensors.h"
#include "lora_fixture.h"
#include "model/lora.h"
#include "model_fixture.h"
#include "test_util.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

io::PeftAdapter random_adapter(const std::vector<model::LoraModule>& mods, int64_t r) {
  io::PeftAdapter ad = dt_test::random_peft_adapter(mods, r, 16, 0.1, 1);
  ad.options.dropout = 0.05;
  ad.base_model = "Qwen/Qwen3.5-tiny";
  return ad;
}

void edit_config(const fs::path& dir, const std::function<void(nlohmann::json&)>& f) {
  const fs::path p = dir / io::kAdapterConfigName;
  nlohmann::json j = nlohmann::json::parse(dt_test::read_file(p));
  f(j);
  std::ofstream(p) << j.dump(2);
}

}  // namespace

TEST(PeftAdapter, RoundTripAndPeftNames) {
  const dt_test::TempDir tmp("peft");
  const model::Config c = dt_test::tiny_moe_mtp_config();
  const auto mods = model::lora_modules(c, {}, "test");
  const io::PeftAdapter ad = random_adapter(mods, 4);
  io::save_peft_adapter(tmp.path.string(), ad);
  // PEFT's names and shapes.
  const io::SafetensorsFile f((tmp.path / io::kAdapterWeightsName).string());
  EXPECT_EQ(f.names().size(), 2 * mods.size());
  const auto& m0 = mods[0];
  EXPECT_TRUE(f.contains("base_model.model." + m0.name + ".lora_A.weight"));
  EXPECT_EQ(f.info("base_model.model." + m0.name + ".lora_B.weight").shape,
            (core::Shape{m0.out, 4}));
  const auto j = nlohmann::json::parse(dt_test::read_file(tmp.path / io::kAdapterConfigName));
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["r"], 4);
  EXPECT_EQ(j["lora_alpha"], 16.0);
  EXPECT_EQ(j["task_type"], "CAUSAL_LM");
  EXPECT_EQ(j["target_modules"], nlohmann::json({"down_proj", "gate_proj", "in_proj_a", "in_proj_b",
                                                 "in_proj_qkv", "in_proj_z", "k_proj", "o_proj",
                                                 "out_proj", "q_proj", "up_proj", "v_proj"}));
  // Back, bit for bit; the stored target names resolve to the same modules.
  const io::PeftAdapter back = io::load_peft_adapter(tmp.path.string());
  EXPECT_EQ(back.options.r, 4);
  EXPECT_EQ(back.options.alpha, 16);
  EXPECT_EQ(back.options.dropout, 0.05);
  EXPECT_EQ(back.base_model, "Qwen/Qwen3.5-tiny");
  ASSERT_EQ(back.a.size(), ad.a.size());
  for (const auto& [m, t] : ad.a) {
    EXPECT_EQ(back.a.at(m).data, t.data) << m;
    EXPECT_EQ(back.b.at(m).data, ad.b.at(m).data) << m;
  }
  const auto mods2 = model::lora_modules(c, back.options, "adapter");
  ASSERT_EQ(mods2.size(), mods.size());
  io::check_adapter_matches(back, mods2, "adapter");
}

TEST(PeftAdapter, ErrorsNameFileAndTensor) {
  const dt_test::TempDir tmp("pefterr");
  const model::Config c = dt_test::tiny_moe_mtp_config();
  const auto mods = model::lora_modules(c, {}, "test");
  const std::string dir = tmp.path.string();
  const auto fresh = [&] { io::save_peft_adapter(dir, random_adapter(mods, 4)); };
  fresh();
  edit_config(tmp.path, [](nlohmann::json& j) { j["use_dora"] = true; });
  dt_test::expect_error([&] { io::load_peft_adapter(dir); },
                        {"adapter_config.json", "use_dora", "not supported"});
  fresh();
  edit_config(tmp.path, [](nlohmann::json& j) { j["peft_type"] = "IA3"; });
  dt_test::expect_error([&] { io::load_peft_adapter(dir); }, {"peft_type", "\"IA3\"", "LORA"});
  fresh();
  edit_config(tmp.path, [](nlohmann::json& j) { j["r"] = 8; });
  dt_test::expect_error([&] { io::load_peft_adapter(dir); },
                        {"adapter_model.safetensors", "lora_A.weight", "[4, 24]", "r = 8"});
  fresh();
  edit_config(tmp.path, [](nlohmann::json& j) { j["rank_pattern"] = {{"q_proj", 8}}; });
  dt_test::expect_error([&] { io::load_peft_adapter(dir); }, {"rank_pattern", "not supported"});
  // A stray tensor and half a module.
  io::PeftAdapter ad = random_adapter(mods, 4);
  ad.a.emplace("model.layers.0.mlp.gate", core::Tensor({4, 24}));
  dt_test::expect_error([&] { io::save_peft_adapter(dir, ad); }, {"has lora_A but no lora_B"});
  fresh();
  {
    core::Tensor t({2});
    io::write_safetensors((tmp.path / io::kAdapterWeightsName).string(),
                          {{"base_model.model.x.weight", {"F32", {2}, t.ptr(), {}}}});
    dt_test::expect_error(
        [&] { io::load_peft_adapter(dir); },
        {"adapter_model.safetensors", "'base_model.model.x.weight'", "is not a LoRA weight"});
  }
  fresh();
  io::write_safetensors((tmp.path / io::kAdapterWeightsName).string(),
                        {{"base_model.model.model.layers.0.linear_attn.out_proj.lora_A.weight",
                          {"F32", {4, 12}, random_adapter(mods, 4).a.begin()->second.ptr(), {}}}});
  dt_test::expect_error([&] { io::load_peft_adapter(dir); },
                        {"module model.layers.0.linear_attn.out_proj has lora_A but no lora_B"});
  dt_test::expect_error([&] { io::load_peft_adapter((tmp.path / "none").string()); },
                        {"adapter_config.json: not found"});
  // Against the model: a module the options do not adapt, and one missing.
  fresh();
  io::PeftAdapter back = io::load_peft_adapter(dir);
  model::LoraOptions fewer;
  fewer.targets = {"q_proj"};
  dt_test::expect_error(
      [&] { io::check_adapter_matches(back, model::lora_modules(c, fewer, "t"), "adapter"); },
      {"adapter: adapts module", "which is not a linear layer this model adapts"});
  back.a.erase(mods[0].name);
  dt_test::expect_error([&] { io::check_adapter_matches(back, mods, "adapter"); },
                        {"has no adapter for module " + mods[0].name});
}
