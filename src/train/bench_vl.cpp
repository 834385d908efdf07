// Vision-language batches of `deltatron bench --vision` (bench_vl.h).
//
// Vision tower model FLOPs per step (P patches, n_i patches of image i, D hidden, I MLP width,
// B depth, C = patch_dim, U = merge^2, O out_hidden_size; matmul FLOPs are 2 per multiply-add):
//   forward GEMMs   F = 2 P (C D + B (4 D^2 + 2 D I) + U D^2 + D O)
//                   (patch embedding; qkv + proj + fc1 + fc2 per block; the merger's fc1 on
//                   P / U rows of U D and fc2 to O)
//   attention       A = B * 4 D sum_i n_i^2   (QK^T and PV, bidirectional inside each image)
//   frozen          F + A                      (forward only)
//   merger          F + A + 4 P (U D^2 + D O)  (+ the merger's input and weight gradients)
//   full            3 F - 2 P C D + 3 A         (every backward GEMM twice the forward, the patch
//                                               embedding has no input gradient)
// Elementwise work (norms, GELU, RoPE, position embedding) is not counted, as in the text model.
#include "train/bench_vl.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "core/error.h"
#include "data/image_preprocess.h"
#include "data/vision_data.h"

namespace deltatron::train {

int64_t VlSample::tokens(int64_t merge_unit) const {
  int64_t n = 0;
  for (int64_t t : text) n += t;
  for (const auto& g : grids) n += g[0] * g[1] * g[2] / merge_unit + 2;
  return n;
}

int64_t VlSample::patches() const {
  int64_t n = 0;
  for (const auto& g : grids) n += g[0] * g[1] * g[2];
  return n;
}

namespace {

// One document-like image: the source size in pixels (height, width), as bench_vl.h lists.
std::pair<int64_t, int64_t> draw_source_size(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const double kind = u(rng);
  if (kind < 0.5) {  // document page
    const double w = 800 + 900 * u(rng), ar = 1.29 + 0.13 * u(rng);
    return {int64_t(w * ar), int64_t(w)};
  }
  if (kind < 0.8) {  // receipt
    const double w = 400 + 500 * u(rng), ar = 1.5 + 2.0 * u(rng);
    return {int64_t(w * ar), int64_t(w)};
  }
  static constexpr int64_t kScreens[][2] = {{720, 1280},  {768, 1366}, {900, 1440},
                                            {1080, 1920}, {768, 1024}, {1792, 828}};
  const auto& s = kScreens[std::min<size_t>(size_t(u(rng) * 6), 5)];
  return {s[0], s[1]};
}

uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<VlStep> draw_vl_steps(const VlDrawOptions& o, int64_t nsteps) {
  DT_CHECK(o.min_text >= 2 && o.max_text >= o.min_text && o.median_text > 0 && o.sigma >= 0,
           "bench --vision: need 2 <= min text <= max text and a positive median");
  DT_CHECK(o.min_pixels > 0 && o.max_pixels >= o.min_pixels, "bench --vision: need 0 < ",
           "--min-pixels <= --max-pixels, got ", o.min_pixels, " and ", o.max_pixels);
  const int64_t factor = o.patch_size * o.merge_size, unit = o.merge_size * o.merge_size;
  std::mt19937_64 rng(o.seed);
  std::lognormal_distribution<double> ln(std::log(o.median_text), o.sigma);
  std::vector<VlStep> steps(1);
  int64_t used = 0;
  while (int64_t(steps.size()) <= nsteps) {
    VlSample s;
    for (int attempt = 0;; ++attempt) {
      DT_CHECK(attempt < 1000, "bench --vision: no sample fits --tokens ", o.micro_batch_tokens,
               " (raise it or lower --max-pixels)");
      const auto [H, W] = draw_source_size(rng);
      const auto [h, w] = data::smart_resize(H, W, factor, o.min_pixels, o.max_pixels);
      const int64_t text = std::clamp<int64_t>(int64_t(ln(rng)), o.min_text, o.max_text);
      const int64_t prompt = std::min(o.prompt_len, text / 2);
      s.text = {prompt, text - prompt};
      s.grids = {{1, h / o.patch_size, w / o.patch_size}};
      if (s.tokens(unit) <= o.micro_batch_tokens) break;
    }
    const int64_t L = s.tokens(unit);
    if (used + L > o.micro_batch_tokens) {
      steps.emplace_back();
      used = 0;
    }
    steps.back().push_back(std::move(s));
    used += L;
  }
  steps.pop_back();
  return steps;
}

nlohmann::json vl_steps_json(const std::vector<VlStep>& steps, const VlDrawOptions& o) {
  nlohmann::json js = nlohmann::json::array();
  for (const VlStep& st : steps) {
    nlohmann::json a = nlohmann::json::array();
    for (const VlSample& s : st) a.push_back({{"text", s.text}, {"grids", s.grids}});
    js.push_back(a);
  }
  return {{"micro_batch_tokens", o.micro_batch_tokens},
          {"vision",
           {{"patch_size", o.patch_size},
            {"spatial_merge_size", o.merge_size},
            {"temporal_patch_size", 2},
            {"min_pixels", o.min_pixels},
            {"max_pixels", o.max_pixels}}},
          {"draw",
           {{"generator", "deltatron bench (src/train/bench_vl.cpp)"},
            {"seed", o.seed},
            {"median_text", o.median_text},
            {"sigma", o.sigma},
            {"min_text", o.min_text},
            {"max_text", o.max_text},
            {"prompt_len", o.prompt_len}}},
          {"steps", js}};
}

std::vector<VlStep> read_vl_steps(const nlohmann::json& j, const model::Config& c,
                                  int64_t micro_batch_tokens, const std::string& where) {
  const int64_t merge = c.vision.spatial_merge_size, unit = merge * merge;
  DT_CHECK(j.is_object() && j.contains("steps") && j["steps"].is_array() && !j["steps"].empty(),
           where,
           ": expected {\"steps\": [[{\"text\": [...], \"grids\": [[t, h, w]]}, ...], ...]}");
  if (j.contains("vision")) {
    const auto& v = j["vision"];
    const auto same = [&](const char* key, int64_t ours) {
      DT_CHECK(!v.contains(key) || v[key].get<int64_t>() == ours, where, ": vision.", key, " = ",
               v[key].dump(), " but the model's is ", ours);
    };
    same("patch_size", c.vision.patch_size);
    same("spatial_merge_size", merge);
    same("temporal_patch_size", c.vision.temporal_patch_size);
  }
  std::vector<VlStep> out;
  for (size_t si = 0; si < j["steps"].size(); ++si) {
    const auto& st = j["steps"][si];
    const std::string at = where + ": step " + std::to_string(si);
    DT_CHECK(st.is_array() && !st.empty(), at, ": expected a non-empty list of samples");
    VlStep step;
    int64_t sum = 0;
    for (const auto& sj : st) {
      DT_CHECK(sj.is_object() && sj.contains("text") && sj.contains("grids"), at,
               ": a sample must be {\"text\": [...], \"grids\": [[t, h, w], ...]}, got ",
               sj.dump().substr(0, 80));
      VlSample s;
      try {
        s.text = sj["text"].get<std::vector<int64_t>>();
        s.grids = sj["grids"].get<std::vector<std::array<int64_t, 3>>>();
      } catch (const nlohmann::json::exception& e) {
        core::fail(at, ": bad sample ", sj.dump().substr(0, 80), " (", e.what(), ")");
      }
      DT_CHECK(s.text.size() == s.grids.size() + 1, at, ": a sample has ", s.text.size(),
               " text lengths for ", s.grids.size(), " images (expected images + 1)");
      for (int64_t t : s.text) DT_CHECK(t >= 0, at, ": negative text length ", t);
      for (const auto& g : s.grids)
        DT_CHECK(g[0] >= 1 && g[1] > 0 && g[2] > 0 && g[1] % merge == 0 && g[2] % merge == 0, at,
                 ": grid [", g[0], ", ", g[1], ", ", g[2],
                 "] is not (t >= 1, h, w positive multiples of ", merge, ")");
      DT_CHECK(s.tokens(unit) > 0, at, ": an empty sample");
      sum += s.tokens(unit);
      step.push_back(std::move(s));
    }
    DT_CHECK(sum <= micro_batch_tokens, at, " has ", sum, " tokens, more than --tokens ",
             micro_batch_tokens);
    out.push_back(std::move(step));
  }
  return out;
}

data::Pack make_vl_pack(const VlStep& step, const model::Config& c, uint64_t seed) {
  DT_CHECK(c.has_vision, "bench --vision: the model has no vision_config");
  const int64_t merge = c.vision.spatial_merge_size, unit = merge * merge;
  const int64_t C = c.vision.patch_dim();
  const int32_t text_ids = int32_t(std::min<int64_t>(c.vocab_size, 248000));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, text_ids - 1);
  std::vector<data::Sample> samples(step.size());
  std::vector<const data::Sample*> ptrs;
  std::vector<int64_t> index;
  for (size_t i = 0; i < step.size(); ++i) {
    const VlSample& vs = step[i];
    data::Sample& s = samples[i];
    for (size_t k = 0; k < vs.text.size(); ++k) {
      for (int64_t t = 0; t < vs.text[k]; ++t) {
        const int32_t id = tok(rng);
        s.input_ids.push_back(id);
        s.labels.push_back(id);
      }
      if (k == vs.grids.size()) break;
      const auto& g = vs.grids[k];
      s.input_ids.push_back(int32_t(c.vision_start_token_id));
      s.input_ids.insert(s.input_ids.end(), g[0] * g[1] * g[2] / unit, int32_t(c.image_token_id));
      s.input_ids.push_back(int32_t(c.vision_end_token_id));
      s.labels.resize(s.input_ids.size(), data::kIgnoreIndex);
      for (int64_t v : g) s.image_grid_thw.push_back(int32_t(v));
    }
    DT_CHECK(int64_t(s.input_ids.size()) == vs.tokens(unit), "make_vl_pack: sample ", i, " has ",
             s.input_ids.size(), " tokens, expected ", vs.tokens(unit));
    s.position_ids =
        data::mrope_positions(s.input_ids, s.image_grid_thw, int32_t(c.image_token_id), merge);
    // Pixel values: counter-based, so the pack does not depend on the thread count.
    const int64_t n = vs.patches() * C;
    s.pixel_values.resize(size_t(n));
    float* px = s.pixel_values.data();
    const uint64_t base = mix((seed + 1) * 0x9E3779B97F4A7C15ull + i);
#pragma omp parallel for schedule(static)
    for (int64_t e = 0; e < n; ++e)
      px[e] =
          float(double(mix(base + uint64_t(e) * 0x94D049BB133111EBull) >> 11) * 0x1.0p-52 - 1.0);
    ptrs.push_back(&s);
    index.push_back(int64_t(i));
  }
  return data::make_pack(ptrs, index, 1);
}

double vision_step_flops(const model::Config& c, const VlStep& step) {
  if (c.vision_mode == model::VisionMode::off) return 0;
  const model::VisionConfig& v = c.vision;
  const double D = double(v.hidden_size), I = double(v.intermediate_size);
  const double B = double(v.depth), C = double(v.patch_dim()), U = double(v.merge_unit());
  const double O = double(v.out_hidden_size);
  double P = 0, sq = 0;
  for (const VlSample& s : step)
    for (const auto& g : s.grids) {
      const double n = double(g[1] * g[2]);  // one attention segment per temporal group
      P += double(g[0]) * n;
      sq += double(g[0]) * n * n;
    }
  const double merger = U * D * D + D * O;
  const double F = 2.0 * P * (C * D + B * (4.0 * D * D + 2.0 * D * I) + merger);
  const double A = B * 4.0 * D * sq;
  switch (c.vision_mode) {
    case model::VisionMode::frozen:
      return F + A;
    case model::VisionMode::merger:
      return F + A + 4.0 * P * merger;
    case model::VisionMode::full:
      return 3.0 * F - 2.0 * P * C * D + 3.0 * A;
    case model::VisionMode::off:
      break;
  }
  return 0;
}

}  // namespace deltatron::train
