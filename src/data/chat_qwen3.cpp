// The Qwen3 chat format: a transcription of Qwen3's chat_template.jinja (JSON tool calls, think
// blocks after the last user query) and of TRL's qwen3_training.jinja (training_variant).
#include <string>

#include "data/chat_render.h"

namespace deltatron::data::chat {

namespace {

const char* const kToolsHeader =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\n<tools>";
const char* const kToolsFooter =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

// The template prints `message.content` when it is a string and '' otherwise. A list or object
// would silently render as nothing: refused. The first system message is concatenated with
// '+', which fails in Jinja for anything but a string.
std::string content_of(const ChatRow& row, size_t i, bool must_be_string) {
  const OrderedJson* c = row.get(i, "content");
  if (c != nullptr && c->is_string()) return c->get<std::string>();
  if (must_be_string) fail_at(i, "the system message's \"content\" must be a string");
  if (c != nullptr && !c->is_null())
    fail_at(i, "\"content\" must be a string (the qwen3 template renders anything else as empty)");
  return "";
}

void render_tool_call(const ChatRow& row, size_t i, const OrderedJson& entry, ChatOut& out) {
  const OrderedJson* call = &entry;
  if (!call->is_object()) fail_at(i, "every entry of \"tool_calls\" must be an object");
  if (auto f = call->find("function");
      f != call->end() && !f->is_null() && !(f->is_object() && f->empty()))
    call = &*f;
  if (!call->is_object()) fail_at(i, "a tool call's \"function\" must be an object");
  auto name = call->find("name");
  if (name == call->end() || !name->is_string()) fail_at(i, "a tool call needs a string \"name\"");
  auto args = call->find("arguments");
  if (args == call->end()) fail_at(i, "a tool call needs \"arguments\"");
  out.tmpl("<tool_call>\n{\"name\": \"");
  out.data(name->get<std::string>());
  out.tmpl("\", \"arguments\": ");
  out.data(args->is_string() ? args->get<std::string>() : py_json_dumps(*args));
  out.tmpl("}\n</tool_call>");
}

}  // namespace

void render_qwen3(const ChatRow& row, ChatOut& out) {
  const size_t n = row.size();
  const bool first_is_system = row.roles[0] == "system";
  if (row.tools) {
    out.tmpl("<|im_start|>system\n");
    if (first_is_system) {
      out.data(content_of(row, 0, true));
      out.tmpl("\n\n");
    }
    out.tmpl(kToolsHeader);
    for (const OrderedJson& tool : *row.tools) {
      out.tmpl("\n");
      out.data(py_json_dumps(tool));
    }
    out.tmpl(kToolsFooter);
  } else if (first_is_system) {
    out.tmpl("<|im_start|>system\n");
    out.data(content_of(row, 0, true));
    out.tmpl("<|im_end|>\n");
  }

  // The last user message that is not a wrapped tool response (default: the last message).
  size_t last_query = n - 1;
  for (size_t k = n; k-- > 0;) {
    const OrderedJson* c = row.get(k, "content");
    if (row.roles[k] == "user" && c && c->is_string() &&
        !is_tool_response(c->get_ref<const std::string&>())) {
      last_query = k;
      break;
    }
  }

  for (size_t i = 0; i < n; ++i) {
    const std::string& role = row.roles[i];
    std::string content = content_of(row, i, false);
    if (role == "user" || (role == "system" && i > 0)) {
      out.tmpl("<|im_start|>" + role + "\n");
      out.data(content);
      out.tmpl("<|im_end|>\n");
    } else if (role == "assistant") {
      const std::string reasoning = reasoning_of(row, i, content, true);
      const bool think =
          row.opt.training_variant || (i > last_query && (i + 1 == n || !reasoning.empty()));
      out.tmpl("<|im_start|>assistant\n");
      out.begin_generation(static_cast<int64_t>(i));
      if (think) {
        out.tmpl("<think>\n");
        out.data(py_strip_char(reasoning, '\n'));
        out.tmpl("\n</think>\n\n");
        out.data(py_lstrip_char(content, '\n'));
      } else {
        out.data(content);
      }
      if (const OrderedJson* calls = row.tool_calls(i)) {
        for (size_t k = 0; k < calls->size(); ++k) {
          if (k > 0 || !content.empty()) out.tmpl("\n");
          render_tool_call(row, i, (*calls)[k], out);
        }
      }
      out.tmpl("<|im_end|>\n");
      out.end_generation();
    } else if (role == "tool") {
      render_tool_message(row, i, content, true, out);
    }
  }
}

}  // namespace deltatron::data::chat
