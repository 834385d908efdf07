// The Qwen3.5 / 3.6 / 3.8 chat formats: a transcription of their chat_template.jinja files (XML
// tool calls, trimmed content, think blocks; 3.6 adds preserve_thinking and prints parameter
// values as JSON, 3.8 keeps reasoning by default and adds the reasoning-effort system text) and of
// TRL's *_training variants (training_variant).
#include <string>

#include "data/chat_render.h"

namespace deltatron::data::chat {

namespace {

const char* const kToolsIntro = "# Tools\n\nYou have access to the following functions:\n\n<tools>";
const char* const kToolsRules =
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
    "</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
    "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\n"
    "Reminder:\n- Function calls MUST follow the specified format: an inner <function=...>"
    "</function> block must be nested within <tool_call></tool_call> XML tags\n- Required "
    "parameters MUST be specified\n- You may provide optional reasoning for your function call in "
    "natural language BEFORE the function call, but NOT after\n- If there is no function call "
    "available, answer the question like normal with your current knowledge and do not tell the "
    "user about function calls\n</IMPORTANT>";
const char* const kEffortXhigh =
    "Reasoning effort is set to xhigh. Please think carefully through the task, validate key "
    "assumptions, consider plausible alternatives, and prioritize correctness, consistency, and "
    "clarity in the final answer.";
const char* const kEffortLow =
    "Reasoning effort is set to low. Keep your thinking brief and focused, moving directly to the "
    "conclusion without unnecessary elaboration.";

// render_content(content)|trim: a string, or a list of {"text": ...} parts; null or absent is ''.
// An image part is kImageMark (the output writes the template's placeholder for it; the data
// path checks that the images exist and expands them, vision_data.h). Video parts are refused.
std::string content_text(const ChatRow& row, size_t i, bool is_system) {
  const OrderedJson* c = row.get(i, "content");
  if (c == nullptr || c->is_null()) return "";
  if (c->is_string()) return py_strip(c->get_ref<const std::string&>());
  if (!c->is_array()) fail_at(i, "Unexpected content type.");
  std::string s;
  for (const OrderedJson& item : *c) {
    if (!item.is_object()) fail_at(i, "every content part must be an object");
    auto type = item.find("type");
    const bool typed = type != item.end() && type->is_string();
    if (item.contains("image") || item.contains("image_url") || (typed && *type == "image")) {
      if (is_system) fail_at(i, "System message cannot contain images.");
      s += kImageMark;
      continue;
    }
    if (item.contains("video") || (typed && *type == "video")) {
      if (is_system) fail_at(i, "System message cannot contain videos.");
      fail_at(i, "video content parts are not supported (images only)");
    }
    auto text = item.find("text");
    if (text == item.end()) fail_at(i, "Unexpected item type in content.");
    if (text->is_array() || text->is_object()) fail_at(i, "a content part's \"text\" must be text");
    s += py_str(*text);
  }
  return py_strip(s);
}

// The 3.8 system text for the reasoning effort ('' for medium or with thinking disabled).
std::string reasoning_instructions(const ChatOptions& opt) {
  if (opt.enable_thinking.has_value() && !*opt.enable_thinking) return "";
  const std::string effort = opt.reasoning_effort.value_or("xhigh");
  if (effort == "xhigh") return kEffortXhigh;
  if (effort == "low") return kEffortLow;
  if (effort == "medium") return "";
  fail("Unexpected reasoning effort " + effort +
       ". Supported types are xhigh (default), medium, and low.");
}

void render_system(const ChatRow& row, const std::string& effort_text, ChatOut& out) {
  const bool first_is_system = row.roles[0] == "system";
  const std::string sys = first_is_system ? content_text(row, 0, true) : "";
  if (row.tools) {
    out.tmpl("<|im_start|>system\n");
    if (!effort_text.empty()) out.tmpl(effort_text + "\n\n");
    out.tmpl(kToolsIntro);
    for (const OrderedJson& tool : *row.tools) {
      out.tmpl("\n");
      out.data(py_json_dumps(tool));
    }
    out.tmpl("\n</tools>");
    out.tmpl(kToolsRules);
    if (!sys.empty()) {
      out.tmpl("\n\n");
      out.data(sys);
    }
    out.tmpl("<|im_end|>\n");
    return;
  }
  if (row.opt.format != ChatFormat::qwen3_8) {
    if (first_is_system) {
      out.tmpl("<|im_start|>system\n");
      out.data(sys);
      out.tmpl("<|im_end|>\n");
    }
    return;
  }
  if (!sys.empty()) {
    out.tmpl("<|im_start|>system\n" + (effort_text.empty() ? "" : effort_text + "\n\n"));
    out.data(sys);
    out.tmpl("<|im_end|>\n");
  } else if (!effort_text.empty()) {
    out.tmpl("<|im_start|>system\n" + effort_text + "<|im_end|>\n");
  }
}

// One parameter value: 3.5 prints mappings and lists as JSON and scalars with Python's str();
// 3.6 and 3.8 print strings as they are and everything else as JSON.
std::string parameter_value(ChatFormat f, const OrderedJson& v) {
  if (f == ChatFormat::qwen3_5) return v.is_object() || v.is_array() ? py_json_dumps(v) : py_str(v);
  return v.is_string() ? v.get<std::string>() : py_json_dumps(v);
}

void render_tool_calls(const ChatRow& row, size_t i, const std::string& content, ChatOut& out) {
  const OrderedJson* calls = row.tool_calls(i);
  if (calls == nullptr) return;
  const ChatFormat f = row.opt.format;
  for (size_t k = 0; k < calls->size(); ++k) {
    const OrderedJson* call = &(*calls)[k];
    if (!call->is_object()) fail_at(i, "every entry of \"tool_calls\" must be an object");
    if (auto fn = call->find("function"); fn != call->end()) call = &*fn;
    if (!call->is_object()) fail_at(i, "a tool call's \"function\" must be an object");
    auto name = call->find("name");
    if (name == call->end() || !name->is_string())
      fail_at(i, "a tool call needs a string \"name\"");
    if (k > 0)
      out.tmpl("\n<tool_call>\n<function=");
    else
      out.tmpl(py_strip(content).empty() ? "<tool_call>\n<function="
                                         : "\n\n<tool_call>\n<function=");
    out.data(name->get<std::string>());
    out.tmpl(">\n");
    auto args = call->find("arguments");
    const bool skip = args == call->end() || (f == ChatFormat::qwen3_8 && args->is_string() &&
                                              args->get_ref<const std::string&>().empty());
    if (!skip) {
      if (!args->is_object())
        fail_at(i, std::string("a tool call's \"arguments\" must be an object for the ") +
                       chat_format_name(f) +
                       " template (HF: Can only get item pairs from a mapping.)");
      for (auto a = args->begin(); a != args->end(); ++a) {
        out.tmpl("<parameter=");
        out.data(a.key());
        out.tmpl(">\n");
        out.data(parameter_value(f, a.value()));
        out.tmpl("\n</parameter>\n");
      }
    }
    out.tmpl("</function>\n</tool_call>");
  }
}

}  // namespace

void render_qwen35(const ChatRow& row, ChatOut& out) {
  const size_t n = row.size();
  const ChatFormat f = row.opt.format;
  const std::string effort_text = f == ChatFormat::qwen3_8 ? reasoning_instructions(row.opt) : "";
  render_system(row, effort_text, out);

  bool found = false;
  size_t last_query = n - 1;
  for (size_t k = n; k-- > 0;) {
    if (row.roles[k] == "user" && !is_tool_response(content_text(row, k, false))) {
      last_query = k;
      found = true;
      break;
    }
  }
  if (!found) fail("No user query found in messages.");

  for (size_t i = 0; i < n; ++i) {
    const std::string& role = row.roles[i];
    std::string content = content_text(row, i, false);
    if (role == "system") {
      if (i > 0) fail_at(i, "System message must be at the beginning.");
    } else if (role == "user") {
      out.tmpl("<|im_start|>user\n");
      out.data(content);
      out.tmpl("<|im_end|>\n");
    } else if (role == "assistant") {
      const std::string reasoning =
          py_strip(reasoning_of(row, i, content, f != ChatFormat::qwen3_8));
      const std::optional<bool> preserve = row.opt.preserve_thinking;
      const bool think = row.opt.training_variant || i > last_query ||
                         (f == ChatFormat::qwen3_6 && preserve.value_or(false)) ||
                         (f == ChatFormat::qwen3_8 && preserve.value_or(true));
      out.tmpl("<|im_start|>assistant\n");
      out.begin_generation(static_cast<int64_t>(i));
      if (think) {
        out.tmpl("<think>\n");
        out.data(reasoning);
        out.tmpl("\n</think>\n\n");
      }
      out.data(content);
      render_tool_calls(row, i, content, out);
      out.tmpl("<|im_end|>\n");
      out.end_generation();
    } else {  // tool
      render_tool_message(row, i, content, false, out);
    }
  }
}

}  // namespace deltatron::data::chat
