// `deltatron train` on image chat data, end to end on the CPU: the tiny-vl preset (real Qwen3.5
// vocabulary, a 2-block vision tower) on rows of the bundled vision example (64 x 64 PNGs through
// the real decoder, preprocessor, template and MRoPE positions). Each vision mode trains exactly
// its part; a tower that is not trained is held apart with no training state, bitwise as when it
// was kept (never stepped) in the trainable store; a resume with images is bitwise; the
// checkpoint is an HF vision-language checkpoint; image samples packed together score as they do
// alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "data/image.h"
#include "data/image_preprocess.h"
#include "data/pack.h"
#include "data/tokenizer.h"
#include "data/vision_data.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/footprint.h"
#include "model/model.h"
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/engine.h"
#include "train/optimizer.h"
#include "train/presets.h"
#include "train/run_setup.h"
#include "train/train_config.h"
#include "train/train_data.h"
#include "train/trainer.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

const fs::path kVision = dt_test::examples_dir() / "vision";

// A short run of the example's train.toml on 24 training rows (and 6 held-out ones).
train::TrainConfig config(const fs::path& dir, const std::string& out, const std::string& vision,
                          std::vector<std::string> extra = {}) {
  if (!fs::exists(dir / "train.jsonl")) {
    dt_test::write_example_rows(kVision / "train.jsonl", dir / "train.jsonl", 24);
    dt_test::write_example_rows(kVision / "eval.jsonl", dir / "eval.jsonl", 6);
  }
  std::vector<std::string> ov = {"model.vision=\"" + vision + "\"",
                                 "data.train=\"" + (dir / "train.jsonl").string() + "\"",
                                 "data.eval=\"" + (dir / "eval.jsonl").string() + "\"",
                                 "data.cache_dir=\"" + (dir / "cache").string() + "\"",
                                 "training.out_dir=\"" + (dir / out).string() + "\"",
                                 "training.steps=3",
                                 "training.warmup_steps=1",
                                 "training.micro_batch_tokens=256",
                                 "training.grad_accum=1",
                                 "training.save_every=0",
                                 "training.eval_every=0",
                                 "training.log_every=1"};
  ov.insert(ov.end(), extra.begin(), extra.end());
  return train::load_train_config((kVision / "train.toml").string(), ov);
}

bool is_visual(const std::string& name) { return name.rfind("model.visual.", 0) == 0; }
bool is_merger(const std::string& name) { return name.rfind("model.visual.merger.", 0) == 0; }

// The weights a run starts from: the preset initialised with the run's seed, tower included.
model::TensorMap start_weights(const train::TrainConfig& cfg) {
  train::TrainConfig full = cfg;
  full.vision = "full";
  return train::load_or_init_model(full, "").params;
}

