// Token-level samples (`{"input_ids": [...], "labels": [...]}` JSONL) and their validation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/constants.h"

namespace deltatron::data {

using core::kIgnoreIndex;  // core/constants.h

// An image file a sample's pixels come from, and its identity when it was read: the path as the
// data gives it (relative paths are relative to the data file; data/vision_data.h), the file's
// size, modification time and content hash (data/hash.h).
struct ImageRef {
  std::string path;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t hash[2] = {0, 0};
};

// One training/scoring sample in the Hugging Face convention: labels are aligned with
// input_ids, position t is trained to predict labels[t + 1] of the same sample, and the last
// token predicts nothing. labels[t] == -100 means token t is not a target (e.g. a prompt token).
struct Sample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;  // same length as input_ids
  // Vision-language samples (docs/vision.md); all three empty for text.
  //   position_ids   [3, L]  MRoPE rows T, H, W (qwen35-vl spec 5.1); empty: 0..L-1 in each row
  //   pixel_values   [P, patch_dim]  the patches of the sample's images, in token order
  //   image_grid_thw [I, 3]  each image's grid (t, h, w) in patches; P = sum of t*h*w
  //   images         [I]     the files the pixels come from (pixel_values may be left empty
  //                          and filled from them later: load_pixel_values, vision_data.h)
  std::vector<int32_t> position_ids;
  std::vector<float> pixel_values;
  std::vector<int32_t> image_grid_thw;
  std::vector<ImageRef> images;
};

// Number of label tokens the sample contributes to the loss: t in [1, L) with labels[t] != -100.
int64_t count_label_tokens(const Sample& s);

// Reads pre-tokenised JSONL. Each non-blank line is an object with "input_ids" (non-empty array
// of integers in [0, vocab_size)) and optional "labels" (same length; integers in
// [0, vocab_size) or -100; defaults to input_ids). Vision-language samples may add, as an HF
// processor writes them (flat or as rows): "position_ids" (3 MRoPE rows of the sample's length),
// "image_grid_thw" ((t, h, w) per image) with "pixel_values" (the images' patches). Any violation
// throws core::Error naming "path:line" and the problem.
std::vector<Sample> read_token_jsonl(const std::string& path, int64_t vocab_size);

}  // namespace deltatron::data
