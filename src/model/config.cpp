// Parsing and validation of Qwen3.5 config.json (text-only and multimodal), parameter inventory.
#include "model/config.h"

#include <cmath>
#include <fstream>
#include <utility>

#include "core/error.h"

namespace deltatron::model {

using nlohmann::json;

namespace {

// Typed access to one JSON object of the config; errors name the file and the dotted field.
struct Fields {
  const json& j;
  const std::string& source;
  std::string prefix;  // "" or "text_config." or "text_config.rope_parameters."

  bool has(const std::string& k) const { return j.contains(k) && !j[k].is_null(); }
  std::string field(const std::string& k) const { return prefix + k; }

  int64_t as_int(const std::string& k) const {
    const json& v = j[k];
    if (!v.is_number_integer())
      core::fail(source, ": field ", field(k), " must be an integer, got ", v.dump());
    return v.get<int64_t>();
  }
  int64_t req_int(const std::string& k) const {
    if (!has(k)) core::fail(source, ": missing required field ", field(k));
    return as_int(k);
  }
  int64_t opt_int(const std::string& k, int64_t def) const { return has(k) ? as_int(k) : def; }
  double opt_num(const std::string& k, double def) const {
    if (!has(k)) return def;
    if (!j[k].is_number())
      core::fail(source, ": field ", field(k), " must be a number, got ", j[k].dump());
    return j[k].get<double>();
  }
  bool opt_bool(const std::string& k, bool def) const {
    if (!has(k)) return def;
    if (!j[k].is_boolean())
      core::fail(source, ": field ", field(k), " must be true or false, got ", j[k].dump());
    return j[k].get<bool>();
  }
  std::string opt_str(const std::string& k, const std::string& def) const {
    if (!has(k)) return def;
    if (!j[k].is_string())
      core::fail(source, ": field ", field(k), " must be a string, got ", j[k].dump());
    return j[k].get<std::string>();
  }
  void positive(const std::string& k, int64_t v) const {
    if (v <= 0) core::fail(source, ": field ", field(k), " must be positive, got ", v);
  }
};

std::vector<LayerType> parse_layer_types(const Fields& f, int64_t num_layers) {
  std::vector<LayerType> out;
  if (f.has("layer_types")) {
    const json& lt = f.j["layer_types"];
    if (!lt.is_array()) core::fail(f.source, ": field ", f.field("layer_types"), " must be a list");
    for (size_t i = 0; i < lt.size(); ++i) {
      const std::string s = lt[i].is_string() ? lt[i].get<std::string>() : lt[i].dump();
      if (s == "linear_attention" || s == "mamba") {
        out.push_back(LayerType::linear_attention);
      } else if (s == "full_attention" || s == "attention") {
        out.push_back(LayerType::full_attention);
      } else {
        core::fail(f.source, ": field ", f.field("layer_types"), "[", i, "] = '", s,
                   "' is not a known layer type (linear_attention, full_attention)");
      }
    }
    if (static_cast<int64_t>(out.size()) != num_layers)
      core::fail(f.source, ": field ", f.field("layer_types"), " has ", out.size(),
                 " entries but num_hidden_layers is ", num_layers);
  } else {
    const int64_t interval = f.opt_int("full_attention_interval", 4);
    f.positive("full_attention_interval", interval);
    for (int64_t i = 0; i < num_layers; ++i)
      out.push_back((i + 1) % interval == 0 ? LayerType::full_attention
                                            : LayerType::linear_attention);
  }
  return out;
}

// rope_parameters (transformers v5), else the legacy rope_scaling dict; rope_theta and
// partial_rotary_factor fall back to top-level keys of the text config, then to HF defaults.
void parse_rope(const Fields& f, Config& c) {
  static const json kEmpty = json::object();
  const char* key = f.has("rope_parameters") ? "rope_parameters"
                    : f.has("rope_scaling")  ? "rope_scaling"
                                             : nullptr;
  const json& rp_json = key ? f.j[key] : kEmpty;
  if (key && !rp_json.is_object())
    core::fail(f.source, ": field ", f.field(key), " must be an object");
  Fields rp{rp_json, f.source, f.prefix + (key ? std::string(key) + "." : std::string())};

  c.rope_theta = rp.opt_num("rope_theta", f.opt_num("rope_theta", 10000.0));
  c.partial_rotary_factor =
      rp.opt_num("partial_rotary_factor", f.opt_num("partial_rotary_factor", 0.25));
  const std::string type = rp.opt_str("rope_type", rp.opt_str("type", "default"));
  if (type != "default" && type != "mrope")
    core::fail(f.source, ": field ", rp.field("rope_type"), " = '", type,
               "' is not supported (only default rope)");
  if (!(c.rope_theta > 0))
    core::fail(f.source, ": field ", rp.field("rope_theta"), " must be positive");
  if (!(c.partial_rotary_factor > 0 && c.partial_rotary_factor <= 1))
    core::fail(f.source, ": field ", rp.field("partial_rotary_factor"), " = ",
               c.partial_rotary_factor, " must be in (0, 1]");
  const int64_t r = c.rotary_dim();
  if (r <= 0 || r % 2 != 0 || r > c.head_dim)
    core::fail(f.source, ": rotary dim head_dim * partial_rotary_factor = ", r,
               " must be even and in [2, head_dim = ", c.head_dim, "]");

  if (rp.has("mrope_section")) {
    const json& ms = rp_json["mrope_section"];
    if (!ms.is_array() || ms.size() != 3)
      core::fail(f.source, ": field ", rp.field("mrope_section"), " must be a list of 3 integers");
    int64_t sum = 0;
    for (size_t i = 0; i < 3; ++i) {
      if (!ms[i].is_number_integer() || ms[i].get<int64_t>() < 0)
        core::fail(f.source, ": field ", rp.field("mrope_section"), " = ", ms.dump(),
                   " must be 3 integers >= 0");
      c.mrope_section[i] = static_cast<int>(ms[i].get<int64_t>());
      sum += c.mrope_section[i];
    }
    if (sum != r / 2)
      core::fail(f.source, ": field ", rp.field("mrope_section"), " = ", ms.dump(), " sums to ",
                 sum, " but rotary_dim / 2 = ", r / 2);
  } else if (r / 2 == 32) {
    c.mrope_section = {11, 11, 10};  // HF's default
  } else {
    c.mrope_section = {static_cast<int>(r / 2), 0, 0};  // temporal gets every frequency
  }
}

// vision_config of a multimodal config (spec 1.1).
void parse_vision(const Fields& top, Config& c) {
  if (!top.has("vision_config")) return;
  const json& vj = top.j["vision_config"];
  if (!vj.is_object()) core::fail(top.source, ": field vision_config must be an object");
  const Fields v{vj, top.source, "vision_config."};
  VisionConfig& vc = c.vision;
  // HF's class defaults (not a published size: the engine reads the file's values) for
  // absent keys; the values are checked by check_vision, when the tower is used.
  vc.depth = v.opt_int("depth", 27);
  vc.hidden_size = v.opt_int("hidden_size", 1152);
  vc.intermediate_size = v.opt_int("intermediate_size", 4304);
  vc.num_heads = v.has("num_heads") ? v.as_int("num_heads") : v.opt_int("num_attention_heads", 16);
  vc.out_hidden_size = v.opt_int("out_hidden_size", 3584);
  vc.in_channels = v.opt_int("in_channels", 3);
  vc.patch_size = v.opt_int("patch_size", 16);
  vc.temporal_patch_size = v.opt_int("temporal_patch_size", 2);
  vc.spatial_merge_size = v.opt_int("spatial_merge_size", 2);
  vc.num_position_embeddings = v.opt_int("num_position_embeddings", 2304);
  vc.hidden_act = v.opt_str("hidden_act", "gelu_pytorch_tanh");
  if (v.has("rope_parameters") && vj["rope_parameters"].is_object()) {
    const Fields rp{vj["rope_parameters"], top.source, "vision_config.rope_parameters."};
    vc.rope_theta = rp.opt_num("rope_theta", 10000.0);
  }
  c.image_token_id = top.opt_int("image_token_id", c.image_token_id);
  c.video_token_id = top.opt_int("video_token_id", c.video_token_id);
  c.vision_start_token_id = top.opt_int("vision_start_token_id", c.vision_start_token_id);
  c.vision_end_token_id = top.opt_int("vision_end_token_id", c.vision_end_token_id);
  c.has_vision = true;
}

}  // namespace

const char* vision_mode_name(VisionMode m) {
  switch (m) {
    case VisionMode::off:
      return "off";
    case VisionMode::frozen:
      return "frozen";
    case VisionMode::merger:
      return "merger";
    case VisionMode::full:
      return "full";
  }
  return "?";
}

VisionMode parse_vision_mode(const std::string& s, const std::string& where) {
  for (VisionMode m : {VisionMode::off, VisionMode::frozen, VisionMode::merger, VisionMode::full})
    if (s == vision_mode_name(m)) return m;
  core::fail(where, ": vision mode must be off, frozen, merger or full, got '", s, "'");
}

int64_t VisionConfig::grid_side() const {
  int64_t g = static_cast<int64_t>(std::llround(std::sqrt(double(num_position_embeddings))));
  return g * g == num_position_embeddings ? g : 0;
}

void check_vision(const Config& c, const std::string& source) {
  if (!c.has_vision)
    core::fail(source,
               ": the vision tower needs a multimodal config with a vision_config (model_type "
               "qwen3_5 or qwen3_5_moe)");
  const VisionConfig& v = c.vision;
  const std::pair<const char*, int64_t> sizes[] = {
      {"depth", v.depth + 1},  // depth 0 is allowed
      {"hidden_size", v.hidden_size},
      {"intermediate_size", v.intermediate_size},
      {"num_heads", v.num_heads},
      {"out_hidden_size", v.out_hidden_size},
      {"in_channels", v.in_channels},
      {"patch_size", v.patch_size},
      {"temporal_patch_size", v.temporal_patch_size},
      {"spatial_merge_size", v.spatial_merge_size},
      {"num_position_embeddings", v.num_position_embeddings}};
  for (const auto& [k, n] : sizes)
    if (n <= 0) core::fail(source, ": vision_config.", k, " must be positive");
  if (v.hidden_size % v.num_heads != 0 || v.head_dim() % 4 != 0)
    core::fail(source, ": vision_config.hidden_size ", v.hidden_size, " / num_heads ", v.num_heads,
               " must give a head dim that is a multiple of 4 (the 2-D rotary embedding)");
  if (v.hidden_act != "gelu_pytorch_tanh")
    core::fail(source, ": vision_config.hidden_act = '", v.hidden_act,
               "' is not supported (deltatron implements gelu_pytorch_tanh)");
  if (v.grid_side() == 0)
    core::fail(source, ": vision_config.num_position_embeddings = ", v.num_position_embeddings,
               " is not a square");
  if (v.out_hidden_size != c.hidden_size)
    core::fail(source, ": vision_config.out_hidden_size = ", v.out_hidden_size,
               " differs from the text hidden_size ", c.hidden_size);
  if (c.image_token_id < 0 || c.image_token_id >= c.vocab_size)
    core::fail(source, ": image_token_id ", c.image_token_id,
               " is outside [0, vocab_size = ", c.vocab_size, ")");
}

int64_t Config::rotary_dim() const {
  return static_cast<int64_t>(static_cast<double>(head_dim) * partial_rotary_factor);
}

Config parse_config(const json& j, const std::string& source) {
  if (!j.is_object()) core::fail(source, ": config is not a JSON object");
  Config c;
  c.raw = j;
  Fields top{j, source, ""};
  if (!top.has("model_type")) core::fail(source, ": missing required field model_type");
  const std::string mt = top.opt_str("model_type", "");

  const json* text = &j;
  std::string fprefix;
  if (mt == "qwen3_5" || mt == "qwen3_5_moe") {
    c.layout = CheckpointLayout::multimodal;
    c.prefix = "model.language_model.";
    c.model_type = mt + "_text";
    if (!top.has("text_config")) core::fail(source, ": missing required field text_config");
    if (!j["text_config"].is_object()) core::fail(source, ": field text_config must be an object");
    text = &j["text_config"];
    fprefix = "text_config.";
    Fields tf{*text, source, fprefix};
    const std::string tmt = tf.opt_str("model_type", c.model_type);
    if (tmt != c.model_type)
      core::fail(source, ": field text_config.model_type = '", tmt, "' does not match '", mt,
                 "' (expected '", c.model_type, "')");
  } else if (mt == "qwen3_5_text" || mt == "qwen3_5_moe_text") {
    c.layout = CheckpointLayout::text_only;
    c.prefix = "model.";
    c.model_type = mt;
  } else {
    core::fail(source, ": unknown model_type '", mt,
               "' (expected qwen3_5, qwen3_5_moe, qwen3_5_text or qwen3_5_moe_text)");
  }
  const bool moe = c.model_type == "qwen3_5_moe_text";
  const Fields f{*text, source, fprefix};

  c.vocab_size = f.req_int("vocab_size");
  c.hidden_size = f.req_int("hidden_size");
  c.num_hidden_layers = f.req_int("num_hidden_layers");
  c.num_attention_heads = f.req_int("num_attention_heads");
  c.num_key_value_heads = f.req_int("num_key_value_heads");
  c.head_dim = f.req_int("head_dim");
  c.intermediate_size = moe ? 0 : f.req_int("intermediate_size");
  for (const char* k : {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim"})
    f.positive(k, f.as_int(k));
  if (!moe) f.positive("intermediate_size", c.intermediate_size);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    core::fail(source, ": num_attention_heads (", c.num_attention_heads,
               ") is not divisible by num_key_value_heads (", c.num_key_value_heads, ")");
  c.rms_norm_eps = f.opt_num("rms_norm_eps", 1e-6);
  if (!(c.rms_norm_eps > 0))
    core::fail(source, ": field ", f.field("rms_norm_eps"), " must be positive");

  c.layer_types = parse_layer_types(f, c.num_hidden_layers);
  bool any_linear = false;
  for (LayerType t : c.layer_types) any_linear |= t == LayerType::linear_attention;
  c.linear_conv_kernel_dim = f.opt_int("linear_conv_kernel_dim", 4);
  f.positive("linear_conv_kernel_dim", c.linear_conv_kernel_dim);
  if (any_linear) {
    c.linear_key_head_dim = f.req_int("linear_key_head_dim");
    c.linear_value_head_dim = f.req_int("linear_value_head_dim");
    c.linear_num_key_heads = f.req_int("linear_num_key_heads");
    c.linear_num_value_heads = f.req_int("linear_num_value_heads");
    for (const char* k : {"linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads",
                          "linear_num_value_heads"})
      f.positive(k, f.as_int(k));
    if (c.linear_num_value_heads % c.linear_num_key_heads != 0)
      core::fail(source, ": linear_num_value_heads (", c.linear_num_value_heads,
                 ") is not divisible by linear_num_key_heads (", c.linear_num_key_heads, ")");
  } else {
    c.linear_key_head_dim = f.opt_int("linear_key_head_dim", 128);
    c.linear_value_head_dim = f.opt_int("linear_value_head_dim", 128);
    c.linear_num_key_heads = f.opt_int("linear_num_key_heads", 16);
    c.linear_num_value_heads = f.opt_int("linear_num_value_heads", 32);
  }

  parse_rope(f, c);

  // The MLP, MoE experts and MTP layers compute SiLU (swish): any other activation would be
  // trained as SiLU without a word, so it is refused.
  const std::string act = f.opt_str("hidden_act", "silu");
  if (act != "silu" && act != "swish")
    core::fail(source, ": field ", f.field("hidden_act"), " = '", act,
               "' is not supported (deltatron implements silu)");

  // The top-level flag is authoritative for the multimodal wrapper (text_config's may be a
  // stale inherited default).
  c.tie_word_embeddings = f.opt_bool("tie_word_embeddings", false);
  if (c.layout == CheckpointLayout::multimodal && top.has("tie_word_embeddings"))
    c.tie_word_embeddings = top.opt_bool("tie_word_embeddings", false);
  if (f.has("pad_token_id")) {
    c.pad_token_id = f.as_int("pad_token_id");
  } else if (c.layout == CheckpointLayout::multimodal && top.has("pad_token_id")) {
    c.pad_token_id = top.as_int("pad_token_id");
  }
  if (c.pad_token_id && (*c.pad_token_id < 0 || *c.pad_token_id >= c.vocab_size))
    core::fail(source, ": pad_token_id ", *c.pad_token_id,
               " is outside [0, vocab_size = ", c.vocab_size, ")");

  if (moe) {
    c.num_experts = f.opt_int("num_experts", 256);
    c.num_experts_per_tok = f.opt_int("num_experts_per_tok", 8);
    c.moe_intermediate_size = f.opt_int("moe_intermediate_size", 512);
    c.shared_expert_intermediate_size = f.opt_int("shared_expert_intermediate_size", 512);
    f.positive("num_experts", c.num_experts);
    if (c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.num_experts)
      core::fail(source, ": field ", f.field("num_experts_per_tok"), " = ", c.num_experts_per_tok,
                 " must be in [1, num_experts = ", c.num_experts, "]");
    f.positive("moe_intermediate_size", c.moe_intermediate_size);
    if (c.shared_expert_intermediate_size < 0)
      core::fail(source, ": field ", f.field("shared_expert_intermediate_size"), " = ",
                 c.shared_expert_intermediate_size, " must be >= 0 (0: no shared expert)");
  }
  c.router_aux_loss_coef = f.opt_num("router_aux_loss_coef", 0.001);
  if (!(c.router_aux_loss_coef >= 0) || !std::isfinite(c.router_aux_loss_coef))
    core::fail(source, ": field ", f.field("router_aux_loss_coef"), " = ", c.router_aux_loss_coef,
               " must be finite and >= 0");
  // Released multimodal configs put it in text_config; accept the top level as well.
  const Fields& mtp_f = f.has("mtp_num_hidden_layers") ? f : top;
  c.mtp_num_hidden_layers = mtp_f.opt_int("mtp_num_hidden_layers", 0);
  if (c.mtp_num_hidden_layers < 0)
    core::fail(source, ": field ", mtp_f.field("mtp_num_hidden_layers"), " = ",
               c.mtp_num_hidden_layers, " must be >= 0");
  c.mtp_enabled = false;
  if (c.layout == CheckpointLayout::multimodal) parse_vision(top, c);
  return c;
}

Config load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) core::fail(path, ": cannot open config");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    std::string msg = e.what();
    for (char& ch : msg)
      if (ch == '\n' || ch == '\r') ch = ' ';
    core::fail(path, ": bad JSON: ", msg);
  }
  return parse_config(j, path);
}

