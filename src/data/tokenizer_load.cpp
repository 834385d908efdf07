// Reads a HF tokenizer.json into a TokenizerModel, rejecting components we do not implement.
#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer_model.h"
#include "data/tokenizer_text.h"

namespace deltatron::data::tok {

namespace {

using nlohmann::json;

// The regex of HF's ByteLevel pre-tokenizer with use_regex = true (GPT-2's).
constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string fnv1a64_hex(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : bytes) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string type_of(const json& j) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "<no type>";
  return j["type"].get<std::string>();
}

bool bool_or(const json& j, const char* key, bool fallback) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? fallback : it->get<bool>();
}

// Loader state: the file name for error messages.
struct Loader {
  std::string path;

  [[noreturn]] void unsupported(const std::string& what) const {
    core::fail(path, ": unsupported tokenizer component: ", what);
  }

  void normalizer(const json& j, TokenizerModel& m) const {
    if (j.is_null()) return;
    const std::string type = type_of(j);
    if (type == "NFC") {
      m.nfc = true;
    } else if (type == "Sequence") {
      for (const json& n : j.at("normalizers")) normalizer(n, m);
    } else {
      unsupported("normalizer type '" + type + "' (supported: NFC, Sequence of NFC)");
    }
  }

  void pre_tokenizer(const json& j, TokenizerModel& m) const {
    const std::string type = type_of(j);
    if (type == "Sequence") {
      for (const json& p : j.at("pretokenizers")) pre_tokenizer(p, m);
    } else if (type == "Split") {
      const std::string behavior = j.at("behavior").get<std::string>();
      if (behavior != "Isolated") {
        unsupported("pre_tokenizer Split with behavior '" + behavior + "' (supported: Isolated)");
      }
      if (bool_or(j, "invert", false)) unsupported("pre_tokenizer Split with invert = true");
      const json& pattern = j.at("pattern");
      PreTokStep step;
      try {
        if (pattern.contains("Regex")) {
          step.regex = std::make_shared<Regex>(pattern["Regex"].get<std::string>(), false);
        } else if (pattern.contains("String")) {
          step.regex = std::make_shared<Regex>(pattern["String"].get<std::string>(), true);
        } else {
          unsupported("pre_tokenizer Split pattern " + pattern.dump());
        }
      } catch (const core::Error& e) {
        core::fail(path, ": pre_tokenizer Split: ", e.what());
      }
      m.pre_tok.push_back(std::move(step));
    } else if (type == "ByteLevel") {
      PreTokStep step;
      step.kind = PreTokStep::Kind::byte_level;
      step.add_prefix_space = bool_or(j, "add_prefix_space", true);
      if (bool_or(j, "use_regex", true)) step.regex = std::make_shared<Regex>(kGpt2Regex, false);
      m.pre_tok.push_back(std::move(step));
    } else {
      unsupported("pre_tokenizer type '" + type + "' (supported: ByteLevel, Split, Sequence)");
    }
  }

  void post_processor(const json& j) const {
    if (j.is_null()) return;
    const std::string type = type_of(j);
    if (type == "ByteLevel") return;  // only trims offsets; ids are unchanged
    if (type == "Sequence") {
      for (const json& p : j.at("processors")) post_processor(p);
      return;
    }
    unsupported("post_processor type '" + type + "' (supported: ByteLevel)");
  }

