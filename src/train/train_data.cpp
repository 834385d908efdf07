// Dataset loading, held-out split and eval batching for the trainer.
#include "train/train_data.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <random>

#include "core/error.h"
#include "data/vision_data.h"
#include "train/presets.h"

namespace deltatron::train {

namespace {

data::DatasetOptions dataset_options(const TrainConfig& cfg) {
  data::DatasetOptions o;
  static const std::map<std::string, data::Format> formats = {
      {"auto", data::Format::auto_detect},
      {"chat", data::Format::chat},
      {"tokens", data::Format::tokens},
      {"prompt_completion", data::Format::prompt_completion},
      {"text", data::Format::text}};
  auto f = formats.find(cfg.format);
  DT_CHECK(f != formats.end(), cfg.source, ": data.format must be auto, chat, tokens, ",
           "prompt_completion or text, got '", cfg.format, "'");
  o.format.format = f->second;
  DT_CHECK(data::parse_loss_on(cfg.loss_on, o.format.chat.loss_on), cfg.source,
           ": data.loss_on must be assistant, last_assistant or all, got '", cfg.loss_on, "'");
  o.format.skip_bad_lines = cfg.skip_bad_lines;
  o.cache_dir = cfg.cache_dir;
  return o;
}

std::unique_ptr<data::Dataset> load_set(const std::string& path, const data::Tokenizer& tok,
                                        const data::DatasetOptions& o, int64_t vocab_size) {
  auto ds = std::make_unique<data::Dataset>(data::Dataset::load(path, tok, o));
  DT_CHECK(ds->size() > 0, path, ": no usable samples (", ds->stats().summary(), ")");
  DT_CHECK(tok.vocab_size() <= vocab_size, "tokenizer has ", tok.vocab_size(),
           " ids but the model's vocab_size is ", vocab_size);
  return ds;
}

// Counts the samples longer than a micro-batch and says what happens to them.
void report_truncation(const TrainConfig& cfg, TrainData& d) {
  const int64_t budget = cfg.micro_batch_tokens;
  for (int64_t len : d.train_lengths) d.train_truncated += len > budget;
  const data::Dataset& eval = d.eval_set ? *d.eval_set : *d.train_set;
  for (int64_t i : d.eval_index) d.eval_truncated += eval.length(i) > budget;
  if (cfg.truncate && d.train_truncated > 0)
    std::fprintf(stderr,
                 "data: truncated %lld of %zu training samples to micro_batch_tokens = %lld "
                 "(data.truncate); their later tokens are not trained on\n",
                 static_cast<long long>(d.train_truncated), d.train_lengths.size(),
                 static_cast<long long>(budget));
  if (d.eval_truncated > 0)
    std::fprintf(stderr,
                 "data: truncated %lld of %zu held-out samples to micro_batch_tokens = %lld for "
                 "evaluation\n",
                 static_cast<long long>(d.eval_truncated), d.eval_index.size(),
                 static_cast<long long>(budget));
}

// Counts the samples with images and their densest sample in patches per token; refuses them
// when the model does not take images.
void count_images(TrainData& d, bool model_takes_images, int64_t budget, int64_t merge) {
  auto add = [&](const data::Dataset& ds, const std::vector<int64_t>& index) {
    for (int64_t i : index) {
      const int64_t n = ds.num_images(i);
      d.image_samples += n > 0;
      d.images += n;
      if (n == 0) continue;
      const int64_t len = ds.length(i);
      const double density =
          len > budget ? double(merge * merge) : double(ds.num_patches(i)) / double(len);
      d.image_patches_per_token = std::max(d.image_patches_per_token, density);
    }
  };
  add(*d.train_set, d.train_index);
  add(d.eval_set ? *d.eval_set : *d.train_set, d.eval_index);
  if (d.images == 0) return;
  std::fprintf(stderr, "data: %lld samples with %lld images\n",
               static_cast<long long>(d.image_samples), static_cast<long long>(d.images));
  DT_CHECK(model_takes_images, "the data has ", d.images, " images in ", d.image_samples,
           " samples, but the vision tower is off ([model] vision = \"off\"): set [model] vision = "
           "\"frozen\" (or \"merger\", \"full\") with a vision-language checkpoint, or remove the "
           "images");
}

}  // namespace

TrainData load_train_data(const TrainConfig& cfg, const data::Tokenizer& tok, int64_t vocab_size,
                          bool model_takes_images) {
  TrainData d;
  // The checkpoint's template: next to the tokenizer in use, then in the model directory.
  const std::string tok_dir =
      cfg.tokenizer.empty() ? "" : std::filesystem::path(cfg.tokenizer).parent_path().string();
  data::DatasetOptions o = dataset_options(cfg);
  const data::ChatSettings chat{cfg.chat_template, cfg.enable_thinking, cfg.preserve_thinking,
                                cfg.reasoning_effort, cfg.special_tokens_in_content};
  d.chat = data::configure_chat(chat, {tok_dir, cfg.model_path}, o.format);
  if (d.chat.found) std::fprintf(stderr, "chat format: %s\n", d.chat.describe().c_str());
  // Images in chat rows: a checkpoint with a vision_config, its preprocessor_config.json; or a
  // preset with a vision_config and its preprocessor settings.
  std::string vision_source = cfg.model_path;
  if (!cfg.model_path.empty()) {
    o.format.vision = data::vision_options_from_model(cfg.model_path, tok);
  } else if (!cfg.model_preset.empty()) {
    vision_source = "preset " + cfg.model_preset;
    o.format.vision = data::vision_options_from_config(preset_config(cfg.model_preset),
                                                       preset_preprocessor_config(cfg.model_preset),
                                                       tok, vision_source);
  }
  if (o.format.vision.enabled) {
    const data::ImageProcessorConfig& p = o.format.vision.processor;
    std::fprintf(stderr, "images: patch %lld, merge %lld, %lld..%lld pixels (%s)\n",
                 static_cast<long long>(p.patch_size), static_cast<long long>(p.merge_size),
                 static_cast<long long>(p.min_pixels), static_cast<long long>(p.max_pixels),
                 vision_source.c_str());
  }
  d.train_set = load_set(cfg.train_path, tok, o, vocab_size);
  std::vector<int64_t> all(d.train_set->size());
  for (int64_t i = 0; i < d.train_set->size(); ++i) all[i] = i;
  if (!cfg.eval_path.empty()) {
    d.eval_set = load_set(cfg.eval_path, tok, o, vocab_size);
    d.train_index = all;
    for (int64_t i = 0; i < d.eval_set->size(); ++i) d.eval_index.push_back(i);
  } else if (cfg.eval_fraction > 0) {
    std::vector<int64_t> shuffled = all;
    std::mt19937_64 rng(cfg.seed ^ 0x5eedu);
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    const int64_t n_eval = std::max<int64_t>(1, int64_t(cfg.eval_fraction * double(all.size())));
    DT_CHECK(n_eval < static_cast<int64_t>(all.size()), cfg.source,
             ": data.eval_fraction leaves no training samples");
    d.eval_index.assign(shuffled.begin(), shuffled.begin() + n_eval);
    d.train_index.assign(shuffled.begin() + n_eval, shuffled.end());
    std::sort(d.eval_index.begin(), d.eval_index.end());
    std::sort(d.train_index.begin(), d.train_index.end());
  } else {
    d.train_index = all;
  }
  for (int64_t i : d.train_index) d.train_lengths.push_back(d.train_set->length(i));
  report_truncation(cfg, d);
  count_images(d, model_takes_images, cfg.micro_batch_tokens, o.format.vision.processor.merge_size);
  return d;
}

std::vector<std::vector<int64_t>> eval_batches(const TrainData& d, int64_t budget,
                                               int64_t divisible_by) {
  // Eval samples longer than a micro-batch are truncated to it (make_dataset_pack's max_len).
  const data::Dataset& ds = d.eval_set ? *d.eval_set : *d.train_set;
  std::vector<int64_t> lengths;
  for (int64_t i : d.eval_index) lengths.push_back(std::min(ds.length(i), budget));
  std::vector<std::vector<int64_t>> out = data::group_in_order(lengths, budget, divisible_by);
  for (auto& batch : out)
    for (auto& pos : batch) pos = d.eval_index[pos];
  return out;
}

}  // namespace deltatron::train
