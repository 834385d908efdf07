// End-to-end checks of `deltatron score`: results, packing options, and bad-input handling
// (one-line error naming the culprit, non-zero exit, nothing written).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model_fixture.h"
#include "test_util.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

struct CliResult {
  int code;
  std::string err;
};

using dt_test::read_file;
using dt_test::write_file;

class ScoreCli : public ::testing::Test {
 protected:
  const dt_test::TempDir tmp_{"cli"};
  const fs::path dir_ = tmp_.path;
  fs::path model_;

  void SetUp() override {
    model_ = dir_ / "model";
    io::Checkpoint ck;
    ck.config = model::parse_config(dt_test::tiny_config_json(), "tiny");
    ck.config.raw = dt_test::tiny_config_json();
    ck.params = dt_test::random_params(ck.config, 1);
    for (const auto& [n, t] : ck.params) ck.param_dtypes[n] = "F32";
    io::save_checkpoint(model_.string(), ck);
    write_file(dir_ / "data.jsonl",
               "{\"input_ids\": [1, 2, 3, 4, 5]}\n"
               "{\"input_ids\": [7, 8, 9], \"labels\": [-100, 8, 9]}\n"
               "\n"
               "{\"input_ids\": [3]}\n");
  }

  CliResult score(const std::string& args, const fs::path& model = {}) {
    const fs::path m = model.empty() ? model_ : model;
    std::string cmd = std::string(DT_BINARY) + " score --quiet --model " + m.string() + " " + args +
                      " 2> " + (dir_ / "stderr.txt").string();
    int rc = std::system(cmd.c_str());
    return {WEXITSTATUS(rc), read_file(dir_ / "stderr.txt")};
  }
  // Expects failure with a single-line message containing `needle`, and no output written.
  void expect_error(const CliResult& r, const std::string& needle) {
    EXPECT_NE(r.code, 0);
    EXPECT_NE(r.err.find(needle), std::string::npos) << "stderr: " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "stderr: " << r.err;
    EXPECT_FALSE(fs::exists(dir_ / "out.jsonl"));
    EXPECT_FALSE(fs::exists(dir_ / "g.safetensors"));
  }
  std::string out_args(const std::string& data = "data.jsonl") {
    return "--data " + (dir_ / data).string() + " --output " + (dir_ / "out.jsonl").string() +
           " --grad-out " + (dir_ / "g.safetensors").string();
  }
};

TEST_F(ScoreCli, WritesOneLinePerSampleInOrderAndPackingDoesNotMatter) {
  CliResult r = score(out_args() + " --pack-tokens 8192 --pad-multiple 8");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string packed = read_file(dir_ / "out.jsonl");
  const std::string g_packed = read_file(dir_ / "g.safetensors");
  std::vector<nlohmann::json> a;
  std::istringstream in(packed);
  for (std::string line; std::getline(in, line);) a.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(a.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[i]["index"], i);
  EXPECT_EQ(a[0]["n_tokens"], 4);
  EXPECT_EQ(a[1]["n_tokens"], 2);
  EXPECT_EQ(a[2]["n_tokens"], 0);
  EXPECT_EQ(a[2]["loss_sum"], 0.0);
  EXPECT_GT(a[0]["loss_sum"].get<double>(), 0.0);
  EXPECT_FALSE(g_packed.empty());

  fs::remove(dir_ / "out.jsonl");
  fs::remove(dir_ / "g.safetensors");
  r = score(out_args() + " --pack-tokens 1");
  ASSERT_EQ(r.code, 0) << r.err;
  std::istringstream in2(read_file(dir_ / "out.jsonl"));
  int i = 0;
  for (std::string line; std::getline(in2, line); ++i) {
    auto b = nlohmann::json::parse(line);
    const double x = a[i]["loss_sum"], y = b["loss_sum"];
    EXPECT_NEAR(x, y, 1e-5 * std::max(1.0, std::abs(y)));
    EXPECT_EQ(a[i]["n_tokens"], b["n_tokens"]);
  }
}

TEST_F(ScoreCli, TokenOutsideVocabulary) {
  write_file(dir_ / "bad.jsonl", "{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 61]}\n");
  expect_error(score(out_args("bad.jsonl")), "bad.jsonl:2");
}

TEST_F(ScoreCli, EmptySample) {
  write_file(dir_ / "bad.jsonl", "{\"input_ids\": []}\n");
  expect_error(score(out_args("bad.jsonl")), "bad.jsonl:1");
}

TEST_F(ScoreCli, LabelsOfWrongLength) {
  write_file(dir_ / "bad.jsonl", "{\"input_ids\": [1, 2, 3], \"labels\": [1, 2]}\n");
  expect_error(score(out_args("bad.jsonl")), "bad.jsonl:1");
}

TEST_F(ScoreCli, MalformedJsonLine) {
  write_file(dir_ / "bad.jsonl", "{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, \n");
  expect_error(score(out_args("bad.jsonl")), "bad.jsonl:2");
}

TEST_F(ScoreCli, ConfigWithoutRequiredField) {
  auto j = dt_test::tiny_config_json();
  j.erase("hidden_size");
  write_file(model_ / "config.json", j.dump());
  expect_error(score(out_args()), "hidden_size");
}

TEST_F(ScoreCli, TruncatedSafetensors) {
  const fs::path st = model_ / "model.safetensors";
  std::string bytes = read_file(st);
  write_file(st, bytes.substr(0, bytes.size() / 2));
  expect_error(score(out_args()), "model.safetensors");
}