  void model(const json& j, TokenizerModel& m) const {
    const std::string type = type_of(j);
    if (type != "BPE") unsupported("model type '" + type + "' (supported: BPE)");
    if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"].get<double>() != 0.0) {
      unsupported("BPE dropout");
    }
    if (bool_or(j, "byte_fallback", false)) unsupported("BPE byte_fallback = true");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (j.contains(key) && !j[key].is_null() && !j[key].get<std::string>().empty()) {
        unsupported(std::string("BPE ") + key + " '" + j[key].get<std::string>() + "'");
      }
    }

    Vocab vocab;
    const json& jv = j.at("vocab");
    if (!jv.is_object()) core::fail(path, ": model.vocab is not an object");
    vocab.reserve(jv.size());
    for (const auto& [token, id] : jv.items()) {
      const int64_t v = id.get<int64_t>();
      if (v < 0 || v > INT32_MAX) core::fail(path, ": model.vocab[\"", token, "\"] = ", v);
      vocab[token] = static_cast<int32_t>(v);
    }

    std::vector<std::pair<std::string, std::string>> merges;
    const json& jm = j.at("merges");
    merges.reserve(jm.size());
    for (const json& e : jm) {
      if (e.is_string()) {
        // Legacy "a b" form (merges.txt lines); "#version" lines are skipped like HF does.
        const std::string line = e.get<std::string>();
        if (line.rfind("#version", 0) == 0) continue;
        const size_t sp = line.find(' ');
        if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos) {
          core::fail(path, ": model.merges[", merges.size(), "] \"", line,
                     "\" is not two tokens separated by one space");
        }
        merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
      } else if (e.is_array() && e.size() == 2) {
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      } else {
        core::fail(path, ": model.merges[", merges.size(), "] is neither \"a b\" nor [a, b]");
      }
    }

    BpeOptions options;
    if (j.contains("unk_token") && !j["unk_token"].is_null()) {
      const std::string unk = j["unk_token"].get<std::string>();
      const auto it = vocab.find(unk);
      if (it == vocab.end()) core::fail(path, ": model.unk_token \"", unk, "\" is not in vocab");
      options.unk_id = it->second;
    }
    options.fuse_unk = bool_or(j, "fuse_unk", false);
    options.ignore_merges = bool_or(j, "ignore_merges", false);
    m.bpe = std::make_unique<Bpe>(std::move(vocab), merges, options, path);
  }

  // HF's AddedVocabulary::add_tokens as run by deserialisation: ids come from the vocabulary
  // when the content is already there, otherwise they are handed out from the BPE vocab size
  // on. We require the result to equal the ids written in the file.
  void added_tokens(const json& j, TokenizerModel& m) const {
    const Vocab& vocab = m.bpe->vocab();
    std::map<int32_t, AddedToken> by_id;
    auto next_id = static_cast<int32_t>(vocab.size());
    for (const json& e : j) {
      AddedToken t;
      t.content = e.at("content").get<std::string>();
      t.single_word = bool_or(e, "single_word", false);
      t.lstrip = bool_or(e, "lstrip", false);
      t.rstrip = bool_or(e, "rstrip", false);
      t.normalized = bool_or(e, "normalized", true);
      t.special = bool_or(e, "special", false);
      if (t.content.empty()) continue;
      const auto known = m.added_ids.find(t.content);
      if (known != m.added_ids.end()) {
        const AddedToken& old = by_id[known->second];
        if (old.single_word == t.single_word && old.lstrip == t.lstrip && old.rstrip == t.rstrip &&
            old.normalized == t.normalized && old.special == t.special) {
          continue;
        }
      }
      if (known != m.added_ids.end()) {
        t.id = known->second;
      } else if (const auto in_vocab = vocab.find(t.content); in_vocab != vocab.end()) {
        t.id = in_vocab->second;
      } else {
        t.id = next_id++;
      }
      const int64_t file_id = e.at("id").get<int64_t>();
      if (file_id != t.id) {
        core::fail(path, ": added token \"", t.content, "\" has id ", file_id,
                   " but HF tokenizers would give it id ", t.id);
      }
      m.added_ids[t.content] = t.id;
      if (t.special) m.special_contents.insert(t.content);
      by_id[t.id] = t;
    }
    std::vector<std::pair<std::string, int32_t>> raw, normalized, raw_plain, normalized_plain;
    for (auto& [id, t] : by_id) {
      const auto index = static_cast<int32_t>(m.added.size());
      if (t.normalized) {
        std::string form = t.content;
        if (m.nfc) nfc(t.content, form);
        if (!t.special) normalized_plain.emplace_back(form, index);
        normalized.emplace_back(std::move(form), index);
      } else {
        if (!t.special) raw_plain.emplace_back(t.content, index);
        raw.emplace_back(t.content, index);
      }
      m.added.push_back(std::move(t));
    }
    m.match_raw.build(std::move(raw));
    m.match_normalized.build(std::move(normalized));
    m.match_raw_plain.build(std::move(raw_plain));
    m.match_normalized_plain.build(std::move(normalized_plain));
  }

  // Decode tables: the bytes of every id, as HF's decode + ByteLevel decoder produce them.
  void decode_tables(TokenizerModel& m) const {
    int64_t size = 0;
    for (const auto& [token, id] : m.bpe->vocab()) size = std::max<int64_t>(size, id + 1);
    for (const AddedToken& t : m.added) size = std::max<int64_t>(size, t.id + 1);
    m.vocab_size = size;
    m.id_bytes.assign(static_cast<size_t>(size), std::string());
    m.id_flags.assign(static_cast<size_t>(size), 0);
    auto set = [&](int32_t id, const std::string& token) {
      std::string& bytes = m.id_bytes[static_cast<size_t>(id)];
      bytes.clear();
      // A token with a char outside the byte-level alphabet is kept as its UTF-8 (HF).
      if (!append_bytes_of_byte_level(token, bytes)) bytes = token;
      m.id_flags[static_cast<size_t>(id)] =
          TokenizerModel::kHasToken |
          (m.special_contents.count(token) ? TokenizerModel::kSpecial : 0);
    };
    for (const auto& [token, id] : m.bpe->vocab()) set(id, token);
    for (const AddedToken& t : m.added) {
      // HF decodes a normalized added token from its normalised form.
      std::string form = t.content;
      if (t.normalized && m.nfc) nfc(t.content, form);
      set(t.id, form);
    }
  }
};

}  // namespace

