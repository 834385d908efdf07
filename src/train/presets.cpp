// Preset table: published Qwen3.5 sizes (spec 1.3) and tiny CPU-trainable models.
#include "train/presets.h"

#include "core/error.h"

namespace deltatron::train {

namespace {

struct Preset {
  const char* name;
  int layers, hidden, ffn, shared, experts, topk, heads, kv_heads, lin_k_heads, lin_v_heads;
  bool tied;
};

// FFN is intermediate_size (dense) or moe_intermediate_size (MoE, experts > 0). Tie flags for
// 2b and 4b are uncertain in the public sources (spec 9.1); both are taken as tied.
constexpr Preset kPresets[] = {
    {"0.8b", 24, 1024, 3584, 0, 0, 0, 8, 2, 16, 16, true},
    {"2b", 24, 2048, 6144, 0, 0, 0, 8, 2, 16, 16, true},
    {"4b", 32, 2560, 9216, 0, 0, 0, 16, 4, 16, 32, true},
    {"9b", 32, 4096, 12288, 0, 0, 0, 16, 4, 16, 32, false},
    {"27b", 64, 5120, 17408, 0, 0, 0, 24, 4, 16, 48, false},
    {"35b-a3b", 40, 2048, 512, 512, 256, 8, 16, 2, 16, 32, false},
    {"122b-a10b", 48, 3072, 1024, 1024, 256, 8, 32, 2, 16, 64, false},
    {"397b-a17b", 60, 4096, 1024, 1024, 512, 10, 32, 2, 16, 64, false},
};

nlohmann::json published(const Preset& p) {
  nlohmann::json j = {
      {"model_type", p.experts ? "qwen3_5_moe_text" : "qwen3_5_text"},
      {"architectures", {p.experts ? "Qwen3_5MoeForCausalLM" : "Qwen3_5ForCausalLM"}},
      {"vocab_size", 248320},
      {"hidden_size", p.hidden},
      {"num_hidden_layers", p.layers},
      {"num_attention_heads", p.heads},
      {"num_key_value_heads", p.kv_heads},
      {"head_dim", 256},
      {"hidden_act", "silu"},
      {"rms_norm_eps", 1e-6},
      {"max_position_embeddings", 262144},
      {"initializer_range", 0.02},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"full_attention_interval", 4},
      {"linear_conv_kernel_dim", 4},
      {"linear_key_head_dim", 128},
      {"linear_value_head_dim", 128},
      {"linear_num_key_heads", p.lin_k_heads},
      {"linear_num_value_heads", p.lin_v_heads},
      {"rope_parameters",
       {{"rope_type", "default"},
        {"rope_theta", 10000000.0},
        {"partial_rotary_factor", 0.25},
        {"mrope_section", {11, 11, 10}},
        {"mrope_interleaved", true}}},
      {"tie_word_embeddings", p.tied},
      {"mtp_num_hidden_layers", 1},
      {"eos_token_id", 248044},
      {"dtype", "bfloat16"},
  };
  nlohmann::json layer_types = nlohmann::json::array();
  for (int i = 0; i < p.layers; ++i)
    layer_types.push_back((i + 1) % 4 == 0 ? "full_attention" : "linear_attention");
  j["layer_types"] = layer_types;
  if (p.experts) {
    j["num_experts"] = p.experts;
    j["num_experts_per_tok"] = p.topk;
    j["moe_intermediate_size"] = p.ffn;
    j["shared_expert_intermediate_size"] = p.shared;
    j["router_aux_loss_coef"] = 0.001;
  } else {
    j["intermediate_size"] = p.ffn;
  }
  return j;
}

// The layout every tiny preset shares: 4 layers (3 Gated DeltaNet + 1 gated attention), small
// heads, partial interleaved MRoPE, tied embeddings, f32.
nlohmann::json tiny_layers() {
  return {
      {"num_hidden_layers", 4},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"head_dim", 32},
      {"hidden_act", "silu"},
      {"rms_norm_eps", 1e-6},
      {"max_position_embeddings", 4096},
      {"initializer_range", 0.02},
      {"full_attention_interval", 4},
      {"layer_types",
       {"linear_attention", "linear_attention", "linear_attention", "full_attention"}},
      {"linear_conv_kernel_dim", 4},
      {"linear_key_head_dim", 32},
      {"linear_value_head_dim", 32},
      {"linear_num_key_heads", 2},
      {"linear_num_value_heads", 4},
      {"rope_parameters",
       {{"rope_type", "default"},
        {"rope_theta", 10000.0},
        {"partial_rotary_factor", 0.25},
        {"mrope_section", {2, 1, 1}},
        {"mrope_interleaved", true}}},
      {"tie_word_embeddings", true},
      {"dtype", "float32"},
  };
}

