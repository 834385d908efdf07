// Trainer state save/resume (bitwise moments, RNG, continued training) and checkpoint dirs.
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>

#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/optimizer.h"
#include "train/train_state.h"

namespace fs = std::filesystem;
using namespace deltatron;
using nlohmann::json;
using train::TensorMap;

namespace {

using dt_test::expect_error;
using dt_test::TempDir;

TensorMap make_params(uint64_t seed, bool extra = false) {
  std::vector<std::pair<std::string, core::Shape>> specs = {
      {"model.embed_tokens.weight", {11, 8}},
      {"model.layers.0.linear_attn.A_log", {3}},
      {"model.layers.0.mlp.experts.gate_up_proj", {3, 10, 8}},
      {"model.norm.weight", {8}},
  };
  if (extra) specs.push_back({"model.layers.1.self_attn.o_proj.weight", {8, 8}});
  TensorMap p;
  for (const auto& [name, shape] : specs) {
    core::Tensor t(shape);
    t.data = dt_test::randn<float>(t.data.size(), ++seed);
    p.emplace(name, std::move(t));
  }
  return p;
}

// Gradients drawn from the trainer's RNG, so a resumed run sees the same ones only if the RNG
// state was restored exactly.
TensorMap draw_grads(const TensorMap& params, std::mt19937_64& rng) {
  std::normal_distribution<float> dist(0.f, 1.f);
  TensorMap g;
  for (const auto& [name, t] : params) {
    core::Tensor x(t.shape);
    for (float& v : x.data) v = dist(rng);
    g.emplace(name, std::move(x));
  }
  return g;
}

train::AdamWOptions options() {
  train::AdamWOptions o;
  o.weight_decay = 0.1;
  o.beta2 = 0.95;
  return o;
}

// Trains `steps` steps: clip, AdamW, advance the counters.
void train_steps(TensorMap& params, train::AdamW& adam, train::TrainState& st, int steps) {
  for (int i = 0; i < steps; ++i) {
    TensorMap g = draw_grads(params, st.rng);
    train::clip_grad_norm(g, 5.0);
    adam.step(params, g, 1e-2 / (1 + st.step));
    ++st.step;
    st.data_cursor += 3;
  }
}

bool same_bits(const TensorMap& a, const TensorMap& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end() || it->second.shape != t.shape) return false;
    if (std::memcmp(t.ptr(), it->second.ptr(), t.data.size() * sizeof(float)) != 0) return false;
  }
  return true;
}

// A state saved after 3 steps, for the error tests.
struct Saved {
  TempDir dir;
  TensorMap params = make_params(7);
  Saved() {
    train::AdamW adam(params, options());
    train::TrainState st;
    st.rng.seed(99);
    train_steps(params, adam, st, 3);
    train::save_train_state(dir.path.string(), st, adam);
  }
  std::string path() const { return dir.path.string(); }
};

}  // namespace

TEST(TrainState, RoundTripIsExactAndTrainingContinuesBitwise) {
  TempDir dir;
  TensorMap params = make_params(1);
  train::AdamW adam(params, options());
  train::TrainState st;
  st.rng_seed = 0xFEEDFACECAFEBEEFull;  // needs all 64 bits
  st.rng.seed(st.rng_seed);
  st.epoch = 2;
  st.extra = {{"tokens_seen", 123456789012LL}, {"note", "x"}};
  train_steps(params, adam, st, 4);
  train::save_train_state(dir.path.string(), st, adam);

  // A fresh process: parameters as the checkpoint holds them (F32), new optimizer and state.
  TensorMap params2 = params;
  train::AdamW adam2(params2, options());
  train::TrainState st2;
  train::load_train_state(dir.path.string(), st2, adam2);
  EXPECT_EQ(st2.step, 4);
  EXPECT_EQ(st2.rng_seed, 0xFEEDFACECAFEBEEFull);
  EXPECT_EQ(st2.epoch, 2);
  EXPECT_EQ(st2.data_cursor, 12);
  EXPECT_EQ(st2.extra, st.extra);
  EXPECT_EQ(adam2.step_count(), 4);
  EXPECT_TRUE(same_bits(adam2.exp_avg(), adam.exp_avg()));
  EXPECT_TRUE(same_bits(adam2.exp_avg_sq(), adam.exp_avg_sq()));
  EXPECT_TRUE(st2.rng == st.rng);

  // Both runs go on for 3 more steps: identical parameters, moments and RNG, bit for bit.
  train_steps(params, adam, st, 3);
  train_steps(params2, adam2, st2, 3);
  EXPECT_TRUE(same_bits(params2, params));
  EXPECT_TRUE(same_bits(adam2.exp_avg_sq(), adam.exp_avg_sq()));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(st2.rng(), st.rng());
}