namespace {

// Gated full attention of one layer with prefix l ("<layer>."); main layers and MTP layers alike.
void append_attention(const Config& c, const std::string& l, std::vector<ParamSpec>& out) {
  const int64_t D = c.hidden_size, hd = c.head_dim;
  const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads;
  // q_proj rows interleave query and output gate per head: [2*nh*hd, D].
  out.push_back({l + "self_attn.q_proj.weight", {2 * nh * hd, D}});
  out.push_back({l + "self_attn.k_proj.weight", {nkv * hd, D}});
  out.push_back({l + "self_attn.v_proj.weight", {nkv * hd, D}});
  out.push_back({l + "self_attn.o_proj.weight", {D, nh * hd}});
  out.push_back({l + "self_attn.q_norm.weight", {hd}});
  out.push_back({l + "self_attn.k_norm.weight", {hd}});
}

void append_gdn(const Config& c, const std::string& l, std::vector<ParamSpec>& out) {
  const int64_t D = c.hidden_size;
  const int64_t Kd = c.linear_num_key_heads * c.linear_key_head_dim;
  const int64_t Vd = c.linear_num_value_heads * c.linear_value_head_dim;
  const int64_t nv = c.linear_num_value_heads, conv_C = 2 * Kd + Vd;
  out.push_back({l + "linear_attn.in_proj_qkv.weight", {conv_C, D}});
  out.push_back({l + "linear_attn.in_proj_z.weight", {Vd, D}});
  out.push_back({l + "linear_attn.in_proj_b.weight", {nv, D}});
  out.push_back({l + "linear_attn.in_proj_a.weight", {nv, D}});
  out.push_back({l + "linear_attn.conv1d.weight", {conv_C, 1, c.linear_conv_kernel_dim}});
  out.push_back({l + "linear_attn.dt_bias", {nv}});
  out.push_back({l + "linear_attn.A_log", {nv}});
  out.push_back({l + "linear_attn.norm.weight", {c.linear_value_head_dim}});
  out.push_back({l + "linear_attn.out_proj.weight", {D, Vd}});
}

void append_mlp(const Config& c, const std::string& P, std::vector<ParamSpec>& out) {
  const int64_t D = c.hidden_size;
  if (!c.is_moe()) {
    const int64_t F = c.intermediate_size;
    out.push_back({P + "gate_proj.weight", {F, D}});
    out.push_back({P + "up_proj.weight", {F, D}});
    out.push_back({P + "down_proj.weight", {D, F}});
    return;
  }
  const int64_t E = c.num_experts, F = c.moe_intermediate_size;
  const int64_t Fs = c.shared_expert_intermediate_size;
  out.push_back({P + "gate.weight", {E, D}});
  out.push_back({P + "experts.gate_up_proj", {E, 2 * F, D}});
  out.push_back({P + "experts.down_proj", {E, D, F}});
  if (Fs > 0) {
    out.push_back({P + "shared_expert.gate_proj.weight", {Fs, D}});
    out.push_back({P + "shared_expert.up_proj.weight", {Fs, D}});
    out.push_back({P + "shared_expert.down_proj.weight", {D, Fs}});
    out.push_back({P + "shared_expert_gate.weight", {1, D}});
  }
}

std::string mtp_layer(int64_t j) { return "mtp.layers." + std::to_string(j) + "."; }

}  // namespace