// Tiny models for CPU training on the bundled byte-level tokenizer (259 ids, padded to 264).
nlohmann::json tiny(bool moe) {
  nlohmann::json j = {
      {"model_type", moe ? "qwen3_5_moe_text" : "qwen3_5_text"},
      {"architectures", {moe ? "Qwen3_5MoeForCausalLM" : "Qwen3_5ForCausalLM"}},
      {"vocab_size", 264},
      {"hidden_size", 96},
      {"mtp_num_hidden_layers", moe ? 1 : 0},
      {"eos_token_id", 256},
  };
  j.update(tiny_layers());
  if (moe) {
    j["num_experts"] = 8;
    j["num_experts_per_tok"] = 2;
    j["moe_intermediate_size"] = 96;
    j["shared_expert_intermediate_size"] = 96;
    j["router_aux_loss_coef"] = 0.001;
  } else {
    j["intermediate_size"] = 256;
  }
  return j;
}

// A tiny vision-language model on the real Qwen3.5 vocabulary (248320 ids, the vision special
// tokens at Qwen3.5's ids, spec 1.1): the multimodal wrapper (Qwen3_5ForConditionalGeneration)
// with a 4-layer text model (hidden 64) and a 2-block vision tower (hidden 64, 4 heads) whose
// patch 16, temporal patch 2 and merge 2 are Qwen3.5's, so real images go through the real
// preprocessor. An 8 x 8 learned position grid (Qwen3.5: 48 x 48), interpolated to each image.
// Qwen3_5ForConditionalGeneration around a text and a vision config (the published token ids).
nlohmann::json vl_config(const nlohmann::json& text, const nlohmann::json& vision, bool tied,
                         const char* dtype) {
  return {
      {"model_type", "qwen3_5"},
      {"architectures", {"Qwen3_5ForConditionalGeneration"}},
      {"text_config", text},
      {"vision_config", vision},
      {"image_token_id", 248056},
      {"video_token_id", 248057},
      {"vision_start_token_id", 248053},
      {"vision_end_token_id", 248054},
      {"tie_word_embeddings", tied},
      {"dtype", dtype},
  };
}

nlohmann::json tiny_vl() {
  nlohmann::json text = tiny_layers();
  text.update(nlohmann::json{
      {"model_type", "qwen3_5_text"},
      {"vocab_size", 248320},
      {"hidden_size", 64},
      {"intermediate_size", 192},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"mtp_num_hidden_layers", 0},
      {"eos_token_id", 248044},
  });
  nlohmann::json vision = {
      {"model_type", "qwen3_5_vision"},
      {"depth", 2},
      {"hidden_size", 64},
      {"intermediate_size", 128},
      {"num_heads", 4},
      {"out_hidden_size", 64},
      {"in_channels", 3},
      {"patch_size", 16},
      {"temporal_patch_size", 2},
      {"spatial_merge_size", 2},
      {"num_position_embeddings", 64},
      {"hidden_act", "gelu_pytorch_tanh"},
      {"initializer_range", 0.02},
      {"rope_parameters", {{"rope_type", "axial"}, {"rope_theta", 10000.0}}},
  };
  return vl_config(text, vision, true, "float32");
}

