// Loading a rank's share (train/local_slices.h, io::LoadOptions::slice): a slice read from the
// files equals the same slice of the whole tensor bit for bit (tensor-parallel runs, expert rows,
// per-expert checkpoints assembled first, ZeRO 3 pieces alone and of ep / tp slices), only the
// slice's elements are converted, bad slices name the file and tensor; and on CPU ranks (`score
// --ep 2`, `--tp 2`, a ZeRO 3 `train --resume`) each rank's loader holds its share plus at most
// one tensor, counted by the loader (io::LoadStats), not the whole model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <string>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/expert_parallel.h"
#include "model/footprint.h"
#include "model/tensor_parallel.h"
#include "ranks_run.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/local_slices.h"
#include "zero_run.h"

namespace fs = std::filesystem;
using namespace deltatron;

namespace {

fs::path fixture(const std::string& name) { return fs::path(DT_TEST_DATA) / "golden" / name; }

// Rank r of P: tensor-parallel shards and expert rows [r E/P, (r+1) E/P) (as train::local_slices,
// without communicators).
io::SliceFn slices(int64_t r, int64_t P, bool experts) {
  return [=](const model::Config& c, const std::string& name,
             const core::Shape& full) -> std::optional<io::ParamSlice> {
    io::ParamSlice s;
    s.shape = full;
    if (experts) {
      if (!model::is_routed_expert_tensor(name)) return std::nullopt;
      const int64_t El = full[0] / P, per = core::numel(full) / full[0];
      s.shape[0] = El;
      s.runs.push_back({r * El * per, El * per});
      return s;
    }
    if (!model::is_tp_sharded(c, name)) return std::nullopt;
    s.shape.at(size_t(model::tp_split(c, name).dim)) /= P;
    for (const auto& [o, n] : model::tp_runs(c, name, full, r, P)) s.runs.push_back({o, n});
    return s;
  };
}

void expect_bitwise(const core::Tensor& got, const core::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.shape, want.shape) << what;
  for (int64_t i = 0; i < want.numel(); ++i)
    ASSERT_EQ(got.data[size_t(i)], want.data[size_t(i)]) << what << " element " << i;
}

}  // namespace

// Every slice read from the files is the slice of the whole tensor, bitwise, and the loader's
// count is the share: tp over 2 ranks (dense, MTP), experts over 2 and 4 (fused experts; the
// MTP layer's per-expert tensors, assembled first).
TEST(ShardLoad, SliceEqualsSliceOfWhole) {
  struct Case {
    std::string fixture;
    int64_t P;
    bool experts;
  };
  for (const Case& k : {Case{"dense_text_mtp", 2, false}, Case{"moe_vlm_mtp", 2, true},
                        Case{"moe_vlm_mtp", 4, true}, Case{"moe_text_fused_tied", 2, false}}) {
    const io::Checkpoint whole = io::load_checkpoint(fixture(k.fixture).string());
    int64_t largest = 0, all = 0;
    for (const auto& [name, t] : whole.params) {
      largest = std::max(largest, t.numel() * 4);
      all += t.numel() * 4;
    }
    for (int64_t r = 0; r < k.P; ++r) {
      io::LoadOptions lo;
      lo.slice = slices(r, k.P, k.experts);
      io::LoadStats stats;
      lo.stats = &stats;
      const io::Checkpoint part = io::load_checkpoint(fixture(k.fixture).string(), lo);
      int64_t share = 0, sliced = 0;
      for (const auto& [name, t] : whole.params) {
        const auto s = lo.slice(whole.config, name, t.shape);
        const core::Tensor want = s ? io::take_slice(t, *s, name) : t;
        expect_bitwise(part.params.at(name), want, k.fixture + " " + name);
        share += want.numel() * 4;
        sliced += s ? 1 : 0;
      }
      EXPECT_GT(sliced, 0) << k.fixture;
      EXPECT_EQ(part.param_dtypes, whole.param_dtypes);
      EXPECT_EQ(stats.kept_bytes, share) << k.fixture;
      EXPECT_LE(stats.peak_bytes, share + 2 * largest) << k.fixture;
      EXPECT_LT(stats.kept_bytes, all) << k.fixture;
      std::printf("  %s, rank %lld of %lld (%s): kept %lld B of %lld, loader peak %lld B\n",
                  k.fixture.c_str(), static_cast<long long>(r), static_cast<long long>(k.P),
                  k.experts ? "experts" : "tp", static_cast<long long>(stats.kept_bytes),
                  static_cast<long long>(all), static_cast<long long>(stats.peak_bytes));
    }
  }
}

