// The overrides of a short run of the bundled example (6 steps of 2 x 256-token micro-batches,
// saved every 3 steps, no evaluation), written into dir/out with its data cache in dir/cache:
// the trainer and resume tests' common run.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"
#include "train/checkpoint_dir.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace dt_test {

// The repository's examples: $DT_TEST_DATA_DIR/../../examples on the GPU machine, where the
// repository lives elsewhere.
inline std::filesystem::path examples_dir() {
  if (const char* e = std::getenv("DT_TEST_DATA_DIR"); e && *e)
    return std::filesystem::path(e) / ".." / ".." / "examples";
  return std::filesystem::path(DT_TEST_DATA) / ".." / ".." / "examples";
}

// The first n rows of a chat file of the bundled examples (e.g. examples/vision/train.jsonl)
// written to `to`, the image paths of its first message made absolute (the rows are read from a
// temporary directory).
inline void write_example_rows(const std::filesystem::path& from, const std::filesystem::path& to,
                               int n) {
  const std::filesystem::path base = from.parent_path();
  std::istringstream in(read_file(from));
  std::ofstream out(to);
  int k = 0;
  for (std::string line; k < n && std::getline(in, line); ++k) {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(line);
    for (auto& part : j["messages"][0]["content"])
      if (part["type"] == "image")
        part["image"] = (base / part["image"].get<std::string>()).lexically_normal().string();
    out << j.dump() << "\n";
  }
}

// The "loss" of every step record of a run's metrics.jsonl, in order.
inline std::vector<double> metric_losses(const std::filesystem::path& metrics) {
  std::vector<double> out;
  std::istringstream in(read_file(metrics));
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

inline std::vector<std::string> short_run_overrides(const std::filesystem::path& dir,
                                                    const std::string& out) {
  return {"training.out_dir=\"" + (dir / out).string() + "\"",
          "training.steps=6",
          "training.warmup_steps=2",
          "training.micro_batch_tokens=256",
          "training.grad_accum=2",
          "training.save_every=3",
          "training.keep_last=5",
          "training.eval_every=0",
          "data.cache_dir=\"" + (dir / "cache").string() + "\""};
}

// The resume check's two runs: the short run into dir/straight, and again into dir/resumed, whose
// last checkpoint (step 6) is then dropped and resumed from step 3. Returns the step losses of
// both metrics.jsonl (6, and 6 + 3: steps 4-6 are logged twice).
template <typename MakeConfig>
std::pair<std::vector<double>, std::vector<double>> straight_and_resumed(
    const std::filesystem::path& dir, const MakeConfig& config) {
  namespace train = deltatron::train;
  train::run_train(config(dir, "straight"), false);
  train::run_train(config(dir, "resumed"), false);
  std::filesystem::remove_all(dir / "resumed" / train::checkpoint_dir_name(6));
  train::run_train(config(dir, "resumed"), true);
  return {metric_losses(dir / "straight" / "metrics.jsonl"),
          metric_losses(dir / "resumed" / "metrics.jsonl")};
}

// The same with `steps` steps, resumed from step `from` (the run must save there).
template <typename MakeConfig>
std::pair<std::vector<double>, std::vector<double>> straight_and_resumed_at(
    const std::filesystem::path& dir, const MakeConfig& config, int64_t steps, int64_t from) {
  namespace train = deltatron::train;
  train::run_train(config(dir, "straight"), false);
  train::run_train(config(dir, "resumed"), false);
  for (int64_t s = from + 1; s <= steps; ++s)
    std::filesystem::remove_all(dir / "resumed" / train::checkpoint_dir_name(s));
  train::run_train(config(dir, "resumed"), true);
  return {metric_losses(dir / "straight" / "metrics.jsonl"),
          metric_losses(dir / "resumed" / "metrics.jsonl")};
}

}  // namespace dt_test