std::vector<ParamSpec> vision_param_specs(const Config& c) {
  std::vector<ParamSpec> out;
  if (c.vision_mode == VisionMode::off) return out;
  const VisionConfig& v = c.vision;
  const int64_t D = v.hidden_size, I = v.intermediate_size, UD = v.merge_unit() * D;
  const std::string V = "model.visual.";
  out.push_back({V + "patch_embed.proj.weight",
                 {D, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size}});
  out.push_back({V + "patch_embed.proj.bias", {D}});
  out.push_back({V + "pos_embed.weight", {v.num_position_embeddings, D}});
  for (int64_t i = 0; i < v.depth; ++i) {
    const std::string b = V + "blocks." + std::to_string(i) + ".";
    for (const char* n : {"norm1.", "norm2."}) {
      out.push_back({b + n + "weight", {D}});
      out.push_back({b + n + "bias", {D}});
    }
    out.push_back({b + "attn.qkv.weight", {3 * D, D}});
    out.push_back({b + "attn.qkv.bias", {3 * D}});
    out.push_back({b + "attn.proj.weight", {D, D}});
    out.push_back({b + "attn.proj.bias", {D}});
    out.push_back({b + "mlp.linear_fc1.weight", {I, D}});
    out.push_back({b + "mlp.linear_fc1.bias", {I}});
    out.push_back({b + "mlp.linear_fc2.weight", {D, I}});
    out.push_back({b + "mlp.linear_fc2.bias", {D}});
  }
  out.push_back({V + "merger.norm.weight", {D}});
  out.push_back({V + "merger.norm.bias", {D}});
  out.push_back({V + "merger.linear_fc1.weight", {UD, UD}});
  out.push_back({V + "merger.linear_fc1.bias", {UD}});
  out.push_back({V + "merger.linear_fc2.weight", {v.out_hidden_size, UD}});
  out.push_back({V + "merger.linear_fc2.bias", {v.out_hidden_size}});
  return out;
}

