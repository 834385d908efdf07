// Chat rendering common to every format: token plans, format names and detection, the row parser,
// the output builder, plain ChatML, and the split of rendered segments on added tokens.
#include "data/chat_template.h"

#include "core/error.h"
#include "data/chat_render.h"
#include "data/tokenizer.h"

namespace deltatron::data {

void TokenPlan::add_id(int32_t id, bool train) {
  Part p;
  p.id = id;
  p.train = train;
  parts.push_back(std::move(p));
}

void TokenPlan::add_text(std::string text, bool train) {
  if (text.empty()) return;
  if (parts.empty() || parts.back().id >= 0) parts.emplace_back();
  auto& runs = parts.back().runs;
  if (!runs.empty() && runs.back().train == train)
    runs.back().text += text;
  else
    runs.push_back(TokenPlan::Run{std::move(text), train});
}

namespace {

struct FormatName {
  const char* name;
  ChatFormat format;
  bool training;
};
constexpr FormatName kFormatNames[] = {
    {"chatml", ChatFormat::chatml, false},
    {"qwen3", ChatFormat::qwen3, false},
    {"qwen3_training", ChatFormat::qwen3, true},
    {"qwen3_5", ChatFormat::qwen3_5, false},
    {"qwen3_5_think", ChatFormat::qwen3_5, false},
    {"qwen3_5_nothink", ChatFormat::qwen3_5, false},
    {"qwen3_5_training", ChatFormat::qwen3_5, true},
    {"qwen3_5_think_training", ChatFormat::qwen3_5, true},
    {"qwen3_5_nothink_training", ChatFormat::qwen3_5, true},
    {"qwen3_6", ChatFormat::qwen3_6, false},
    {"qwen3_6_training", ChatFormat::qwen3_6, true},
    {"qwen3_8", ChatFormat::qwen3_8, false},
    {"qwen3_8_training", ChatFormat::qwen3_8, true},
};

bool contains(const std::string& s, const char* p) { return s.find(p) != std::string::npos; }

}  // namespace

bool parse_chat_format(const std::string& name, ChatFormat& format, bool& training_variant) {
  for (const FormatName& f : kFormatNames)
    if (name == f.name) {
      format = f.format;
      training_variant = f.training;
      return true;
    }
  return false;
}

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::chatml:
      return "chatml";
    case ChatFormat::qwen3:
      return "qwen3";
    case ChatFormat::qwen3_5:
      return "qwen3_5";
    case ChatFormat::qwen3_6:
      return "qwen3_6";
    case ChatFormat::qwen3_8:
      return "qwen3_8";
  }
  return "?";
}

const char* chat_format_names() {
  return "chatml, qwen3, qwen3_5 (= qwen3_5_think, qwen3_5_nothink), qwen3_6, qwen3_8, or one of "
         "these with _training (TRL's training variants: a think block on every assistant turn)";
}

std::optional<ChatFormat> detect_chat_format(const std::string& j, bool& training_variant) {
  // Every Qwen3-family template finds the last user query; the formats differ in tool-call syntax
  // (JSON vs XML parameters), in how parameter values print, and in the 3.8 reasoning effort.
  training_variant = contains(j, "generation %}");
  if (!contains(j, "<|im_start|>") || !contains(j, "last_query_index")) return std::nullopt;
  if (contains(j, "render_content")) {
    if (contains(j, "reasoning_effort")) return ChatFormat::qwen3_8;
    if (contains(j, "args_value | string if args_value is string")) return ChatFormat::qwen3_6;
    if (contains(j, "args_value is mapping or")) return ChatFormat::qwen3_5;
    return std::nullopt;
  }
  if (contains(j, "<function-name>") && contains(j, "reasoning_content")) return ChatFormat::qwen3;
  return std::nullopt;
}

std::string chat_options_key(const ChatOptions& o) {
  auto tri = [](const std::optional<bool>& b) { return b ? (*b ? "1" : "0") : "-"; };
  return std::string(chat_format_name(o.format)) + (o.training_variant ? "_training/" : "/") +
         tri(o.enable_thinking) + tri(o.preserve_thinking) + "/" +
         (o.reasoning_effort ? "=" + *o.reasoning_effort : "-") + "/" +
         (o.special_tokens_in_content ? "1" : "0");
}

std::string RenderedChat::text() const {
  std::string s;
  for (const ChatSegment& seg : segments) s += seg.text;
  return s;
}

