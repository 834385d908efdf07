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

// What the vision tower does in a run (qwen35-vl spec 6). off: model.visual.* are not parameters
// (carried through untouched) and a pack with images is an error. frozen: the tower and merger
// run forward only, their output is a constant (LLaMA-Factory's and ms-swift's default). merger:
// the merger is trained, the tower is frozen (alignment). full: tower and merger are trained.
// Not read from config.json: the loader sets it (io::LoadOptions::vision).
enum class VisionMode { off, frozen, merger, full };
// "off" / "frozen" / "merger" / "full"; parse_vision_mode fails naming `where` for another word.
const char* vision_mode_name(VisionMode m);
VisionMode parse_vision_mode(const std::string& s, const std::string& where);

// vision_config of the multimodal wrapper (HF Qwen3_5VisionConfig; spec 1.1). head_dim =
// hidden_size / num_heads (no key). deepstack_visual_indexes and model_type are ignored.
struct VisionConfig {
  int64_t depth = 0, hidden_size = 0, intermediate_size = 0, num_heads = 0;
  int64_t in_channels = 3, patch_size = 16, temporal_patch_size = 2, spatial_merge_size = 2;
  int64_t out_hidden_size = 0, num_position_embeddings = 2304;
  std::string hidden_act = "gelu_pytorch_tanh";  // the blocks' MLP; the merger uses exact GELU
  double rope_theta = 10000.0;                   // vision_config.rope_parameters.rope_theta
  int64_t head_dim() const { return num_heads > 0 ? hidden_size / num_heads : 0; }
  // Columns of a pixel_values row: in_channels * temporal_patch_size * patch_size^2.
  int64_t patch_dim() const { return in_channels * temporal_patch_size * patch_size * patch_size; }
  int64_t merge_unit() const { return spatial_merge_size * spatial_merge_size; }
  int64_t grid_side() const;  // sqrt(num_position_embeddings)
};

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
  // MoE (model_type qwen3_5_moe_text; all 0 for dense). shared_expert_intermediate_size 0 means
  // the layers have no shared expert.
  int64_t num_experts = 0, num_experts_per_tok = 0, moe_intermediate_size = 0,
          shared_expert_intermediate_size = 0;
  double router_aux_loss_coef = 0.001;
  // Multi-Token Prediction depth as declared by the config (text_config, else top level).
  int64_t mtp_num_hidden_layers = 0;
  // True iff mtp_num_hidden_layers > 0 and the mtp.* weights are parameters (trained). Not read
  // from config.json: io::load_checkpoint sets it (false with LoadOptions::ignore_mtp, where the
  // mtp.* tensors stay pass-through bytes). param_specs() lists the mtp.* names only when set.
  bool mtp_enabled = false;
  // Vision (multimodal wrapper with a vision_config): the tower's config, the special token ids
  // (top level; HF's defaults when absent) and the run's mode (set by the loader, like
  // mtp_enabled). param_specs() lists the model.visual.* names only when vision_mode != off.
  bool has_vision = false;
  VisionConfig vision;
  int64_t image_token_id = 248056, video_token_id = 248057, vision_start_token_id = 248053,
          vision_end_token_id = 248054;
  VisionMode vision_mode = VisionMode::off;
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
//  - MoE (qwen3_5_moe_text / qwen3_5_moe): num_experts >= 1, 1 <= num_experts_per_tok <=
//    num_experts, moe_intermediate_size > 0, shared_expert_intermediate_size >= 0 (0: no shared
//    expert), router_aux_loss_coef >= 0; absent ones take HF's defaults (256, 8, 512, 512,
//    0.001). intermediate_size is not read for MoE (stays 0).
//  - mtp_num_hidden_layers >= 0 (default 0), from the text config or else the top level.
//    mtp_enabled is left false (the checkpoint loader decides).
//  - vision_config (multimodal only; optional): depth, hidden_size, intermediate_size, num_heads,
//    out_hidden_size required; in_channels, patch_size, temporal_patch_size, spatial_merge_size,
//    num_position_embeddings, hidden_act, rope_parameters.rope_theta optional (HF defaults).
//    Whether the engine supports it is checked by check_vision, when the tower is used.
Config parse_config(const nlohmann::json& j, const std::string& source);
// The vision tower can run with this config (a one-line core::Error naming `source` otherwise):
// a vision_config, hidden_size divisible by num_heads with head_dim % 4 == 0, hidden_act
// gelu_pytorch_tanh, a square num_position_embeddings, out_hidden_size = the text hidden_size,
// the image token id inside the vocabulary.
void check_vision(const Config& c, const std::string& source);
Config load_config(const std::string& path);

