// `deltatron bench` and `deltatron commbench` on CPU ranks (Gloo, started by `deltatron launch`):
// a parallel layout runs each rank's share of the same steps, so its step losses equal those of
// one rank running all of a step's micro-batches (--accum = the data-parallel ranks) to rounding;
// the JSON reports the job, its layout and every rank; commbench's bus bandwidth follows
// nccl-tests' definition.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ranks_run.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace {

// Four micro-batches of awkward lengths (the run's steps take them in order, cyclically).
constexpr const char* kLengths = R"({"steps": [[61, 40], [113], [29, 50, 21], [83]]})";

// `deltatron bench` on `ranks` CPU ranks with `flags`; its JSON.
nlohmann::json bench(const dt_test::TempDir& tmp, const std::string& name, int ranks,
                     const std::string& flags) {
  const fs::path lengths = tmp.path / "lengths.json";
  if (!fs::exists(lengths)) dt_test::write_file(lengths, kLengths);
  const fs::path json = tmp.path / (name + ".json"), err = tmp.path / (name + ".err");
  const int rc = dt_test::run_ranks(ranks,
                                    "bench --device cpu --tokens 128 --warmup 1 --lengths " +
                                        lengths.string() + " --json " + json.string() + " " +
                                        flags + " > /dev/null",
                                    err);
  EXPECT_EQ(rc, 0) << name << ": " << dt_test::read_file(err);
  if (rc != 0 || !fs::exists(json)) return nlohmann::json::object();
  return nlohmann::json::parse(dt_test::read_file(json));
}

// The timed steps' losses of `got` equal `want`'s within rel (relative), the worst one printed.
void expect_same_losses(const nlohmann::json& want, const nlohmann::json& got,
                        const std::string& label, double rel) {
  ASSERT_TRUE(want.contains("losses") && got.contains("losses")) << label;
  const auto a = want["losses"].get<std::vector<double>>();
  const auto b = got["losses"].get<std::vector<double>>();
  ASSERT_EQ(a.size(), b.size()) << label;
  ASSERT_FALSE(a.empty()) << label;
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(a[i] - b[i]) / std::abs(a[i]);
    if (d > worst) worst = d, at = i;
  }
  EXPECT_LE(worst, rel) << label << ": step " << at << " loss " << b[at] << " vs one rank's "
                        << a[at];
}

class BenchParallel : public ::testing::Test {
 protected:
  // One OpenMP thread per rank: the one-rank reference as fast as each launched rank.
  void SetUp() override { setenv("OMP_NUM_THREADS", "1", 1); }
};

}  // namespace

// dp2 (ZeRO 0, 1, 3) and tp2 + sp of the dense tiny preset against one rank with the same steps.
TEST_F(BenchParallel, DenseLayoutsEqualOneRank) {
  const dt_test::TempDir tmp("bench_dense");
  const nlohmann::json one = bench(tmp, "one", 1, "--preset tiny --accum 2");
  ASSERT_TRUE(one.contains("losses"));
  EXPECT_EQ(one["world_size"], 1);
  EXPECT_EQ(one["micro_batches_per_step"], 2);
  EXPECT_EQ(one["steps"], 2);  // the file's 4 micro-batches once, 2 a step
  for (const std::string zero : {"0", "1", "3"}) {
    const nlohmann::json j = bench(tmp, "dp2_zero" + zero, 2, "--preset tiny --zero " + zero);
    ASSERT_TRUE(j.contains("losses")) << zero;
    EXPECT_EQ(j["world_size"], 2);
    EXPECT_EQ(j["layout"]["dp"], 2);
    EXPECT_EQ(j["layout"]["zero"], std::stoi(zero));
    EXPECT_EQ(j["micro_batches_per_step"], 2);
    EXPECT_EQ(j["peak_gib_ranks"].size(), 2u);
    EXPECT_NEAR(j["tok_per_s_per_gpu"].get<double>() * 2, j["global_tok_per_s"].get<double>(),
                1e-9 * j["global_tok_per_s"].get<double>());
    expect_same_losses(one, j, "dp2 zero " + zero, 1e-6);
  }
  const nlohmann::json one1 = bench(tmp, "one1", 1, "--preset tiny");
  const nlohmann::json tp = bench(tmp, "tp2sp", 2, "--preset tiny --tp 2 --sp");
  ASSERT_TRUE(tp.contains("layout"));
  EXPECT_EQ(tp["layout"]["dp"], 1);
  EXPECT_EQ(tp["layout"]["tp"], 2);
  EXPECT_EQ(tp["layout"]["sp"], true);
  expect_same_losses(one1, tp, "tp2 + sp", 1e-6);
}

// Expert parallelism alone and with ZeRO 3 (the weights made one tensor at a time, this rank's
// expert slices only) on the MoE tiny preset; with tensor parallelism and ZeRO 2 on 4 ranks (tp2
// x ep2: the expert-parallel groups among the data-parallel ranks of one tp slice).
TEST_F(BenchParallel, ExpertLayoutsEqualOneRank) {
  const dt_test::TempDir tmp("bench_moe");
  const nlohmann::json one = bench(tmp, "one", 1, "--preset tiny-moe --accum 2");
  for (const std::string flags : {"--ep 2", "--ep 2 --zero 3"}) {
    const nlohmann::json j = bench(tmp, "ep2", 2, "--preset tiny-moe " + flags);
    ASSERT_TRUE(j.contains("layout")) << flags;
    EXPECT_EQ(j["layout"]["ep"], 2);
    expect_same_losses(one, j, flags, 1e-6);
  }
  const std::string flags = "--tp 2 --sp --ep 2 --zero 2";
  const nlohmann::json j = bench(tmp, "tp2_ep2", 4, "--preset tiny-moe " + flags);
  ASSERT_TRUE(j.contains("layout"));
  EXPECT_EQ(j["layout"]["dp"], 2);
  EXPECT_EQ(j["layout"]["tp"], 2);
  EXPECT_EQ(j["layout"]["ep"], 2);
  expect_same_losses(one, j, flags, 1e-6);
}

