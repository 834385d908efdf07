// Qwen ChatML template: renders {"messages": [...]} into a token plan with a loss mask.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

namespace deltatron::data {

class Tokenizer;

// A sample before tokenisation: an ordered list of parts, each either one token id (a special
// token inserted by the template) or a text piece. A text piece is a list of runs that are
// encoded TOGETHER (as Hugging Face does for the text between two special tokens, so merges across
// a run boundary are the same as HF's); each run says whether its tokens are trained. The token
// boundary of a run is found as the common prefix of encode(piece) and encode(text before the
// run): a token straddling two runs belongs to the later one.
struct TokenPlan {
  struct Run {
    std::string text;
    bool train = false;
  };
  struct Part {
    int32_t id = -1;        // >= 0: this one token; otherwise the text piece `runs`
    bool train = false;     // for id parts
    std::vector<Run> runs;  // for text parts; never empty strings
  };
  std::vector<Part> parts;

  void add_id(int32_t id, bool train);
  // Appends text to the current text piece (starting one after an id part). Empty text is a no-op.
  void add_text(std::string text, bool train);
};

// Which tokens of a conversation are trained (label = token) rather than -100.
enum class LossOn {
  assistant,       // every assistant turn: its body (after "<|im_start|>assistant\n") + <|im_end|>
  last_assistant,  // the same, for the last assistant turn only
  all,             // every token of the rendered conversation
};

// How assistant reasoning is rendered.
enum class Think {
  // Content verbatim (a "<think>" typed in content stays plain text). A message's
  // "reasoning_content" (string), when present, is rendered as
  // "<think>\n{reasoning}\n</think>\n\n{content}" with the tags as token ids.
  verbatim,
  // The shipped Qwen3 chat_template.jinja: reasoning from "reasoning_content" or split off the
  // content at its last "</think>"; assistant turns after the last real user query get a think
  // block (an empty one on the final turn); earlier turns drop their reasoning.
  qwen3,
};

struct ChatOptions {
  LossOn loss_on = LossOn::assistant;
  Think think = Think::verbatim;
};

// Ids the template inserts. im_start/im_end are required; the tag tokens are optional (absent
// from a tokenizer: the tag is rendered as plain text inside the neighbouring text piece).
struct ChatSpecials {
  int32_t im_start = -1, im_end = -1;
  std::optional<int32_t> think_open, think_close, tool_response_open, tool_response_close;

  // Looks the tokens up by their strings ("<|im_start|>", "<think>", "<tool_response>", ...).
  static ChatSpecials from(const Tokenizer& tok);
};

// Outcome of rendering one conversation.
enum class ChatStatus {
  ok,
  empty,               // "messages" is an empty array
  non_string_content,  // a message whose "content" is missing, null, or not a string
  error,               // structural problem (unknown role, wrong types): `error` says what
};

struct RenderedChat {
  ChatStatus status = ChatStatus::ok;
  std::string error;  // for ChatStatus::error: e.g. "messages[2]: unknown role \"bot\""
  TokenPlan plan;
};

// Renders `messages` (the JSON array) with ChatML, each turn
// "<|im_start|>{role}\n{content}<|im_end|>\n", roles system/user/assistant/tool. Tool messages
// follow the Qwen templates: consecutive ones form one user turn
// "<|im_start|>user\n<tool_response>\n{content}\n</tool_response>...<|im_end|>\n".
// Loss (LossOn::assistant / last_assistant): the assistant body tokens (content, and the think
// block when rendered) plus the closing <|im_end|>. The "\n" after <|im_end|> is NOT trained: at
// inference <|im_end|> stops generation, so the newline is never predicted by the model (the same
// choice as TRL's assistant masks and Qwen's {% generation %} blocks).
// "tool_calls" on a message is rejected (its rendering differs between Qwen3 and Qwen3.5; put the
// call in the content instead).
RenderedChat render_chat(const nlohmann::json& messages, const ChatOptions& opt,
                         const ChatSpecials& sp);

}  // namespace deltatron::data