std::shared_ptr<const TokenizerModel> load_tokenizer_model(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) core::fail(path, ": cannot open tokenizer file");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();

  static std::atomic<uint64_t> next_serial{1};
  auto m = std::make_shared<TokenizerModel>();
  m->serial = next_serial.fetch_add(1);
  m->path = path;
  m->content_hash = fnv1a64_hex(bytes);
  const Loader loader{path};
  try {
    const json j = json::parse(bytes);
    if (!j.is_object()) core::fail(path, ": not a tokenizer.json (top level is not an object)");
    if (j.contains("version") && j["version"] != "1.0") {
      core::fail(path, ": unknown tokenizer.json version ", j["version"].dump());
    }
    if (!j.contains("model")) core::fail(path, ": no \"model\" (not a tokenizer.json?)");
    loader.normalizer(j.value("normalizer", json()), *m);
    loader.model(j.at("model"), *m);

    const json pre = j.value("pre_tokenizer", json());
    if (pre.is_null()) loader.unsupported("pre_tokenizer null (a byte-level BPE needs ByteLevel)");
    loader.pre_tokenizer(pre, *m);
    const auto n_byte_level = std::count_if(m->pre_tok.begin(), m->pre_tok.end(), [](auto& s) {
      return s.kind == PreTokStep::Kind::byte_level;
    });
    if (n_byte_level != 1 || m->pre_tok.back().kind != PreTokStep::Kind::byte_level) {
      loader.unsupported("pre_tokenizer without exactly one ByteLevel as its last step");
    }

    loader.post_processor(j.value("post_processor", json()));
    const json dec = j.value("decoder", json());
    if (type_of(dec) != "ByteLevel") {
      loader.unsupported("decoder type '" + (dec.is_null() ? "null" : type_of(dec)) +
                         "' (supported: ByteLevel)");
    }
    loader.added_tokens(j.value("added_tokens", json::array()), *m);
    loader.decode_tables(*m);
  } catch (const json::exception& e) {
    core::fail(path, ": malformed tokenizer.json: ", e.what());
  }
  return m;
}

}  // namespace deltatron::data::tok
