// Images in chat rows: the three input forms rewritten into structured parts, source paths, and
// the vision settings of a checkpoint directory.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer.h"
#include "data/vision_data.h"

namespace deltatron::data {

VisionTokenIds VisionTokenIds::from(const Tokenizer& tok) {
  VisionTokenIds ids;
  auto get = [&](const char* name) { return tok.token_to_id(name).value_or(-1); };
  ids.image_pad = get("<|image_pad|>");
  ids.vision_start = get("<|vision_start|>");
  ids.vision_end = get("<|vision_end|>");
  ids.video_pad = get("<|video_pad|>");
  return ids;
}

std::string VisionDataOptions::key() const {
  if (!enabled) return "off";
  const ImageProcessorConfig& p = processor;
  std::ostringstream k;
  k.precision(17);
  k << "on/patch " << p.patch_size << "/temporal " << p.temporal_patch_size << "/merge "
    << p.merge_size << "/pixels " << p.min_pixels << "-" << p.max_pixels << "/resize "
    << p.do_resize << "/rescale " << p.do_rescale << " " << p.rescale_factor << "/normalize "
    << p.do_normalize;
  for (int c = 0; c < 3; ++c) k << " " << p.image_mean[c] << ":" << p.image_std[c];
  return k.str();
}

VisionDataOptions vision_options_from_config(const nlohmann::json& config,
                                             const nlohmann::json& preprocessor,
                                             const Tokenizer& tok, const std::string& where) {
  VisionDataOptions o;
  if (!config.is_object() || !config.contains("vision_config")) return o;
  o.enabled = true;
  if (preprocessor.is_object())
    o.processor = ImageProcessorConfig::from_json(preprocessor, where + " preprocessor config");
  const VisionTokenIds ids = VisionTokenIds::from(tok);
  const std::pair<const char*, int32_t> keys[] = {{"image_token_id", ids.image_pad},
                                                  {"vision_start_token_id", ids.vision_start},
                                                  {"vision_end_token_id", ids.vision_end},
                                                  {"video_token_id", ids.video_pad}};
  for (const auto& [key, id] : keys) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) continue;
    DT_CHECK(it->is_number_integer() && it->get<int64_t>() == id, where, ": ", key, " = ",
             it->dump(), " but the tokenizer's id is ", id,
             " (the tokenizer does not belong to this checkpoint)");
  }
  return o;
}

VisionDataOptions vision_options_from_model(const std::string& model_dir, const Tokenizer& tok) {
  namespace fs = std::filesystem;
  const fs::path config = fs::path(model_dir) / "config.json";
  std::error_code ec;
  if (model_dir.empty() || !fs::exists(config, ec)) return VisionDataOptions{};
  nlohmann::json j;
  {
    std::ifstream in(config);
    DT_CHECK(in.good(), config.string(), ": cannot open");
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      core::fail(config.string(), ": not valid JSON (", e.what(), ")");
    }
  }
  if (!j.is_object() || !j.contains("vision_config")) return VisionDataOptions{};
  VisionDataOptions o = vision_options_from_config(j, nullptr, tok, config.string());
  const fs::path pre = fs::path(model_dir) / "preprocessor_config.json";
  if (fs::exists(pre, ec)) o.processor = ImageProcessorConfig::load(pre.string());
  return o;
}

std::string resolve_image_path(const std::string& data_path, const std::string& source) {
  namespace fs = std::filesystem;
  const fs::path p(source);
  if (p.is_absolute()) return source;
  return (fs::path(data_path).parent_path() / p).lexically_normal().string();
}

namespace {

const char* const kTag = "<image>";

// A source string as given: file:// removed; URLs refused.
std::string local_source(const std::string& s, const std::string& what) {
  DT_CHECK(!s.empty(), what, " is an empty path");
  if (s.rfind("file://", 0) == 0) return s.substr(7);
  const size_t colon = s.find(':');
  const bool url = s.find("://") != std::string::npos || s.rfind("data:", 0) == 0;
  if (url && colon != 1)  // "C:" is not a scheme
    core::fail(what, " \"", s.size() > 80 ? s.substr(0, 80) + "..." : s,
               "\" is a URL: only local image files are read (download it and give its path)");
  return s;
}

// The source a value names: a string, or an object with a string "path" (the `datasets` Image
// feature's {"bytes": null, "path": ...}) or "url" (OpenAI's image_url).
std::string source_of(const OrderedJson& v, const std::string& what) {
  if (v.is_string()) return local_source(v.get<std::string>(), what);
  if (v.is_object()) {
    auto b = v.find("bytes");
    DT_CHECK(b == v.end() || b->is_null(), what,
             " holds the image's bytes: only image files are read (give a \"path\")");
    for (const char* k : {"path", "url"})
      if (auto it = v.find(k); it != v.end() && it->is_string())
        return local_source(it->get<std::string>(), what + "." + k);
  }
  core::fail(what, " must be a path (a string), got ", v.dump());
}

// The template's test for an image part: 'image' in item or 'image_url' in item or
// item.type == 'image'.
bool is_image_part(const OrderedJson& part) {
  if (!part.is_object()) return false;
  auto t = part.find("type");
  return part.contains("image") || part.contains("image_url") ||
         (t != part.end() && t->is_string() && *t == "image");
}

// The file an image part names itself, or "" when it names none (filled from the row's list).
std::string own_source(const OrderedJson& part, const std::string& what) {
  for (const char* k : {"image", "path", "url", "image_url"})
    if (auto it = part.find(k); it != part.end() && !it->is_null())
      return source_of(*it, what + "." + k);
  return "";
}

// Image part for a source (the form the other two are rewritten into).
OrderedJson image_part(const std::string& source) {
  OrderedJson p = OrderedJson::object();
  p["type"] = "image";
  p["image"] = source;
  return p;
}

std::vector<std::string> split_tags(const std::string& s) {
  std::vector<std::string> pieces;
  size_t pos = 0;
  for (;;) {
    const size_t k = s.find(kTag, pos);
    pieces.push_back(s.substr(pos, k == std::string::npos ? std::string::npos : k - pos));
    if (k == std::string::npos) return pieces;
    pos = k + std::char_traits<char>::length(kTag);
  }
}

}  // namespace