struct ParamSpec {
  std::string name;
  core::Shape shape;
};

// Every parameter of the text model, full HF names in the config's layout, in a fixed order:
// embed_tokens; per layer input_layernorm, post_attention_layernorm, the mixer (self_attn.* or
// linear_attn.*), mlp.*; the final norm; lm_head.weight (top level, only when the embeddings are
// untied); then, only when c.mtp_enabled, the MTP module (top level, no language-model prefix).
//
// FFN names with P = "<layer>.mlp." (D hidden, F FFN width, E experts, Fs shared width):
//  - dense: P.gate_proj.weight [F, D], P.up_proj.weight [F, D], P.down_proj.weight [D, F].
//  - MoE, in the canonical FUSED expert layout (io/hf_layout converts per-expert files):
//    P.gate.weight [E, D] (router), P.experts.gate_up_proj [E, 2F, D] (rows [0, F) gate,
//    [F, 2F) up), P.experts.down_proj [E, D, F]; when Fs > 0 also
//    P.shared_expert.{gate_proj,up_proj}.weight [Fs, D], P.shared_expert.down_proj.weight
//    [D, Fs], P.shared_expert_gate.weight [1, D].
// MTP, for j < mtp_num_hidden_layers: mtp.fc.weight [D, 2D], mtp.pre_fc_norm_embedding.weight
// [D], mtp.pre_fc_norm_hidden.weight [D]; per j mtp.layers.{j}.{input_layernorm,
// post_attention_layernorm}.weight [D], mtp.layers.{j}.self_attn.* (as a main full-attention
// layer), mtp.layers.{j}.mlp.* (dense or MoE as above); finally mtp.norm.weight [D].
// Vision (c.vision_mode != off), after everything else, with V = "model.visual." (D vision hidden,
// I intermediate, O out_hidden_size, U = spatial_merge_size^2):
// V.patch_embed.proj.weight [D, in_channels, temporal_patch_size, patch_size, patch_size],
// V.patch_embed.proj.bias [D], V.pos_embed.weight [num_position_embeddings, D]; per block i
// V.blocks.{i}.{norm1,norm2}.{weight,bias} [D], .attn.qkv.weight [3D, D], .attn.qkv.bias [3D],
// .attn.proj.weight [D, D], .attn.proj.bias [D], .mlp.linear_fc1.weight [I, D], .bias [I],
// .mlp.linear_fc2.weight [D, I], .bias [D]; V.merger.norm.{weight,bias} [D],
// V.merger.linear_fc1.weight [UD, UD], .bias [UD], V.merger.linear_fc2.weight [O, UD], .bias [O].
std::vector<ParamSpec> param_specs(const Config& c);
// The vision tower's part of param_specs (empty when c.vision_mode is off).
std::vector<ParamSpec> vision_param_specs(const Config& c);
// Whether the parameter `name` is trained under c.vision_mode: every non-vision parameter; the
// model.visual.merger.* ones in merger and full mode; the rest of model.visual.* in full mode.
bool vision_trains(const Config& c, const std::string& name);

// The FFN parameters of one layer whose FFN prefix is `mlp_prefix` ("<layer>.mlp."), in the
// order param_specs() lists them.
std::vector<ParamSpec> mlp_param_specs(const Config& c, const std::string& mlp_prefix);

// The routed-expert module prefixes ("<layer>.mlp.experts.") of the parameters: every main layer
// and, when c.mtp_enabled, every MTP layer. Empty for dense models.
std::vector<std::string> expert_module_prefixes(const Config& c);

}  // namespace deltatron::model
