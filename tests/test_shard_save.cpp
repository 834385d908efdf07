// A checkpoint save streamed to rank 0 one tensor at a time (train/state_stream.h,
// save_checkpoint_ranks): on CPU ranks over Gloo, each layout (ep2, tp2, ZeRO 3 on 2 ranks, ZeRO 3
// + ep2, ZeRO 1, tp2 x ep2 with and without ZeRO 3) loads a training checkpoint as its shares and
// saves it at once; every file is byte for byte the one the one-rank writers make of the same
// weights and moments, and each rank's counted save buffers stay within a few tensors (rank 0 one
// whole tensor and the writer's buffer of it, the others one slice), never the model.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "ranks_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/engine.h"
#include "train/expert_parallel.h"
#include "train/local_slices.h"
#include "train/parallel.h"
#include "train/run_dir.h"
#include "train/tensor_parallel.h"
#include "train/train_checkpoint.h"
#include "train/train_config.h"
#include "train/train_state.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {

constexpr int64_t kStep = 3;

fs::path fixture(const std::string& name) { return fs::path(DT_TEST_DATA) / "golden" / name; }

// A training checkpoint of the fixture's weights (perturbed off bf16 values, so the fp32 masters
// differ from BF16 HF files), deterministic AdamW moments at step 3, written by the one-rank
// writers of full host tensors (io::write_checkpoint_files, save_train_state, write_safetensors):
// what a one-rank save of these weights writes. all_bf16: every parameter stored as BF16.
fs::path make_source(const fs::path& out, const std::string& name, bool all_bf16) {
  io::Checkpoint ck = io::load_checkpoint(fixture(name).string());
  int64_t k = 0;
  for (auto& [n, t] : ck.params)
    for (float& x : t.data) x *= 1.0f + 1e-3f * std::sin(float(++k));
  if (all_bf16)
    for (auto& [n, dt] : ck.param_dtypes) dt = "BF16";
  model::TensorMap m = model::zeros_like(ck.params), v = model::zeros_like(ck.params);
  for (auto& [n, t] : m)
    for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = 1e-3f * std::cos(float(++k));
  for (auto& [n, t] : v)
    for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = 1e-6f * (1.5f + std::sin(float(++k)));
  train::AdamW opt(ck.params, train::AdamWOptions{});
  opt.set_state(kStep, std::move(m), std::move(v));
  train::TrainState st;
  st.step = kStep;
  st.rng.seed(7);
  st.rng.discard(11);
  st.extra["run"] = {{"note", "shard save test"}};
  train::save_training_checkpoint(out.string(), kStep, [&](const std::string& tmp) {
    io::write_checkpoint_files(tmp, ck);
    const std::string sd = tmp + "/training_state";
    fs::create_directories(sd);
    train::save_train_state(sd, st, opt);
    std::map<std::string, io::TensorRecord> views;
    for (const auto& [n, t] : ck.params) views[n] = io::TensorRecord{"F32", t.shape, t.ptr(), {}};
    io::write_safetensors(sd + "/master_weights.safetensors", views);
  });
  return out / train::checkpoint_dir_name(kStep);
}

struct Layout {
  std::string tag, fixture;
  int ranks, ep, tp, zero;
};

// Every file of got equal to want's, byte for byte.
void expect_same_files(const fs::path& got, const fs::path& want, const std::string& what) {
  std::vector<std::string> g, w;
  for (const auto& e : fs::recursive_directory_iterator(got)) g.push_back(fs::relative(e, got));
  for (const auto& e : fs::recursive_directory_iterator(want)) w.push_back(fs::relative(e, want));
  std::sort(g.begin(), g.end());
  std::sort(w.begin(), w.end());
  EXPECT_EQ(g, w) << what;
  int64_t bytes = 0;
  for (const std::string& f : w) {
    if (fs::is_directory(want / f) || !fs::exists(got / f)) continue;
    const std::string a = dt_test::read_file(got / f), b = dt_test::read_file(want / f);
    bytes += int64_t(b.size());
    if (a == b) continue;
    size_t i = 0;
    while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
    ADD_FAILURE() << what << ": " << f << " differs at byte " << i << " of " << b.size() << " ("
                  << a.size() << " written)";
  }
  std::printf("  %s: %zu files, %lld bytes, identical to the one-rank writers'\n", what.c_str(),
              w.size(), static_cast<long long>(bytes));
}

}  // namespace

