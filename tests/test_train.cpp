// Training: objective invariance under packing / micro-batching, bitwise resume, checkpoint
// reload, and the trainer's bad-input handling.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "data/pack.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model_fixture.h"
#include "short_run.h"
#include "test_util.h"
#include "tfevents_reader.h"
#include "train/checkpoint_dir.h"
#include "train/objective.h"
#include "train/presets.h"
#include "train/run_dir.h"
#include "train/tensorboard_log.h"
#include "train/train_config.h"
#include "train/trainer.h"

using namespace deltatron;
namespace fs = std::filesystem;

namespace {

const fs::path kExamples = fs::path(DT_TEST_DATA) / ".." / ".." / "examples";

using dt_test::read_file;

// ---- objective invariance ------------------------------------------------------------------

std::vector<data::Sample> samples_of(const std::vector<int>& lengths, int64_t vocab) {
  std::mt19937_64 rng(3);
  std::vector<data::Sample> out;
  for (int len : lengths) {
    data::Sample s;
    for (int t = 0; t < len; ++t) s.input_ids.push_back(int32_t(rng() % vocab));
    s.labels = s.input_ids;
    for (int t = 0; t < len / 2; ++t) s.labels[t] = data::kIgnoreIndex;
    out.push_back(s);
  }
  return out;
}

// Gradient of one optimizer step over the given micro-batch split of the samples.
model::TensorMap step_grads(const train::TrainConfig& cfg, const model::Config& c,
                            const model::TensorMap& p, const std::vector<data::Sample>& samples,
                            const std::vector<std::vector<int64_t>>& split, int64_t align,
                            double* loss) {
  std::vector<data::Pack> packs;
  for (const auto& mb : split) {
    std::vector<const data::Sample*> m;
    for (int64_t i : mb) m.push_back(&samples[i]);
    packs.push_back(data::make_pack(m, mb, align));
  }
  const train::StepCounts n = train::count_step(packs, c.mtp_enabled);
  model::ModelOptions o = train::step_options(cfg, c, n);
  model::TensorMap g = model::zeros_like(p);
  double ce = 0;
  for (const auto& pack : packs)
    for (double x : model::model_fwd_bwd(core::Device::cpu, c, p, pack, &g, o).loss_sum) ce += x;
  *loss = ce / double(n.label_tokens);
  return g;
}

TEST(Objective, PackingAndMicroBatchingDoNotChangeTheGradient) {
  const model::Config c = dt_test::tiny_moe_mtp_config();
  const model::TensorMap p = dt_test::random_params(c, 5);
  const auto samples = samples_of({7, 65, 3, 30, 130, 12, 1}, c.vocab_size);
  train::TrainConfig cfg;
  cfg.mtp_scale = 0.2;
  cfg.router_aux_coef = 0.01;
  cfg.router_aux_type = "seq";
  cfg.z_loss_coef = 0.001;
  double l1 = 0, l2 = 0, l3 = 0;
  const auto a = step_grads(cfg, c, p, samples, {{0, 1, 2, 3, 4, 5, 6}}, 1, &l1);
  const auto b = step_grads(cfg, c, p, samples, {{4, 0}, {6, 2, 1}, {5, 3}}, 8, &l2);
  const auto d = step_grads(cfg, c, p, samples, {{0}, {1}, {2}, {3}, {4}, {5}, {6}}, 64, &l3);
  EXPECT_NEAR(l1, l2, 1e-5 * l1);
  EXPECT_NEAR(l1, l3, 1e-5 * l1);
  for (const auto& [name, t] : a) {
    DT_EXPECT_CLOSE(b.at(name).data, t.data, 1e-5, name + " (3 micro-batches)");
    DT_EXPECT_CLOSE(d.at(name).data, t.data, 1e-5, name + " (one sample each)");
  }
}

// ---- trainer -------------------------------------------------------------------------------

class Trainer : public ::testing::Test {
 protected:
  const dt_test::TempDir tmp_{"train"};
  const fs::path dir_ = tmp_.path;

