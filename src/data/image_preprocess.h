// Qwen3.5's image preprocessing: smart_resize, bicubic resize, rescale + normalise, patchify
// (spec qwen35-vl.md sections 1.3, 2 and 4; transformers' Qwen2VLImageProcessor, PIL backend).
//
// Shapes: an image of h x w pixels (after smart_resize) becomes
//   pixel_values_NK  [N = grid_t * grid_h * grid_w, K = C * T * P * P], float32
// with P = patch_size (16), T = temporal_patch_size (2), C = 3, grid_t = 1, grid_h = h / P,
// grid_w = w / P; image_grid_thw = [grid_t, grid_h, grid_w]; the language model sees
// grid_t * grid_h * grid_w / merge_size^2 <|image_pad|> tokens for it.
//   row n    (merge-group contiguous) n = ((bh * (grid_w / M) + bw) * M + mh) * M + mw, the
//            patch at patch row r = M bh + mh, patch column c = M bw + mw (M = merge_size)
//   column   k = ((ch * T + t) * P + py) * P + px: channel ch (R, G, B), frame t (a still image
//            is repeated T times), pixel (y, x) = (r P + py, c P + px) of the resized image
//   value    v = float((double)u8 * rescale_factor), then (v - mean[ch]) / std[ch] in float32:
//            the same operations, in the same precisions, as the HF processor's PIL path, so
//            the values are bit-identical to it given the same resized bytes
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "data/image.h"

namespace deltatron::data {

// preprocessor_config.json's image fields. Defaults are Qwen3.5's published values (not the
// Qwen2-VL class defaults); a key in the file overrides them. Size: `size.shortest_edge` is
// min_pixels and `size.longest_edge` max_pixels (pixel counts); legacy top-level
// `min_pixels` / `max_pixels` keys win over `size`.
struct ImageProcessorConfig {
  int64_t patch_size = 16;
  int64_t temporal_patch_size = 2;
  int64_t merge_size = 2;
  int64_t min_pixels = 65536;     // 256^2
  int64_t max_pixels = 16777216;  // 4096^2
  bool do_resize = true;          // resample 3 (bicubic) is the only one supported
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<float, 3> image_mean = {0.5f, 0.5f, 0.5f};
  std::array<float, 3> image_std = {0.5f, 0.5f, 0.5f};

  int64_t factor() const { return patch_size * merge_size; }
  // Parses a preprocessor_config.json object; `name` labels error messages.
  static ImageProcessorConfig from_json(const nlohmann::json& j, const std::string& name);
  static ImageProcessorConfig load(const std::string& path);
};

// HF's smart_resize: the (height, width) an H x W image is resized to. Both are multiples of
// factor, the area lies in [min_pixels, max_pixels] (when reachable) and the aspect ratio is
// kept as well as that allows. Rounding is Python's round-half-to-even (720 / 32 = 22.5 -> 22).
// Throws core::Error when max(H, W) / min(H, W) > 200, as HF does.
std::pair<int64_t, int64_t> smart_resize(int64_t height, int64_t width, int64_t factor,
                                         int64_t min_pixels, int64_t max_pixels);

struct ImagePatches {
  std::vector<float> pixel_values_NK;
  int64_t grid_t = 0, grid_h = 0, grid_w = 0;
  int64_t patch_dim = 0;  // K = 3 * T * P * P

  int64_t num_patches() const { return grid_t * grid_h * grid_w; }
};

// The image resized as the processor resizes it (smart_resize, then Pillow-exact bicubic); the
// input itself when do_resize is off (its sides must then be multiples of factor).
ImageRGB8 resize_for_processor(const ImageRGB8& image, const ImageProcessorConfig& cfg);

// pixel_values and grid of an image already at its final size (sides multiples of
// patch_size * merge_size), laid out as this header's legend says.
ImagePatches patchify_image(const ImageRGB8& resized, const ImageProcessorConfig& cfg);

// The whole pipeline for one decoded image: resize_for_processor, then patchify_image.
ImagePatches preprocess_image(const ImageRGB8& image, const ImageProcessorConfig& cfg);

// <|image_pad|> tokens for an image of this grid: t * h * w / merge_size^2.
int64_t image_pad_tokens(const ImagePatches& p, int64_t merge_size);

}  // namespace deltatron::data
