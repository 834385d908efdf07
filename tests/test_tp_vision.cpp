// Tensor and sequence parallelism with images on CPU ranks (Gloo; `deltatron launch`) against one
// rank (issue 15): every rank of a tp group runs the vision tower whole, the merged tokens are
// injected into its rows (sp: only the image-pad tokens among them), and the merged rows' gradient
// is made whole on every rank before the tower's backward, so the tower's gradients are one
// rank's. `score` of vision-language fixtures with images (per-sample losses, the router loss,
// every gradient, model.visual.* included) on tp2, tp2 + sp, tp2 x dp2 and tp2 x ep2; six training
// steps of the bundled vision example on tp2 and tp2 + sp, and resumes across layouts; LoRA with
// the tower frozen on tp2 + sp.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "io/peft_adapter.h"
#include "layout_runs.h"
#include "layout_score.h"
#include "model/config.h"
#include "model/tensor_parallel.h"
#include "short_run.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {

const fs::path kGoldenVl = fs::path(DT_TEST_DATA) / "golden_vl";

const std::vector<dt_test::ScoreLayout> kLayouts = {{2, "--tp 2", "tp2"},
                                                    {2, "--tp 2 --sp", "tp2_sp"},
                                                    {4, "--tp 2", "tp2_dp2"},
                                                    {4, "--tp 2 --sp", "tp2_sp_dp2"}};

// A sample of the token JSONL without its last token (input, label and the three MRoPE rows).
nlohmann::ordered_json trimmed(nlohmann::ordered_json j) {
  const size_t n = j["input_ids"].size();
  j["input_ids"].erase(n - 1);
  j["labels"].erase(n - 1);
  nlohmann::ordered_json pos = nlohmann::ordered_json::array();
  for (size_t r = 0; r < 3; ++r)
    for (size_t t = 0; t + 1 < n; ++t) pos.push_back(j["position_ids"][r * n + t]);
  j["position_ids"] = pos;
  return j;
}

// golden_vl's three samples (20, 19 and 13 tokens; one or two images each, HF's MRoPE positions),
// then samples 1, 0, 2 without their last token: packs of 64 tokens hold 52 and 49 (odd: sp pads
// it to 50). On tp2 + sp the first pack's rows split between the images of samples 0 and 1, the
// second's inside the first image of sample 0 (its image-pad tokens 22-24 on rank 0, 25-27 on
// rank 1).
fs::path image_samples(const fs::path& dir) {
  std::vector<nlohmann::ordered_json> rows;
  std::istringstream in(dt_test::read_file(kGoldenVl / "samples.jsonl"));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) rows.push_back(nlohmann::ordered_json::parse(line));
  const fs::path out = dir / "images.jsonl";
  std::ofstream f(out);
  for (const auto& r : rows) f << r.dump() << "\n";
  for (int i : {1, 0, 2}) f << trimmed(rows.at(i)).dump() << "\n";
  return out;
}

// moe_vlm_mtp (MoE trunk, MoE MTP layer, a 1-block tower of golden_vl's patch width and output
// width) with golden_vl's image token ids, inside its vocabulary, so golden_vl's samples carry
// images into it.
fs::path moe_vlm_with_images(const fs::path& dir) {
  const fs::path from = fs::path(DT_TEST_DATA) / "golden" / "moe_vlm_mtp", to = dir / "moe_vlm";
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from))
    if (e.path().filename() != "config.json") fs::copy(e.path(), to / e.path().filename());
  nlohmann::ordered_json c =
      nlohmann::ordered_json::parse(dt_test::read_file(from / "config.json"));
  const nlohmann::json vl = nlohmann::json::parse(dt_test::read_file(kGoldenVl / "config.json"));
  for (const char* key :
       {"image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"})
    c[key] = vl[key];
  std::ofstream(to / "config.json") << c.dump(2);
  return to;
}

}  // namespace

// The dense golden_vl fixture (GDN + attention, a 2-block tower, MRoPE) with its whole tower
// trained: its samples against one rank and against Hugging Face's float64 on every layout; the
// samples with odd packs (sp padding, an image split over the ranks' rows) on sp layouts, and in
// merger mode (the tower's blocks frozen, held apart).
TEST(TensorParallelVision, ScoreEqualsOneRank) {
  const dt_test::TempDir tmp("tp_vision_score");
  dt_test::score_vs_one_rank(tmp.path, kGoldenVl, kGoldenVl / "samples.jsonl",
                             "--quiet --vision full", "golden_vl", false, true, kLayouts);
  const fs::path data = image_samples(tmp.path);
  const std::vector<dt_test::ScoreLayout> sp = {kLayouts[1], kLayouts[3]};
  dt_test::score_vs_one_rank(tmp.path, kGoldenVl, data, "--quiet --vision full", "vl_odd", false,
                             false, sp);
  dt_test::score_vs_one_rank(tmp.path, kGoldenVl, data, "--quiet --vision merger", "vl_merger",
                             false, false, {kLayouts[1]});
}