  // A short run of the bundled example (tiny-moe preset: GDN, attention, MoE, MTP).
  train::TrainConfig config(const std::string& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> ov = dt_test::short_run_overrides(dir_, out);
    ov.insert(ov.end(), extra.begin(), extra.end());
    return train::load_train_config((kExamples / "addition" / "train_moe.toml").string(), ov);
  }
};

std::vector<double> losses(const fs::path& metrics) { return dt_test::metric_losses(metrics); }

// (tag, step) -> value as TensorBoard shows it: records in order, a later one replacing an
// earlier one at the same step.
using TbView = std::map<std::pair<std::string, int64_t>, float>;

// The view of metrics.jsonl: numeric fields as float32 under the trainer's tags.
TbView metrics_view(const fs::path& metrics) {
  TbView v;
  std::istringstream in(read_file(metrics));
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    for (const auto& [key, x] : j.items())
      if (key != "step" && x.is_number())
        v[{key.rfind("eval_", 0) == 0 ? "eval/" + key.substr(5) : "train/" + key,
           j["step"].get<int64_t>()}] = float(x.get<double>());
  }
  return v;
}

// The view of a folder's event files, read in name order as TensorBoard does; a SessionLog
// START at step s drops what was read before at steps >= s.
TbView events_view(const std::vector<fs::path>& files) {
  TbView v;
  for (const auto& f : files)
    for (const auto& e : dt_test::read_tfevents(f)) {
      if (e.session_start)
        std::erase_if(v, [&](const auto& kv) { return kv.first.second >= e.step; });
      for (const auto& [tag, x] : e.scalars) v[{tag, e.step}] = x;
    }
  return v;
}

// TensorBoard event files mirror metrics.jsonl: every step's train/loss (and every other number)
// as float32, eval loss and accuracy, the MTP and router losses of this MoE + MTP model; a resume
// adds a second file that opens with a SessionLog START at its first step, so the steps the first
// run logged after the checkpoint are replaced; a dense model has no MTP or router tags;
// training.tensorboard = false writes no events.
TEST_F(Trainer, TensorBoardEventsMirrorMetricsAcrossResume) {
  const std::vector<std::string> ov = {"training.steps=4", "training.save_every=2",
                                       "training.eval_every=2"};
  train::run_train(config("tb", ov), false);
  const fs::path out = dir_ / "tb", tb = out / train::kTensorBoardDir;
  const std::vector<double> first_losses = losses(out / "metrics.jsonl");
  ASSERT_EQ(first_losses.size(), 4u);
  {
    const auto files = dt_test::tfevents_files(tb);
    ASSERT_EQ(files.size(), 1u);
    const auto ev = dt_test::read_tfevents(files[0]);
    ASSERT_GE(ev.size(), 2u);
    EXPECT_EQ(ev[0].file_version, "brain.Event:2");
    EXPECT_TRUE(ev[1].session_start);
    EXPECT_EQ(ev[1].step, 1);
    std::vector<int64_t> loss_steps;
    for (const auto& e : ev)
      for (const auto& [tag, x] : e.scalars)
        if (tag == "train/loss") {
          loss_steps.push_back(e.step);
          EXPECT_EQ(x, float(first_losses.at(size_t(e.step - 1)))) << "step " << e.step;
        }
    EXPECT_EQ(loss_steps, (std::vector<int64_t>{1, 2, 3, 4}));
  }
  TbView view = events_view(dt_test::tfevents_files(tb));
  EXPECT_EQ(view, metrics_view(out / "metrics.jsonl"));
  for (const char* tag : {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                          "train/mtp_loss", "train/router_loss"})
    EXPECT_TRUE(view.count({tag, 4})) << tag;
  for (const char* tag : {"eval/loss", "eval/accuracy"}) {
    EXPECT_TRUE(view.count({tag, 2})) << tag;
    EXPECT_TRUE(view.count({tag, 4})) << tag;
  }

  // Resume from step 2: steps 3 and 4 are logged again, into a new file.
  fs::remove_all(out / train::checkpoint_dir_name(4));
  train::run_train(config("tb", ov), true);
  const auto files = dt_test::tfevents_files(tb);
  ASSERT_EQ(files.size(), 2u);
  const auto ev = dt_test::read_tfevents(files[1]);
  ASSERT_GE(ev.size(), 3u);
  EXPECT_TRUE(ev[1].session_start);
  EXPECT_EQ(ev[1].step, 3);
  EXPECT_EQ(ev[2].step, 3);
  view = events_view(files);
  EXPECT_EQ(view, metrics_view(out / "metrics.jsonl"));
  EXPECT_EQ(view.at({"train/loss", 4}), float(losses(out / "metrics.jsonl").back()));

  // A dense model without MTP logs no MTP or router loss.
  const std::vector<std::string> one = {"model.preset=\"tiny\"", "training.steps=1",
                                        "training.warmup_steps=0"};
  train::run_train(config("dense", one), false);
  view = events_view(dt_test::tfevents_files(dir_ / "dense" / train::kTensorBoardDir));
  EXPECT_EQ(view, metrics_view(dir_ / "dense" / "metrics.jsonl"));
  EXPECT_TRUE(view.count({"train/loss", 1}));
  EXPECT_FALSE(view.count({"train/mtp_loss", 1}));
  EXPECT_FALSE(view.count({"train/router_loss", 1}));

  std::vector<std::string> off = one;
  off.push_back("training.tensorboard=false");
  train::run_train(config("off", off), false);
  EXPECT_TRUE(fs::exists(dir_ / "off" / "metrics.jsonl"));
  EXPECT_FALSE(fs::exists(dir_ / "off" / train::kTensorBoardDir));
}

