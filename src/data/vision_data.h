// Vision-language samples: images in chat JSONL (three input forms), placeholder expansion,
// label masking, MRoPE positions and pixel values (qwen35-vl spec sections 4, 5.1, 7.1).
//
// A chat row brings its images in one of three forms (any mix is allowed; docs/vision.md):
//   parts   structured content parts that name their file: {"type": "image", "image": PATH},
//           {"type": "image", "path" | "url": PATH}, {"type": "image_url", "image_url":
//           {"url": PATH}} (or "image_url": PATH)
//   tags    "<image>" in string content with an "images" list (LLaMA-Factory, ms-swift): tags
//           are taken in order of appearance
//   TRL     an "images" list (or one "image") with {"type": "image"} parts that name no file,
//           filled in order; when the row has no such part and no "<image>" tag, all images go
//           before the text of the first user message (TRL's prepare_multimodal_messages)
// Paths are local files, relative to the data file unless absolute ("file://" is removed); a
// URL (http, https, data, ...) is an error. The row is rewritten into structured parts, so the
// three forms render identically: each image becomes "<|vision_start|><|image_pad|>
// <|vision_end|>" (the Qwen3.5 template's render_content), and after tokenisation its
// <|image_pad|> becomes t*h*w / merge^2 copies (expand). The labels of <|image_pad|>,
// <|vision_start|> and <|vision_end|> are -100 (never targets, wherever they are).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/image_preprocess.h"
#include "data/py_format.h"
#include "data/sample.h"

namespace deltatron::data {

class Tokenizer;

// The ids of the vision special tokens (-1 when the tokenizer lacks one).
struct VisionTokenIds {
  int32_t image_pad = -1, vision_start = -1, vision_end = -1, video_pad = -1;
  static VisionTokenIds from(const Tokenizer& tok);
};

struct VisionDataOptions {
  // Off: a row with images is an error (the model has no vision tower / the processor config is
  // unknown). On: images are decoded, preprocessed with `processor`, and expanded.
  bool enabled = false;
  ImageProcessorConfig processor;
  // Every option that changes samples, as text (dataset cache keys).
  std::string key() const;
};

// The vision settings of a checkpoint directory: enabled when its config.json has a
// "vision_config"; the processor from its preprocessor_config.json (Qwen3.5's values when the
// file is absent). config.json's image_token_id / vision_start_token_id / vision_end_token_id
// / video_token_id, when present, must equal the tokenizer's ids (a core::Error otherwise).
// A directory without config.json gives enabled = false.
VisionDataOptions vision_options_from_model(const std::string& model_dir, const Tokenizer& tok);

// The same from a config.json object and a preprocessor_config.json object (null: Qwen3.5's
// values), e.g. a preset's (train/presets.h); `where` names them in errors.
VisionDataOptions vision_options_from_config(const nlohmann::json& config,
                                             const nlohmann::json& preprocessor,
                                             const Tokenizer& tok, const std::string& where);

// Rewrites the row's image forms into structured parts (see the top of this file) and returns
// the image sources in order of appearance (the order the placeholders render in). Rows without
// images are left alone and give an empty list. Throws core::Error on: a URL, a non-string
// source, "images" that is not a list of strings, more or fewer "<image>" tags / source-less
// parts than listed images (naming both counts), images in a system message.
std::vector<std::string> take_row_images(OrderedJson& row);

// The file a source names: absolute as is, else relative to the data file's directory.
std::string resolve_image_path(const std::string& data_path, const std::string& source);

// An image file read for a sample: its identity, grid, and (with_pixels) its pixel values.
struct LoadedImage {
  ImageRef ref;
  int64_t grid_thw[3] = {0, 0, 0};
  std::vector<float> pixel_values;  // [t*h*w, patch_dim]; empty unless with_pixels
};

// Reads, hashes and decodes `source` (resolved against data_path), and computes its grid with
// the processor (and its pixels when with_pixels). A missing, unreadable, truncated or corrupt
// file is a core::Error "image PATH: reason".
LoadedImage load_sample_image(const std::string& data_path, const std::string& source,
                              const ImageProcessorConfig& processor, bool with_pixels);

// Turns a tokenised chat sample into a vision-language one: every <|image_pad|> of input_ids
// (one per image, in order) becomes image_pad_tokens copies (labels -100), vision start/end
// labels become -100, image_grid_thw / images / pixel_values are set from `images` and
// position_ids from mrope_positions. Throws core::Error when the number of <|image_pad|> tokens
// differs from the number of images (e.g. "<|image_pad|>" typed in content with
// special_tokens_in_content).
void expand_image_tokens(Sample& s, std::vector<LoadedImage> images, const VisionTokenIds& ids,
                         int64_t merge_size);

// HF's get_rope_index for one sample (Qwen3.5 = Qwen3-VL variant; spec 5.1): rows T, H, W of
// length L ([3, L] row-major). A text token gets (c, c, c) and c += 1; the n = t*h*w/M^2 image
// tokens of an image (consecutive <|image_pad|>, grids taken in order) get T = c + frame,
// H = c + row, W = c + col over the merged (t, h/M, w/M) grid in row-major order, then
// c += max(h, w) / M.
std::vector<int32_t> mrope_positions(const std::vector<int32_t>& input_ids,
                                     const std::vector<int32_t>& image_grid_thw,
                                     int32_t image_pad_id, int64_t merge_size);

// Cuts a vision-language sample to at most max_len tokens without splitting an image: when the
// cut falls inside an image block (from its <|vision_start|> to its <|vision_end|>), the sample
// ends before that block; images after the cut are dropped (grids, refs, pixels). Positions
// are a prefix of the full sample's. Text samples are simply cut.
void truncate_sample(Sample& s, int64_t max_len, const VisionTokenIds& ids, int64_t merge_size);

// Fills pixel_values from s.images (files re-read, checked against their recorded hash, and
// preprocessed). A changed or missing file is a core::Error naming it.
void load_pixel_values(Sample& s, const std::string& data_path,
                       const ImageProcessorConfig& processor);

}  // namespace deltatron::data