bool vision_trains(const Config& c, const std::string& name) {
  if (name.rfind("model.visual.", 0) != 0) return true;
  if (c.vision_mode == VisionMode::full) return true;
  return c.vision_mode == VisionMode::merger && name.rfind("model.visual.merger.", 0) == 0;
}

std::vector<ParamSpec> mlp_param_specs(const Config& c, const std::string& mlp_prefix) {
  std::vector<ParamSpec> out;
  append_mlp(c, mlp_prefix, out);
  return out;
}

std::vector<std::string> expert_module_prefixes(const Config& c) {
  std::vector<std::string> out;
  if (!c.is_moe()) return out;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    out.push_back(c.name("layers." + std::to_string(i) + ".mlp.experts."));
  if (c.mtp_enabled)
    for (int64_t j = 0; j < c.mtp_num_hidden_layers; ++j)
      out.push_back(mtp_layer(j) + "mlp.experts.");
  return out;
}

std::vector<ParamSpec> param_specs(const Config& c) {
  const int64_t D = c.hidden_size;
  std::vector<ParamSpec> out;
  out.push_back({c.name("embed_tokens.weight"), {c.vocab_size, D}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string l = c.name("layers." + std::to_string(i) + ".");
    out.push_back({l + "input_layernorm.weight", {D}});
    out.push_back({l + "post_attention_layernorm.weight", {D}});
    if (c.layer_types.at(i) == LayerType::full_attention) {
      append_attention(c, l, out);
    } else {
      append_gdn(c, l, out);
    }
    append_mlp(c, l + "mlp.", out);
  }
  out.push_back({c.name("norm.weight"), {D}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, D}});
  if (c.mtp_enabled && c.mtp_num_hidden_layers > 0) {
    out.push_back({"mtp.fc.weight", {D, 2 * D}});
    out.push_back({"mtp.pre_fc_norm_embedding.weight", {D}});
    out.push_back({"mtp.pre_fc_norm_hidden.weight", {D}});
    for (int64_t j = 0; j < c.mtp_num_hidden_layers; ++j) {
      const std::string l = mtp_layer(j);
      out.push_back({l + "input_layernorm.weight", {D}});
      out.push_back({l + "post_attention_layernorm.weight", {D}});
      append_attention(c, l, out);  // MTP layers are always full attention
      append_mlp(c, l + "mlp.", out);
    }
    out.push_back({"mtp.norm.weight", {D}});
  }
  for (ParamSpec& s : vision_param_specs(c)) out.push_back(std::move(s));
  return out;
}

}  // namespace deltatron::model
