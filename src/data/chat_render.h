// Internals shared by the chat template renderers (chat_template.cpp, chat_qwen3.cpp,
// chat_qwen35.cpp): the output builder, the parsed row, and the renderers' entry points.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "data/chat_template.h"

namespace deltatron::data::chat {

// A template's raise_exception (or a refusal of ours): the message, with the message index when
// it concerns one.
struct ChatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
[[noreturn]] void fail(const std::string& what);
[[noreturn]] void fail_at(size_t i, const std::string& what);

// An image part in rendered content: one byte that valid UTF-8 (all JSON text) never holds, so it
// survives |trim, the think split and the tool-response test as one non-space character, as the
// template's placeholder does. ChatOut::data writes it as kImagePlaceholder, template text.
constexpr char kImageMark = '\xFF';
inline constexpr const char* kImagePlaceholder = "<|vision_start|><|image_pad|><|vision_end|>";

// The rendered string as segments. Template text and data text are kept apart (data text may not
// inject special tokens); the trained flag is on inside a generation span that the loss covers.
class ChatOut {
 public:
  explicit ChatOut(LossOn loss_on, int64_t last_assistant)
      : loss_on_(loss_on), last_assistant_(last_assistant) {}
  void tmpl(const std::string& s) { add(s, false); }
  void data(const std::string& s);  // kImageMark becomes kImagePlaceholder
  // {% generation %} ... {% endgeneration %} around assistant message i.
  void begin_generation(int64_t i);
  void end_generation() { in_generation_ = false; }
  std::vector<ChatSegment> take() { return std::move(segs_); }

 private:
  void add(const std::string& s, bool user);
  LossOn loss_on_;
  int64_t last_assistant_;
  bool in_generation_ = false;
  std::vector<ChatSegment> segs_;
};

// One JSONL row, checked: every message an object with a known string role.
struct ChatRow {
  const OrderedJson* messages = nullptr;  // non-empty array
  std::vector<std::string> roles;         // per message
  const OrderedJson* tools = nullptr;     // non-empty array, or nullptr
  OrderedJson tools_parsed;               // when "tools" was a JSON string
  ChatOptions opt;                        // with the row's chat_template_kwargs applied
  int64_t last_assistant = -1;

  size_t size() const { return roles.size(); }
  const OrderedJson& msg(size_t i) const { return (*messages)[i]; }
  // The message's key, or nullptr when absent.
  const OrderedJson* get(size_t i, const char* key) const;
  // A non-empty "tool_calls" array of message i, or nullptr (absent, null or empty).
  const OrderedJson* tool_calls(size_t i) const;
};

// Jinja `content.split('</think>')`: reasoning = part before the first "</think>", right-stripped
// of '\n', after its last "<think>", left-stripped of '\n'; content = after the last "</think>",
// left-stripped of '\n'. Returns false (nothing changed) when there is no "</think>".
bool split_think(std::string& content, std::string& reasoning);

// The templates' multi-step-tool test: a user message that is a wrapped tool response.
bool is_tool_response(const std::string& s);

// A message's reasoning: its "reasoning_content" when that is a string, else (when
// parse_content) what split_think takes out of `content`, else "".
std::string reasoning_of(const ChatRow& row, size_t i, std::string& content, bool parse_content);

// Tool message i: consecutive tool messages form one user turn of <tool_response> blocks. The
// turn's "<|im_start|>user" opens before the first of a run (qwen3.5+: not when it is message 0,
// which has no previous item in their templates), "<|im_end|>\n" closes after the last.
void render_tool_message(const ChatRow& row, size_t i, const std::string& content,
                         bool header_at_start, ChatOut& out);

void render_qwen3(const ChatRow& row, ChatOut& out);
void render_qwen35(const ChatRow& row, ChatOut& out);  // qwen3_5, qwen3_6, qwen3_8

}  // namespace deltatron::data::chat
