// config.json parsing (text-only and multimodal), validation errors, and the parameter inventory.

#include <fstream>
#include <set>

#include "core/error.h"
#include "model/config.h"
#include "test_util.h"

using namespace deltatron;
using model::LayerType;
using nlohmann::json;

namespace {

constexpr const char* kSrc = "/cfg/config.json";

using dt_test::expect_error;

// A small dense text-only config: 4 layers (GDN, GDN, GDN, attention by the default interval).
json small_text() {
  return json::parse(R"({
    "model_type": "qwen3_5_text",
    "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 4, "intermediate_size": 6,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
    "linear_conv_kernel_dim": 3, "linear_key_head_dim": 3, "linear_value_head_dim": 5,
    "linear_num_key_heads": 1, "linear_num_value_heads": 2,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                        "partial_rotary_factor": 0.5, "mrope_section": [1, 0, 0]}
  })");
}

// The same text model wrapped as the released multimodal config.
json small_mm() {
  json t = small_text();
  t["model_type"] = "qwen3_5_text";
  return json{{"model_type", "qwen3_5"},
              {"architectures", {"Qwen3_5ForConditionalGeneration"}},
              {"text_config", t},
              {"vision_config", {{"depth", 2}}},
              {"image_token_id", 248056}};
}

model::Config parse(const json& j) { return model::parse_config(j, kSrc); }

}  // namespace

TEST(Config, TextOnlyFieldsAndDefaults) {
  const model::Config c = parse(small_text());
  EXPECT_EQ(c.model_type, "qwen3_5_text");
  EXPECT_EQ(c.layout, model::CheckpointLayout::text_only);
  EXPECT_EQ(c.prefix, "model.");
  EXPECT_EQ(c.name("norm.weight"), "model.norm.weight");
  EXPECT_EQ(c.vocab_size, 11);
  EXPECT_EQ(c.hidden_size, 8);
  EXPECT_EQ(c.intermediate_size, 6);
  EXPECT_EQ(c.head_dim, 4);
  EXPECT_EQ(c.layer_types,
            (std::vector<LayerType>{LayerType::linear_attention, LayerType::linear_attention,
                                    LayerType::linear_attention, LayerType::full_attention}));
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.partial_rotary_factor, 0.5);
  EXPECT_EQ(c.rotary_dim(), 2);
  EXPECT_EQ(c.mrope_section, (std::array<int, 3>{1, 0, 0}));
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.pad_token_id.has_value());
  EXPECT_FALSE(c.is_moe());
  EXPECT_EQ(c.mtp_num_hidden_layers, 0);
  EXPECT_EQ(c.linear_conv_kernel_dim, 3);
  EXPECT_EQ(c.raw, small_text());
}

TEST(Config, MultimodalWrapper) {
  json j = small_mm();
  j["text_config"]["mtp_num_hidden_layers"] = 1;
  j["text_config"]["pad_token_id"] = 3;
  const model::Config c = parse(j);
  EXPECT_EQ(c.model_type, "qwen3_5_text");
  EXPECT_EQ(c.layout, model::CheckpointLayout::multimodal);
  EXPECT_EQ(c.prefix, "model.language_model.");
  EXPECT_EQ(c.hidden_size, 8);
  EXPECT_EQ(c.mtp_num_hidden_layers, 1);
  EXPECT_EQ(c.pad_token_id, 3);
  EXPECT_EQ(c.raw, j);  // the whole file, not just text_config

  json bad = small_mm();
  bad["text_config"]["model_type"] = "qwen3_5_moe_text";
  expect_error([&] { parse(bad); }, {kSrc, "text_config.model_type"});
  bad = small_mm();
  bad.erase("text_config");
  expect_error([&] { parse(bad); }, {kSrc, "text_config"});
}

TEST(Config, TieFlagPrecedence) {
  json j = small_mm();
  j["tie_word_embeddings"] = true;
  j["text_config"]["tie_word_embeddings"] = false;
  EXPECT_TRUE(parse(j).tie_word_embeddings);
  j["tie_word_embeddings"] = false;
  j["text_config"]["tie_word_embeddings"] = true;
  EXPECT_FALSE(parse(j).tie_word_embeddings);
  j.erase("tie_word_embeddings");
  EXPECT_TRUE(parse(j).tie_word_embeddings);  // only text_config says so
  json t = small_text();
  t["tie_word_embeddings"] = true;
  EXPECT_TRUE(parse(t).tie_word_embeddings);
  t["tie_word_embeddings"] = "yes";
  expect_error([&] { parse(t); }, {kSrc, "tie_word_embeddings"});
}