TEST(VisionTrain, EachModeTrainsItsPartAndSavesAnHfCheckpoint) {
  const dt_test::TempDir tmp("vision-train");
  std::vector<std::vector<double>> losses;
  for (const std::string mode : {"frozen", "merger", "full"}) {
    SCOPED_TRACE("vision = " + mode);
    const train::TrainConfig cfg = config(tmp.path, mode, mode);
    const train::TrainResult r = train::run_train(cfg, false);
    ASSERT_EQ(r.steps_done, 3);
    losses.push_back(dt_test::metric_losses(tmp.path / mode / "metrics.jsonl"));
    ASSERT_EQ(losses.back().size(), 3u);
    for (double l : losses.back()) EXPECT_TRUE(std::isfinite(l)) << l;
    // An untrained model on 248320 ids: about log(248320) = 12.4.
    EXPECT_NEAR(losses.back()[0], std::log(248320.0), 0.5);
    EXPECT_TRUE(std::isfinite(r.final_eval_loss));

    // The checkpoint: an HF Qwen3_5ForConditionalGeneration directory with the tower's tensors
    // under their HF names and shapes, and the preprocessor settings the data used.
    const fs::path ck_dir = tmp.path / mode / train::checkpoint_dir_name(3);
    const nlohmann::json cj = nlohmann::json::parse(dt_test::read_file(ck_dir / "config.json"));
    EXPECT_EQ(cj["model_type"], "qwen3_5");
    EXPECT_EQ(cj["image_token_id"], 248056);
    EXPECT_EQ(cj["vision_config"]["patch_size"], 16);
    const nlohmann::json pre =
        nlohmann::json::parse(dt_test::read_file(ck_dir / "preprocessor_config.json"));
    EXPECT_EQ(pre["size"]["shortest_edge"], 4096);
    EXPECT_EQ(pre["merge_size"], 2);
    io::LoadOptions lo;
    lo.vision = model::VisionMode::full;
    const io::Checkpoint ck = io::load_checkpoint(ck_dir.string(), lo);
    const std::vector<model::ParamSpec> specs = model::vision_param_specs(ck.config);
    ASSERT_EQ(specs.size(), 33u);  // 3 + 2 blocks x 12 + 6
    const io::SafetensorsSet files(ck_dir.string());
    for (const model::ParamSpec& s : specs) {
      ASSERT_TRUE(files.contains(s.name)) << s.name;
      EXPECT_EQ(files.info(s.name).shape, s.shape) << s.name;
    }
    EXPECT_EQ(files.info("model.visual.patch_embed.proj.weight").shape,
              (core::Shape{64, 3, 2, 16, 16}));
    EXPECT_TRUE(files.contains("model.language_model.embed_tokens.weight"));
    // Loaded text-only (vision off), the tower is carried through as bytes.
    const io::Checkpoint text_only = io::load_checkpoint(ck_dir.string());
    EXPECT_EQ(text_only.passthrough.size(), 33u);

    // Which weights moved: frozen none of the tower, merger only the merger, full all of it.
    const model::TensorMap start = start_weights(cfg);
    int changed_visual = 0, changed_merger = 0, changed_text = 0;
    for (const auto& [name, t] : ck.params) {
      const bool same = t.data == start.at(name).data;
      if (!is_visual(name)) {
        changed_text += !same;
      } else if (is_merger(name)) {
        changed_merger += !same;
      } else {
        changed_visual += !same;
        if (mode != "full") EXPECT_TRUE(same) << name << " changed with vision = " << mode;
      }
      if (is_merger(name) && mode == "frozen")
        EXPECT_TRUE(same) << name << " changed with vision = frozen";
      if (is_merger(name) && mode != "frozen")
        EXPECT_FALSE(same) << name << " did not change with vision = " << mode;
    }
    EXPECT_GT(changed_text, 20);
    if (mode == "full") EXPECT_EQ(changed_visual, 27) << "every tower tensor trains";
    std::printf(
        "vision = %s: losses %.4f %.4f %.4f, held-out %.4f; changed: %d text, %d tower, %d "
        "merger tensors\n",
        mode.c_str(), losses.back()[0], losses.back()[1], losses.back()[2], r.final_eval_loss,
        changed_text, changed_visual, changed_merger);
  }
  // Step 1's forward is the same model on the same pack in every mode.
  EXPECT_EQ(losses[0][0], losses[1][0]);
  EXPECT_EQ(losses[0][0], losses[2][0]);
  // The modes train different parameters: step 2 differs.
  EXPECT_NE(losses[0][1], losses[2][1]);
}

// With the tower off, a tiny-vl run still starts from (and saves) a whole VL model: the tower's
// tensors are pass-through bytes equal to the weights it has when on.
TEST(VisionTrain, PresetWithTheTowerOffKeepsIt) {
  const dt_test::TempDir tmp("vision-off");
  const train::TrainConfig cfg = config(tmp.path, "off", "off");
  const io::Checkpoint ck = train::load_or_init_model(cfg, "");
  const model::TensorMap on = start_weights(cfg);
  ASSERT_EQ(ck.passthrough.size(), 33u);
  for (const auto& [name, raw] : ck.passthrough) {
    const core::Tensor& t = on.at(name);
    ASSERT_EQ(raw.dtype, "F32");
    EXPECT_EQ(raw.shape, t.shape) << name;
    ASSERT_EQ(raw.bytes.size(), t.data.size() * sizeof(float)) << name;
    EXPECT_EQ(std::memcmp(raw.bytes.data(), t.data.data(), raw.bytes.size()), 0) << name;
  }
  for (const auto& [name, t] : ck.params) EXPECT_FALSE(is_visual(name)) << name;
}