namespace chat {

void fail(const std::string& what) { throw ChatError(what); }
void fail_at(size_t i, const std::string& what) {
  throw ChatError("messages[" + std::to_string(i) + "]: " + what);
}

void ChatOut::begin_generation(int64_t i) {
  in_generation_ =
      loss_on_ == LossOn::assistant || (loss_on_ == LossOn::last_assistant && i == last_assistant_);
}

void ChatOut::data(const std::string& s) {
  size_t pos = 0;
  for (size_t k; (k = s.find(kImageMark, pos)) != std::string::npos; pos = k + 1) {
    add(s.substr(pos, k - pos), true);
    add(kImagePlaceholder, false);
  }
  add(s.substr(pos), true);
}

void ChatOut::add(const std::string& s, bool user) {
  if (s.empty()) return;
  const bool train = loss_on_ == LossOn::all || in_generation_;
  if (!segs_.empty() && segs_.back().user == user && segs_.back().train == train)
    segs_.back().text += s;
  else
    segs_.push_back(ChatSegment{s, user, train});
}

const OrderedJson* ChatRow::get(size_t i, const char* key) const {
  const OrderedJson& m = msg(i);
  auto it = m.find(key);
  return it == m.end() ? nullptr : &*it;
}

const OrderedJson* ChatRow::tool_calls(size_t i) const {
  const OrderedJson* tc = get(i, "tool_calls");
  if (tc == nullptr || tc->is_null() || (tc->is_array() && tc->empty())) return nullptr;
  if (!tc->is_array()) fail_at(i, "\"tool_calls\" must be an array");
  return tc;
}

bool split_think(std::string& content, std::string& reasoning) {
  const size_t first = content.find("</think>");
  if (first == std::string::npos) return false;
  const std::string before = py_rstrip_char(std::string_view(content).substr(0, first), '\n');
  const size_t open = before.rfind("<think>");
  reasoning = py_lstrip_char(open == std::string::npos ? before : before.substr(open + 7), '\n');
  content = py_lstrip_char(std::string_view(content).substr(content.rfind("</think>") + 8), '\n');
  return true;
}

bool is_tool_response(const std::string& s) {
  static const std::string open = "<tool_response>", close = "</tool_response>";
  return s.size() >= open.size() && s.compare(0, open.size(), open) == 0 &&
         s.size() >= close.size() && s.compare(s.size() - close.size(), close.size(), close) == 0;
}

std::string reasoning_of(const ChatRow& row, size_t i, std::string& content, bool parse_content) {
  std::string reasoning;
  const OrderedJson* rc = row.get(i, "reasoning_content");
  if (rc && rc->is_string())
    reasoning = rc->get<std::string>();
  else if (parse_content)
    split_think(content, reasoning);
  return reasoning;
}

void render_tool_message(const ChatRow& row, size_t i, const std::string& content,
                         bool header_at_start, ChatOut& out) {
  const bool first_of_run = i == 0 ? header_at_start : row.roles[i - 1] != "tool";
  if (first_of_run) out.tmpl("<|im_start|>user");
  out.tmpl("\n<tool_response>\n");
  out.data(content);
  out.tmpl("\n</tool_response>");
  if (i + 1 == row.size() || row.roles[i + 1] != "tool") out.tmpl("<|im_end|>\n");
}

namespace {

void apply_kwargs(const OrderedJson& kw, ChatOptions& opt) {
  if (!kw.is_object()) fail("\"chat_template_kwargs\" must be an object");
  for (auto it = kw.begin(); it != kw.end(); ++it) {
    const std::string& k = it.key();
    if (k == "enable_thinking" || k == "preserve_thinking") {
      if (!it->is_boolean()) fail("chat_template_kwargs." + k + " must be true or false");
      (k == "enable_thinking" ? opt.enable_thinking : opt.preserve_thinking) = it->get<bool>();
    } else if (k == "reasoning_effort") {
      if (!it->is_string()) fail("chat_template_kwargs.reasoning_effort must be a string");
      opt.reasoning_effort = it->get<std::string>();
    } else {
      fail("chat_template_kwargs: unknown key \"" + k +
           "\" (known: enable_thinking, preserve_thinking, reasoning_effort)");
    }
  }
}

ChatRow parse_row(const OrderedJson& row, const ChatOptions& opt) {
  ChatRow r;
  r.opt = opt;
  auto m = row.find("messages");
  if (m == row.end() || !m->is_array()) fail("\"messages\" must be an array");
  r.messages = &*m;
  for (size_t i = 0; i < m->size(); ++i) {
    const OrderedJson& msg = (*m)[i];
    if (!msg.is_object()) fail_at(i, "expected an object");
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string()) fail_at(i, "missing or non-string \"role\"");
    const std::string& name = role->get_ref<const std::string&>();
    if (name != "system" && name != "user" && name != "assistant" && name != "tool")
      fail_at(i, "unknown role \"" + name + "\" (expected system, user, assistant or tool)");
    if (name == "assistant") r.last_assistant = static_cast<int64_t>(i);
    r.roles.push_back(name);
  }
  if (auto t = row.find("tools"); t != row.end() && !t->is_null()) {
    const OrderedJson* tools = &*t;
    if (t->is_string()) {  // some datasets store the list as a JSON string
      try {
        r.tools_parsed = OrderedJson::parse(t->get_ref<const std::string&>());
      } catch (const nlohmann::json::exception&) {
        fail("\"tools\" is a string that is not a JSON list");
      }
      tools = &r.tools_parsed;
    }
    if (!tools->is_array()) fail("\"tools\" must be a list of function schemas");
    if (!tools->empty()) r.tools = tools;
  }
  if (auto kw = row.find("chat_template_kwargs"); kw != row.end() && !kw->is_null())
    apply_kwargs(*kw, r.opt);
  return r;
}

// Plain ChatML: every turn "<|im_start|>{role}\n{content}<|im_end|>\n"; consecutive tool results
// form one user turn of <tool_response> blocks (as the Qwen templates); "reasoning_content"
// becomes "<think>\n{reasoning}\n</think>\n\n" before the content.
void render_chatml(const ChatRow& row, ChatOut& out) {
  const size_t n = row.size();
  if (row.tools) fail("\"tools\" needs a template with tool support (qwen3, qwen3_5, ...)");
  for (size_t i = 0; i < n; ++i) {
    const std::string& role = row.roles[i];
    const OrderedJson* c = row.get(i, "content");
    if (c == nullptr || !c->is_string()) fail_at(i, "\"content\" must be a string");
    const std::string& content = c->get_ref<const std::string&>();
    if (row.tool_calls(i)) fail_at(i, "the chatml format has no tool calls (choose a qwen format)");
    if (role == "tool") {
      render_tool_message(row, i, content, true, out);
      continue;
    }
    out.tmpl("<|im_start|>" + role + "\n");
    if (role != "assistant") {
      out.data(content);
      out.tmpl("<|im_end|>\n");
      continue;
    }
    out.begin_generation(static_cast<int64_t>(i));
    if (const OrderedJson* rc = row.get(i, "reasoning_content"); rc && !rc->is_null()) {
      if (!rc->is_string()) fail_at(i, "\"reasoning_content\" must be a string");
      out.tmpl("<think>\n");
      out.data(py_strip_char(rc->get_ref<const std::string&>(), '\n'));
      out.tmpl("\n</think>\n\n");
    }
    out.data(content);
    out.tmpl("<|im_end|>\n");
    out.end_generation();
  }
}

}  // namespace
}  // namespace chat

