// `deltatron render`: shows samples as the model will see them (text with the trained spans
// marked, or ids and mask as JSONL), rendered with the checkpoint's chat template.
#pragma once

#include <cstdint>
#include <string>

#include "data/chat_select.h"

namespace deltatron::train {

struct RenderOptions {
  std::string model_dir;  // checkpoint directory: tokenizer.json and its chat template
  std::string tokenizer;  // default: <model_dir>/tokenizer.json
  std::string data_path;
  data::ChatSettings chat;            // as data.chat_template, data.enable_thinking, ...
  std::string loss_on = "assistant";  // as data.loss_on
  bool jsonl = false;                 // {"line", "text", "input_ids", "assistant_mask"} per sample
  std::string color = "auto";         // trained spans: auto (colour on a terminal) | always | never
  int64_t limit = 0;                  // first N samples (0: all)
};

// Writes to stdout; errors (bad lines, unknown template) throw core::Error naming file and line.
void run_render(const RenderOptions& opt);

}  // namespace deltatron::train
