// Dataset loading, held-out split and eval batching for the trainer.
#include "train/train_data.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <random>

#include "core/error.h"

namespace deltatron::train {

namespace {

data::DatasetOptions dataset_options(const TrainConfig& cfg, const data::ChatChoice& chat) {
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
  static const std::map<std::string, data::LossOn> loss_on = {
      {"assistant", data::LossOn::assistant},
      {"last_assistant", data::LossOn::last_assistant},
      {"all", data::LossOn::all}};
  auto l = loss_on.find(cfg.loss_on);
  DT_CHECK(l != loss_on.end(), cfg.source,
           ": data.loss_on must be assistant, last_assistant or all, got '", cfg.loss_on, "'");
  o.format.chat.loss_on = l->second;
  o.format.chat.enable_thinking = cfg.enable_thinking;
  o.format.chat.preserve_thinking = cfg.preserve_thinking;
  if (!cfg.reasoning_effort.empty()) o.format.chat.reasoning_effort = cfg.reasoning_effort;
  o.format.chat.special_tokens_in_content = cfg.special_tokens_in_content;
  if (chat.found)
    data::apply_chat_choice(chat, o.format.chat);
  else
    o.format.no_chat_template = chat.missing;
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

}  // namespace

TrainData load_train_data(const TrainConfig& cfg, const data::Tokenizer& tok, int64_t vocab_size) {
  TrainData d;
  // The checkpoint's template: next to the tokenizer in use, then in the model directory.
  const std::string tok_dir =
      cfg.tokenizer.empty() ? "" : std::filesystem::path(cfg.tokenizer).parent_path().string();
  d.chat = data::choose_chat_format(cfg.chat_template, {tok_dir, cfg.model_path});
  const data::DatasetOptions o = dataset_options(cfg, d.chat);
  if (d.chat.found)
    std::fprintf(stderr, "chat format: %s%s (%s)\n", data::chat_format_name(d.chat.format),
                 o.format.chat.training_variant ? " (training variant)" : "",
                 d.chat.source.c_str());
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