TEST(VisionTrain, ResumeWithImagesIsBitwise) {
  const dt_test::TempDir tmp("vision-resume");
  // 4 steps of 2 micro-batches, saved and evaluated at step 2; the second run drops step 4's
  // checkpoint and resumes from step 2.
  const auto cfg = [](const fs::path& dir, const std::string& out) {
    return config(dir, out, "full",
                  {"training.steps=4", "training.grad_accum=2", "training.save_every=2",
                   "training.eval_every=2", "training.keep_last=3"});
  };
  const auto [straight, resumed] = dt_test::straight_and_resumed_at(tmp.path, cfg, 4, 2);
  ASSERT_EQ(straight.size(), 4u);
  ASSERT_EQ(resumed.size(), 6u);  // 4 + 2 resumed steps
  for (int s = 2; s < 4; ++s) EXPECT_EQ(resumed[4 + s - 2], straight[s]) << "step " << s + 1;

  io::LoadOptions lo;
  lo.vision = model::VisionMode::full;
  const fs::path a = tmp.path / "straight" / train::checkpoint_dir_name(4);
  const fs::path b = tmp.path / "resumed" / train::checkpoint_dir_name(4);
  const io::Checkpoint ca = io::load_checkpoint(a.string(), lo);
  const io::Checkpoint cb = io::load_checkpoint(b.string(), lo);
  int visual = 0;
  for (const auto& [name, t] : ca.params) {
    visual += is_visual(name);
    EXPECT_EQ(t.data, cb.params.at(name).data) << "resumed weights differ: " << name;
  }
  EXPECT_EQ(visual, 33);
  // Resuming with another vision mode is refused (other tensors train; their moments differ);
  // with the tower off, the images themselves are.
  train::TrainConfig c = cfg(tmp.path, "resumed");
  c.steps = 6;
  c.vision = "merger";
  dt_test::expect_error([&] { train::run_train(c, true); },
                        {"--resume with a different model.vision", "\"full\"", "\"merger\""});
  c.vision = "off";
  dt_test::expect_error([&] { train::run_train(c, true); },
                        {"images in", "the vision tower is off"});
  std::printf("resume: steps 3-4 losses %.6f %.6f (straight) = %.6f %.6f (resumed)\n", straight[2],
              straight[3], resumed[4], resumed[5]);
}

// Three steps of the engine on the example's image packs, with the frozen part of the tower held
// apart (the default) or kept in the trainable store and skipped by the optimizer (the layout
// before issue 17): the trainable store holds exactly the trained tensors, and the losses,
// gradient norms, weights and moments are bitwise the same.
struct EngineRun {
  std::vector<double> loss, norm;
  model::TensorMap weights, exp_avg, exp_avg_sq;
  int64_t store = 0, held_apart = 0;
  std::vector<std::string> names;
};

EngineRun engine_run(const train::TrainConfig& cfg, const io::Checkpoint& ck,
                     const data::Dataset& ds, bool apart) {
  model::StateOptions state = train::state_options(cfg);
  state.frozen_apart = apart;
  model::TensorMap params = ck.params;
  train::AdamW opt(params, train::adamw_options(cfg));
  const auto engine = train::make_engine("cpu", "fp32", ck.config, params, &opt, false, state);
  EngineRun r;
  const std::vector<std::vector<int64_t>> steps = {{0, 1, 2}, {3, 4, 5}, {6, 7, 8}};
  for (const auto& batch : steps) {
    const data::Pack pack = data::make_dataset_pack(ds, batch, 16);
    engine->zero_grads();
    model::ModelOptions mo;
    mo.ce_scale = 1.f / 64;
    const model::PackLoss pl = engine->fwd_bwd(pack, true, mo);
    double sum = 0;
    for (double l : pl.loss_sum) sum += l;
    r.loss.push_back(sum);
    r.norm.push_back(engine->clip(0.5));
    engine->step(opt, 3e-3);
  }
  engine->sync_weights(params, opt);  // the trained tensors; the frozen ones stay as given
  r.weights = params;
  r.exp_avg = model::zeros_like(params);
  r.exp_avg_sq = model::zeros_like(params);
  for (auto& [name, t] : r.exp_avg) engine->read_moment(name, false, t.ptr());
  for (auto& [name, t] : r.exp_avg_sq) engine->read_moment(name, true, t.ptr());
  // The stores, from a model made as the engine makes it.
  model::Model m(core::Device::cpu, core::DType::f32, ck.config, ck.params, state);
  const model::Params& p = m.params();
  for (const auto& name : p.names()) r.store += p.entry(name).numel;
  r.names = p.names();
  if (m.frozen_params())
    for (const auto& name : m.frozen_params()->names())
      r.held_apart += m.frozen_params()->entry(name).numel;
  return r;
}