// MoE (4 experts, top-2, shared expert, an MoE MTP layer) with images, the router losses on: tp2,
// tp2 + sp, tp2 + sp with ZeRO 3 (the tower gathered with the outer unit) and tp2 + sp x ep2 (4
// ranks: the experts split over the data-parallel ranks of a tp slice).
TEST(TensorParallelVision, MoeScoreEqualsOneRank) {
  const dt_test::TempDir tmp("tp_vision_moe_score");
  const fs::path model = moe_vlm_with_images(tmp.path);
  const std::vector<dt_test::ScoreLayout> layouts = {kLayouts[0],
                                                     kLayouts[1],
                                                     {2, "--zero 3 --tp 2 --sp", "zero3_tp2_sp"},
                                                     {4, "--tp 2 --sp --ep 2", "tp2_sp_ep2"}};
  dt_test::score_vs_one_rank(
      tmp.path, model, image_samples(tmp.path),
      "--vision full --router-aux-coef 0.01 --z-loss-coef 0.001 --mtp-scale 0.3", "moe_vl", true,
      false, layouts);
}

// Six steps of the bundled vision example (tiny-vl: 4 text layers, a 2-block tower trained whole,
// real 64 x 64 images through the chat template) on 24 of its rows: tp2 and tp2 + sp (2 ranks, 2
// micro-batches) against one rank: step losses, weights (tower included) and AdamW moments. Then
// the tp2 run's step-3 checkpoint resumed on one rank and the one-rank run's on tp2 + sp (the
// tower's weights and moments whole in the checkpoint, read whole by every rank).
TEST(TensorParallelVision, TrainTracksOneRank) {
  const dt_test::TempDir tmp("tp_vision_train");
  const fs::path vision = dt_test::examples_dir() / "vision";
  dt_test::write_example_rows(vision / "train.jsonl", tmp.path / "train.jsonl", 24);
  const std::string common =
      "--data.train=\"" + (tmp.path / "train.jsonl").string() + "\" --data.eval=\"\"";
  // The tensor-parallel test's bounds.
  dt_test::LayoutRuns runs(tmp.path, (vision / "train.toml").string(), common, 1e-5, 1e-4, 1e-4);
  const std::string tp2 = "--parallel.tp=2", tp2_sp = tp2 + " --parallel.sp=true";
  ASSERT_TRUE(runs.run({{"one", 1, 2, ""}, {"tp2", 2, 2, tp2}, {"tp2_sp", 2, 2, tp2_sp}}));
  runs.keep_reference();
  runs.check("tp2", 0);
  runs.check("tp2_sp", 0);
  ASSERT_TRUE(runs.run({{"tp2", 1, 2, ""}, {"one", 2, 2, tp2_sp}}, true));
  runs.check("tp2", 6);  // 6 steps, then steps 4-6 again
  runs.check("one", 6);
}

// LoRA on the text model with the tower frozen (held in the frozen base: no tower backward): six
// steps of the vision example on tp2 + sp against one rank, the adapters and their moments.
TEST(TensorParallelVision, LoraTrainTracksOneRank) {
  const dt_test::TempDir tmp("tp_vision_lora_train");
  const fs::path vision = dt_test::examples_dir() / "vision";
  dt_test::write_example_rows(vision / "train.jsonl", tmp.path / "train.jsonl", 24);
  const std::string common =
      "--data.train=\"" + (tmp.path / "train.jsonl").string() +
      "\" --data.eval=\"\" --model.vision=\"frozen\" --lora.r=4 --lora.alpha=8";
  // The tensor-parallel test's bounds.
  dt_test::LayoutRuns runs(tmp.path, (vision / "train.toml").string(), common, 1e-5, 1e-4, 1e-4,
                           io::kAdapterWeightsName);
  ASSERT_TRUE(
      runs.run({{"one", 1, 2, ""}, {"tp2_sp", 2, 2, "--parallel.tp=2 --parallel.sp=true"}}));
  runs.keep_reference();
  runs.check("tp2_sp", 0);
}

// The tower's tensors are replicated and their gradients whole on every rank (never summed over
// the group), with and without sp; the text model's norms are partial with sp.
TEST(TensorParallelVision, TowerGradientsAreWhole) {
  model::Config c = model::load_config((kGoldenVl / "config.json").string());
  c.vision_mode = model::VisionMode::full;
  for (const auto& spec : model::param_specs(c)) {
    if (spec.name.rfind("model.visual.", 0) != 0) continue;
    EXPECT_FALSE(model::is_tp_sharded(c, spec.name)) << spec.name;
    for (bool sp : {false, true})
      EXPECT_FALSE(model::tp_partial_grad(c, spec.name, sp)) << spec.name;
  }
  EXPECT_TRUE(model::tp_partial_grad(c, c.name("norm.weight"), true));
}