TEST(Config, LayerTypesIntervalAndLegacyNames) {
  json j = small_text();
  j["full_attention_interval"] = 2;
  EXPECT_EQ(parse(j).layer_types,
            (std::vector<LayerType>{LayerType::linear_attention, LayerType::full_attention,
                                    LayerType::linear_attention, LayerType::full_attention}));
  // An explicit list wins over the interval; legacy names map to the current ones.
  j["layer_types"] = {"attention", "mamba", "full_attention", "linear_attention"};
  EXPECT_EQ(parse(j).layer_types,
            (std::vector<LayerType>{LayerType::full_attention, LayerType::linear_attention,
                                    LayerType::full_attention, LayerType::linear_attention}));
  j["layer_types"] = {"linear_attention", "sliding_attention", "full_attention",
                      "linear_attention"};
  expect_error([&] { parse(j); }, {kSrc, "layer_types[1]", "sliding_attention"});
  j["layer_types"] = {"linear_attention", "full_attention"};
  expect_error([&] { parse(j); }, {kSrc, "layer_types", "2 entries", "num_hidden_layers is 4"});
  j.erase("layer_types");
  j["full_attention_interval"] = 0;
  expect_error([&] { parse(j); }, {kSrc, "full_attention_interval"});
}

TEST(Config, RopeV5LegacyAndDefaults) {
  // Legacy: top-level rope_theta and partial_rotary_factor, rope_scaling with mrope.
  json j = small_text();
  j.erase("rope_parameters");
  j["rope_theta"] = 5000.0;
  j["partial_rotary_factor"] = 1.0;
  j["rope_scaling"] = {{"type", "mrope"}, {"mrope_section", {1, 1, 0}}};
  model::Config c = parse(j);
  EXPECT_DOUBLE_EQ(c.rope_theta, 5000.0);
  EXPECT_EQ(c.rotary_dim(), 4);
  EXPECT_EQ(c.mrope_section, (std::array<int, 3>{1, 1, 0}));
  // Nothing at all: HF defaults theta 10000, factor 0.25; sections default to summing right.
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j.erase("partial_rotary_factor");
  j["head_dim"] = 16;
  c = parse(j);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_DOUBLE_EQ(c.partial_rotary_factor, 0.25);
  EXPECT_EQ(c.rotary_dim(), 4);
  EXPECT_EQ(c.mrope_section, (std::array<int, 3>{2, 0, 0}));
  j["head_dim"] = 256;  // released sizes: HF's [11, 11, 10]
  EXPECT_EQ(parse(j).mrope_section, (std::array<int, 3>{11, 11, 10}));

  j = small_text();
  j["rope_parameters"]["mrope_section"] = {1, 1, 1};
  expect_error([&] { parse(j); }, {kSrc, "rope_parameters.mrope_section", "sums to 3"});
  j = small_text();
  j["head_dim"] = 6;  // 6 * 0.5 = 3: odd
  j["rope_parameters"].erase("mrope_section");
  expect_error([&] { parse(j); }, {kSrc, "rotary dim", "even"});
  j = small_text();
  j["rope_parameters"]["rope_type"] = "yarn";
  expect_error([&] { parse(j); }, {kSrc, "rope_type", "yarn"});
  j = small_text();
  j["rope_parameters"]["partial_rotary_factor"] = 1.5;
  expect_error([&] { parse(j); }, {kSrc, "partial_rotary_factor"});
}

