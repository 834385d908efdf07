// LoRA targets (model/lora.h): for every preset, the default targets adapt every attention, GDN,
// dense-MLP and shared-expert projection of every layer (counted per layer type from the config,
// independently of how the targets are resolved), "all-linear" adds nothing else (the router,
// shared_expert_gate and lm_head only when named), and bad options are named.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <set>
#include <string>

#include "model/config.h"
#include "model/lora.h"
#include "model_fixture.h"
#include "test_util.h"
#include "train/presets.h"

using namespace deltatron;

namespace {

model::Config preset(const std::string& name) {
  model::Config c = model::parse_config(train::preset_config(name), "preset " + name);
  c.mtp_enabled = c.mtp_num_hidden_layers > 0;  // the MTP head is never adapted
  return c;
}

std::map<std::string, int64_t> per_block(const std::vector<model::LoraModule>& mods) {
  std::map<std::string, int64_t> n;
  for (const auto& m : mods) ++n[m.block];
  return n;
}

}  // namespace

TEST(LoraTargets, DefaultsCoverEveryProjectionOfEveryPreset) {
  for (const std::string& name : train::preset_names()) {
    SCOPED_TRACE(name);
    const model::Config c = preset(name);
    int64_t full = 0, linear = 0;
    for (auto t : c.layer_types) (t == model::LayerType::full_attention ? full : linear) += 1;
    const int64_t L = int64_t(c.layer_types.size());
    const auto mods = model::lora_modules(c, {}, "test");
    const auto n = per_block(mods);
    EXPECT_EQ(n.count("full_attention") ? n.at("full_attention") : 0, 4 * full);
    EXPECT_EQ(n.count("linear_attention") ? n.at("linear_attention") : 0, 5 * linear);
    if (c.is_moe()) {
      EXPECT_EQ(n.count("mlp"), 0u);  // the router and the routed experts are not defaults
      EXPECT_EQ(n.count("shared_expert") ? n.at("shared_expert") : 0,
                c.shared_expert_intermediate_size > 0 ? 3 * L : 0);
    } else {
      EXPECT_EQ(n.count("mlp") ? n.at("mlp") : 0, 3 * L);
    }
    EXPECT_EQ(n.count("head"), 0u);
    // Every module is a real [out, in] weight of the model, none twice, none of the MTP head.
    std::map<std::string, core::Shape> specs;
    for (const auto& s : model::param_specs(c)) specs[s.name] = s.shape;
    std::set<std::string> seen;
    for (const auto& m : mods) {
      ASSERT_TRUE(specs.count(m.weight)) << m.weight;
      EXPECT_EQ(specs.at(m.weight), (core::Shape{m.out, m.in})) << m.weight;
      EXPECT_TRUE(seen.insert(m.name).second) << m.name;
      EXPECT_FALSE(m.name.starts_with("mtp.")) << m.name;
    }
    // "all-linear" is the defaults plus nothing: the router, shared_expert_gate and lm_head are
    // adapted only when named.
    model::LoraOptions all;
    all.targets = {"all-linear"};
    const auto mall = model::lora_modules(c, all, "test");
    ASSERT_EQ(mall.size(), mods.size());
    for (size_t i = 0; i < mods.size(); ++i) EXPECT_EQ(mall[i].name, mods[i].name);
    EXPECT_EQ(model::lora_param_count(mods, 16) % 16, 0);
    // The module-count table (docs/lora.md): the defaults, and with the routed experts.
    model::LoraOptions ex;
    ex.experts = c.is_moe();
    const auto mex = model::lora_modules(c, ex, "test");
    std::printf("lora modules %-10s", name.c_str());
    for (const char* b :
         {"linear_attention", "full_attention", "mlp", "shared_expert", "experts"}) {
      const auto nb = per_block(mex);
      std::printf(" %s %lld", b, static_cast<long long>(nb.count(b) ? nb.at(b) : 0));
    }
    std::printf(" | r16 params %lld (with experts %lld)\n",
                static_cast<long long>(model::lora_param_count(mods, 16)),
                static_cast<long long>(model::lora_param_count(mex, 16)));
  }
}

TEST(LoraTargets, NamedOnlyModulesAndExplicitLists) {
  const model::Config moe = preset("35b-a3b");
  model::LoraOptions o;
  o.targets = {"gate", "shared_expert_gate", "lm_head"};
  const auto n = per_block(model::lora_modules(moe, o, "t"));
  EXPECT_EQ(n.at("mlp"), 2 * 40);  // mlp.gate and mlp.shared_expert_gate: "gate" is not gate_proj
  EXPECT_EQ(n.at("head"), 1);
  o.targets = {"in_proj_a", "in_proj_b"};
  const auto ab = model::lora_modules(moe, o, "t");
  EXPECT_EQ(ab.size(), 2u * 30);  // 30 GDN layers of 40
  EXPECT_EQ(ab[0].in, 2048);
  EXPECT_EQ(ab[0].out, 32);
  o.targets = {"all-linear", "gate"};
  EXPECT_EQ(model::lora_modules(moe, o, "t").size(), model::lora_modules(moe, {}, "t").size() + 40);
  const auto lines = model::lora_report(model::lora_modules(moe, {}, "t"));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0],
            "linear_attention: 150 modules in 30 layers (in_proj_qkv in_proj_z "
            "in_proj_b in_proj_a out_proj)");
  EXPECT_EQ(lines[1], "full_attention: 40 modules in 10 layers (q_proj k_proj v_proj o_proj)");
  EXPECT_EQ(lines[2], "shared_expert: 120 modules in 40 layers (gate_proj up_proj down_proj)");
}

TEST(LoraTargets, ScaleAndErrors) {
  model::LoraOptions o;
  EXPECT_DOUBLE_EQ(o.scale(), 2.0);
  o.rslora = true;
  EXPECT_DOUBLE_EQ(o.scale(), 8.0);
  const model::Config c = preset("2b");  // tied: no lm_head
  const auto err = [&](model::LoraOptions x, std::vector<std::string> parts) {
    dt_test::expect_error([&] { model::lora_modules(c, x, "run.toml"); }, parts);
  };
  model::LoraOptions bad;
  bad.targets = {"qproj"};
  err(bad, {"run.toml", "lora.targets 'qproj' matches no linear layer", "in_proj_qkv", "q_proj"});
  bad.targets = {"lm_head"};
  err(bad, {"'lm_head' matches no linear layer"});
  bad.targets = {"embed_tokens"};
  err(bad, {"embeddings are not adapted"});
  bad = {};
  bad.r = 0;
  err(bad, {"lora.r must be >= 1"});
  bad = {};
  bad.dropout = 1;
  err(bad, {"lora.dropout must be in [0, 1)"});
  bad = {};
  bad.experts = true;
  err(bad, {"no routed experts"});
  // Implemented: both fused expert tensors of every MoE decoder layer (not the MTP layer's).
  const model::Config moe = preset("35b-a3b");
  int64_t gate_up = 0, down = 0;
  for (const auto& m : model::lora_modules(moe, bad, "run.toml")) {
    if (!m.experts) continue;
    EXPECT_EQ(m.experts, moe.num_experts) << m.name;
    EXPECT_EQ(m.block, "experts");
    gate_up += m.name.ends_with(".mlp.experts.gate_up_proj");
    down += m.name.ends_with(".mlp.experts.down_proj");
    EXPECT_EQ(m.name.find("mtp."), std::string::npos);
  }
  EXPECT_EQ(gate_up, moe.num_hidden_layers);
  EXPECT_EQ(down, moe.num_hidden_layers);
}