// Bitwise equality of two tensor maps; the first differing element printed.
void expect_same(const model::TensorMap& a, const model::TensorMap& b, const char* what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (const auto& [name, t] : a) {
    const core::Tensor& u = b.at(name);
    ASSERT_EQ(t.numel(), u.numel()) << what << " " << name;
    for (int64_t i = 0; i < t.numel(); ++i)
      if (std::memcmp(&t.data[i], &u.data[i], sizeof(float)) != 0) {
        ADD_FAILURE() << what << " " << name << "[" << i << "]: held apart " << t.data[i]
                      << ", kept in the store " << u.data[i];
        break;
      }
  }
}

TEST(VisionTrain, FrozenTowerIsHeldApartBitwise) {
  const dt_test::TempDir tmp("vision-apart");
  for (const std::string mode : {"frozen", "merger"}) {
    for (const std::string moments : {"fp32", "bf16"}) {
      SCOPED_TRACE("vision = " + mode + ", moments = " + moments);
      const train::TrainConfig cfg =
          config(tmp.path, "run", mode, {"training.moments=\"" + moments + "\""});
      const data::Tokenizer tok = data::Tokenizer::load(train::tokenizer_path(cfg));
      const io::Checkpoint ck = train::load_or_init_model(cfg, "");
      const train::TrainData d = train::load_train_data(cfg, tok, ck.config.vocab_size, true);
      const EngineRun a = engine_run(cfg, ck, *d.train_set, true);
      const EngineRun b = engine_run(cfg, ck, *d.train_set, false);

      // The trainable store: exactly the trained tensors (no tower; in merger mode the merger).
      const int64_t all = model::param_count(ck.config);
      const int64_t frozen = model::frozen_param_count(ck.config);
      int64_t tower = 0, merger = 0;
      for (const model::ParamSpec& s : model::vision_param_specs(ck.config))
        (is_merger(s.name) ? merger : tower) += core::numel(s.shape);
      EXPECT_EQ(frozen, mode == "frozen" ? tower + merger : tower);
      EXPECT_EQ(a.store, all - frozen);
      EXPECT_EQ(a.held_apart, frozen);
      EXPECT_EQ(b.store, all);
      EXPECT_EQ(b.held_apart, 0);
      for (const std::string& name : a.names) {
        EXPECT_TRUE(!is_visual(name) || (mode == "merger" && is_merger(name)))
            << name << " is in the trainable store";
      }

      // Training: bitwise the same losses, norms, weights and moments.
      for (size_t s = 0; s < 3; ++s) {
        EXPECT_EQ(a.loss[s], b.loss[s]) << "step " << s + 1;
        EXPECT_EQ(a.norm[s], b.norm[s]) << "step " << s + 1;
      }
      expect_same(a.weights, b.weights, "weight");
      expect_same(a.exp_avg, b.exp_avg, "exp_avg");
      expect_same(a.exp_avg_sq, b.exp_avg_sq, "exp_avg_sq");
      // The frozen tensors are the loaded ones, with zero moments; the trained ones moved.
      int moved = 0;
      for (const auto& [name, t] : a.weights) {
        const bool trains = model::vision_trains(ck.config, name);
        const bool same = t.data == ck.params.at(name).data;
        if (!trains) {
          EXPECT_TRUE(same) << name;
          for (float v : a.exp_avg.at(name).data) ASSERT_EQ(v, 0.f) << name;
        }
        moved += trains && !same;
      }
      EXPECT_GT(moved, 20);
      std::printf(
          "vision = %s, moments %s: trainable store %lld of %lld parameters (%lld held apart); "
          "losses %.9g %.9g %.9g, bitwise as with the tower in the store\n",
          mode.c_str(), moments.c_str(), static_cast<long long>(a.store),
          static_cast<long long>(all), static_cast<long long>(a.held_apart), a.loss[0], a.loss[1],
          a.loss[2]);
    }
  }
  // LoRA keeps the whole base frozen, the tower included: a mode that trains part of it is
  // refused rather than silently not trained.
  const train::TrainConfig lora = config(tmp.path, "lora", "merger", {"lora.enabled=true"});
  dt_test::expect_error([&] { train::run_train(lora, false); },
                        {"model.vision = \"merger\" with LoRA is not supported", "frozen base"});
}