TEST(TrainState, FileLayout) {
  Saved s;
  const io::SafetensorsFile f(s.path() + "/optimizer.safetensors");
  EXPECT_EQ(f.names().size(), 2 * s.params.size());
  for (const auto& [name, t] : s.params) {
    for (const std::string kind : {"exp_avg/", "exp_avg_sq/"}) {
      ASSERT_TRUE(f.contains(kind + name)) << kind << name;
      EXPECT_EQ(f.info(kind + name).dtype, "F32");
      EXPECT_EQ(f.info(kind + name).shape, t.shape);
    }
  }
  EXPECT_EQ(f.metadata().at("format"), "deltatron-adamw");
  EXPECT_EQ(f.metadata().at("step"), "3");
  std::ifstream in(s.path() + "/trainer_state.json");
  const json j = json::parse(in);
  EXPECT_EQ(j.at("step"), 3);
  EXPECT_EQ(j.at("format"), "deltatron-trainer-state");
  EXPECT_TRUE(j.at("rng_state").is_string());
}

TEST(TrainState, MissingFilesAreNamed) {
  TempDir empty;
  TensorMap params = make_params(7);
  train::AdamW adam(params, options());
  train::TrainState st;
  expect_error([&] { train::load_train_state(empty.path.string(), st, adam); },
               {empty.path.string(), "trainer_state.json", "missing"});
  Saved s;
  fs::remove(s.path() + "/optimizer.safetensors");
  expect_error([&] { train::load_train_state(s.path(), st, adam); },
               {"optimizer.safetensors", "missing"});
}

TEST(TrainState, ParameterSetMismatchNamesTheParameter) {
  Saved s;
  train::TrainState st;
  {  // The model has a parameter the checkpoint has no moments for.
    TensorMap more = make_params(7, /*extra=*/true);
    train::AdamW adam(more, options());
    expect_error([&] { train::load_train_state(s.path(), st, adam); },
                 {"optimizer.safetensors", "exp_avg/model.layers.1.self_attn.o_proj.weight"});
    EXPECT_EQ(adam.step_count(), 0);  // nothing loaded
    EXPECT_EQ(st.step, 0);
  }
  {  // The checkpoint has moments for a parameter the model lacks.
    TensorMap fewer = make_params(7);
    fewer.erase("model.norm.weight");
    train::AdamW adam(fewer, options());
    expect_error([&] { train::load_train_state(s.path(), st, adam); },
                 {"optimizer.safetensors", "model.norm.weight", "does not have"});
  }
  {  // Same names, another shape.
    TensorMap other = make_params(7);
    other.at("model.layers.0.linear_attn.A_log") = core::Tensor({4});
    train::AdamW adam(other, options());
    expect_error([&] { train::load_train_state(s.path(), st, adam); },
                 {"optimizer.safetensors", "model.layers.0.linear_attn.A_log", "[3]", "[4]"});
    EXPECT_EQ(adam.step_count(), 0);
  }
}

TEST(TrainState, BadStateFieldsAreNamed) {
  Saved s;
  TensorMap params = make_params(7);
  train::AdamW adam(params, options());
  train::TrainState st;
  const std::string path = s.path() + "/trainer_state.json";
  json good;
  {
    std::ifstream in(path);
    good = json::parse(in);
  }
  auto write = [&](const json& j) { std::ofstream(path) << j.dump(); };
  json j = good;
  j.erase("data_cursor");
  write(j);
  expect_error([&] { train::load_train_state(s.path(), st, adam); },
               {"trainer_state.json", "data_cursor", "missing"});
  j = good;
  j["step"] = -2;
  write(j);
  expect_error([&] { train::load_train_state(s.path(), st, adam); },
               {"trainer_state.json", "step"});
  j = good;
  j["rng_state"] = "1 2 3";
  write(j);
  expect_error([&] { train::load_train_state(s.path(), st, adam); },
               {"trainer_state.json", "rng_state"});
  std::ofstream(path) << "{ not json";
  expect_error([&] { train::load_train_state(s.path(), st, adam); },
               {"trainer_state.json", "invalid JSON"});
  EXPECT_EQ(adam.step_count(), 0);
  write(good);
  train::load_train_state(s.path(), st, adam);
  EXPECT_EQ(adam.step_count(), 3);
}

