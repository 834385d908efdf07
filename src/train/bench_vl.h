// Vision-language batches of `deltatron bench --vision` (docs/vision.md, "Benchmark"): synthetic
// document, receipt and screenshot images at realistic resolutions with chat text of log-normal
// length, packed to the micro-batch token budget, deterministic from a seed; their JSON file (the
// batches tools/bench/peer_hf.py runs too); the packs; the tower's model FLOPs.
//
// A sample is text segments around its images: text[0] tokens, image 0 (<|vision_start|>,
// t*h*w / merge^2 <|image_pad|>, <|vision_end|>), text[1] tokens, ..., so text.size() ==
// grids.size() + 1. Grids are (t, h, w) in patches, as image_grid_thw.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/pack.h"
#include "model/config.h"

namespace deltatron::train {

struct VlSample {
  std::vector<int64_t> text;                  // text tokens before, between and after images
  std::vector<std::array<int64_t, 3>> grids;  // (t, h, w) per image, in patches
  // Tokens the language model sees: text + per image t*h*w/merge_unit + 2.
  int64_t tokens(int64_t merge_unit) const;
  int64_t patches() const;  // pixel_values rows: sum of t*h*w
};
using VlStep = std::vector<VlSample>;

// How samples are drawn. Each sample has one image of a kind drawn with these odds (source sizes
// in pixels, uniform within the ranges; then HF's smart_resize with factor patch * merge and
// [min_pixels, max_pixels]):
//   document page (50%): width 800..1700, height / width 1.29..1.42 (A4 / letter scans)
//   receipt       (30%): width 400..900,  height / width 1.5..3.5
//   screenshot    (20%): one of 1280x720, 1366x768, 1440x900, 1920x1080, 1024x768, 828x1792
// and text_len = clamp(int(lognormal(log(median_text), sigma)), min_text, max_text) tokens, a
// prompt of min(prompt_len, text_len / 2) tokens before the image and the rest (the answer)
// after it. Samples are packed next-fit in draw order: a sample that does not fit opens the next
// step (a sample longer than the budget is drawn again).
struct VlDrawOptions {
  int64_t micro_batch_tokens = 8192;
  double median_text = 256, sigma = 0.8;
  int64_t min_text = 32, max_text = 2048, prompt_len = 24;
  int64_t min_pixels = 65536, max_pixels = 2097152;  // 256^2 .. 2048 merged tokens of 32^2
  int64_t patch_size = 16, merge_size = 2;
  uint64_t seed = 1;
};

std::vector<VlStep> draw_vl_steps(const VlDrawOptions& o, int64_t nsteps);

// The batches file: {"micro_batch_tokens": N, "vision": {"patch_size", "spatial_merge_size",
// "temporal_patch_size", "min_pixels", "max_pixels"}, "draw": {...the options...},
// "steps": [[{"text": [a, b], "grids": [[t, h, w]]}, ...], ...]}.
nlohmann::json vl_steps_json(const std::vector<VlStep>& steps, const VlDrawOptions& o);
// Reads "steps" (and checks "micro_batch_tokens" / "vision" against c's tower when present):
// every text length >= 0, text.size() == grids.size() + 1, t >= 1, h and w positive multiples of
// spatial_merge_size, each step's tokens <= micro_batch_tokens. Errors name `where` and the step.
std::vector<VlStep> read_vl_steps(const nlohmann::json& j, const model::Config& c,
                                  int64_t micro_batch_tokens, const std::string& where);

// The pack of one step: random text ids in [0, 248000) (below every special token; reduced
// modulo the vocabulary for small ones), the vision tokens of c, labels = ids with -100 on the
// vision tokens, MRoPE positions (data::mrope_positions), pixel values uniform in [-1, 1];
// padding-free (align 1). Deterministic from seed.
data::Pack make_vl_pack(const VlStep& step, const model::Config& c, uint64_t seed);

// Model FLOPs of the vision tower on one step's images under c.vision_mode (formula at the top
// of bench_vl.cpp); 0 for a step without images.
double vision_step_flops(const model::Config& c, const VlStep& step);

}  // namespace deltatron::train