TEST(VisionTrain, PackedImageSamplesScoreAsAlone) {
  const dt_test::TempDir tmp("vision-pack");
  train::TrainConfig cfg = config(tmp.path, "run", "full");
  const data::Tokenizer tok = data::Tokenizer::load(train::tokenizer_path(cfg));
  const io::Checkpoint ck = train::load_or_init_model(cfg, "");
  const train::TrainData d = train::load_train_data(cfg, tok, ck.config.vocab_size, true);
  const data::Dataset& ds = *d.train_set;
  const std::vector<int64_t> batch = {5, 0, 3, 7, 1, 2};  // out of order, several images
  const data::Pack packed = data::make_dataset_pack(ds, batch, 16);
  ASSERT_EQ(packed.num_samples(), 6);
  ASSERT_EQ(packed.image_grid_thw.size(), 6u * 3);
  // The pack's pixels are the images' own, in pack order: each image file decoded and
  // preprocessed alone with the preset's settings (and two different images differ).
  const data::ImageProcessorConfig proc = data::ImageProcessorConfig::from_json(
      train::preset_preprocessor_config("tiny-vl"), "tiny-vl");
  const size_t per_image = 16 * 1536;  // 4 x 4 patches of 3 * 2 * 16 * 16
  ASSERT_EQ(packed.pixel_values.size(), 6 * per_image);
  for (size_t k = 0; k < 6; ++k) {
    const data::Sample smp = ds.sample(batch[k], -1, false);
    ASSERT_EQ(smp.images.size(), 1u);
    const std::string path = data::resolve_image_path(ds.path(), smp.images[0].path);
    const data::ImagePatches want = data::preprocess_image(data::load_image(path), proc);
    ASSERT_EQ(want.pixel_values_NK.size(), per_image);
    EXPECT_TRUE(std::equal(want.pixel_values_NK.begin(), want.pixel_values_NK.end(),
                           packed.pixel_values.begin() + k * per_image))
        << "pixels of " << path;
  }
  EXPECT_FALSE(std::equal(packed.pixel_values.begin(), packed.pixel_values.begin() + per_image,
                          packed.pixel_values.begin() + per_image));
  const model::PackLoss all =
      model::model_fwd_bwd(core::Device::cpu, ck.config, ck.params, packed, nullptr);
  double worst = 0;
  for (int s = 0; s < 6; ++s) {
    const data::Pack one = data::make_dataset_pack(ds, {batch[s]}, 1);
    const model::PackLoss alone =
        model::model_fwd_bwd(core::Device::cpu, ck.config, ck.params, one, nullptr);
    ASSERT_EQ(alone.n_tokens[0], all.n_tokens[s]) << "sample " << batch[s];
    const double rel = std::abs(all.loss_sum[s] - alone.loss_sum[0]) / std::abs(alone.loss_sum[0]);
    worst = std::max(worst, rel);
    EXPECT_LT(rel, 1e-5) << "sample " << batch[s] << ": packed " << all.loss_sum[s] << " alone "
                         << alone.loss_sum[0];
  }
  std::printf("packed vs alone: worst relative loss difference %.2e over 6 image samples\n", worst);
}

}  // namespace