// read_float converts only the runs asked for (here from a BF16 file), one after the other; a run
// outside the tensor is an error naming the file and the tensor.
TEST(ShardLoad, ReadFloatRunsAndErrors) {
  const dt_test::TempDir tmp("shard_load_runs");
  std::vector<float> x(60);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i) * 0.37f - 5.0f;
  const std::string path = (tmp.path / "t.safetensors").string();
  io::write_safetensors(path, {{"w", io::TensorRecord{"BF16", {6, 10}, x.data(), {}}}});
  const io::SafetensorsFile f(path);
  const core::Tensor whole = f.to_float("w");
  const std::vector<io::ElementRun> runs = {{40, 7}, {3, 5}, {59, 1}};
  std::vector<float> got(13);
  f.read_float("w", runs, got.data());
  size_t k = 0;
  for (const io::ElementRun& r : runs)
    for (int64_t i = 0; i < r.count; ++i, ++k)
      EXPECT_EQ(got[k], whole.data[size_t(r.offset + i)]) << "run at " << r.offset << " + " << i;
  const std::vector<io::ElementRun> bad = {{55, 6}};
  dt_test::expect_error([&] { f.read_float("w", bad, got.data()); },
                        {path, "'w'", "(60 elements): elements [55, 61) requested"});
  // A slice whose runs do not fill its shape: named with the checkpoint and tensor.
  io::ParamSlice s{{2, 2}, {{0, 3}}};
  dt_test::expect_error([&] { io::read_float_slice(f, "w", s); }, {path, "w", "a slice of 3"});
}

// On CPU ranks: each rank of `score --ep 2` (MoE) and `score --tp 2` (dense) reports its loader's
// buffers; kept is exactly its share (the plan's local parameters x 4 B), the peak at most the
// share plus two of the largest tensor (a per-expert module assembled), far below the whole model.
TEST(ShardLoad, RanksLoadTheirShare) {
  const dt_test::TempDir tmp("shard_load_ranks");
  struct Case {
    std::string fixture, flags;
    int64_t P;
    bool experts;
  };
  for (const Case& k : {Case{"moe_vlm_mtp", " --ep 2 --vision off", 2, true},
                        Case{"dense_text_mtp", " --tp 2", 2, false}}) {
    const fs::path d = fixture(k.fixture);
    const fs::path o = tmp.path / (k.fixture + "_" + std::to_string(k.P));
    const std::string mtp = " --mtp-scale 0.3";
    const std::string args = "score --quiet --model " + d.string() + " --data " +
                             (d / "samples.jsonl").string() + " --pack-tokens 64" + mtp + k.flags +
                             " --output " + o.string() + ".jsonl";
    ASSERT_EQ(dt_test::run_ranks(int(k.P), args, o.string() + ".err"), 0)
        << dt_test::read_file(o.string() + ".err");
    const std::string err = dt_test::read_file(o.string() + ".err");
    const io::Checkpoint whole = io::load_checkpoint(d.string());
    int64_t largest = 0;
    for (const auto& [name, t] : whole.params) largest = std::max(largest, t.numel() * 4);
    const std::regex line(
        "score: rank (\\d) of 2: loaded its share of the weights: kept (\\d+) bytes, loader peak "
        "(\\d+) bytes \\(whole model (\\d+) bytes in f32\\)");
    int seen = 0;
    for (std::sregex_iterator it(err.begin(), err.end(), line), end; it != end; ++it, ++seen) {
      const int64_t r = std::stoll((*it)[1]), kept = std::stoll((*it)[2]),
                    peak = std::stoll((*it)[3]), all = std::stoll((*it)[4]);
      EXPECT_EQ(all, 4 * model::param_count(whole.config));
      int64_t share = 0;
      for (const auto& [name, t] : whole.params) {
        const auto s = slices(r, k.P, k.experts)(whole.config, name, t.shape);
        share += 4 * (s ? core::numel(s->shape) : t.numel());
      }
      EXPECT_EQ(kept, share) << k.fixture << " rank " << r;
      EXPECT_LE(peak, share + 2 * largest) << k.fixture << " rank " << r;
      EXPECT_LT(kept, all) << k.fixture << " rank " << r;
      std::printf("  %s%s rank %lld: kept %lld B (share), loader peak %lld B, whole model %lld B\n",
                  k.fixture.c_str(), k.flags.c_str(), static_cast<long long>(r),
                  static_cast<long long>(kept), static_cast<long long>(peak),
                  static_cast<long long>(all));
    }
    EXPECT_EQ(seen, 2) << err;
  }
}