TEST_F(Trainer, UnwritableOutputDirFailsBeforeTraining) {
  EXPECT_THROW(train::run_train(config("x", {"training.out_dir=\"/proc/deltatron\""}), false),
               core::Error);
}

TEST_F(Trainer, UnknownSettingIsNamed) {
  try {
    config("x", {"training.learning_rate=1"});
    FAIL() << "no error";
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("training.learning_rate"), std::string::npos);
  }
}

// Negative counts, scales and thresholds are errors naming the key and the value (0 keeps its
// documented meaning).
TEST_F(Trainer, NegativeSettingsAreNamed) {
  for (const char* key : {"training.save_every", "training.keep_last", "training.grad_clip",
                          "training.eval_every", "training.max_bad_steps", "training.mtp_scale"}) {
    dt_test::expect_error([&] { config("x", {std::string(key) + "=-1"}); }, {key, "-1", ">= 0"});
    EXPECT_NO_THROW(config("x", {std::string(key) + "=0"})) << key;
  }
}

// A checkpoint whose final norm holds a NaN.
fs::path nan_model(const fs::path& dir) {
  io::Checkpoint ck;
  const nlohmann::json j = train::preset_config("tiny");
  ck.config = model::parse_config(j, "cfg");
  ck.config.raw = j;
  ck.params = dt_test::random_params(ck.config, 1);
  ck.params.at(ck.config.name("norm.weight")).data[0] = std::nanf("");
  io::save_checkpoint((dir / "nan_model").string(), ck);
  return dir / "nan_model";
}

// Non-finite starting weights are refused up front (naming the tensor): skipping steps could
// never repair them, and the run must not end with exit 0 and a NaN checkpoint.
TEST_F(Trainer, NonFiniteStartingWeightsAreRefused) {
  const fs::path m = nan_model(dir_);
  const std::string tok =
      "data.tokenizer=\"" + (kExamples / "tokenizer" / "tokenizer.json").string() + "\"";
  for (const char* max_bad : {"training.max_bad_steps=2", "training.max_bad_steps=100"})
    dt_test::expect_error(
        [&] {
          train::run_train(config("nan", {"model.preset=\"\"", "model.path=\"" + m.string() + "\"",
                                          tok, max_bad}),
                           false);
        },
        {m.string(), "model.norm.weight[0] = nan", "non-finite"});
  EXPECT_FALSE(train::latest_complete_checkpoint((dir_ / "nan").string()).has_value());
}