TEST(Config, MissingAndInvalidFields) {
  for (const char* f :
       {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "intermediate_size", "linear_key_head_dim",
        "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads"}) {
    json j = small_text();
    j.erase(f);
    expect_error([&] { parse(j); }, {kSrc, "missing required field", f});
    json m = small_mm();
    m["text_config"].erase(f);
    expect_error([&] { parse(m); }, {kSrc, std::string("text_config.") + f});
  }
  // Without linear-attention layers the linear sizes are optional.
  json j = small_text();
  j["layer_types"] = {"full_attention", "full_attention", "full_attention", "full_attention"};
  for (const char* f : {"linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads",
                        "linear_num_value_heads"})
    j.erase(f);
  EXPECT_NO_THROW(parse(j));

  j = small_text();
  j["hidden_size"] = "8";
  expect_error([&] { parse(j); }, {kSrc, "hidden_size", "integer"});
  j = small_text();
  j["hidden_size"] = 0;
  expect_error([&] { parse(j); }, {kSrc, "hidden_size", "positive"});
  j = small_text();
  j["num_key_value_heads"] = 3;
  expect_error([&] { parse(j); }, {kSrc, "num_attention_heads", "divisible"});
  j = small_text();
  j["linear_num_value_heads"] = 3;
  j["linear_num_key_heads"] = 2;
  expect_error([&] { parse(j); }, {kSrc, "linear_num_value_heads", "divisible"});
  j = small_text();
  j["model_type"] = "qwen3_next";
  expect_error([&] { parse(j); }, {kSrc, "unknown model_type", "qwen3_next"});
  j.erase("model_type");
  expect_error([&] { parse(j); }, {kSrc, "model_type"});
  j = small_text();
  j["pad_token_id"] = 11;
  expect_error([&] { parse(j); }, {kSrc, "pad_token_id"});
  expect_error([&] { model::parse_config(json::array(), kSrc); }, {kSrc});
}

// The model computes SiLU; another hidden_act must not be trained as SiLU silently.
TEST(Config, HiddenActOtherThanSiluIsRefused) {
  json j = small_text();
  j["hidden_act"] = "gelu";
  expect_error([&] { parse(j); }, {kSrc, "hidden_act", "gelu", "silu"});
  json m = small_mm();
  m["text_config"]["hidden_act"] = "relu";
  expect_error([&] { parse(m); }, {kSrc, "text_config.hidden_act", "relu"});
  for (const char* ok : {"silu", "swish"}) {
    j["hidden_act"] = ok;
    EXPECT_NO_THROW(parse(j)) << ok;
  }
  j.erase("hidden_act");
  EXPECT_NO_THROW(parse(j));
}

// A small MoE text config: E=4, k=2, F=6, Fs=5.
json small_moe() {
  json j = small_text();
  j["model_type"] = "qwen3_5_moe_text";
  j.erase("intermediate_size");
  j["num_experts"] = 4;
  j["num_experts_per_tok"] = 2;
  j["moe_intermediate_size"] = 6;
  j["shared_expert_intermediate_size"] = 5;
  j["router_aux_loss_coef"] = 0.01;
  return j;
}

TEST(Config, MoeFieldsAndValidation) {
  model::Config c = parse(small_moe());
  EXPECT_TRUE(c.is_moe());
  EXPECT_EQ(c.model_type, "qwen3_5_moe_text");
  EXPECT_EQ(c.intermediate_size, 0);
  EXPECT_EQ(c.num_experts, 4);
  EXPECT_EQ(c.num_experts_per_tok, 2);
  EXPECT_EQ(c.moe_intermediate_size, 6);
  EXPECT_EQ(c.shared_expert_intermediate_size, 5);
  EXPECT_DOUBLE_EQ(c.router_aux_loss_coef, 0.01);
  EXPECT_FALSE(c.mtp_enabled);

  // Absent fields take HF's defaults; intermediate_size is not required.
  json j = small_text();
  j["model_type"] = "qwen3_5_moe_text";
  j.erase("intermediate_size");
  c = parse(j);
  EXPECT_EQ(c.num_experts, 256);
  EXPECT_EQ(c.num_experts_per_tok, 8);
  EXPECT_EQ(c.moe_intermediate_size, 512);
  EXPECT_EQ(c.shared_expert_intermediate_size, 512);
  EXPECT_DOUBLE_EQ(c.router_aux_loss_coef, 0.001);

  j = small_moe();
  j["shared_expert_intermediate_size"] = 0;  // no shared expert
  EXPECT_EQ(parse(j).shared_expert_intermediate_size, 0);

  j = small_moe();
  j["num_experts_per_tok"] = 5;
  expect_error([&] { parse(j); }, {kSrc, "num_experts_per_tok = 5", "num_experts = 4"});
  j["num_experts_per_tok"] = 0;
  expect_error([&] { parse(j); }, {kSrc, "num_experts_per_tok = 0", "num_experts = 4"});
  j = small_moe();
  j["num_experts"] = 0;
  expect_error([&] { parse(j); }, {kSrc, "num_experts", "positive"});
  j = small_moe();
  j["moe_intermediate_size"] = 0;
  expect_error([&] { parse(j); }, {kSrc, "moe_intermediate_size", "positive"});
  j = small_moe();
  j["shared_expert_intermediate_size"] = -1;
  expect_error([&] { parse(j); }, {kSrc, "shared_expert_intermediate_size", ">= 0"});
  j = small_moe();
  j["router_aux_loss_coef"] = -0.5;
  expect_error([&] { parse(j); }, {kSrc, "router_aux_loss_coef", ">= 0"});
  j = small_moe();
  j["num_experts"] = 2.5;
  expect_error([&] { parse(j); }, {kSrc, "num_experts", "integer"});

  json m = small_mm();
  m["model_type"] = "qwen3_5_moe";
  m["text_config"] = small_moe();
  m["text_config"]["num_experts_per_tok"] = 7;
  expect_error([&] { parse(m); }, {kSrc, "text_config.num_experts_per_tok = 7", "num_experts = 4"});
  m["text_config"]["num_experts_per_tok"] = 2;
  EXPECT_EQ(parse(m).model_type, "qwen3_5_moe_text");
  EXPECT_EQ(parse(m).prefix, "model.language_model.");
  EXPECT_EQ(parse(m).num_experts, 4);
  m["text_config"]["model_type"] = "qwen3_5_text";
  expect_error([&] { parse(m); }, {kSrc, "text_config.model_type"});
}