// The vision towers of the published dense sizes (qwen35-vl spec 1.2: depth, hidden, heads,
// intermediate; out_hidden_size = the text hidden size; patch 16, temporal 2, merge 2, a 48 x 48
// position grid, tanh GELU). The 2b row comes from Megatron-LM's table only (spec 10.1).
struct VisionPreset {
  const char* text;  // the text preset it wraps
  int depth, hidden, heads, intermediate;
};
constexpr VisionPreset kVisionPresets[] = {
    {"0.8b", 12, 768, 12, 3072}, {"2b", 24, 1024, 16, 4096},  {"4b", 24, 1024, 16, 4096},
    {"9b", 27, 1152, 16, 4304},  {"27b", 27, 1152, 16, 4304},
};

// "<size>-vl": Qwen3_5ForConditionalGeneration with the text preset as text_config and the
// size's vision tower (bench --vision; the checkpoints' layout, model.language_model.*).
nlohmann::json published_vl(const Preset& p, const VisionPreset& v) {
  nlohmann::json text = published(p);
  text.erase("architectures");
  const bool tied = text["tie_word_embeddings"].get<bool>();
  nlohmann::json vision = {
      {"model_type", "qwen3_5_vision"},
      {"depth", v.depth},
      {"hidden_size", v.hidden},
      {"intermediate_size", v.intermediate},
      {"num_heads", v.heads},
      {"out_hidden_size", p.hidden},
      {"in_channels", 3},
      {"patch_size", 16},
      {"temporal_patch_size", 2},
      {"spatial_merge_size", 2},
      {"num_position_embeddings", 2304},
      {"hidden_act", "gelu_pytorch_tanh"},
      {"initializer_range", 0.02},
      {"deepstack_visual_indexes", nlohmann::json::array()},
  };
  return vl_config(text, vision, tied, "bfloat16");
}

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> out;
  for (const auto& p : kPresets) out.push_back(p.name);
  for (const auto& v : kVisionPresets) out.push_back(std::string(v.text) + "-vl");
  out.push_back("tiny");
  out.push_back("tiny-moe");
  out.push_back("tiny-vl");
  return out;
}

nlohmann::json preset_config(const std::string& name) {
  for (const auto& p : kPresets)
    if (name == p.name) return published(p);
  for (const auto& v : kVisionPresets)
    if (name == std::string(v.text) + "-vl")
      for (const auto& p : kPresets)
        if (std::string(p.name) == v.text) return published_vl(p, v);
  if (name == "tiny") return tiny(false);
  if (name == "tiny-moe") return tiny(true);
  if (name == "tiny-vl") return tiny_vl();
  std::string names;
  for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  core::fail("unknown preset '", name, "' (known: ", names, ")");
}

}  // namespace deltatron::train

namespace deltatron::train {

nlohmann::json preset_preprocessor_config(const std::string& name) {
  const nlohmann::json c = preset_config(name);  // an unknown name fails there
  if (!c.contains("vision_config")) return nullptr;
  // Qwen3.5's published preprocessor_config.json (spec 1.3: 256^2..4096^2 pixels); tiny-vl's with
  // 64^2..256^2 pixels so small images stay small (a 64 x 64 image is 4 x 4 patches, 4 tokens).
  const bool tiny = name == "tiny-vl";
  return {
      {"size", {{"shortest_edge", tiny ? 4096 : 65536}, {"longest_edge", tiny ? 65536 : 16777216}}},
      {"patch_size", 16},
      {"temporal_patch_size", 2},
      {"merge_size", 2},
      {"image_mean", {0.5, 0.5, 0.5}},
      {"image_std", {0.5, 0.5, 0.5}},
      {"processor_class", "Qwen3VLProcessor"},
      {"image_processor_type", "Qwen2VLImageProcessorFast"}};
}

}  // namespace deltatron::train