// ZeRO 3 pieces (train::zero3_slices): each rank reads one run of each local tensor (of the whole
// tensor, or of its ep / tp slice); the piece equals those elements of the whole tensor bitwise,
// the ranks' pieces one after the other are the local tensor, and the loader keeps the piece
// alone: zero 3 on 3 ranks (dense_text_mtp), zero 3 + tp2 x dp2 (4 ranks), zero 3 + ep2 x dp2
// (moe_vlm_mtp, whose MTP layer's per-expert tensors are assembled first).
TEST(ShardLoad, Zero3PiecesEqualPiecesOfWhole) {
  struct Case {
    std::string fixture;
    int64_t ranks, split;  // split: tp or ep (1: none)
    bool experts;
  };
  for (const Case& k : {Case{"dense_text_mtp", 3, 1, false}, Case{"dense_text_mtp", 4, 2, false},
                        Case{"moe_vlm_mtp", 4, 2, true}}) {
    const io::Checkpoint whole = io::load_checkpoint(fixture(k.fixture).string());
    int64_t largest = 0, all = 0;
    for (const auto& [name, t] : whole.params) {
      largest = std::max(largest, t.numel() * 4);
      all += t.numel() * 4;
    }
    // The local tensors of each slice group, as the concatenation of the group's ranks' pieces.
    std::map<std::pair<int64_t, std::string>, std::vector<float>> joined;
    for (int64_t r = 0; r < k.ranks; ++r) {
      // tp: groups of `split` consecutive ranks, the dp ranks those of one position (r mod tp),
      // rank r / tp among them; ep: slice r mod ep, the same-experts ranks r / ep of ranks / ep.
      const int64_t pos = r % k.split, dp = k.experts ? k.ranks : k.ranks / k.split;
      const int64_t dp_rank = k.experts ? r : r / k.split;
      const io::SliceFn base = k.split > 1 ? slices(pos, k.split, k.experts) : io::SliceFn{};
      io::LoadOptions lo;
      lo.slice = train::zero3_slices(whole.config, base, int(dp), int(dp_rank),
                                     k.experts ? int(k.ranks / k.split) : 0,
                                     k.experts ? int(r / k.split) : 0);
      io::LoadStats stats;
      lo.stats = &stats;
      const io::Checkpoint part = io::load_checkpoint(fixture(k.fixture).string(), lo);
      int64_t share = 0;
      for (const auto& [name, t] : whole.params) {
        const auto s = lo.slice(whole.config, name, t.shape);
        ASSERT_TRUE(s.has_value()) << name;
        const core::Tensor want = io::take_slice(t, *s, name);
        expect_bitwise(part.params.at(name), want, k.fixture + " " + name);
        share += want.numel() * 4;
        // ep: the replicated tensors' pieces over all ranks (group -1), the slices' per slice.
        auto& j = joined[{k.experts && !model::is_routed_expert_tensor(name) ? -1 : pos, name}];
        j.insert(j.end(), want.data.begin(), want.data.end());
      }
      EXPECT_EQ(stats.kept_bytes, share) << k.fixture;
      EXPECT_LE(stats.peak_bytes, share + 2 * largest) << k.fixture;
      std::printf(
          "  %s, zero 3 rank %lld of %lld (%s %lld): kept %lld B of %lld, loader peak %lld B\n",
          k.fixture.c_str(), static_cast<long long>(r), static_cast<long long>(k.ranks),
          k.experts ? "ep" : "tp", static_cast<long long>(k.split),
          static_cast<long long>(stats.kept_bytes), static_cast<long long>(all),
          static_cast<long long>(stats.peak_bytes));
    }
    // Each slice group's pieces, in dp order, are its local tensor (every element once).
    for (const auto& [key, pieces] : joined) {
      const auto& [p, name] = key;
      const core::Tensor& t = whole.params.at(name);
      const auto s = k.split > 1 && p >= 0
                         ? slices(p, k.split, k.experts)(whole.config, name, t.shape)
                         : std::nullopt;
      core::Tensor local = s ? io::take_slice(t, *s, name) : t;
      local.shape = {local.numel()};
      core::Tensor got({int64_t(pieces.size())});
      got.data = pieces;
      expect_bitwise(got, local, k.fixture + " joined " + name);
    }
  }
}

