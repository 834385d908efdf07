// ChatML rendering (Qwen flavour) of chat messages into a TokenPlan with per-run loss flags.
#include "data/chat_template.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
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

ChatSpecials ChatSpecials::from(const Tokenizer& tok) {
  ChatSpecials sp;
  auto need = [&](const char* s) {
    std::optional<int32_t> id = tok.token_to_id(s);
    DT_CHECK(id.has_value(), "chat template: the tokenizer has no ", s, " token");
    return *id;
  };
  sp.im_start = need("<|im_start|>");
  sp.im_end = need("<|im_end|>");
  sp.think_open = tok.token_to_id("<think>");
  sp.think_close = tok.token_to_id("</think>");
  sp.tool_response_open = tok.token_to_id("<tool_response>");
  sp.tool_response_close = tok.token_to_id("</tool_response>");
  return sp;
}

namespace {

enum class Role { system, user, assistant, tool };

// Python's str.strip/lstrip/rstrip('\n').
std::string lstrip_nl(const std::string& s) {
  size_t b = s.find_first_not_of('\n');
  return b == std::string::npos ? std::string() : s.substr(b);
}
std::string rstrip_nl(const std::string& s) {
  size_t e = s.find_last_not_of('\n');
  return e == std::string::npos ? std::string() : s.substr(0, e + 1);
}
std::string strip_nl(const std::string& s) { return lstrip_nl(rstrip_nl(s)); }

bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// A tag token (<think>, <tool_response>, ...): its id when the tokenizer has one, else its text.
void add_tag(TokenPlan& plan, const std::optional<int32_t>& id, const char* text, bool train) {
  if (id)
    plan.add_id(*id, train);
  else
    plan.add_text(text, train);
}

struct Message {
  Role role;
  std::string content;
  std::optional<std::string> reasoning;  // "reasoning_content"
};

}  // namespace

RenderedChat render_chat(const nlohmann::json& messages, const ChatOptions& opt,
                         const ChatSpecials& sp) {
  RenderedChat out;
  auto error = [&](size_t i, const std::string& what) {
    out.status = ChatStatus::error;
    out.error = "messages[" + std::to_string(i) + "]: " + what;
    return out;
  };
  if (!messages.is_array()) {
    out.status = ChatStatus::error;
    out.error = "\"messages\" must be an array";
    return out;
  }
  if (messages.empty()) {
    out.status = ChatStatus::empty;
    return out;
  }

  // Validate everything first: structural errors win over reasons to skip.
  std::vector<Message> msgs;
  bool non_string_content = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    const nlohmann::json& m = messages[i];
    if (!m.is_object()) return error(i, "expected an object");
    auto r = m.find("role");
    if (r == m.end() || !r->is_string()) return error(i, "missing or non-string \"role\"");
    const std::string& role = r->get_ref<const std::string&>();
    Message msg;
    if (role == "system")
      msg.role = Role::system;
    else if (role == "user")
      msg.role = Role::user;
    else if (role == "assistant")
      msg.role = Role::assistant;
    else if (role == "tool")
      msg.role = Role::tool;
    else
      return error(i, "unknown role \"" + role + "\" (expected system, user, assistant or tool)");
    auto tc = m.find("tool_calls");
    if (tc != m.end() && !tc->is_null() && !(tc->is_array() && tc->empty()))
      return error(i, "\"tool_calls\" is not supported (write the call into \"content\")");
    auto rc = m.find("reasoning_content");
    if (rc != m.end() && !rc->is_null()) {
      if (!rc->is_string()) return error(i, "\"reasoning_content\" must be a string");
      msg.reasoning = rc->get<std::string>();
    }
    auto c = m.find("content");
    if (c == m.end() || !c->is_string())
      non_string_content = true;
    else
      msg.content = c->get<std::string>();
    msgs.push_back(std::move(msg));
  }
  if (non_string_content) {
    out.status = ChatStatus::non_string_content;
    return out;
  }

  const int64_t n = static_cast<int64_t>(msgs.size());
  int64_t last_assistant = -1;
  for (int64_t i = 0; i < n; ++i)
    if (msgs[i].role == Role::assistant) last_assistant = i;
  // Qwen3 template: the last user message that is not a wrapped tool response.
  int64_t last_query = n - 1;
  for (int64_t i = n - 1; i >= 0; --i) {
    const Message& m = msgs[i];
    if (m.role == Role::user &&
        !(starts_with(m.content, "<tool_response>") && ends_with(m.content, "</tool_response>"))) {
      last_query = i;
      break;
    }
  }

  const bool all = opt.loss_on == LossOn::all;
  TokenPlan& plan = out.plan;
  for (int64_t i = 0; i < n; ++i) {
    const Message& m = msgs[i];
    switch (m.role) {
      case Role::system:
      case Role::user:
        plan.add_id(sp.im_start, all);
        plan.add_text(m.role == Role::system ? "system\n" : "user\n", all);
        plan.add_text(m.content, all);
        plan.add_id(sp.im_end, all);
        plan.add_text("\n", all);
        break;
      case Role::tool: {
        const bool first = i == 0 || msgs[i - 1].role != Role::tool;
        const bool last = i == n - 1 || msgs[i + 1].role != Role::tool;
        if (first) {
          plan.add_id(sp.im_start, all);
          plan.add_text("user", all);
        }
        plan.add_text("\n", all);
        add_tag(plan, sp.tool_response_open, "<tool_response>", all);
        plan.add_text("\n" + m.content + "\n", all);
        add_tag(plan, sp.tool_response_close, "</tool_response>", all);
        if (last) {
          plan.add_id(sp.im_end, all);
          plan.add_text("\n", all);
        }
        break;
      }
      case Role::assistant: {
        const bool train = all || opt.loss_on == LossOn::assistant || i == last_assistant;
        std::string content = m.content;
        std::optional<std::string> reasoning;  // rendered as a think block when set
        if (opt.think == Think::verbatim) {
          if (m.reasoning) reasoning = strip_nl(*m.reasoning);
        } else {
          std::string r;
          if (m.reasoning) {
            r = *m.reasoning;
          } else if (size_t close = content.find("</think>"); close != std::string::npos) {
            std::string before = rstrip_nl(content.substr(0, close));
            size_t open = before.rfind("<think>");
            r = lstrip_nl(open == std::string::npos ? before : before.substr(open + 7));
            content = lstrip_nl(content.substr(content.rfind("</think>") + 8));
          }
          if (i > last_query && (i == n - 1 || !r.empty())) {
            reasoning = strip_nl(r);
            content = lstrip_nl(content);
          }
        }
        plan.add_id(sp.im_start, all);
        plan.add_text("assistant\n", all);
        if (reasoning) {
          add_tag(plan, sp.think_open, "<think>", train);
          plan.add_text("\n" + *reasoning + "\n", train);
          add_tag(plan, sp.think_close, "</think>", train);
          plan.add_text("\n\n", train);
        }
        plan.add_text(content, train);
        plan.add_id(sp.im_end, train);
        plan.add_text("\n", all);
        break;
      }
    }
  }
  return out;
}

}  // namespace deltatron::data