// Finite weights whose steps overflow (an absurd learning rate; the dense preset, as the MoE
// router refuses non-finite logits outright): each non-finite step is skipped and counted, and
// the run stops after max_bad_steps, without a checkpoint.
TEST_F(Trainer, NonFiniteLossSkipsStepsThenStops) {
  try {
    train::run_train(
        config("nan", {"model.preset=\"tiny\"", "training.lr=1e30", "training.min_lr=1e30",
                       "training.warmup_steps=0", "training.weight_decay=0",
                       "training.max_bad_steps=2", "training.save_every=0"}),
        false);
    FAIL() << "no error";
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_bad_steps"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(train::latest_complete_checkpoint((dir_ / "nan").string()).has_value());
}

// A step that turns the weights infinite (learning rate beyond float's range): the skipped steps
// stay within max_bad_steps, but the final save refuses to write them and the run fails.
TEST_F(Trainer, NonFiniteWeightsAreNeverSaved) {
  dt_test::expect_error(
      [&] {
        train::run_train(
            config("inf", {"model.preset=\"tiny\"", "training.lr=1e39", "training.min_lr=1e39",
                           "training.warmup_steps=0", "training.max_bad_steps=100",
                           "training.save_every=0", "training.steps=3"}),
            false);
      },
      {"step 3", "non-finite", "no checkpoint written"});
  EXPECT_FALSE(train::latest_complete_checkpoint((dir_ / "inf").string()).has_value());
}

// A fresh run never silently deletes an earlier run's checkpoints: refused, unless --overwrite,
// which removes them only after its own first checkpoint (a fresh run that fails first keeps
// them all).
TEST_F(Trainer, FreshRunRefusesEarlierCheckpointsUnlessOverwrite) {
  train::run_train(config("r"), false);
  const fs::path out = dir_ / "r";
  const auto before = dt_test::dir_entries(out);
  dt_test::expect_error([&] { train::run_train(config("r"), false); },
                        {out.string(), "2 checkpoint(s)", "--resume", "--overwrite"});
  EXPECT_EQ(dt_test::dir_entries(out), before);
  // A fresh --overwrite run that fails before its first save leaves the earlier checkpoints.
  EXPECT_THROW(
      train::run_train(config("r", {"data.train=\"" + (dir_ / "nope.jsonl").string() + "\""}),
                       false, true),
      core::Error);
  EXPECT_TRUE(fs::exists(out / train::checkpoint_dir_name(6)));
  EXPECT_TRUE(fs::exists(out / train::checkpoint_dir_name(3)));
  // One that saves replaces them.
  EXPECT_EQ(train::run_train(config("r", {"training.steps=2"}), false, true).steps_done, 2);
  const auto all = train::complete_checkpoints(out.string());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].step, 2);
}

// model.path inside a checkpoint directory of out_dir: refused (that directory would be replaced
// or pruned), and the checkpoint is left alone.
TEST_F(Trainer, ModelPathInsideOutDirCheckpointIsRefused) {
  train::run_train(config("r", {"training.steps=3"}), false);
  const fs::path ck = dir_ / "r" / train::checkpoint_dir_name(3);
  for (bool overwrite : {false, true})
    dt_test::expect_error(
        [&] {
          train::run_train(config("r", {"model.preset=\"\"", "model.path=\"" + ck.string() + "\""}),
                           false, overwrite);
        },
        {"model.path", ck.string(), "training.out_dir"});
  EXPECT_TRUE(fs::exists(ck / "model.safetensors"));
  EXPECT_TRUE(fs::exists(ck / train::kCompleteMarker));
}

// Two runs on one out_dir: the second is refused naming the holder's pid, and does not touch
// the first one's temporaries; leftovers of a dead run are removed by the next run that holds
// the lock.
TEST_F(Trainer, OutDirLockAndStaleTemporaries) {
  const fs::path out = dir_ / "r";
  fs::create_directories(out / ".tmp-checkpoint-3-999999999");
  fs::create_directories(out / "..tmp-checkpoint-3-999999999.tmp-999999999");
  {
    const train::OutDirLock held(out.string());
    dt_test::expect_error([&] { train::run_train(config("r", {"training.steps=2"}), false); },
                          {out.string(), "in use", "pid " + std::to_string(::getpid())});
    EXPECT_TRUE(fs::exists(out / ".tmp-checkpoint-3-999999999"));
  }
  EXPECT_EQ(train::run_train(config("r", {"training.steps=2"}), false).steps_done, 2);
  EXPECT_FALSE(fs::exists(out / ".tmp-checkpoint-3-999999999"));
  EXPECT_FALSE(fs::exists(out / "..tmp-checkpoint-3-999999999.tmp-999999999"));
}

// --resume refuses a run that is not the checkpoint's (another preset, data file or batch
// shape), naming the setting and both values; a finished run resumed has nothing to do and
// reports the checkpoint's last loss; a checkpoint whose trainer_state.json step disagrees with
// its directory name is an error naming the file.
TEST_F(Trainer, ResumeChecksTheRunItContinues) {
  train::run_train(config("r"), false);
  dt_test::expect_error([&] { train::run_train(config("r", {"model.preset=\"tiny\""}), true); },
                        {"trainer_state.json", "model.preset", "\"tiny-moe\"", "\"tiny\""});
  const fs::path other = dir_ / "other.jsonl";
  fs::copy_file(kExamples / "addition" / "eval.jsonl", other);
  dt_test::expect_error(
      [&] { train::run_train(config("r", {"data.train=\"" + other.string() + "\""}), true); },
      {"data.train", "other.jsonl", "train.jsonl"});
  dt_test::expect_error(
      [&] { train::run_train(config("r", {"training.micro_batch_tokens=512"}), true); },
      {"training.micro_batch_tokens", "256", "512"});

  const auto done = train::run_train(config("r"), true);
  EXPECT_TRUE(done.nothing_to_do);
  EXPECT_EQ(done.steps_done, 6);
  EXPECT_EQ(done.final_loss, losses(dir_ / "r" / "metrics.jsonl").back());

  fs::copy(dir_ / "r" / train::checkpoint_dir_name(6), dir_ / "r" / train::checkpoint_dir_name(9),
           fs::copy_options::recursive);
  dt_test::expect_error([&] { train::run_train(config("r", {"training.steps=12"}), true); },
                        {train::checkpoint_dir_name(9), "trainer_state.json", "step 6", "step 9"});
}