TEST(CheckpointDir, SaveIsAtomicAndLatestFindsIt) {
  TempDir out;
  const std::string out_dir = out / "run";
  EXPECT_FALSE(train::latest_complete_checkpoint(out_dir).has_value());
  const std::string p5 = train::save_training_checkpoint(out_dir, 5, [](const std::string& d) {
    fs::create_directories(d + "/sub");
    std::ofstream(d + "/a.txt") << "five";
    std::ofstream(d + "/sub/b.txt") << "nested";
  });
  EXPECT_EQ(p5, out_dir + "/checkpoint-00000005");
  EXPECT_TRUE(fs::is_regular_file(p5 + "/COMPLETE"));
  EXPECT_TRUE(fs::is_regular_file(p5 + "/sub/b.txt"));
  EXPECT_EQ(train::latest_complete_checkpoint(out_dir), p5);

  // An exception while writing: no checkpoint-7, no temporary left, checkpoint-5 intact.
  std::string tmp_seen;
  EXPECT_THROW(train::save_training_checkpoint(out_dir, 7,
                                               [&](const std::string& d) {
                                                 tmp_seen = d;
                                                 std::ofstream(d + "/a.txt") << "partial";
                                                 throw std::runtime_error("disk full");
                                               }),
               std::runtime_error);
  EXPECT_EQ(fs::path(tmp_seen).parent_path(), fs::path(out_dir));
  EXPECT_EQ(fs::path(tmp_seen).filename().string(),
            ".tmp-checkpoint-7-" + std::to_string(::getpid()));
  EXPECT_FALSE(fs::exists(tmp_seen));
  std::vector<std::string> entries;
  for (const auto& e : fs::directory_iterator(out_dir)) entries.push_back(e.path().string());
  EXPECT_EQ(entries, std::vector<std::string>{p5});
  EXPECT_EQ(train::latest_complete_checkpoint(out_dir), p5);
  std::ifstream in(p5 + "/a.txt");
  std::string text;
  in >> text;
  EXPECT_EQ(text, "five");

  // Saving a step again replaces that checkpoint as a whole.
  train::save_training_checkpoint(
      out_dir, 5, [](const std::string& d) { std::ofstream(d + "/c.txt") << "again"; });
  EXPECT_FALSE(fs::exists(p5 + "/a.txt"));
  EXPECT_TRUE(fs::exists(p5 + "/c.txt"));
  entries.clear();
  for (const auto& e : fs::directory_iterator(out_dir)) entries.push_back(e.path().string());
  EXPECT_EQ(entries, std::vector<std::string>{p5});
}

TEST(CheckpointDir, LatestIgnoresIncompleteAndForeignEntries) {
  TempDir out;
  const std::string d = out.path.string();
  train::save_training_checkpoint(d, 3, [](const std::string&) {});
  train::save_training_checkpoint(d, 99999999, [](const std::string&) {});
  fs::create_directories(out / "checkpoint-00000010");          // no COMPLETE
  fs::create_directories(out / ".tmp-checkpoint-200000000-1");  // a crashed save
  std::ofstream(out / ".tmp-checkpoint-200000000-1/COMPLETE") << "200000000";
  fs::create_directories(out / "checkpoint-abc");
  std::ofstream(out / "checkpoint-abc/COMPLETE") << "";
  std::ofstream(out / "checkpoint-300000000") << "a file";
  fs::create_directories(out / "checkpoint-400000000/COMPLETE");  // marker is not a file
  EXPECT_EQ(train::latest_complete_checkpoint(d), out / "checkpoint-99999999");
  // Past 8 digits the name grows and the order stays numeric.
  train::save_training_checkpoint(d, 100000000, [](const std::string&) {});
  EXPECT_EQ(train::latest_complete_checkpoint(d), out / "checkpoint-100000000");
  const auto all = train::complete_checkpoints(d);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].step, 3);
  EXPECT_EQ(all[1].step, 99999999);
  EXPECT_EQ(all[2].step, 100000000);

  // Stale temporaries of other processes go; ours and the checkpoints stay.
  const auto stale = train::remove_stale_checkpoint_temps(d);
  EXPECT_EQ(stale, std::vector<std::string>{out / ".tmp-checkpoint-200000000-1"});
  EXPECT_TRUE(fs::exists(out / "checkpoint-00000010"));
  EXPECT_EQ(train::complete_checkpoints(d).size(), 3u);
}