std::vector<std::string> take_row_images(OrderedJson& row) {
  auto msgs = row.find("messages");
  if (msgs == row.end() || !msgs->is_array()) return {};

  // The row's list: "images" (a list) or "image" (one).
  std::vector<std::string> listed;
  bool has_list = false;
  if (auto it = row.find("images"); it != row.end() && !it->is_null()) {
    DT_CHECK(it->is_array(), "\"images\" must be a list of image paths");
    for (size_t k = 0; k < it->size(); ++k)
      listed.push_back(source_of((*it)[k], "images[" + std::to_string(k) + "]"));
    has_list = true;
  }
  if (auto it = row.find("image"); it != row.end() && !it->is_null()) {
    DT_CHECK(!has_list, "the row has both \"images\" and \"image\": give one list");
    listed.push_back(source_of(*it, "\"image\""));
    has_list = true;
  }

  // Null values in content parts are absent keys (TRL's remove_none_values: `datasets` fills
  // every part with every key of the column, e.g. {"type": "text", "text": "hi", "image": null}).
  for (OrderedJson& m : *msgs) {
    if (!m.is_object()) continue;
    auto c = m.find("content");
    if (c == m.end() || !c->is_array()) continue;
    for (OrderedJson& part : *c) {
      if (!part.is_object()) continue;
      for (auto k = part.begin(); k != part.end();) k = k->is_null() ? part.erase(k) : std::next(k);
    }
  }

  // Places in order: tags in string content (only with a list), image parts.
  int64_t tags = 0, sourceless = 0, parts = 0;
  for (size_t i = 0; i < msgs->size(); ++i) {
    const OrderedJson& m = (*msgs)[i];
    if (!m.is_object()) continue;
    auto c = m.find("content");
    if (c == m.end()) continue;
    if (c->is_string() && has_list)
      tags += static_cast<int64_t>(split_tags(c->get_ref<const std::string&>()).size()) - 1;
    if (c->is_array())
      for (size_t k = 0; k < c->size(); ++k)
        if (is_image_part((*c)[k])) {
          ++parts;
          const std::string where =
              "messages[" + std::to_string(i) + "].content[" + std::to_string(k) + "]";
          sourceless += own_source((*c)[k], where).empty();
        }
  }
  if (!has_list && parts == 0) return {};

  std::vector<std::string> sources;
  size_t next = 0;
  if (has_list && tags == 0 && parts == 0) {
    // TRL: every image before the text of the first user message.
    if (listed.empty()) return {};
    for (OrderedJson& m : *msgs) {
      if (!m.is_object()) continue;
      auto role = m.find("role");
      if (role == m.end() || !role->is_string() || *role != "user") continue;
      OrderedJson content = OrderedJson::array();
      for (const std::string& s : listed) content.push_back(image_part(s));
      auto c = m.find("content");
      if (c != m.end() && c->is_string()) {
        OrderedJson text = OrderedJson::object();
        text["type"] = "text";
        text["text"] = *c;
        content.push_back(std::move(text));
      } else if (c != m.end() && c->is_array()) {
        for (const OrderedJson& part : *c) content.push_back(part);
      }
      m["content"] = std::move(content);
      return listed;
    }
    core::fail("the row lists ", listed.size(), " image(s) but has no user message to put them in");
  }
  if (static_cast<int64_t>(listed.size()) != tags + sourceless)
    core::fail("the row lists ", listed.size(), " image(s) (\"images\") but its messages have ",
               tags, " \"<image>\" tag(s) and ", sourceless,
               " image part(s) without a file: each listed image needs exactly one");

  for (size_t i = 0; i < msgs->size(); ++i) {
    OrderedJson& m = (*msgs)[i];
    if (!m.is_object()) continue;
    auto c = m.find("content");
    if (c == m.end()) continue;
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (c->is_string() && has_list) {
      const std::vector<std::string> pieces = split_tags(c->get_ref<const std::string&>());
      if (pieces.size() == 1) continue;
      OrderedJson content = OrderedJson::array();
      for (size_t k = 0; k < pieces.size(); ++k) {
        if (k > 0) {
          sources.push_back(listed[next++]);
          content.push_back(image_part(sources.back()));
        }
        if (pieces[k].empty()) continue;
        OrderedJson text = OrderedJson::object();
        text["type"] = "text";
        text["text"] = pieces[k];
        content.push_back(std::move(text));
      }
      *c = std::move(content);
    } else if (c->is_array()) {
      for (size_t k = 0; k < c->size(); ++k) {
        OrderedJson& part = (*c)[k];
        if (!is_image_part(part)) continue;
        std::string s = own_source(part, where + ".content[" + std::to_string(k) + "]");
        if (s.empty()) {
          s = listed[next++];
          part["image"] = s;
        }
        sources.push_back(std::move(s));
      }
    }
  }
  return sources;
}

}  // namespace deltatron::data
