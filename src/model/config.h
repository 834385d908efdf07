// Qwen3.5 text-model configuration parsed from an HF config.json, and the parameter inventory.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace deltatron::model {

enum class LayerType { linear_attention, full_attention };
enum class CheckpointLayout { text_only, multimodal };

// Field names keep HF spellings. Values are those of the text model (text_config for the
// multimodal wrapper). Defaults follow HF's Qwen3_5TextConfig / Qwen3_5MoeTextConfig where the
// field is optional; see parse_config for which fields are required.
struct Config {
  std::string model_type;  // of the TEXT model: "qwen3_5_text" / "qwen3_5_moe_text"
  CheckpointLayout layout = CheckpointLayout::text_only;
  std::string prefix;  // "model." (text-only) or "model.language_model." (multimodal)
  int64_t vocab_size = 0, hidden_size = 0, num_hidden_layers = 0;
  int64_t intermediate_size = 0;  // 0 for MoE
  int64_t num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0;
  double rms_norm_eps = 1e-6;
  std::vector<LayerType> layer_types;  // one per layer
  int64_t linear_conv_kernel_dim = 4, linear_key_head_dim = 128, linear_value_head_dim = 128,
          linear_num_key_heads = 16, linear_num_value_heads = 32;
  double rope_theta = 10000.0, partial_rotary_factor = 0.25;
  std::array<int, 3> mrope_section{};  // T, H, W frequency counts; sum == rotary_dim() / 2
  bool tie_word_embeddings = false;    // the top-level flag wins over text_config's
  std::optional<int64_t> pad_token_id;
  // MoE, parsed only (checkpoint loading rejects MoE models for now).
  int64_t num_experts = 0, num_experts_per_tok = 0, moe_intermediate_size = 0,
          shared_expert_intermediate_size = 0;
  double router_aux_loss_coef = 0.001;
  int64_t mtp_num_hidden_layers = 0;
  nlohmann::json raw;  // the whole config.json as read (written back unchanged on save)

  // Rotated dims per head: int(head_dim * partial_rotary_factor), truncated as HF does.
  int64_t rotary_dim() const;
  std::string name(const std::string& rel) const { return prefix + rel; }
  bool is_moe() const { return num_experts > 0; }
};

// Parses and validates a config.json object. Accepts the text-only model types
// ("qwen3_5_text", "qwen3_5_moe_text") and the multimodal wrappers ("qwen3_5", "qwen3_5_moe")
// with a text_config. Every error is one core::Error line naming `source` and the field.
//  - required: vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
//    num_key_value_heads, head_dim; intermediate_size (dense); linear_key_head_dim,
//    linear_value_head_dim, linear_num_key_heads, linear_num_value_heads (when any layer is
//    linear_attention).
//  - layer_types, or else full_attention_interval (default 4): layer i is full attention iff
//    (i+1) % interval == 0. Legacy names "attention" -> full, "mamba" -> linear.
//  - rope: rope_parameters (v5), else the legacy rope_scaling dict, plus top-level rope_theta /
//    partial_rotary_factor as fallbacks; defaults theta 10000, factor 0.25; rope_type must be
//    "default" (or legacy "mrope"). mrope_section defaults to HF's [11, 11, 10] when that sums
//    to rotary_dim/2, otherwise to [rotary_dim/2, 0, 0].
Config parse_config(const nlohmann::json& j, const std::string& source);
Config load_config(const std::string& path);

struct ParamSpec {
  std::string name;
  core::Shape shape;
};

// Every parameter of the text model (dense FFN for now; the MoE issue extends this), full HF
// names in the config's layout, in a fixed order: embed_tokens; per layer input_layernorm,
// post_attention_layernorm, the mixer (self_attn.* or linear_attn.*), mlp.*; the final norm;
// lm_head.weight (top level, only when the embeddings are untied).
std::vector<ParamSpec> param_specs(const Config& c);

}  // namespace deltatron::model
