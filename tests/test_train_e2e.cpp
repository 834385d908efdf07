// End to end: the README's training command (the bundled addition example) from scratch.
// Stated threshold: after its 600-step budget the held-out loss is below 0.8
// and the loss has fallen from the start (measured: held-out loss 0.58, accuracy 20%).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace fs = std::filesystem;

TEST(EndToEnd, BundledAdditionExampleLearns) {
  const fs::path examples = fs::path(DT_TEST_DATA) / ".." / ".." / "examples";
  const fs::path out = fs::temp_directory_path() / ("dt_e2e_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const std::string cmd =
      std::string(DT_BINARY) + " train " + (examples / "addition" / "train.toml").string() +
      " --training.out_dir=" + (out / "run").string() +
      " --data.cache_dir=" + (out / "cache").string() + " 2> " + (out.string() + ".log");
  const int rc = std::system(cmd.c_str());
  std::ifstream log_in(out.string() + ".log");
  std::stringstream log;
  log << log_in.rdbuf();
  ASSERT_EQ(WEXITSTATUS(rc), 0) << log.str();

  std::vector<double> loss;
  double eval_loss = -1, eval_acc = -1;
  std::ifstream metrics(out / "run" / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) loss.push_back(j["loss"]);
    if (j.contains("eval_loss")) eval_loss = j["eval_loss"], eval_acc = j["eval_accuracy"];
  }
  ASSERT_EQ(loss.size(), 600u);
  EXPECT_GT(loss.front(), 3.0) << "an untrained model should be near log(264) = 5.6";
  EXPECT_LT(eval_loss, 0.8) << log.str();
  EXPECT_GE(eval_acc, 0.0);
  std::printf("e2e: first loss %.3f, last loss %.3f, held-out loss %.3f, accuracy %.1f%%\n",
              loss.front(), loss.back(), eval_loss, 100 * eval_acc);
  EXPECT_TRUE(fs::exists(out / "run" / "checkpoint-00000600" / "model.safetensors"));
  fs::remove_all(out);
  fs::remove(out.string() + ".log");
}
