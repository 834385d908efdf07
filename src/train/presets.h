// Model presets: HF config.json contents for the published Qwen3.5 shapes and small test models.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace deltatron::train {

// Names: 0.8b, 2b, 4b, 9b, 27b, 35b-a3b, 122b-a10b, 397b-a17b (spec 1.3; text-only layout, one
// MTP layer), and the small presets tiny (dense) and tiny-moe (MoE + shared expert + MTP) whose
// vocabulary fits the bundled byte-level tokenizer (examples/tokenizer/tokenizer.json), and
// tiny-vl (a vision-language model on the real Qwen3.5 vocabulary, 248320 ids). 0.8b-vl, 2b-vl,
// 4b-vl, 9b-vl, 27b-vl: the dense sizes as the published Qwen3_5ForConditionalGeneration
// checkpoints (text_config = the text preset, vision_config = qwen35-vl spec 1.2's tower).
std::vector<std::string> preset_names();

// The config.json of a preset (model_type qwen3_5_text or qwen3_5_moe_text; qwen3_5 for the
// vision-language ones). Throws core::Error
// listing the valid names for an unknown one.
nlohmann::json preset_config(const std::string& name);

// The preprocessor_config.json of a preset with a vision_config (null for text-only presets):
// what a checkpoint directory's file would say (data::vision_options_from_config reads it).
nlohmann::json preset_preprocessor_config(const std::string& name);

}  // namespace deltatron::train
