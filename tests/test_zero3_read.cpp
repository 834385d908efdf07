// ZeRO 3 reads its pieces outside the trainer's own store too (train::zero3_slices): `score --zero
// 3` (3 ranks of dense_text_mtp, ep2 x dp2 of moe_vlm_mtp) and a LoRA run's frozen base under
// ZeRO 3 (train and score): each rank's loader keeps its pieces alone, counted by the loader
// (io::LoadStats, the "loaded its share" log line), and the results are the whole-read ones (the
// same ranks without ZeRO 3, or with ZeRO 1): losses and LoRA results byte for byte, the full
// model's gradients within fp32 summation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/peft_adapter.h"
#include "model/footprint.h"
#include "model/params.h"
#include "ranks_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/local_slices.h"
#include "train/presets.h"
#include "zero_run.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {

fs::path fixture(const std::string& name) { return fs::path(DT_TEST_DATA) / "golden" / name; }

struct Loaded {
  int rank = 0;
  int64_t kept = 0, peak = 0, all = 0;
};

// The "<what>: rank R of N: loaded its share ..." lines of a job's log, one per rank.
std::vector<Loaded> load_lines(const fs::path& err, const std::string& what, int ranks) {
  const std::string log = dt_test::read_file(err);
  const std::regex line(what + ": rank (\\d) of " + std::to_string(ranks) +
                        ": loaded its share of the weights: kept (\\d+) bytes, loader peak (\\d+) "
                        "bytes \\(whole model (\\d+) bytes in f32\\)");
  std::vector<Loaded> out;
  for (std::sregex_iterator it(log.begin(), log.end(), line), end; it != end; ++it)
    out.push_back(
        {std::stoi((*it)[1]), std::stoll((*it)[2]), std::stoll((*it)[3]), std::stoll((*it)[4])});
  EXPECT_EQ(out.size(), size_t(ranks)) << log;
  return out;
}

// Rank r's ZeRO 3 pieces in bytes (f32), as the job lays them out: ep slice r mod ep, the
// data-parallel ranks all `ranks` (rank r), the same-experts ranks ranks / ep (rank r / ep).
int64_t zero3_share(const model::Config& c, const std::vector<model::ParamSpec>& specs, int ranks,
                    int r, int ep, const train::Zero3Read& read) {
  io::SliceFn base;
  if (ep > 1)  // the experts [E/ep * (r mod ep), ...) of every routed-expert tensor
    base = [=](const model::Config&, const std::string& name,
               const core::Shape& full) -> std::optional<io::ParamSlice> {
      if (!model::is_routed_expert_tensor(name)) return std::nullopt;
      const int64_t El = full[0] / ep, per = core::numel(full) / full[0];
      io::ParamSlice s{full, {{(r % ep) * El * per, El * per}}};
      s.shape[0] = El;
      return s;
    };
  const io::SliceFn f =
      train::zero3_slices(c, base, ranks, r, ep > 1 ? ranks / ep : 0, ep > 1 ? r / ep : 0, read);
  int64_t share = 0;
  for (const model::ParamSpec& s : specs) {
    const auto sl = f(c, s.name, s.shape);
    share += 4 * (sl ? core::numel(sl->shape) : core::numel(s.shape));
  }
  return share;
}

std::vector<std::string> lines(const fs::path& p) {
  std::vector<std::string> out;
  for (const auto& j : dt_test::jsonl(p)) out.push_back(j.dump());
  return out;
}

}  // namespace

