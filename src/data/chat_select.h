// Choosing the chat format of a run: named in the config, or recognised from the checkpoint's own
// template (chat_template.jinja, or "chat_template" in tokenizer_config.json).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/formats.h"

namespace deltatron::data {

struct ChatChoice {
  bool found = false;
  ChatFormat format = ChatFormat::chatml;
  bool training_variant = false;  // TRL's *_training template (ChatOptions::training_variant)
  std::string source;             // where it came from, for the start-up line
  std::string missing;            // when !found: the error a chat line gets

  // "qwen3_5 (training variant) (<source>)", for the start-up line.
  std::string describe() const;
};

// name: "auto" or a name parse_chat_format accepts (anything else throws, listing the names).
// "auto" looks in each of `dirs` in order for chat_template.jinja, then tokenizer_config.json's
// "chat_template" (a string, or a list of {name, template} whose "default" is used); a template
// that is none of the known formats throws, naming the file and how to choose a format. With no
// template anywhere, found = false and `missing` says how to choose one.
ChatChoice choose_chat_format(const std::string& name, const std::vector<std::string>& dirs);

// Sets opt.format and opt.training_variant.
void apply_chat_choice(const ChatChoice& c, ChatOptions& opt);

// "assistant" | "last_assistant" | "all"; false for anything else (the caller names its setting).
bool parse_loss_on(const std::string& name, LossOn& out);

// The chat settings of a run, as `train` (data.*) and `render` (--*) take them.
struct ChatSettings {
  std::string chat_template = "auto";  // as choose_chat_format's name
  std::optional<bool> enable_thinking, preserve_thinking;
  std::string reasoning_effort;  // "" = unset
  bool special_tokens_in_content = false;
};

// Chooses the format (choose_chat_format over dirs) and sets f.chat's format and template
// variables, or, when no template was found, f.no_chat_template. Returns the choice.
ChatChoice configure_chat(const ChatSettings& s, const std::vector<std::string>& dirs,
                          FormatOptions& f);

}  // namespace deltatron::data
