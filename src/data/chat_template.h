// Chat templates: renders {"messages": [...], "tools": [...]} exactly as the Qwen checkpoints' own
// Jinja templates do (same text, same ids, same assistant mask as Hugging Face), into a token plan.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/py_format.h"

namespace deltatron::data {

class Tokenizer;

// A sample before tokenisation: an ordered list of parts, each either one token id (an added
// token) or a text piece. A text piece is a list of runs that are encoded TOGETHER (as Hugging
// Face does for the text between two added tokens, so merges across a run boundary are the same
// as HF's); each run says whether its tokens are trained. A token that straddles a run boundary
// is trained when either run is (HF's assistant mask marks every token overlapping a trained
// character span).
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
  assistant,       // every assistant turn: what TRL's *_training templates put in {% generation %}:
                   // everything after "<|im_start|>assistant\n" up to and including "<|im_end|>\n"
  last_assistant,  // the same, for the last assistant turn only
  all,             // every token of the rendered conversation
};

// The chat formats deltatron renders. Each is a transcription of one Jinja template.
enum class ChatFormat {
  chatml,   // plain ChatML "<|im_start|>{role}\n{content}<|im_end|>\n" (no thinking, no tools);
            // for models trained from scratch on it (the bundled example)
  qwen3,    // Qwen3's chat_template (trl/chat_templates/qwen3.jinja)
  qwen3_5,  // Qwen3.5's (qwen3_5_think.jinja / qwen3_5_nothink.jinja: identical for training)
  qwen3_6,  // Qwen3.6's (qwen3_6.jinja)
  qwen3_8,  // Qwen3.8's (qwen3_8.jinja)
};

struct ChatOptions {
  LossOn loss_on = LossOn::assistant;
  ChatFormat format = ChatFormat::chatml;
  // TRL's *_training variant of the template: a think block on every assistant turn (earlier
  // turns keep their reasoning), so that each conversation prefix renders as a prefix.
  bool training_variant = false;
  // Template variables (unset = undefined in Jinja). A row's "chat_template_kwargs" object
  // overrides them. Each template reads only its own: enable_thinking (qwen3_8's system text;
  // elsewhere only the generation prompt, which training never renders), preserve_thinking
  // (qwen3_6, qwen3_8), reasoning_effort (qwen3_8).
  std::optional<bool> enable_thinking;
  std::optional<bool> preserve_thinking;
  std::optional<std::string> reasoning_effort;  // qwen3_8: xhigh | medium | low
  // Text of special tokens (e.g. "<|im_start|>") typed inside content, reasoning, tools or tool
  // calls: false = plain text (a dataset cannot inject control tokens); true = the token, as HF
  // tokenises the rendered string. Non-special added tokens ("<think>", "<tool_call>") are
  // tokens either way, as HF and the model at inference produce them.
  bool special_tokens_in_content = false;
};

// Every option that changes a rendering, as text (for dataset cache keys).
std::string chat_options_key(const ChatOptions& opt);

// "chatml" | "qwen3" | "qwen3_5" | "qwen3_6" | "qwen3_8" and the names of TRL's files
// ("qwen3_5_think", "qwen3_5_nothink", "qwen3_training", ...; a *_training name sets
// training_variant). Returns false for an unknown name.
bool parse_chat_format(const std::string& name, ChatFormat& format, bool& training_variant);
const char* chat_format_name(ChatFormat f);
// The list of names parse_chat_format accepts, for error messages.
const char* chat_format_names();

// Recognises a Jinja chat template's text as one of the formats (by its distinctive lines);
// nullopt when it is none of them.
std::optional<ChatFormat> detect_chat_format(const std::string& jinja, bool& training_variant);

// One piece of the rendered conversation. `user` text comes from the data (content, reasoning,
// tool names and arguments, tools): special tokens inside it stay text unless
// special_tokens_in_content.
struct ChatSegment {
  std::string text;
  bool user = false;
  bool train = false;
};

struct RenderedChat {
  bool ok = true;
  bool empty = false;  // "messages" is an empty array (a skip, not an error)
  std::string error;   // when !ok: e.g. "messages[2]: System message must be at the beginning."
  std::vector<ChatSegment> segments;
  std::string text() const;  // the rendered string (what HF's apply_chat_template returns)
};

// Renders one JSONL row (the object holding "messages" and optionally "tools" and
// "chat_template_kwargs"). Refuses what the template refuses (with its message), plus what it
// would silently render wrongly (unknown roles, images before vision support, non-string tool
// names).
RenderedChat render_chat(const OrderedJson& row, const ChatOptions& opt);

// Splits the segments on the tokenizer's added tokens (special ones only in template text unless
// special_tokens_in_content) into a token plan.
TokenPlan chat_token_plan(const std::vector<ChatSegment>& segments, const Tokenizer& tok,
                          bool special_tokens_in_content);

}  // namespace deltatron::data