TEST(Config, MtpLayersFromTextConfigOrTopLevel) {
  json m = small_mm();
  EXPECT_EQ(parse(m).mtp_num_hidden_layers, 0);
  m["mtp_num_hidden_layers"] = 2;  // top level only
  EXPECT_EQ(parse(m).mtp_num_hidden_layers, 2);
  m["text_config"]["mtp_num_hidden_layers"] = 1;  // text_config wins
  EXPECT_EQ(parse(m).mtp_num_hidden_layers, 1);
  EXPECT_FALSE(parse(m).mtp_enabled);  // the loader decides
  m["text_config"]["mtp_num_hidden_layers"] = -1;
  expect_error([&] { parse(m); }, {kSrc, "text_config.mtp_num_hidden_layers", ">= 0"});
  m["text_config"].erase("mtp_num_hidden_layers");
  m["mtp_num_hidden_layers"] = "one";
  expect_error([&] { parse(m); }, {kSrc, "mtp_num_hidden_layers", "integer"});
}

TEST(Config, ParamSpecsMoe) {
  for (bool mm : {false, true})
    for (int64_t Fs : {5, 0}) {
      json j = small_moe();
      j["shared_expert_intermediate_size"] = Fs;
      if (mm) j = json{{"model_type", "qwen3_5_moe"}, {"text_config", j}};
      const model::Config c = parse(j);
      const std::string P = mm ? "model.language_model." : "model.";
      const auto specs = model::param_specs(c);
      std::map<std::string, core::Shape> m;
      for (const auto& s : specs) EXPECT_TRUE(m.emplace(s.name, s.shape).second) << s.name;
      const size_t ffn = Fs > 0 ? 7 : 3;
      // embed + 3 GDN layers x (2 + 9 + ffn) + 1 attention layer x (2 + 6 + ffn) + norm + head
      ASSERT_EQ(specs.size(), 1 + 3 * (11 + ffn) + (8 + ffn) + 1 + 1);
      for (int i = 0; i < 4; ++i) {
        const std::string f = P + "layers." + std::to_string(i) + ".mlp.";
        EXPECT_EQ(m.at(f + "gate.weight"), (core::Shape{4, 8}));
        EXPECT_EQ(m.at(f + "experts.gate_up_proj"), (core::Shape{4, 12, 8}));
        EXPECT_EQ(m.at(f + "experts.down_proj"), (core::Shape{4, 8, 6}));
        EXPECT_EQ(m.count(f + "gate_proj.weight"), 0u);
        EXPECT_EQ(m.count(f + "experts.0.gate_proj.weight"), 0u);
        if (Fs > 0) {
          EXPECT_EQ(m.at(f + "shared_expert.gate_proj.weight"), (core::Shape{5, 8}));
          EXPECT_EQ(m.at(f + "shared_expert.up_proj.weight"), (core::Shape{5, 8}));
          EXPECT_EQ(m.at(f + "shared_expert.down_proj.weight"), (core::Shape{8, 5}));
          EXPECT_EQ(m.at(f + "shared_expert_gate.weight"), (core::Shape{1, 8}));
        } else {
          EXPECT_EQ(m.count(f + "shared_expert.gate_proj.weight"), 0u);
          EXPECT_EQ(m.count(f + "shared_expert_gate.weight"), 0u);
        }
        const auto mlp = model::mlp_param_specs(c, f);
        ASSERT_EQ(mlp.size(), ffn);
        EXPECT_EQ(mlp[0].name, f + "gate.weight");
      }
      // The MLP block of layer 0 sits right after its mixer, in mlp_param_specs order.
      const auto mlp0 = model::mlp_param_specs(c, P + "layers.0.mlp.");
      for (size_t k = 0; k < mlp0.size(); ++k) EXPECT_EQ(specs[1 + 11 + k].name, mlp0[k].name);
      EXPECT_EQ(model::expert_module_prefixes(c).size(), 4u);
      EXPECT_EQ(model::expert_module_prefixes(c)[0], P + "layers.0.mlp.experts.");
    }
  EXPECT_TRUE(model::expert_module_prefixes(parse(small_text())).empty());
}