RenderedChat render_chat(const OrderedJson& row, const ChatOptions& opt) {
  RenderedChat out;
  try {
    chat::ChatRow r = chat::parse_row(row, opt);
    if (r.size() == 0) {
      out.empty = true;
      return out;
    }
    chat::ChatOut o(opt.loss_on, r.last_assistant);
    switch (opt.format) {
      case ChatFormat::chatml:
        chat::render_chatml(r, o);
        break;
      case ChatFormat::qwen3:
        chat::render_qwen3(r, o);
        break;
      case ChatFormat::qwen3_5:
      case ChatFormat::qwen3_6:
      case ChatFormat::qwen3_8:
        chat::render_qwen35(r, o);
        break;
    }
    out.segments = o.take();
  } catch (const chat::ChatError& e) {
    out.ok = false;
    out.error = e.what();
  }
  return out;
}

TokenPlan chat_token_plan(const std::vector<ChatSegment>& segments, const Tokenizer& tok,
                          bool special_tokens_in_content) {
  TokenPlan plan;
  for (const ChatSegment& seg : segments) {
    for (Tokenizer::AddedPiece& p :
         tok.split_added(seg.text, !seg.user || special_tokens_in_content)) {
      if (p.id >= 0)
        plan.add_id(p.id, seg.train);
      else
        plan.add_text(std::move(p.text), seg.train);
    }
  }
  return plan;
}

}  // namespace deltatron::data