// One rank of a layout (under deltatron launch, or RANK=0 alone; started by the test below):
// loads DT_SHARD_SAVE's source checkpoint as this rank's share, builds the engine of the layout
// and saves at once; writes its counted save peak to <out>.rank<R>.
TEST(ShardSaveRanks, LoadAndSave) {
  const char* spec = std::getenv("DT_SHARD_SAVE");
  if (!spec || !std::getenv("RANK"))
    GTEST_SKIP() << "runs under ShardSave.LayoutsSaveOneRanksBytes";
  std::istringstream in(spec);
  std::string src, out;
  int ep = 1, tp = 1, zero = 0;
  in >> src >> out >> ep >> tp >> zero;
  const train::Parallel par = train::setup_parallel(core::Device::cpu, "shard save test");
  model::Config c0 = model::load_config(src + "/config.json");
  c0.mtp_enabled = c0.mtp_num_hidden_layers > 0;
  const train::TensorGroups tg = train::setup_tensor_groups(par, tp, false, c0, "test: tp");
  const train::Parallel& dp = tg.data(par);
  const train::ExpertGroups eg = train::setup_expert_groups(dp, ep, c0, "test: ep");
  const io::SliceFn slices = train::local_slices(eg, tg);
  io::LoadOptions lo;
  lo.slice = slices;
  io::Checkpoint ck = io::load_checkpoint(src, lo);
  train::AdamW opt(ck.params, train::AdamWOptions{});
  train::TrainState st;
  const train::LocalSlice local = train::local_slice(slices, ck.config);
  train::load_train_state(src + "/training_state", st, opt, local);
  train::restore_master_weights(src, ck, local);
  const auto engine =
      train::make_engine("cpu", "fp32", ck.config, ck.params, &opt, false, {}, nullptr,
                         train::ZeroSetup{zero, dp.comm.get(), eg.same_experts.get()});
  if (eg.on()) engine->set_expert_parallel(eg.model);
  if (tg.on()) engine->set_tensor_parallel(tg.model);
  opt.release_host_moments();
  train::TrainConfig cfg;
  cfg.out_dir = out;
  train::RunStart start;
  io::SaveStats stats;
  train::save_checkpoint_ranks(par, cfg, *engine, ck, st, opt, {}, start, nullptr, &eg, &tg,
                               &stats);
  par.comm->barrier();
  std::ofstream(out + ".rank" + std::to_string(par.rank())) << stats.peak_bytes << "\n";
}

// Each layout's save equals the one-rank writers' files byte for byte (HF weights in their
// dtypes and expert layouts, the pass-through vision tower, fp32 masters, moments, trainer
// state); each rank's save buffers peak at most 3 x the largest tensor (f32).
TEST(ShardSave, LayoutsSaveOneRanksBytes) {
  const dt_test::TempDir tmp("shard_save");
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  const std::vector<Layout> layouts = {
      {"one", "moe_vlm_mtp", 1, 1, 1, 0},           {"ep2", "moe_vlm_mtp", 2, 2, 1, 0},
      {"zero3_dp2", "moe_vlm_mtp", 2, 1, 1, 3},     {"zero3_ep2", "moe_vlm_mtp", 2, 2, 1, 3},
      {"zero1_dp2", "moe_vlm_mtp", 2, 1, 1, 1},     {"one", "dense_text_mtp", 1, 1, 1, 0},
      {"tp2", "dense_text_mtp", 2, 1, 2, 0},        {"zero3_dp2", "dense_text_mtp", 2, 1, 1, 3},
      {"tp2_dp2", "dense_text_mtp", 4, 1, 2, 0},    {"tp2_ep2", "moe_vlm_mtp", 4, 2, 2, 0},
      {"zero3_tp2_ep2", "moe_vlm_mtp", 4, 2, 2, 3},
  };
  std::map<std::string, fs::path> sources;
  for (const Layout& l : layouts) {
    if (!sources.count(l.fixture))
      sources[l.fixture] =
          make_source(tmp.path / ("src_" + l.fixture), l.fixture, l.fixture == "dense_text_mtp");
    const fs::path src = sources[l.fixture];
    const fs::path out = tmp.path / (l.fixture + "_" + l.tag);
    const std::string spec = src.string() + " " + out.string() + " " + std::to_string(l.ep) + " " +
                             std::to_string(l.tp) + " " + std::to_string(l.zero);
    const std::string run = self + " --gtest_filter=ShardSaveRanks.*";
    const std::string cmd = "DT_DIST_TIMEOUT=60 DT_SHARD_SAVE='" + spec + "' " +
                            (l.ranks == 1 ? "RANK=0 WORLD_SIZE=1 " + run
                                          : std::string(DT_BINARY) + " launch --nproc " +
                                                std::to_string(l.ranks) + " -- " + run) +
                            " > " + out.string() + ".log 2>&1";
    const int rc = std::system(cmd.c_str());
    ASSERT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0)
        << l.fixture << " " << l.tag << ": " << dt_test::read_file(out.string() + ".log");
    const std::string what = l.fixture + " " + l.tag;
    expect_same_files(out / train::checkpoint_dir_name(kStep), src, what);
    // The save's buffers per rank against the largest tensor and the whole model (f32).
    const io::Checkpoint whole = io::load_checkpoint(fixture(l.fixture).string());
    int64_t largest = 0, all = 0;
    for (const auto& [n, t] : whole.params) {
      largest = std::max(largest, 4 * t.numel());
      all += 4 * t.numel();
    }
    for (int r = 0; r < l.ranks; ++r) {
      const int64_t peak =
          std::stoll(dt_test::read_file(out.string() + ".rank" + std::to_string(r)));
      std::printf(
          "  %s rank %d: save buffers peak %lld B (largest tensor %lld B, model %lld B; "
          "gathering the whole state would hold %lld B)\n",
          what.c_str(), r, static_cast<long long>(peak), static_cast<long long>(largest),
          static_cast<long long>(all), static_cast<long long>(3 * all));
      EXPECT_LE(peak, 3 * largest) << what << " rank " << r;
      // Without ZeRO a rank outside the group holding rank 0 (ep x tp ranks with both: an
      // expert tensor's slices) takes no part in a save.
      if (l.zero == 0 && r >= l.ep * l.tp)
        EXPECT_EQ(peak, 0) << what << " rank " << r;
      else
        EXPECT_GT(peak, 0) << what << " rank " << r;
    }
  }
}