// LoRA (the trainer's engine path: the frozen base, the adapters trained) with expert parallelism
// on the MoE tiny preset, the routed-expert adapters (--lora-experts) on their experts' ranks,
// alone and with ZeRO 3; and tp2 + sp with ZeRO 1 on the dense one (the split adapter factors).
TEST_F(BenchParallel, LoraLayoutsEqualOneRank) {
  const dt_test::TempDir tmp("bench_lora");
  const std::string moe = "--preset tiny-moe --lora --lora-r 4 --lora-experts ";
  const nlohmann::json one = bench(tmp, "one", 1, moe + "--accum 2");
  for (const std::string flags : {"--ep 2", "--ep 2 --zero 3"}) {
    const nlohmann::json j = bench(tmp, "ep2", 2, moe + flags);
    ASSERT_TRUE(j.contains("layout")) << flags;
    EXPECT_EQ(j["layout"]["ep"], 2);
    expect_same_losses(one, j, "--lora " + flags, 1e-6);
  }
  const std::string dense = "--preset tiny --lora --lora-r 4 ";
  const nlohmann::json one1 = bench(tmp, "one1", 1, dense);
  const nlohmann::json tp = bench(tmp, "tp2sp", 2, dense + "--tp 2 --sp --zero 1");
  ASSERT_TRUE(tp.contains("layout"));
  EXPECT_EQ(tp["layout"]["tp"], 2);
  expect_same_losses(one1, tp, "--lora --tp 2 --sp --zero 1", 1e-6);
}

// A layout the trainer refuses is refused here with the same message; a layout that does not
// divide the job's ranks names the flag.
TEST_F(BenchParallel, UnsupportedLayoutsAreErrors) {
  const dt_test::TempDir tmp("bench_bad");
  dt_test::write_file(tmp.path / "lengths.json", kLengths);
  const std::string base = "bench --device cpu --tokens 128 --lengths " +
                           (tmp.path / "lengths.json").string() + " --preset tiny ";
  // Offload with ZeRO 3 is built (test_zero_offload); a LoRA run has no state to offload.
  EXPECT_NE(dt_test::run_ranks(1, base + "--zero 3 --lora --offload moments", tmp.path / "a.err"),
            0);
  EXPECT_NE(dt_test::read_file(tmp.path / "a.err")
                .find("a LoRA run keeps its adapters' state on the device"),
            std::string::npos)
      << dt_test::read_file(tmp.path / "a.err");
  EXPECT_NE(dt_test::run_ranks(1, base + "--ep 2", tmp.path / "b.err"), 0);
  EXPECT_NE(dt_test::read_file(tmp.path / "b.err").find("bench --ep: expert parallelism (2) needs"),
            std::string::npos)
      << dt_test::read_file(tmp.path / "b.err");
  EXPECT_NE(dt_test::run_ranks(2, base + "--tp 3", tmp.path / "c.err"), 0);
  EXPECT_NE(dt_test::read_file(tmp.path / "c.err").find("bench --tp"), std::string::npos)
      << dt_test::read_file(tmp.path / "c.err");
}

// commbench on 2 CPU ranks: every size and operation, busbw = algbw x 2(n-1)/n (all_reduce) and
// x (n-1)/n (reduce_scatter, all_gather).
TEST(CommBench, TwoCpuRanks) {
  const dt_test::TempDir tmp("commbench");
  const fs::path json = tmp.path / "cb.json", err = tmp.path / "cb.err";
  ASSERT_EQ(dt_test::run_ranks(2,
                               "commbench --device cpu --min-bytes 65536 --max-bytes 262144 "
                               "--iters 3 --warmup 1 --ops all_reduce,reduce_scatter,all_gather "
                               "--json " +
                                   json.string() + " > /dev/null",
                               err),
            0)
      << dt_test::read_file(err);
  const nlohmann::json j = nlohmann::json::parse(dt_test::read_file(json));
  EXPECT_EQ(j["backend"], "gloo");
  EXPECT_EQ(j["world_size"], 2);
  ASSERT_EQ(j["results"].size(), 9u);  // 3 sizes x 3 operations
  for (const auto& r : j["results"]) {
    const double alg = r["algbw_gbps"], bus = r["busbw_gbps"];
    const double factor = r["op"] == "all_reduce" ? 1.0 : 0.5;
    EXPECT_GT(alg, 0) << r.dump();
    EXPECT_NEAR(bus, alg * factor, 1e-12 * alg) << r.dump();
    EXPECT_NEAR(alg, r["bytes"].get<double>() / (r["time_us"].get<double>() * 1e-6) / 1e9,
                1e-9 * alg)
        << r.dump();
    EXPECT_GE(r["time_us_max"].get<double>(), r["time_us"].get<double>() * 0.999) << r.dump();
  }
  EXPECT_EQ(j["results"][0]["bytes"], 65536);
  EXPECT_EQ(j["results"][2]["bytes"], 262144);
  EXPECT_TRUE(j["peak_busbw_gbps"].contains("all_gather"));
}