// SIGINT finishes the running step, saves a checkpoint for it and exits with 130; --resume
// continues from there.
TEST_F(Trainer, SigintSavesAndResumeContinues) {
  const fs::path cfg = kExamples / "addition" / "train_moe.toml";
  const std::string common = " --training.out_dir=" + (dir_ / "run").string() +
                             " --data.cache_dir=" + (dir_ / "cache").string() +
                             " --training.micro_batch_tokens=256 --training.eval_every=0"
                             " --training.warmup_steps=1 --training.save_every=0";
  const std::string cmd = "exec " + std::string(DT_BINARY) + " train " + cfg.string() + common +
                          " --training.steps=100000 2> " + (dir_ / "log1").string();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait until two steps are logged, then interrupt.
  const auto t0 = std::chrono::steady_clock::now();
  while (losses(dir_ / "run" / "metrics.jsonl").size() < 2 &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(pid, SIGINT);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << read_file(dir_ / "log1");
  EXPECT_EQ(WEXITSTATUS(status), 130) << read_file(dir_ / "log1");
  const int64_t done = static_cast<int64_t>(losses(dir_ / "run" / "metrics.jsonl").size());
  ASSERT_GE(done, 2);
  auto latest = train::latest_complete_checkpoint((dir_ / "run").string());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(fs::path(*latest).filename().string(), train::checkpoint_dir_name(done));

  const std::string resume = std::string(DT_BINARY) + " train " + cfg.string() + common +
                             " --resume --training.steps=" + std::to_string(done + 2) + " 2> " +
                             (dir_ / "log2").string();
  ASSERT_EQ(std::system(resume.c_str()), 0) << read_file(dir_ / "log2");
  EXPECT_NE(read_file(dir_ / "log2").find("resumed from"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir_ / "run" / train::checkpoint_dir_name(done + 2)));
}

// Bad data lines: an error naming file:line, or with skip_bad_lines counted and skipped;
// over-long samples: an error naming the sample unless truncate.
TEST_F(Trainer, BadDataLinesAndOverLongSamples) {
  const fs::path data = dir_ / "bad.jsonl";
  {
    std::ofstream out(data);
    for (int i = 0; i < 20; ++i)
      out << R"({"messages": [{"role": "user", "content": "What is 01 + 02?"}, )"
          << R"({"role": "assistant", "content": "003"}]})"
          << "\n";
    out << R"({"messages": [{"role": "user", "content": "no assistant"}]})"
        << "\n";
    out << R"({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "conte)"
        << "\n";
  }
  const std::string train = "data.train=\"" + data.string() + "\"";
  const std::string noeval = "data.eval=\"\"";
  try {
    train::run_train(config("a", {train, noeval}), false);
    FAIL() << "no error";
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:22"), std::string::npos) << e.what();
  }
  const auto r = train::run_train(config("b", {train, noeval, "data.skip_bad_lines=true"}), false);
  EXPECT_EQ(r.steps_done, 6);
  {
    std::ofstream out(data, std::ios::app);
    out << R"({"text": ")" << std::string(400, 'a') << R"("})"
        << "\n";
  }
  try {
    train::run_train(
        config("c", {train, noeval, "data.skip_bad_lines=true", "data.format=\"auto\""}), false);
    FAIL() << "no error for an over-long sample";
  } catch (const core::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bad.jsonl:23"), std::string::npos) << e.what();
  }
  ::testing::internal::CaptureStderr();
  const auto d = train::run_train(config("d", {train, noeval, "data.skip_bad_lines=true",
                                               "data.format=\"auto\"", "data.truncate=true"}),
                                  false);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(d.steps_done, 6);
  // Truncated samples are counted in the data summary.
  EXPECT_NE(log.find("truncated 1 of 21 training samples to micro_batch_tokens = 256"),
            std::string::npos)
      << log;
}

}  // namespace
