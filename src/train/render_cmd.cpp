// `deltatron render`: the data pipeline of `train` (same formats, template and options), printed.
#include "train/render_cmd.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "data/chat_select.h"
#include "data/formats.h"
#include "data/sample.h"
#include "data/tokenizer.h"

namespace deltatron::train {

namespace {

// The sample's text with each maximal run of trained tokens between the markers.
std::string marked_text(const data::Tokenizer& tok, const data::Sample& s, const char* open,
                        const char* close) {
  std::string out;
  size_t t = 0;
  while (t < s.input_ids.size()) {
    const bool train = s.labels[t] != data::kIgnoreIndex;
    size_t e = t;
    while (e < s.input_ids.size() && (s.labels[e] != data::kIgnoreIndex) == train) ++e;
    const std::string piece =
        tok.decode(std::vector<int32_t>(s.input_ids.begin() + t, s.input_ids.begin() + e));
    out += train ? open + piece + close : piece;
    t = e;
  }
  return out;
}

// An image's run of <|image_pad|> tokens as "<|image_pad|>*N".
std::string collapse_image_pads(const std::string& text) {
  static const std::string pad = "<|image_pad|>";
  std::string out;
  size_t pos = 0;
  for (size_t k; (k = text.find(pad, pos)) != std::string::npos;) {
    out += text.substr(pos, k - pos);
    size_t n = 0;
    while (text.compare(k, pad.size(), pad) == 0) {
      k += pad.size();
      ++n;
    }
    out += pad + (n > 1 ? "*" + std::to_string(n) : "");
    pos = k;
  }
  return out + text.substr(pos);
}

}  // namespace

void run_render(const RenderOptions& opt) {
  DT_CHECK(!opt.model_dir.empty() || !opt.tokenizer.empty(), "render: give --model (a checkpoint ",
           "directory) or --tokenizer");
  const std::string tok_path =
      opt.tokenizer.empty() ? opt.model_dir + "/tokenizer.json" : opt.tokenizer;
  const data::Tokenizer tok = data::Tokenizer::load(tok_path);

  data::FormatOptions f;
  DT_CHECK(data::parse_loss_on(opt.loss_on, f.chat.loss_on),
           "--loss-on must be assistant, last_assistant or all, got '", opt.loss_on, "'");
  const std::string tok_dir = std::filesystem::path(tok_path).parent_path().string();
  const data::ChatChoice choice = data::configure_chat(opt.chat, {tok_dir, opt.model_dir}, f);
  f.vision = data::vision_options_from_model(opt.model_dir, tok);  // images: grids, no pixels
  f.load_pixels = false;

  std::vector<int64_t> lines;
  data::DataStats stats;
  const std::vector<data::Sample> samples = data::read_jsonl(opt.data_path, tok, f, &stats, &lines);
  const bool color = opt.color == "always" || (opt.color == "auto" && ::isatty(STDOUT_FILENO) != 0);
  DT_CHECK(opt.color == "always" || opt.color == "never" || opt.color == "auto",
           "--color must be auto, always or never, got '", opt.color, "'");
  if (!opt.jsonl && choice.found)
    std::printf("# chat format: %s; trained spans %s\n", choice.describe().c_str(),
                color ? "in green" : "between [TRAIN] and [/TRAIN]");
  const size_t n = opt.limit > 0 ? std::min<size_t>(samples.size(), opt.limit) : samples.size();
  for (size_t i = 0; i < n; ++i) {
    const data::Sample& s = samples[i];
    if (opt.jsonl) {
      std::vector<int> mask(s.labels.size());
      for (size_t t = 0; t < mask.size(); ++t) mask[t] = s.labels[t] != data::kIgnoreIndex;
      nlohmann::ordered_json j = {{"line", lines[i]},
                                  {"text", tok.decode(s.input_ids)},
                                  {"input_ids", s.input_ids},
                                  {"assistant_mask", mask}};
      if (!s.image_grid_thw.empty()) j["image_grid_thw"] = s.image_grid_thw;
      std::printf("%s\n",
                  j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace).c_str());
      continue;
    }
    std::printf("### %s:%lld: %zu tokens, %lld trained\n", opt.data_path.c_str(),
                static_cast<long long>(lines[i]), s.input_ids.size(),
                static_cast<long long>(data::count_label_tokens(s)));
    const std::string text = color ? marked_text(tok, s, "\x1b[42;30m", "\x1b[0m")
                                   : marked_text(tok, s, "[TRAIN]", "[/TRAIN]");
    std::printf("%s\n", collapse_image_pads(text).c_str());
  }
  std::fprintf(stderr, "render: %s\n", stats.summary().c_str());
}

}  // namespace deltatron::train