TEST(CheckpointDir, Prune) {
  TempDir out;
  const std::string d = out.path.string();
  for (int64_t s : {10, 20, 30, 40, 50})
    train::save_training_checkpoint(
        d, s, [s](const std::string& t) { std::ofstream(t + "/step.txt") << s; });
  fs::create_directories(out / "checkpoint-00000001");  // incomplete: not counted, not removed
  EXPECT_TRUE(train::prune_checkpoints(d, 0).empty());
  EXPECT_EQ(train::complete_checkpoints(d).size(), 5u);
  const auto removed = train::prune_checkpoints(d, 2);
  EXPECT_EQ(removed,
            (std::vector<std::string>{out / "checkpoint-00000010", out / "checkpoint-00000020",
                                      out / "checkpoint-00000030"}));
  const auto left = train::complete_checkpoints(d);
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].step, 40);
  EXPECT_EQ(left[1].step, 50);
  EXPECT_TRUE(fs::exists(out / "checkpoint-00000001"));
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(d)) ++n;
  EXPECT_EQ(n, 3u);  // no .deleting-* left behind
  EXPECT_TRUE(train::prune_checkpoints(d, 5).empty());
}

TEST(CheckpointDir, OutputDirWritable) {
  TempDir out;
  train::check_output_dir_writable(out / "a/b/c");
  EXPECT_TRUE(fs::is_directory(out / "a/b/c"));
  EXPECT_TRUE(fs::is_empty(out / "a/b/c"));  // the probe is gone
  std::ofstream(out / "file") << "x";
  expect_error([&] { train::check_output_dir_writable(out / "file"); },
               {out / "file", "not a directory"});
  expect_error([&] { train::check_output_dir_writable(out / "file/sub"); },
               {out / "file/sub", "cannot create"});
  expect_error([&] { train::check_output_dir_writable("/proc/deltatron-test"); },
               {"/proc/deltatron-test"});
}

TEST(CheckpointDir, TrainStateInsideACheckpoint) {
  // The trainer's use: state written through save_training_checkpoint, resumed from the latest.
  TempDir out;
  TensorMap params = make_params(3);
  train::AdamW adam(params, options());
  train::TrainState st;
  st.rng.seed(5);
  train_steps(params, adam, st, 2);
  train::save_training_checkpoint(out.path.string(), st.step, [&](const std::string& d) {
    train::save_train_state(d, st, adam);
  });
  const auto latest = train::latest_complete_checkpoint(out.path.string());
  ASSERT_TRUE(latest.has_value());
  train::AdamW adam2(params, options());
  train::TrainState st2;
  train::load_train_state(*latest, st2, adam2);
  EXPECT_EQ(st2.step, 2);
  EXPECT_TRUE(same_bits(adam2.exp_avg(), adam.exp_avg()));
}

// The save that reads the moments one tensor at a time (what a checkpoint of an engine's state
// uses) writes the very bytes of the save from the host moments.
TEST(TrainState, StreamedMomentsWriteTheSameFile) {
  TempDir a, b;
  TensorMap params = make_params(3);
  train::AdamW adam(params, options());
  train::TrainState st;
  train_steps(params, adam, st, 2);
  train::save_train_state(a.path.string(), st, adam);
  int64_t reads = 0;
  train::save_train_state(b.path.string(), st, adam, train::shapes_of(params),
                          [&](const std::string& name, bool second, float* out) {
                            const core::Tensor& t =
                                (second ? adam.exp_avg_sq() : adam.exp_avg()).at(name);
                            std::copy(t.data.begin(), t.data.end(), out);
                            ++reads;
                          });
  EXPECT_EQ(reads, int64_t(2 * params.size()));
  for (const char* f : {"optimizer.safetensors", "trainer_state.json"})
    EXPECT_EQ(dt_test::read_file(a.path / f), dt_test::read_file(b.path / f)) << f;
}
