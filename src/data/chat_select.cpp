// Chat format selection from the config or the checkpoint's template files.
#include "data/chat_select.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"

namespace deltatron::data {

namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  DT_CHECK(in.good(), p.string(), ": cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The template text of tokenizer_config.json, or "" when it has none.
std::string config_template(const fs::path& p) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file(p));
  } catch (const nlohmann::json::exception& e) {
    core::fail(p.string(), ": malformed JSON (", e.what(), ")");
  }
  auto t = j.find("chat_template");
  if (t == j.end() || t->is_null()) return "";
  if (t->is_string()) return t->get<std::string>();
  if (t->is_array())
    for (const auto& e : *t)
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string())
        return e["template"].get<std::string>();
  core::fail(p.string(), ": \"chat_template\" is neither a string nor a list with a \"default\"");
}

}  // namespace

ChatChoice choose_chat_format(const std::string& name, const std::vector<std::string>& dirs) {
  ChatChoice c;
  if (name != "auto") {
    DT_CHECK(parse_chat_format(name, c.format, c.training_variant), "data.chat_template: unknown ",
             "format '", name, "'; known: auto (the checkpoint's template), ", chat_format_names());
    c.found = true;
    c.source = "named \"" + name + "\" in the settings";
    return c;
  }
  for (const std::string& d : dirs) {
    if (d.empty()) continue;
    std::string text, file;
    if (const fs::path j = fs::path(d) / "chat_template.jinja"; fs::is_regular_file(j)) {
      text = read_file(j);
      file = j.string();
    } else if (const fs::path t = fs::path(d) / "tokenizer_config.json"; fs::is_regular_file(t)) {
      text = config_template(t);
      file = t.string() + " (chat_template)";
    }
    if (text.empty()) continue;
    const std::optional<ChatFormat> f = detect_chat_format(text, c.training_variant);
    DT_CHECK(f.has_value(), file, ": this chat template is not one deltatron renders exactly (it ",
             "knows the Qwen3, Qwen3.5, 3.6 and 3.8 templates); name the format the data should ",
             "get with data.chat_template (render: --chat-template) = ", chat_format_names());
    c.found = true;
    c.format = *f;
    c.source = file;
    return c;
  }
  std::string where;
  for (const std::string& d : dirs)
    if (!d.empty()) where += (where.empty() ? "" : ", ") + d;
  c.missing = "chat data needs a chat template, and " + (where.empty() ? "no checkpoint" : where) +
              " has none (no chat_template.jinja or tokenizer_config.json \"chat_template\"); set "
              "data.chat_template (render: --chat-template) = " +
              chat_format_names();
  return c;
}

void apply_chat_choice(const ChatChoice& c, ChatOptions& opt) {
  opt.format = c.format;
  opt.training_variant = c.training_variant;
}

std::string ChatChoice::describe() const {
  return std::string(chat_format_name(format)) + (training_variant ? " (training variant)" : "") +
         " (" + source + ")";
}

bool parse_loss_on(const std::string& name, LossOn& out) {
  if (name == "assistant")
    out = LossOn::assistant;
  else if (name == "last_assistant")
    out = LossOn::last_assistant;
  else if (name == "all")
    out = LossOn::all;
  else
    return false;
  return true;
}

ChatChoice configure_chat(const ChatSettings& s, const std::vector<std::string>& dirs,
                          FormatOptions& f) {
  f.chat.enable_thinking = s.enable_thinking;
  f.chat.preserve_thinking = s.preserve_thinking;
  if (!s.reasoning_effort.empty()) f.chat.reasoning_effort = s.reasoning_effort;
  f.chat.special_tokens_in_content = s.special_tokens_in_content;
  const ChatChoice c = choose_chat_format(s.chat_template, dirs);
  if (c.found)
    apply_chat_choice(c, f.chat);
  else
    f.no_chat_template = c.missing;
  return c;
}

}  // namespace deltatron::data
