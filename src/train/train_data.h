// Training data for `deltatron train`: tokenised train/eval sets and the micro-batch stream.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "data/chat_select.h"
#include "data/dataset.h"
#include "data/packing.h"
#include "data/tokenizer.h"
#include "train/train_config.h"

namespace deltatron::train {

struct TrainData {
  std::unique_ptr<data::Dataset> train_set, eval_set;  // eval_set may equal train_set (split)
  std::vector<int64_t> train_index, eval_index;        // sample ids used for each role
  std::vector<int64_t> train_lengths;                  // lengths of train_index, in order
  data::ChatChoice chat;                               // the chat format chat lines get
  // Samples longer than micro_batch_tokens: training ones are truncated to it (data.truncate;
  // without it they are an error when packing), held-out ones always are.
  int64_t train_truncated = 0, eval_truncated = 0;
  // Samples with images (vision-language chat rows) and their images, over both roles.
  int64_t image_samples = 0, images = 0;
  // The most vision patches per token of any sample (a truncated one counts as merge^2, all
  // image tokens): a micro-batch of N tokens holds at most N times this many (the memory plan).
  double image_patches_per_token = 0;
};

// Loads (or builds and caches) the tokenised datasets, splits off eval_fraction if no eval
// file is given (deterministic for cfg.seed), and prints a one-line summary of each set and,
// when any sample is truncated, how many. Images in chat rows are read when the checkpoint has a
// vision_config (data::vision_options_from_model); packs then carry pixel_values, image_grid_thw
// and MRoPE position_ids. Unless model_takes_images (the model consumes them: a vision tower),
// samples with images are an error rather than trained as bare <|image_pad|> tokens.
TrainData load_train_data(const TrainConfig& cfg, const data::Tokenizer& tok, int64_t vocab_size,
                          bool model_takes_images = false);

// Eval micro-batches: eval samples in order, greedy in-order packs of at most budget tokens.
std::vector<std::vector<int64_t>> eval_batches(const TrainData& d, int64_t budget,
                                               int64_t divisible_by);

}  // namespace deltatron::train
