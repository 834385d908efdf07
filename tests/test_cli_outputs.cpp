// Commands never delete or overwrite what the user owns: `init` / `convert` output directories
// (foreign files, --overwrite, the input itself, staging leftovers) and `score` outputs that
// name an input; `score` refuses non-finite losses.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "io/checkpoint.h"
#include "io/output_dir.h"
#include "model_fixture.h"
#include "test_util.h"

using namespace deltatron;
namespace fs = std::filesystem;
using dt_test::dir_entries;
using dt_test::read_file;
using dt_test::write_file;

namespace {

struct CliResult {
  int code;
  std::string err;
};

class Outputs : public ::testing::Test {
 protected:
  const dt_test::TempDir tmp_{"outputs"};
  const fs::path dir_ = tmp_.path;

  CliResult run(const std::string& args) {
    const fs::path err = dir_ / "stderr.txt";
    const int rc =
        std::system((std::string(DT_BINARY) + " " + args + " 2> " + err.string()).c_str());
    return {WEXITSTATUS(rc), read_file(err)};
  }
  // A tiny F32 checkpoint with the files a downloaded one carries beside its weights.
  fs::path make_model(const std::string& name, bool nan_weight = false) {
    io::Checkpoint ck;
    ck.config = model::parse_config(dt_test::tiny_config_json(), "tiny");
    ck.config.raw = dt_test::tiny_config_json();
    ck.params = dt_test::random_params(ck.config, 1);
    if (nan_weight) ck.params.at("model.norm.weight").data[2] = std::nanf("");
    for (const auto& [n, t] : ck.params) ck.param_dtypes[n] = "F32";
    const fs::path m = dir_ / name;
    io::save_checkpoint(m.string(), ck);
    write_file(m / "tokenizer.json", "{\"tok\": 1}");
    write_file(m / "generation_config.json", "{\"gen\": 1}");
    write_file(m / "README.md", "# my model\n");
    return m;
  }
};

// The probe's reproducer: init into a directory holding a user's file.
TEST_F(Outputs, InitRefusesANonEmptyDirectoryItDidNotWrite) {
  fs::create_directories(dir_ / "o");
  write_file(dir_ / "o" / "thesis.txt", "x\n");
  const CliResult r = run("init --preset tiny --out " + (dir_ / "o").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find((dir_ / "o").string()), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("thesis.txt"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
  EXPECT_EQ(dir_entries(dir_ / "o"), std::vector<std::string>{"thesis.txt"});
  EXPECT_EQ(read_file(dir_ / "o" / "thesis.txt"), "x\n");
  EXPECT_EQ(dir_entries(dir_), (std::vector<std::string>{"o", "stderr.txt"}));
}

// --overwrite writes the checkpoint and keeps every file the command did not write; a later
// init into its own output needs no --overwrite and removes what the earlier one wrote.
TEST_F(Outputs, InitOverwriteKeepsOtherFilesAndOwnOutputIsReusable) {
  fs::create_directories(dir_ / "o");
  write_file(dir_ / "o" / "thesis.txt", "x\n");
  CliResult r = run("init --preset tiny --overwrite --out " + (dir_ / "o").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(dir_entries(dir_ / "o"),
            (std::vector<std::string>{".deltatron-output.json", "config.json", "model.safetensors",
                                      "thesis.txt"}));
  EXPECT_EQ(read_file(dir_ / "o" / "thesis.txt"), "x\n");
  EXPECT_NO_THROW(io::load_checkpoint((dir_ / "o").string()));

  r = run("init --preset tiny --config-only --out " + (dir_ / "o").string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(dir_entries(dir_ / "o"),
            (std::vector<std::string>{".deltatron-output.json", "config.json", "thesis.txt"}));

  // A new directory appears whole; an empty one is used as is.
  ASSERT_EQ(run("init --preset tiny --out " + (dir_ / "new" / "o").string()).code, 0);
  fs::create_directories(dir_ / "empty");
  ASSERT_EQ(run("init --preset tiny --out " + (dir_ / "empty").string()).code, 0);
  EXPECT_TRUE(fs::exists(dir_ / "empty" / "model.safetensors"));
  for (const auto& e : dir_entries(dir_))
    EXPECT_EQ(e.find(".tmp-"), std::string::npos) << "staging left behind: " << e;
}

// convert --out equal to --model (also through a symlink) is refused and touches nothing.
TEST_F(Outputs, ConvertIntoItsOwnInputIsRefused) {
  const fs::path m = make_model("model");
  const auto before = dir_entries(m);
  for (const fs::path& out : {m, dir_ / "." / "model" / "", dir_ / "link"}) {
    if (out == dir_ / "link") fs::create_directory_symlink(m, out);
    const CliResult r = run("convert --overwrite --model " + m.string() + " --out " + out.string());
    EXPECT_NE(r.code, 0) << out;
    EXPECT_NE(r.err.find("same directory"), std::string::npos) << r.err;
  }
  EXPECT_EQ(dir_entries(m), before);
  EXPECT_EQ(read_file(m / "tokenizer.json"), "{\"tok\": 1}");
  EXPECT_EQ(read_file(m / "README.md"), "# my model\n");
}

// convert into another model's directory: refused without --overwrite; with it, the weights
// and config are replaced and the tokenizer, generation config and README are kept.
TEST_F(Outputs, ConvertOverwriteReplacesOnlyCheckpointFiles) {
  const fs::path m = make_model("model"), other = make_model("other");
  io::Checkpoint sharded = io::load_checkpoint(other.string());
  fs::remove(other / "model.safetensors");
  io::write_checkpoint_files(other.string(), sharded, 300);  // shards + index
  ASSERT_TRUE(fs::exists(other / "model.safetensors.index.json"));
  CliResult r = run("convert --model " + m.string() + " --out " + other.string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
  r = run("convert --overwrite --model " + m.string() + " --out " + other.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(dir_entries(other), (std::vector<std::string>{".deltatron-output.json", "README.md",
                                                          "config.json", "generation_config.json",
                                                          "model.safetensors", "tokenizer.json"}));
  EXPECT_EQ(read_file(other / "README.md"), "# my model\n");
  EXPECT_EQ(read_file(other / "model.safetensors"), read_file(m / "model.safetensors"));
}

// A SIGKILLed init or convert leaves its staging directory; the next one into the same output
// removes it (only when its process is gone).
TEST_F(Outputs, StaleStagingOfADeadProcessIsRemoved) {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  const fs::path dead = dir_ / (".o.tmp-" + std::to_string(child));
  const fs::path live = dir_ / (".o.tmp-" + std::to_string(::getpid()));
  fs::create_directories(dead);
  write_file(dead / "model.safetensors", std::string(1000, 'x'));
  fs::create_directories(live);
  ASSERT_EQ(run("init --preset tiny --out " + (dir_ / "o").string()).code, 0);
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(live));
}

// A staged output never installed leaves the directory as it was; an install whose rename
// fails puts back every file it had moved.
TEST_F(Outputs, StagedOutputIsAllOrNothing) {
  const fs::path o = dir_ / "o";
  fs::create_directories(o);
  write_file(o / "config.json", "old config");
  write_file(o / "notes.txt", "mine");
  {
    io::StagedOutput s(o.string());
    write_file(fs::path(s.path()) / "config.json", "new config");
  }  // no install
  EXPECT_EQ(dir_entries(o), (std::vector<std::string>{"config.json", "notes.txt"}));
  EXPECT_EQ(read_file(o / "config.json"), "old config");
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"o"});

  fs::create_directories(o / "model.safetensors");  // a directory: the file cannot replace it
  write_file(o / "model.safetensors" / "x", "y");
  {
    io::StagedOutput s(o.string());
    write_file(fs::path(s.path()) / "config.json", "new config");
    write_file(fs::path(s.path()) / "model.safetensors", "weights");
    EXPECT_THROW(s.install("test"), core::Error);
  }
  EXPECT_EQ(read_file(o / "config.json"), "old config");
  EXPECT_EQ(read_file(o / "model.safetensors" / "x"), "y");
  EXPECT_EQ(dir_entries(dir_), std::vector<std::string>{"o"});
}

// ---- score -----------------------------------------------------------------------------------

TEST_F(Outputs, ScoreOutputThatIsAnInputIsRefused) {
  const fs::path m = make_model("model");
  const std::string data = "{\"input_ids\": [1, 2, 3]}\n";
  write_file(dir_ / "data.jsonl", data);
  fs::create_hard_link(dir_ / "data.jsonl", dir_ / "hardlink.jsonl");
  const std::string base =
      "score --quiet --model " + m.string() + " --data " + (dir_ / "data.jsonl").string();
  const std::string model_bytes = read_file(m / "model.safetensors");
  for (const std::string& bad : {" --output " + (dir_ / "data.jsonl").string(),
                                 " --output " + (dir_ / "." / "data.jsonl").string(),
                                 " --output " + (dir_ / "hardlink.jsonl").string(),
                                 " --output " + (m / "config.json").string(),
                                 " --output " + (dir_ / "out.jsonl").string() + " --grad-out " +
                                     (dir_ / "out.jsonl").string(),
                                 " --output " + (dir_ / "out.jsonl").string() + " --grad-out " +
                                     (m / "model.safetensors").string()}) {
    const CliResult r = run(base + bad);
    EXPECT_NE(r.code, 0) << bad;
    EXPECT_NE(r.err.find("same file"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir_ / "out.jsonl")) << bad;
  }
  EXPECT_EQ(read_file(dir_ / "data.jsonl"), data);
  EXPECT_EQ(read_file(m / "model.safetensors"), model_bytes);
  EXPECT_TRUE(nlohmann::json::parse(read_file(m / "config.json")).is_object());
}

// A NaN weight: score names the samples whose loss is not finite and the weight, exits non-zero
// and writes nothing.
TEST_F(Outputs, ScoreRefusesNonFiniteLosses) {
  const fs::path m = make_model("nan_model", true);
  write_file(dir_ / "data.jsonl", "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5]}\n");
  const CliResult r =
      run("score --quiet --model " + m.string() + " --data " + (dir_ / "data.jsonl").string() +
          " --output " + (dir_ / "out.jsonl").string());
  EXPECT_EQ(r.code, 1) << r.err;
  for (const char* part : {"data.jsonl", "2 of 2 samples", "non-finite loss", "index 0, 1",
                           "model.norm.weight[2] = nan"})
    EXPECT_NE(r.err.find(part), std::string::npos) << part << " not in: " << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "out.jsonl"));
}

}  // namespace
