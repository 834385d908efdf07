// Loading a rank's share (train/local_slices.h, io::LoadOptions::slice): a slice read from the
// files equals the same slice of the whole tensor bit for bit (tensor-parallel runs, expert rows,
// per-expert checkpoints assembled first), only the slice's elements are converted, bad slices
// name the file and tensor; and on CPU ranks (`score --ep 2`, `--tp 2`) each rank's loader holds
// its share plus at most one tensor, counted by the loader (io::LoadStats), not the whole model.
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