// `score --zero 3` on 3 CPU ranks (dense_text_mtp) and ep2 x dp2 (moe_vlm_mtp, text only): each
// rank's loader keeps exactly its ZeRO 3 pieces (kept = the share; peak at most the share plus
// two of the largest tensor: moe_vlm_mtp's per-expert MTP layer is assembled first), far below
// the whole model; the per-sample losses are bitwise those of the same ranks and layout without
// ZeRO (which read every tensor whole, or its ep slice), the gradients those within fp32
// summation (reduce-scattered per unit, not all-reduced: as tests/test_zero3.cpp).
TEST(Zero3Read, ScoreReadsItsPieces) {
  const dt_test::TempDir tmp("zero3_read_score");
  struct Case {
    std::string fixture, flags;
    int ranks, ep;
  };
  for (const Case& k :
       {Case{"dense_text_mtp", "", 3, 1},
        Case{"moe_vlm_mtp", " --vision off --router-aux-coef 0.02 --z-loss-coef 0.001", 4, 2}}) {
    const fs::path d = fixture(k.fixture);
    const std::string base = "score --quiet --model " + d.string() + " --data " +
                             (d / "samples.jsonl").string() + " --pack-tokens 64 --mtp-scale 0.3" +
                             k.flags;
    const auto run = [&](const std::string& tag, int ranks, const std::string& flags) {
      const fs::path o = tmp.path / (k.fixture + "_" + tag);
      EXPECT_EQ(dt_test::score_ranks(ranks, base + flags, o), 0)
          << k.fixture << " " << tag << ": " << dt_test::read_file(o.string() + ".err");
      return o;
    };
    const std::string ep = k.ep > 1 ? " --ep " + std::to_string(k.ep) : "";
    const fs::path one = run("whole", k.ranks, ep);  // without ZeRO: every tensor (ep slice) read
    const fs::path z = run("zero3", k.ranks, " --zero 3" + ep);
    if (HasFailure()) return;
    EXPECT_EQ(lines(z.string() + ".jsonl"), lines(one.string() + ".jsonl")) << k.fixture;
    std::string name;
    const double r =
        dt_test::worst_rel_rms(z.string() + ".safetensors", one.string() + ".safetensors", name);
    EXPECT_LE(r, 1e-6) << k.fixture << ": " << name;

    const io::Checkpoint whole = io::load_checkpoint(d.string());
    model::Config c = whole.config;
    c.vision_mode = model::VisionMode::off;
    int64_t largest = 0;
    for (const auto& [n, t] : whole.params) largest = std::max(largest, 4 * t.numel());
    for (const Loaded& l : load_lines(z.string() + ".err", "score", k.ranks)) {
      const int64_t share = zero3_share(c, model::param_specs(c), k.ranks, l.rank, k.ep, {});
      EXPECT_EQ(l.kept, share) << k.fixture << " rank " << l.rank;
      EXPECT_LE(l.peak, share + 2 * largest) << k.fixture << " rank " << l.rank;
      EXPECT_LT(l.kept, l.all * 4 / 10) << k.fixture << " rank " << l.rank;
      std::printf(
          "  %s score --zero 3%s rank %d of %d: kept %lld B, loader peak %lld B, whole "
          "model %lld B; gradients vs whole-read %.2e\n",
          k.fixture.c_str(), ep.c_str(), l.rank, k.ranks, static_cast<long long>(l.kept),
          static_cast<long long>(l.peak), static_cast<long long>(l.all), r);
    }
  }
}

// `score --zero 3 --adapter` (the MoE fixture with routed-expert adapters, tests/data/golden_lora)
// on 3 ranks and ep2 x dp2: each rank's loader keeps exactly its pieces of the frozen base (every
// tensor in the frozen store; on the CPU the routers are pieces too), and the per-sample losses
// and every adapter gradient are byte for byte those of the same ranks and layout without ZeRO,
// which read the base whole (or its ep slices): the adapters' gradients are all-reduced either way.
TEST(Zero3Read, LoraScoreReadsItsPieces) {
  const dt_test::TempDir tmp("zero3_read_lora_score");
  const fs::path d = fixture("moe_text_fused_tied");
  const fs::path adapter = fs::path(DT_TEST_DATA) / "golden_lora" / "moe_experts" / "adapter";
  const std::string base = "score --quiet --model " + d.string() + " --data " +
                           (d / "samples.jsonl").string() + " --pack-tokens 64 --adapter " +
                           adapter.string() + " --router-aux-coef 0.01 --z-loss-coef 0.001";
  const auto run = [&](const std::string& tag, int ranks, const std::string& flags) {
    const fs::path o = tmp.path / tag;
    EXPECT_EQ(dt_test::score_ranks(ranks, base + flags, o), 0)
        << tag << ": " << dt_test::read_file(o.string() + ".err");
    return o;
  };
  const io::Checkpoint whole = io::load_checkpoint(d.string());
  const model::Config& c = whole.config;
  const std::vector<model::ParamSpec> specs = model::param_specs(c);
  for (const auto& [ranks, ep] : {std::pair{3, 1}, std::pair{4, 2}}) {
    const std::string flags = ep > 1 ? " --ep " + std::to_string(ep) : "";
    const std::string tag = "ranks" + std::to_string(ranks) + "_ep" + std::to_string(ep);
    const fs::path want = run(tag + "_whole", ranks, flags);
    const fs::path got = run(tag + "_zero3", ranks, " --zero 3" + flags);
    if (HasFailure()) return;
    for (const char* ext : {".jsonl", ".safetensors"})
      EXPECT_TRUE(dt_test::read_file(got.string() + ext) == dt_test::read_file(want.string() + ext))
          << tag << ": the ZeRO 3 run's " << ext << " is not the whole-read run's byte for byte";
    for (const Loaded& l : load_lines(got.string() + ".err", "score", ranks)) {
      const int64_t share = zero3_share(c, specs, ranks, l.rank, ep, {.lora_base = true});
      EXPECT_EQ(l.kept, share) << tag << " rank " << l.rank;
      EXPECT_EQ(l.peak, l.kept) << tag << " rank " << l.rank;  // fused experts: nothing assembled
      EXPECT_LT(l.kept, l.all * 4 / 10) << tag << " rank " << l.rank;
      std::printf(
          "  LoRA score --zero 3%s rank %d of %d: kept %lld B (frozen base pieces), "
          "loader peak %lld B, whole model %lld B\n",
          flags.c_str(), l.rank, ranks, static_cast<long long>(l.kept),
          static_cast<long long>(l.peak), static_cast<long long>(l.all));
    }
  }
}

