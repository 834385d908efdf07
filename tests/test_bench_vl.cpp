// `deltatron bench --vision` (train/bench_vl.h): the drawn image-text batches are deterministic,
// fit the budget and have document-like grids; packs carry each image's tokens, grid, pixels and
// MRoPE positions; the batch file round-trips; the tower FLOPs; the VL presets' towers; a tiny
// CPU bench run in each mode.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/config.h"
#include "test_util.h"
#include "train/bench.h"
#include "train/bench_vl.h"
#include "train/presets.h"

namespace deltatron {
namespace {

model::Config vl_config(const std::string& preset, model::VisionMode mode) {
  model::Config c = model::parse_config(train::preset_config(preset), "preset " + preset);
  c.vision_mode = mode;
  return c;
}

std::string dump(const std::vector<train::VlStep>& steps) {
  return train::vl_steps_json(steps, train::VlDrawOptions{}).dump();
}

TEST(BenchVl, DrawIsDeterministicAndFitsTheBudget) {
  train::VlDrawOptions o;
  const auto a = train::draw_vl_steps(o, 12), b = train::draw_vl_steps(o, 12);
  ASSERT_EQ(a.size(), 12u);
  EXPECT_EQ(dump(a), dump(b));
  o.seed = 2;
  EXPECT_NE(dump(a), dump(train::draw_vl_steps(o, 12)));
  int64_t lo = 1 << 30, hi = 0, samples = 0;
  for (size_t s = 0; s < a.size(); ++s) {
    int64_t sum = 0;
    for (const auto& smp : a[s]) {
      ASSERT_EQ(smp.grids.size(), 1u);
      ASSERT_EQ(smp.text.size(), 2u);
      const auto& g = smp.grids[0];
      EXPECT_EQ(g[0], 1);
      EXPECT_EQ(g[1] % 2, 0) << "step " << s;
      EXPECT_EQ(g[2] % 2, 0) << "step " << s;
      const int64_t img = g[1] * g[2] / 4;
      EXPECT_LE(img * 1024, o.max_pixels) << "step " << s << " grid " << g[1] << "x" << g[2];
      EXPECT_GE(img * 1024, o.min_pixels) << "step " << s;
      lo = std::min(lo, img), hi = std::max(hi, img);
      const int64_t text = smp.text[0] + smp.text[1];
      EXPECT_GE(text, o.min_text);
      EXPECT_LE(text, o.max_text);
      sum += smp.tokens(4);
      ++samples;
    }
    EXPECT_LE(sum, o.micro_batch_tokens) << "step " << s;
    // next-fit: the next step's first sample would not have fitted
    if (s + 1 < a.size()) EXPECT_GT(sum + a[s + 1][0].tokens(4), o.micro_batch_tokens);
  }
  // documents and receipts: several hundred to about two thousand image tokens
  EXPECT_LT(lo, 800);
  EXPECT_GT(hi, 1500);
  EXPECT_LE(hi, 2048);
  EXPECT_GT(samples, 24);
}

TEST(BenchVl, PackCarriesEachImagesTokensGridPixelsAndPositions) {
  const model::Config c = vl_config("tiny-vl", model::VisionMode::full);
  train::VlStep step;
  step.push_back({{5, 7}, {{1, 4, 6}}});
  step.push_back({{3, 0}, {{1, 2, 2}}});
  step.push_back({{2, 4, 1}, {{1, 2, 4}, {1, 6, 2}}});
  const data::Pack p = train::make_vl_pack(step, c, 11);
  const data::Pack q = train::make_vl_pack(step, c, 11);
  EXPECT_EQ(p.input_ids, q.input_ids);
  EXPECT_EQ(p.pixel_values, q.pixel_values);  // bitwise
  EXPECT_NE(p.input_ids, train::make_vl_pack(step, c, 12).input_ids);
  ASSERT_EQ(p.num_samples(), 3);
  EXPECT_EQ(p.image_grid_thw, (std::vector<int32_t>{1, 4, 6, 1, 2, 2, 1, 2, 4, 1, 6, 2}));
  const int64_t patches = 24 + 4 + 8 + 12;
  ASSERT_EQ(int64_t(p.pixel_values.size()), patches * c.vision.patch_dim());
  for (float v : p.pixel_values) ASSERT_TRUE(v >= -1.f && v <= 1.f) << v;
  ASSERT_EQ(p.N, (5 + 7 + 6 + 2) + (3 + 1 + 2) + (2 + 4 + 1 + 2 + 2 + 3 + 2));
  const int32_t pad = int32_t(c.image_token_id), vs = int32_t(c.vision_start_token_id),
                ve = int32_t(c.vision_end_token_id);
  // Walk each sample: text, then per image VS, h*w/4 pads, VE; labels -100 exactly there.
  std::vector<int32_t> grids = p.image_grid_thw;
  size_t img = 0;
  for (int s = 0; s < 3; ++s) {
    int32_t t = p.cu_seqlens_padded[s];
    EXPECT_EQ(p.cu_seqlens_padded[s + 1] - t, step[s].tokens(4));
    int32_t cur = 0;  // the MRoPE cursor of spec 5.1
    for (size_t k = 0; k < step[s].text.size(); ++k) {
      for (int64_t i = 0; i < step[s].text[k]; ++i, ++t, ++cur) {
        ASSERT_LT(p.input_ids[t], 248000) << "text token " << t;
        EXPECT_EQ(p.labels[t], p.input_ids[t]);
        for (int r = 0; r < 3; ++r) EXPECT_EQ(p.position_ids[r * p.N + t], cur) << t;
      }
      if (k == step[s].grids.size()) break;
      ASSERT_EQ(p.input_ids[t], vs) << t;
      EXPECT_EQ(p.labels[t], -100);
      ++t, ++cur;
      const int32_t gh = grids[3 * img + 1] / 2, gw = grids[3 * img + 2] / 2;
      for (int32_t r = 0; r < gh; ++r)
        for (int32_t col = 0; col < gw; ++col, ++t) {
          ASSERT_EQ(p.input_ids[t], pad) << t;
          EXPECT_EQ(p.labels[t], -100);
          EXPECT_EQ(p.position_ids[t], cur);
          EXPECT_EQ(p.position_ids[p.N + t], cur + r);
          EXPECT_EQ(p.position_ids[2 * p.N + t], cur + col);
        }
      cur += std::max(gh, gw);
      ASSERT_EQ(p.input_ids[t], ve) << t;
      EXPECT_EQ(p.labels[t], -100);
      EXPECT_EQ(p.position_ids[t], cur);
      ++t, ++cur, ++img;
    }
    EXPECT_EQ(t, p.cu_seqlens_padded[s + 1]);
  }
  EXPECT_EQ(img, 4u);
}

TEST(BenchVl, BatchFileRoundTripsAndBadFilesAreNamed) {
  const model::Config c = vl_config("2b-vl", model::VisionMode::frozen);
  train::VlDrawOptions o;
  const auto steps = train::draw_vl_steps(o, 4);
  const nlohmann::json j = train::vl_steps_json(steps, o);
  EXPECT_EQ(j["vision"]["max_pixels"], o.max_pixels);
  const auto back = train::read_vl_steps(nlohmann::json::parse(j.dump()), c, 8192, "f.json");
  EXPECT_EQ(dump(back), dump(steps));
  const auto fails = [&](nlohmann::json bad, const std::string& what) {
    try {
      train::read_vl_steps(bad, c, 8192, "f.json");
      ADD_FAILURE() << "no error for " << bad.dump().substr(0, 120);
    } catch (const core::Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  nlohmann::json bad = j;
  bad["steps"][1][0]["text"] = {3};
  fails(bad, "f.json: step 1: a sample has 1 text lengths for 1 images");
  bad = j;
  bad["steps"][2][0]["grids"][0] = {1, 5, 4};
  fails(bad, "f.json: step 2: grid [1, 5, 4]");
  bad = j;
  bad["steps"][0].push_back({{"text", {9000, 0}}, {"grids", {{1, 2, 2}}}});
  fails(bad, "f.json: step 0 has");
  bad = j;
  bad["vision"]["patch_size"] = 14;
  fails(bad, "vision.patch_size = 14 but the model's is 16");
  fails(nlohmann::json{{"steps", {{100, 200}}}}, "f.json: step 0: a sample must be");
}

TEST(BenchVl, TowerFlopsByHand) {
  model::Config c = vl_config("2b-vl", model::VisionMode::frozen);
  const train::VlStep step = {{{10, 10}, {{1, 32, 48}}}};
  const double P = 32 * 48, D = 1024, I = 4096, B = 24, C = 1536, O = 2048;
  const double merger = 4 * D * D + D * O;
  const double F = 2 * P * (C * D + B * (4 * D * D + 2 * D * I) + merger);
  const double A = B * 4 * D * P * P;
  EXPECT_DOUBLE_EQ(train::vision_step_flops(c, step), F + A);
  c.vision_mode = model::VisionMode::merger;
  EXPECT_DOUBLE_EQ(train::vision_step_flops(c, step), F + A + 4 * P * merger);
  c.vision_mode = model::VisionMode::full;
  EXPECT_DOUBLE_EQ(train::vision_step_flops(c, step), 3 * F - 2 * P * C * D + 3 * A);
  c.vision_mode = model::VisionMode::off;
  EXPECT_EQ(train::vision_step_flops(c, step), 0.0);
}

// The towers of the VL presets have qwen35-vl spec 1.2's parameter counts (0.1 M rounding).
TEST(BenchVl, VlPresetsHaveTheSpecsTowers) {
  const std::pair<const char*, double> want[] = {{"0.8b-vl", 100.6e6},
                                                 {"2b-vl", 331.4e6},
                                                 {"4b-vl", 333.5e6},
                                                 {"9b-vl", 456.0e6},
                                                 {"27b-vl", 460.7e6}};
  for (const auto& [name, count] : want) {
    const model::Config c = vl_config(name, model::VisionMode::full);
    model::check_vision(c, name);
    double n = 0;
    for (const auto& spec : model::vision_param_specs(c)) {
      double e = 1;
      for (auto d : spec.shape) e *= double(d);
      n += e;
    }
    EXPECT_NEAR(n, count, 0.05e6) << name;
    const model::Config text = model::parse_config(
        train::preset_config(std::string(name).substr(0, std::string(name).size() - 3)), "text");
    EXPECT_EQ(c.hidden_size, text.hidden_size) << name;
    EXPECT_EQ(c.num_hidden_layers, text.num_hidden_layers) << name;
    EXPECT_EQ(c.prefix, "model.language_model.") << name;
    EXPECT_EQ(train::preset_preprocessor_config(name)["size"]["longest_edge"], 16777216);
  }
}

// A tiny CPU run per mode: the batches file written by one run is read back by the next (the
// same batches: equal token and patch counts), and the JSON has the vision fields.
TEST(BenchVl, TinyCpuRunInEachMode) {
  const dt_test::TempDir tmp("benchvl");
  const std::string batches = (tmp.path / "vl.json").string();
  double patches = -1, tokens = -1;
  for (const char* mode : {"full", "merger", "frozen"}) {
    SCOPED_TRACE(mode);
    train::BenchOptions o;
    o.device = "cpu";
    o.preset = "tiny-vl";
    o.vision = mode;
    o.micro_batch_tokens = 160;
    o.vl.min_pixels = 4096;
    o.vl.max_pixels = 16384;  // <= 16 image tokens
    o.vl.median_text = 24;
    o.vl.min_text = 8;
    o.vl.max_text = 64;
    o.warmup = 0;
    o.steps = 2;
    (std::string(mode) == "full" ? o.lengths_out : o.lengths_in) = batches;
    o.json_out = (tmp.path / (std::string(mode) + ".json")).string();
    train::run_bench(o);
    const auto j = nlohmann::json::parse(dt_test::read_file(o.json_out));
    EXPECT_EQ(j["vision"], mode);
    EXPECT_GT(j["image_patches_per_s"].get<double>(), 0);
    EXPECT_GT(j["vision_tflops_share"].get<double>(), 0);
    EXPECT_GT(j["real_tok_per_s"].get<double>(), 0);
    const double P = j["image_patches"].get<double>();
    const double T = j["image_tokens"].get<double>() + j["text_tokens"].get<double>();
    EXPECT_EQ(P, 4 * j["image_tokens"].get<double>());
    if (patches < 0) {
      patches = P, tokens = T;
    } else {
      EXPECT_EQ(P, patches);
      EXPECT_EQ(T, tokens);
    }
  }
  const auto f = nlohmann::json::parse(dt_test::read_file(batches));
  EXPECT_EQ(f["steps"].size(), 2u);
  EXPECT_EQ(f["micro_batch_tokens"], 160);
}

}  // namespace
}  // namespace deltatron