// A ZeRO 3 run on 2 CPU ranks resumed from its checkpoint: each rank's loader keeps its pieces
// alone (about half the model), and the resumed steps are bitwise the straight run's.
TEST(ShardLoad, Zero3ResumeReadsItsPieces) {
  const dt_test::TempDir tmp("shard_load_zero3");
  dt_test::train_run(tmp.path, "train.toml", "zero3", 2, 3);
  if (HasFailure()) return;
  fs::copy(tmp.path / "zero3", tmp.path / "again", fs::copy_options::recursive);
  fs::remove_all(tmp.path / "again" / train::checkpoint_dir_name(6));
  dt_test::train_run(tmp.path, "train.toml", "again", 2, 3, "--resume");
  if (HasFailure()) return;
  dt_test::expect_checkpoint_near(tmp.path / "again", tmp.path / "zero3", 6, "zero3 resumed", 0.0);
  const std::string err = dt_test::read_file(tmp.path / "again.err");
  const io::Checkpoint ck =
      io::load_checkpoint((tmp.path / "zero3" / train::checkpoint_dir_name(3)).string());
  const std::regex line(
      "train: rank (\\d) of 2: loaded its share of the weights: kept (\\d+) bytes, loader peak "
      "(\\d+) bytes \\(whole model (\\d+) bytes in f32\\)");
  int seen = 0;
  for (std::sregex_iterator it(err.begin(), err.end(), line), end; it != end; ++it, ++seen) {
    const int r = std::stoi((*it)[1]);
    const int64_t kept = std::stoll((*it)[2]), peak = std::stoll((*it)[3]),
                  all = std::stoll((*it)[4]);
    const io::SliceFn f = train::zero3_slices(ck.config, {}, 2, r);
    int64_t share = 0, largest = 0;
    for (const auto& [name, t] : ck.params) {
      share += 4 * core::numel(f(ck.config, name, t.shape)->shape);
      largest = std::max(largest, 4 * t.numel());
    }
    EXPECT_EQ(kept, share) << "rank " << r;
    EXPECT_LE(peak, share + 2 * largest) << "rank " << r;
    EXPECT_LT(kept, all * 6 / 10) << "rank " << r;
    std::printf("  zero 3 resume, rank %d of 2: kept %lld B, loader peak %lld B, whole %lld B\n", r,
                static_cast<long long>(kept), static_cast<long long>(peak),
                static_cast<long long>(all));
  }
  EXPECT_EQ(seen, 2) << err;
}