// A LoRA run (the MoE example, adapters on the experts too) under ZeRO 3 on 2 CPU ranks: each
// rank reads only its pieces of the frozen base (kept = its share of the Zero3Store's frozen
// layout, every tensor in it: on the CPU the routers are pieces too; a bf16 model would keep them
// whole), and the trained adapters and their moments are bitwise those of ZeRO 1 on the same
// ranks, whose frozen base is read whole on every rank.
TEST(Zero3Read, LoraBaseReadsItsPieces) {
  const dt_test::TempDir tmp("zero3_read_lora");
  const std::string lora = "--lora.enabled=true --lora.r=4 --lora.alpha=8 --lora.experts=true";
  dt_test::train_run(tmp.path, "train_moe.toml", "zero1", 2, 1, lora);
  dt_test::train_run(tmp.path, "train_moe.toml", "zero3", 2, 3, lora);
  if (HasFailure()) return;
  const fs::path got = tmp.path / "zero3" / train::checkpoint_dir_name(6),
                 want = tmp.path / "zero1" / train::checkpoint_dir_name(6);
  for (const char* file : {io::kAdapterWeightsName, "training_state/optimizer.safetensors"})
    EXPECT_TRUE(dt_test::read_file(got / file) == dt_test::read_file(want / file))
        << file << ": the ZeRO 3 run's file is not the ZeRO 1 run's byte for byte";

  model::Config c = model::parse_config(train::preset_config("tiny-moe"), "preset tiny-moe");
  c.mtp_enabled = c.mtp_num_hidden_layers > 0;  // as the trainer sets it (train_moe.toml)
  const std::vector<model::ParamSpec> specs = model::param_specs(c);
  int64_t largest = 0;
  for (const model::ParamSpec& s : specs) largest = std::max(largest, 4 * core::numel(s.shape));
  for (const Loaded& l : load_lines(tmp.path / "zero3.err", "train", 2)) {
    const int64_t share = zero3_share(c, specs, 2, l.rank, 1, {.lora_base = true});
    EXPECT_EQ(l.kept, share) << "rank " << l.rank;
    EXPECT_LT(l.kept, l.all * 6 / 10) << "rank " << l.rank;
    std::printf(
        "  LoRA zero 3 rank %d of 2: kept %lld B (frozen base pieces), loader peak %lld B, "
        "whole model %lld B\n",
        l.rank, static_cast<long long>(l.kept), static_cast<long long>(l.peak),
        static_cast<long long>(l.all));
  }
  for (const Loaded& l : load_lines(tmp.path / "zero1.err", "train", 2))
    EXPECT_EQ(l.kept, l.all) << "ZeRO 1 reads the base whole, rank " << l.rank;
}

// What zero3_slices gives per store (moe_vlm_mtp, the vision tower frozen, 3 ranks): the trained
// store leaves the frozen tower out (read whole: the model holds it apart), a LoRA run's frozen
// base holds it (pieces); in a bf16 model the frozen base's routers (model::keeps_f32_weight) are
// read whole (the frozen store keeps them whole on every rank), every other tensor as pieces. The
// ranks' pieces of each tensor cover it once.
TEST(Zero3Read, PiecesPerStore) {
  model::Config c = model::load_config((fixture("moe_vlm_mtp") / "config.json").string());
  c.mtp_enabled = c.mtp_num_hidden_layers > 0;
  c.vision_mode = model::VisionMode::frozen;
  const std::vector<model::ParamSpec> specs = model::param_specs(c);
  int routers = 0, frozen_tower = 0;
  for (const model::ParamSpec& s : specs) {
    routers += model::keeps_f32_weight(s.name) ? 1 : 0;
    frozen_tower += model::vision_trains(c, s.name) ? 0 : 1;
  }
  ASSERT_GT(routers, 0);
  ASSERT_GT(frozen_tower, 0);
  const int ranks = 3;
  for (const auto& [read, what] :
       {std::pair{train::Zero3Read{}, "trained store"},
        std::pair{train::Zero3Read{.lora_base = true}, "LoRA base, f32"},
        std::pair{train::Zero3Read{.lora_base = true, .bf16 = true}, "LoRA base, bf16"}}) {
    std::map<std::string, int64_t> covered;
    for (int r = 0; r < ranks; ++r) {
      const io::SliceFn f = train::zero3_slices(c, {}, ranks, r, 0, 0, read);
      for (const model::ParamSpec& s : specs) {
        const auto sl = f(c, s.name, s.shape);
        const bool whole_router = read.lora_base && read.bf16 && model::keeps_f32_weight(s.name);
        const bool apart = !read.lora_base && !model::vision_trains(c, s.name);
        EXPECT_EQ(sl.has_value(), !whole_router && !apart) << what << " " << s.name;
        if (!sl) continue;
        ASSERT_EQ(sl->shape.size(), 1u) << what << " " << s.name;
        int64_t n = 0;
        for (const io::ElementRun& run : sl->runs) n += run.count;
        EXPECT_EQ(n, sl->shape[0]) << what << " " << s.name;
        covered[s.name] += n;
      }
    }
    for (const auto& [name, n] : covered)
      EXPECT_EQ(n, core::numel(std::find_if(specs.begin(), specs.end(),
                                            [&](const auto& s) { return s.name == name; })
                                   ->shape))
          << what << " " << name;
  }
}
