// `deltatron render` end to end: the checkpoint's template found and applied (ids and mask equal
// to Hugging Face's fixture), and clear errors without a template, with an unknown one, or on a
// bad line.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace fs = std::filesystem;
using dt_test::read_file;
using dt_test::write_file;

namespace {

struct CmdResult {
  int code;
  std::string out, err;
};

class RenderCli : public ::testing::Test {
 protected:
  const dt_test::TempDir tmp_{"render"};
  const fs::path model_ = tmp_.path / "model";

  void SetUp() override {
    fs::create_directories(model_);
    fs::copy_file(DT_QWEN3_TOKENIZER_JSON, model_ / "tokenizer.json");
  }
  void set_template(const std::string& jinja) {
    write_file(
        model_ / "tokenizer_config.json",
        nlohmann::json{{"chat_template", jinja}, {"tokenizer_class", "Qwen2Tokenizer"}}.dump());
  }
  CmdResult render(const std::string& args) {
    const fs::path out = tmp_.path / "out.txt", err = tmp_.path / "err.txt";
    const std::string cmd = std::string(DT_BINARY) + " render --model " + model_.string() + " " +
                            args + " > " + out.string() + " 2> " + err.string();
    const int rc = std::system(cmd.c_str());
    return {WEXITSTATUS(rc), read_file(out), read_file(err)};
  }
};

// Ordered: the row is written back with its keys in their original order (the order tools print).
nlohmann::ordered_json fixture(const std::string& config, int conversation) {
  std::ifstream in(std::string(DT_TEST_DATA) + "/chat/fixtures.jsonl");
  for (std::string line; std::getline(in, line);) {
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(line);
    if (j["config"] == config && j["conversation"] == conversation) return j;
  }
  ADD_FAILURE() << "no fixture " << config << " " << conversation;
  return {};
}

TEST_F(RenderCli, UsesTheCheckpointTemplateLikeHuggingFace) {
  set_template(read_file(fs::path(DT_TEST_DATA) / "chat/qwen3_tokenizer_config_template.jinja"));
  const nlohmann::ordered_json fx = fixture("qwen3", 22);  // tool call, tool result, final answer
  ASSERT_TRUE(fx["ok"].get<bool>());
  write_file(tmp_.path / "data.jsonl", fx["row"].dump() + "\n");
  const CmdResult r = render("--data " + (tmp_.path / "data.jsonl").string() + " --jsonl");
  ASSERT_EQ(r.code, 0) << r.err;
  const nlohmann::ordered_json got = nlohmann::ordered_json::parse(r.out);
  EXPECT_EQ(got["line"], 1);
  EXPECT_EQ(got["text"], fx["text"]);
  EXPECT_EQ(got["input_ids"], fx["input_ids"]);
  EXPECT_EQ(got["assistant_mask"], fx["assistant_mask"]);

  // The human view marks exactly the trained text.
  const CmdResult h = render("--data " + (tmp_.path / "data.jsonl").string() + " --color never");
  ASSERT_EQ(h.code, 0) << h.err;
  EXPECT_NE(h.out.find("# chat format: qwen3"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("<|im_start|>assistant\n[TRAIN]<think>\n\n</think>\n\nIt is 21 °C in "
                       "Paris.<|im_end|>\n[/TRAIN]"),
            std::string::npos)
      << h.out;
}

TEST_F(RenderCli, ClearErrors) {
  write_file(
      tmp_.path / "data.jsonl",
      R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})"
      "\n");
  // No template in the checkpoint: say how to choose one.
  CmdResult r = render("--data " + (tmp_.path / "data.jsonl").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("data.jsonl:1: chat data needs a chat template"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("--chat-template"), std::string::npos) << r.err;
  // Naming one works without a template file.
  r = render("--data " + (tmp_.path / "data.jsonl").string() + " --chat-template qwen3_5 --jsonl");
  EXPECT_EQ(r.code, 0) << r.err;
  // An unknown template is refused, naming the file.
  set_template("{% for m in messages %}{{ m.content }}{% endfor %}");
  r = render("--data " + (tmp_.path / "data.jsonl").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("tokenizer_config.json (chat_template): this chat template is not one"),
            std::string::npos)
      << r.err;
  // A conversation the template refuses: the file, the line and the template's reason.
  write_file(
      tmp_.path / "bad.jsonl",
      R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})"
      "\n"
      R"({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]})"
      "\n");
  r = render("--data " + (tmp_.path / "bad.jsonl").string() + " --chat-template qwen3_6");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("bad.jsonl:2: messages[1]: System message must be at the beginning."),
            std::string::npos)
      << r.err;
}

}  // namespace
