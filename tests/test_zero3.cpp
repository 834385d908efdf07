// ZeRO 3 on CPU ranks (Gloo; processes started by `deltatron launch`) against the one-rank run:
// `score --zero 3` (per-sample losses, gradients; the VL fixture with a frozen tower) on 1-3 ranks;
// six training steps of the bundled example (dense, and MoE + MTP, with and without recomputation)
// on 2 and 3 ranks against one rank and against ZeRO 1; a ZeRO 3 run resumed on other ranks and
// stages, and a ZeRO 1 run resumed with ZeRO 3; the layout and the gather/bind of the shard store
// on one rank; what the config refuses.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "model/params.h"
#include "ranks_run.h"
#include "short_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/train_config.h"
#include "train/zero3.h"
#include "zero_run.h"

namespace fs = std::filesystem;
using namespace deltatron;
using dt_test::expect_checkpoint_near;
using dt_test::expect_losses_near;
using dt_test::train_run;

namespace {

std::vector<std::string> lines(const fs::path& p) {
  std::vector<std::string> out;
  std::istringstream in(dt_test::read_file(p));
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

}  // namespace

// Every layer gathered per pack, its gradient reduce-scattered as its backward ends: the
// per-sample losses are one rank's (the same weights, the same packs, one rank each: bitwise),
// the gradients the sums of the ranks' parts (fp32 rounding). One rank with --zero 3 runs the
// same gathers over a single shard.
TEST(Zero3, ScoreEqualsOneRank) {
  const dt_test::TempDir tmp("zero3_score");
  struct Case {
    std::string fixture, flags, dir = "golden", name = fixture;
  };
  // The VL fixture's images with the tower held apart (model/model.h): replicated as frozen
  // weights, outside the shards; in merger mode the merger is in them.
  const std::vector<Case> cases = {
      {"dense_text_varied", ""},
      {"moe_vlm_mtp", "--router-aux-coef 0.02 --z-loss-coef 0.001 --mtp-scale 0.3"},
      {"golden_vl", "--vision merger", ".", "vl_merger"},
      {"golden_vl", "--vision frozen", ".", "vl_frozen"},
  };
  for (const auto& c : cases) {
    const fs::path d = fs::path(DT_TEST_DATA) / c.dir / c.fixture;
    const std::string base = "score --quiet --model " + d.string() + " --data " +
                             (d / "samples.jsonl").string() + " --pack-tokens 64 " + c.flags;
    const auto run = [&](const std::string& tag, int ranks, const std::string& flags) {
      const fs::path o = tmp.path / (c.name + "_" + tag);
      EXPECT_EQ(dt_test::score_ranks(ranks, base + flags, o), 0)
          << c.name << " " << tag << ": " << dt_test::read_file(o.string() + ".err");
      return o;
    };
    const fs::path one = run("one", 1, "");
    const auto want = lines(one.string() + ".jsonl");
    ASSERT_GE(want.size(), 3u);
    for (int ranks : {1, 2, 3}) {
      const std::string tag = "zero3_ranks" + std::to_string(ranks);
      const fs::path o = run(tag, ranks, " --zero 3");
      if (HasFailure()) return;
      const auto got = lines(o.string() + ".jsonl");
      ASSERT_EQ(got.size(), want.size()) << tag;
      for (size_t i = 0; i < want.size(); ++i)
        EXPECT_EQ(got[i], want[i]) << c.name << " " << tag << " sample " << i;
      std::string name;
      const double r =
          dt_test::worst_rel_rms(o.string() + ".safetensors", one.string() + ".safetensors", name);
      std::printf("  %s %s: worst gradient rel RMS vs one rank %.2e (%s)\n", c.name.c_str(),
                  tag.c_str(), r, name.c_str());
      EXPECT_LE(r, 1e-6) << c.name << " " << tag << ": " << name;
    }
  }
}

// Six steps with ZeRO 3 on 2 and 3 ranks (and ZeRO 1 on 2) against one rank, and ZeRO 3 against
// ZeRO 1 directly; then resumes across layouts from step 3: the ZeRO 3 run on 3 ranks (ZeRO 3)
// and on one rank (no ZeRO), and the ZeRO 1 run on 2 ranks with ZeRO 3.
TEST(Zero3, DenseTracksOneRank) {
  const dt_test::TempDir tmp("zero3_dense");
  const fs::path& dir = tmp.path;
  const std::string toml = "train.toml";
  train_run(dir, toml, "one", 1, 0);
  const auto want = dt_test::metric_losses(dir / "one" / "metrics.jsonl");
  ASSERT_EQ(want.size(), 6u);
  for (const auto& [zero, ranks] : {std::pair{1, 2}, std::pair{3, 2}, std::pair{3, 3}}) {
    const std::string out = "zero" + std::to_string(zero) + "_ranks" + std::to_string(ranks);
    train_run(dir, toml, out, ranks, zero);
    if (HasFailure()) return;
    expect_losses_near(dt_test::metric_losses(dir / out / "metrics.jsonl"), want, out);
    for (int64_t step : {3, 6}) expect_checkpoint_near(dir / out, dir / "one", step, out, 1e-5);
  }
  expect_losses_near(dt_test::metric_losses(dir / "zero3_ranks2" / "metrics.jsonl"),
                     dt_test::metric_losses(dir / "zero1_ranks2" / "metrics.jsonl"),
                     "zero 3 vs zero 1");
  expect_checkpoint_near(dir / "zero3_ranks2", dir / "zero1_ranks2", 6, "zero 3 vs zero 1", 1e-5);

  struct Resume {
    std::string from, out;
    int ranks, zero;
  };
  for (const Resume& r :
       {Resume{"zero3_ranks2", "z3r2_on_z3r3", 3, 3}, Resume{"zero3_ranks2", "z3r2_on_one", 1, 0},
        Resume{"zero1_ranks2", "z1r2_on_z3r2", 2, 3}}) {
    fs::copy(dir / r.from, dir / r.out, fs::copy_options::recursive);
    fs::remove_all(dir / r.out / train::checkpoint_dir_name(6));
    train_run(dir, toml, r.out, r.ranks, r.zero, "--resume");
    if (HasFailure()) return;
    const auto got = dt_test::metric_losses(dir / r.out / "metrics.jsonl");
    ASSERT_EQ(got.size(), 9u) << r.out;  // the straight run's 6, and steps 4-6 again
    expect_losses_near(std::vector<double>(got.begin() + 6, got.end()),
                       std::vector<double>(want.begin() + 3, want.end()), r.out);
    expect_checkpoint_near(dir / r.out, dir / "one", 6, r.out, 1e-5);
  }
}

TEST(Zero3, MoeTracksOneRank) {
  const dt_test::TempDir tmp("zero3_moe");
  train_run(tmp.path, "train_moe.toml", "one", 1, 0);
  const auto want = dt_test::metric_losses(tmp.path / "one" / "metrics.jsonl");
  ASSERT_EQ(want.size(), 6u);
  train_run(tmp.path, "train_moe.toml", "zero3_ranks2", 2, 3);
  if (HasFailure()) return;
  expect_losses_near(dt_test::metric_losses(tmp.path / "zero3_ranks2" / "metrics.jsonl"), want,
                     "moe zero3_ranks2");
  for (int64_t step : {3, 6})
    expect_checkpoint_near(tmp.path / "zero3_ranks2", tmp.path / "one", step, "moe zero3_ranks2",
                           1e-5);
  // With activation recomputation: each layer gathered once for the forward, once for the rerun
  // and backward.
  train_run(tmp.path, "train_moe.toml", "zero3_ranks2_recompute", 2, 3,
            "'--training.recompute=true'");
  if (HasFailure()) return;
  expect_losses_near(dt_test::metric_losses(tmp.path / "zero3_ranks2_recompute" / "metrics.jsonl"),
                     want, "moe zero3_ranks2_recompute");
  expect_checkpoint_near(tmp.path / "zero3_ranks2_recompute", tmp.path / "one", 6,
                         "moe zero3_ranks2_recompute", 1e-5);
}

// The layout: every tensor in exactly one unit (its layer's, else the outer one), the tensors of
// a unit disjoint and inside it, the pieces equal and covering the unit, the shard their sum.
TEST(Zero3, LayoutCoversEveryTensorOnce) {
  const io::Checkpoint ck = io::load_checkpoint(
      (fs::path(DT_TEST_DATA) / "golden" / "moe_vlm_mtp").string(), io::LoadOptions{});
  model::StateOptions so;
  so.gathered = true;
  const model::Params p(core::Device::cpu, core::DType::f32, ck.params, so);
  for (int ranks : {1, 2, 3, 5}) {
    const train::Zero3Layout l = train::zero3_layout(p, ck.config, ranks, ranks - 1);
    ASSERT_EQ(l.tensors.size(), p.names().size());
    ASSERT_EQ(l.units.size(), size_t(ck.config.num_hidden_layers) + 1);
    std::set<size_t> seen;
    int64_t shard = 0;
    for (size_t u = 0; u < l.units.size(); ++u) {
      const auto& unit = l.units[u];
      EXPECT_GE(unit.piece * ranks, unit.numel) << u;
      EXPECT_LT(unit.piece * ranks, unit.numel + 64 * ranks) << u;  // padding below one row each
      EXPECT_EQ(unit.piece % 64, 0) << u;
      EXPECT_EQ(unit.local, shard) << u;
      shard += unit.piece;
      int64_t end = 0;
      for (size_t i : unit.tensors) {
        const auto& t = l.tensors[i];
        EXPECT_TRUE(seen.insert(i).second) << t.name;
        EXPECT_EQ(size_t(t.unit), u) << t.name;
        EXPECT_GE(t.offset, end) << t.name;
        end = t.offset + t.numel;
        EXPECT_LE(end, unit.numel) << t.name;
        EXPECT_EQ(t.one_rank, p.entry(t.name).offset) << t.name;
        const std::string layer = ck.config.name("layers.");
        if (u > 0)
          EXPECT_EQ(t.name.rfind(layer + std::to_string(u - 1) + ".", 0), 0u) << t.name;
        else
          EXPECT_NE(t.name.rfind(layer, 0), 0u) << t.name;
      }
    }
    EXPECT_EQ(seen.size(), l.tensors.size());
    EXPECT_EQ(shard, l.shard);
  }
}

// The store on one rank: each unit's gathered views hold exactly the loaded weights while it is
// bound; an unbound tensor is a clear error; a gradient written into a bound unit reaches the
// shard when the unit is released, and reads back exactly.
TEST(Zero3, StoreGathersAndReleasesUnits) {
  const io::Checkpoint ck = io::load_checkpoint(
      (fs::path(DT_TEST_DATA) / "golden" / "dense_text_varied").string(), io::LoadOptions{});
  model::StateOptions so;
  so.gathered = true;
  model::Params p(core::Device::cpu, core::DType::f32, ck.params, so);
  const auto comm = dist::self_comm(core::Device::cpu);
  train::Zero3Store store(p, ck.config, *comm);
  // The out-of-memory hint describes the shard and its options (not the model's whole state).
  const std::string hint = store.shard_hint();
  for (const char* want : {"ZeRO 3: this rank's shard", "over 1 ranks", "training.master = fp32",
                           "training.offload = none", "use more data-parallel ranks"})
    EXPECT_NE(hint.find(want), std::string::npos) << want << " not in: " << hint;
  for (const auto& [name, t] : ck.params) store.load_weight(name, t.ptr());
  store.finish_load();
  store.zero_grads();
  const std::string embed = ck.config.name("embed_tokens.weight");
  dt_test::expect_error([&] { (void)p.w(embed); }, {embed, "not gathered"});
  for (int unit = -1; unit < ck.config.num_hidden_layers; ++unit) {
    store.gather(unit, true);
    for (size_t i : store.layout().units[size_t(unit + 1)].tensors) {
      const auto& t = store.layout().tensors[i];
      const core::View w = p.w(t.name), g = p.g(t.name);
      ASSERT_EQ(w.shape, ck.params.at(t.name).shape) << t.name;
      const float* want = ck.params.at(t.name).ptr();
      for (int64_t k = 0; k < t.numel; ++k) {
        ASSERT_EQ(w.f32()[k], want[k]) << t.name << " element " << k;
        g.f32()[k] = float(k % 7) - 3.f;  // a gradient to reduce
      }
    }
    store.release(unit, true);
  }
  dt_test::expect_error([&] { (void)p.w(embed); }, {embed, "not gathered"});
  for (const auto& [name, t] : ck.params) {
    std::vector<float> got(size_t(t.numel()));
    store.read(name, train::Zero3Store::Part::grad, got.data());
    for (int64_t k = 0; k < t.numel(); ++k)
      ASSERT_EQ(got[size_t(k)], float(k % 7) - 3.f) << name << " element " << k;
    store.read(name, train::Zero3Store::Part::weight, got.data());
    for (int64_t k = 0; k < t.numel(); ++k)
      ASSERT_EQ(got[size_t(k)], t.ptr()[k]) << name << " element " << k;
  }
}

// ZeRO 3 is accepted; what it does not cover is refused with the reason.
TEST(Zero3, ConfigRefusals) {
  const std::string toml = (dt_test::examples_dir() / "addition" / "train.toml").string();
  EXPECT_EQ(train::load_train_config(toml, {"parallel.zero=3"}).parallel_zero, 3);
  // The lean pair is sharded like the fp32 masters (test_zero3_lean).
  EXPECT_TRUE(
      train::load_train_config(toml, {"parallel.zero=3", "training.master=\"remainder\""}).master ==
      "remainder");
  // Offloaded state: each rank's pieces in host memory (test_zero_offload).
  EXPECT_EQ(
      train::load_train_config(toml, {"parallel.zero=3", "training.offload=\"moments\""}).offload,
      "moments");
  EXPECT_EQ(train::load_train_config(toml, {"parallel.zero=3", "training.master=\"remainder\"",
                                            "training.offload=\"master+moments\""})
                .offload,
            "master+moments");
  // LoRA with ZeRO 3 is built (test_lora_parallel): the frozen base sharded and gathered. A LoRA
  // run has no state to offload (its adapters' is on the device in fp32), with any layout.
  EXPECT_TRUE(train::load_train_config(toml, {"parallel.zero=3", "lora.r=4"}).lora);
  dt_test::expect_error(
      [&] {
        train::load_train_config(toml,
                                 {"parallel.zero=3", "lora.r=4", "training.offload=\"moments\""});
      },
      {"LoRA", "training.offload = none"});
  // ZeRO with expert parallelism (test_zero_ep), with tensor parallelism (test_zero_tp) and with
  // both (test_tp_ep) is built, with LoRA too (test_lora_parallel).
  EXPECT_EQ(train::load_train_config(toml, {"parallel.zero=3", "parallel.ep=2"}).parallel_ep, 2);
  EXPECT_EQ(train::load_train_config(toml, {"parallel.zero=3", "parallel.tp=2"}).parallel_tp, 2);
  const train::TrainConfig tp_ep =
      train::load_train_config(toml, {"parallel.zero=3", "parallel.tp=2", "parallel.ep=2"});
  EXPECT_EQ(tp_ep.parallel_tp * tp_ep.parallel_ep, 4);
  const train::TrainConfig lora = train::load_train_config(
      toml, {"parallel.zero=3", "parallel.tp=2", "parallel.ep=2", "lora.r=4"});
  EXPECT_TRUE(lora.lora && lora.parallel_zero == 3 && lora.parallel_tp == 2);
}