TEST(Config, ParamSpecsMtp) {
  for (bool moe : {false, true}) {
    json j = moe ? small_moe() : small_text();
    j["mtp_num_hidden_layers"] = 2;
    model::Config c = parse(j);
    const size_t base = model::param_specs(c).size();  // MTP not enabled: no mtp.* names
    c.mtp_enabled = true;
    const auto specs = model::param_specs(c);
    const size_t ffn = moe ? 7 : 3, per_layer = 2 + 6 + ffn;
    ASSERT_EQ(specs.size(), base + 4 + 2 * per_layer);
    std::map<std::string, core::Shape> m;
    for (const auto& s : specs) EXPECT_TRUE(m.emplace(s.name, s.shape).second) << s.name;
    for (size_t k = 0; k < base; ++k) EXPECT_NE(specs[k].name.rfind("mtp.", 0), 0u);
    EXPECT_EQ(specs[base].name, "mtp.fc.weight");
    EXPECT_EQ(specs[base].shape, (core::Shape{8, 16}));
    EXPECT_EQ(specs.back().name, "mtp.norm.weight");
    EXPECT_EQ(m.at("mtp.pre_fc_norm_embedding.weight"), (core::Shape{8}));
    EXPECT_EQ(m.at("mtp.pre_fc_norm_hidden.weight"), (core::Shape{8}));
    for (int jj = 0; jj < 2; ++jj) {
      const std::string l = "mtp.layers." + std::to_string(jj) + ".";
      EXPECT_EQ(m.at(l + "input_layernorm.weight"), (core::Shape{8}));
      EXPECT_EQ(m.at(l + "post_attention_layernorm.weight"), (core::Shape{8}));
      // Full attention with the main layers' shapes (layer 3 is full attention).
      for (const char* w : {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"})
        EXPECT_EQ(m.at(l + "self_attn." + w + ".weight"),
                  m.at("model.layers.3.self_attn." + std::string(w) + ".weight"))
            << w;
      for (const auto& s : model::mlp_param_specs(c, "model.layers.3.mlp."))
        EXPECT_EQ(m.at(l + "mlp." + s.name.substr(std::string("model.layers.3.mlp.").size())),
                  s.shape)
            << s.name;
    }
    if (moe) {
      const auto mods = model::expert_module_prefixes(c);
      ASSERT_EQ(mods.size(), 6u);
      EXPECT_EQ(mods[4], "mtp.layers.0.mlp.experts.");
      EXPECT_EQ(mods[5], "mtp.layers.1.mlp.experts.");
    }
  }
}

TEST(Config, ParamSpecsBothLayouts) {
  for (bool mm : {false, true}) {
    json j = mm ? small_mm() : small_text();
    const model::Config c = parse(j);
    const std::string P = mm ? "model.language_model." : "model.";
    const auto specs = model::param_specs(c);
    // embed + 3 GDN layers x (2 norms + 9 + 3 mlp) + 1 attention layer x (2 + 6 + 3) + norm + head
    ASSERT_EQ(specs.size(), 1u + 3 * 14 + 11 + 1 + 1);
    std::map<std::string, core::Shape> m;
    for (const auto& s : specs) EXPECT_TRUE(m.emplace(s.name, s.shape).second) << s.name;
    EXPECT_EQ(specs.front().name, P + "embed_tokens.weight");
    EXPECT_EQ(specs.front().shape, (core::Shape{11, 8}));
    EXPECT_EQ(specs[1].name, P + "layers.0.input_layernorm.weight");
    EXPECT_EQ(specs[2].name, P + "layers.0.post_attention_layernorm.weight");
    EXPECT_EQ(specs[specs.size() - 2].name, P + "norm.weight");
    EXPECT_EQ(specs.back().name, "lm_head.weight");  // top level, no prefix
    EXPECT_EQ(specs.back().shape, (core::Shape{11, 8}));

    const int64_t Kd = 1 * 3, Vd = 2 * 5, C = 2 * Kd + Vd;
    const std::string g = P + "layers.0.linear_attn.";
    EXPECT_EQ(m.at(g + "in_proj_qkv.weight"), (core::Shape{C, 8}));
    EXPECT_EQ(m.at(g + "in_proj_z.weight"), (core::Shape{Vd, 8}));
    EXPECT_EQ(m.at(g + "in_proj_b.weight"), (core::Shape{2, 8}));
    EXPECT_EQ(m.at(g + "in_proj_a.weight"), (core::Shape{2, 8}));
    EXPECT_EQ(m.at(g + "conv1d.weight"), (core::Shape{C, 1, 3}));
    EXPECT_EQ(m.at(g + "dt_bias"), (core::Shape{2}));
    EXPECT_EQ(m.at(g + "A_log"), (core::Shape{2}));
    EXPECT_EQ(m.at(g + "norm.weight"), (core::Shape{5}));
    EXPECT_EQ(m.at(g + "out_proj.weight"), (core::Shape{8, Vd}));
    const std::string a = P + "layers.3.self_attn.";
    EXPECT_EQ(m.at(a + "q_proj.weight"), (core::Shape{2 * 4 * 4, 8}));
    EXPECT_EQ(m.at(a + "k_proj.weight"), (core::Shape{2 * 4, 8}));
    EXPECT_EQ(m.at(a + "v_proj.weight"), (core::Shape{2 * 4, 8}));
    EXPECT_EQ(m.at(a + "o_proj.weight"), (core::Shape{8, 4 * 4}));
    EXPECT_EQ(m.at(a + "q_norm.weight"), (core::Shape{4}));
    EXPECT_EQ(m.at(a + "k_norm.weight"), (core::Shape{4}));
    EXPECT_EQ(m.count(P + "layers.3.linear_attn.A_log"), 0u);
    EXPECT_EQ(m.count(P + "layers.0.self_attn.q_proj.weight"), 0u);
    const std::string f = P + "layers.2.mlp.";
    EXPECT_EQ(m.at(f + "gate_proj.weight"), (core::Shape{6, 8}));
    EXPECT_EQ(m.at(f + "up_proj.weight"), (core::Shape{6, 8}));
    EXPECT_EQ(m.at(f + "down_proj.weight"), (core::Shape{8, 6}));

    // Tied (the top-level flag in both layouts): no lm_head.
    j["tie_word_embeddings"] = true;
    const auto tied = model::param_specs(parse(j));
    EXPECT_EQ(tied.size(), specs.size() - 1);
    EXPECT_EQ(tied.back().name, P + "norm.weight");
  }
}

TEST(Config, LoadConfigFromFile) {
  const dt_test::TempDir dir("cfg");
  const std::string path = dir / "config.json";
  std::ofstream(path) << small_mm().dump(2);
  EXPECT_EQ(model::load_config(path).prefix, "model.language_model.");
  std::ofstream(path) << "{\"model_type\": \"qwen3_5\",";
  expect_error([&] { model::load_config(path); }, {path, "bad JSON"});
  json j = small_text();
  j.erase("head_dim");
  std::ofstream(path) << j.dump();
  expect_error([&] { model::load_config(path); }, {path, "head_dim"});
  expect_error([&] { model::load_config(dir / "nope.json"); }, {"nope.json"});
}