TEST_F(ScoreCli, HeaderLengthPastEndOfFile) {
  const fs::path st = model_ / "model.safetensors";
  std::string bytes = read_file(st);
  uint64_t huge = uint64_t(1) << 40;
  bytes.replace(0, 8, reinterpret_cast<const char*>(&huge), 8);
  write_file(st, bytes);
  expect_error(score(out_args()), "model.safetensors");
}

TEST_F(ScoreCli, MissingModelDirectory) { expect_error(score(out_args(), dir_ / "nope"), "nope"); }

}  // namespace

namespace {

const fs::path kGolden = fs::path(DT_TEST_DATA) / "golden";

// Runs a deltatron command line, returning exit code and stderr.
CliResult run_cli(const std::string& args, const fs::path& err_file) {
  std::string cmd = std::string(DT_BINARY) + " " + args + " 2> " + err_file.string();
  int rc = std::system(cmd.c_str());
  return {WEXITSTATUS(rc), read_file(err_file)};
}

// convert keeps every tensor's bytes, name and dtype, and the config's content: a released-
// style MoE checkpoint (fused trunk experts, per-expert MTP experts, visual tower, BF16, shards).
TEST_F(ScoreCli, ConvertRoundTripIsByteIdentical) {
  const fs::path src = kGolden / "moe_vlm_mtp", out = dir_ / "converted";
  CliResult r =
      run_cli("convert --model " + src.string() + " --out " + out.string() + " --max-shard-mb 1",
              dir_ / "err.txt");
  ASSERT_EQ(r.code, 0) << r.err;
  io::SafetensorsSet a(src.string()), b(out.string());
  ASSERT_EQ(a.names(), b.names());
  for (const auto& name : a.names()) {
    EXPECT_EQ(a.info(name).dtype, b.info(name).dtype) << name;
    EXPECT_EQ(a.info(name).shape, b.info(name).shape) << name;
    auto x = a.bytes(name), y = b.bytes(name);
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end())) << name;
  }
  EXPECT_EQ(nlohmann::json::parse(read_file(src / "config.json")),
            nlohmann::json::parse(read_file(out / "config.json")));
}

// Changing the expert layout changes names, not numbers.
TEST_F(ScoreCli, ConvertToPerExpertScoresIdentically) {
  const fs::path src = kGolden / "moe_text_fused_tied", out = dir_ / "per_expert";
  ASSERT_EQ(run_cli("convert --model " + src.string() + " --out " + out.string() +
                        " --experts per-expert",
                    dir_ / "err.txt")
                .code,
            0);
  io::SafetensorsSet b(out.string());
  EXPECT_TRUE(b.contains("model.layers.0.mlp.experts.3.down_proj.weight"));
  EXPECT_FALSE(b.contains("model.layers.0.mlp.experts.down_proj"));
  const std::string data = (src / "samples.jsonl").string();
  ASSERT_EQ(score("--data " + data + " --output " + (dir_ / "a.jsonl").string(), src).code, 0);
  ASSERT_EQ(score("--data " + data + " --output " + (dir_ / "b.jsonl").string(), out).code, 0);
  EXPECT_EQ(read_file(dir_ / "a.jsonl"), read_file(dir_ / "b.jsonl"));
}

// A config that declares an MTP layer needs mtp.* tensors, unless --ignore-mtp is given.
TEST_F(ScoreCli, MtpConfigWithoutMtpTensors) {
  auto j = dt_test::tiny_config_json();
  j["mtp_num_hidden_layers"] = 1;
  write_file(model_ / "config.json", j.dump());
  expect_error(score(out_args()), "--ignore-mtp");
  CliResult r = score(out_args() + " --ignore-mtp");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "out.jsonl"));
}

// MTP models report the MTP loss per sample.
TEST_F(ScoreCli, MtpFieldsReported) {
  const fs::path src = kGolden / "dense_text_mtp";
  ASSERT_EQ(score("--data " + (src / "samples.jsonl").string() + " --output " +
                      (dir_ / "out.jsonl").string(),
                  src)
                .code,
            0);
  std::istringstream in(read_file(dir_ / "out.jsonl"));
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  auto first = nlohmann::json::parse(line);
  EXPECT_TRUE(first.contains("mtp_loss_sum"));
  EXPECT_TRUE(first.contains("mtp_n_tokens"));
}

TEST_F(ScoreCli, TopKLargerThanExpertCount) {
  auto j = nlohmann::json::parse(read_file(kGolden / "moe_text_fused_tied" / "config.json"));
  j["num_experts_per_tok"] = 9;
  fs::copy(kGolden / "moe_text_fused_tied", dir_ / "moe");
  write_file(dir_ / "moe" / "config.json", j.dump());
  expect_error(score(out_args(), dir_ / "moe"), "num_experts_per_tok");
}

}  // namespace

namespace {

// `deltatron bench --device cpu` runs the one engine end to end (random weights, fresh AdamW
// moments created by the first step) and writes its JSON: the smoke test of the bench command,
// whose CUDA runs CI cannot make.
TEST(BenchCli, CpuSmokeRunWritesResults) {
  const dt_test::TempDir tmp("bench");
  const fs::path json = tmp.path / "bench.json";
  const CliResult r = run_cli(
      "bench --device cpu --preset tiny-moe --mtp --tokens 2048 --warmup 1 "
      "--steps 1 --json " +
          json.string() + " > /dev/null",
      tmp.path / "err.txt");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(read_file(json));
  EXPECT_EQ(j["preset"], "tiny-moe");
  EXPECT_EQ(j["gpu"], "cpu");
  EXPECT_GT(j["real_tok_per_s"].get<double>(), 0.0);
}

}  // namespace
