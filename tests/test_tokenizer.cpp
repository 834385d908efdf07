// Tokenizer tests: id parity with HF `tokenizers` (fixtures from tools/tokenizer/make_expected.py),
// BPE merge equivalence, load errors, and a throughput report (printed, never asserted).
#include <gtest/gtest.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer.h"
#include "data/tokenizer_model.h"
#include "data/tokenizer_text.h"

using deltatron::core::Error;
using deltatron::data::Tokenizer;
using nlohmann::json;
namespace tok = deltatron::data::tok;

namespace {

#ifndef DT_QWEN3_TOKENIZER_JSON
#error "CMake defines DT_QWEN3_TOKENIZER_JSON (the Qwen3 tokenizer.json unpacked into the build)"
#endif

const std::string kData = std::string(DT_TEST_DATA) + "/tokenizer";

const Tokenizer& qwen3() {
  static const Tokenizer t = Tokenizer::load(DT_QWEN3_TOKENIZER_JSON);
  return t;
}

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<json> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) rows.push_back(json::parse(line));
  }
  return rows;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

// Compares ids and reports the first difference with both values and some context.
testing::AssertionResult same_ids(const std::string& what, const std::vector<int32_t>& got,
                                  const json& want_json) {
  const auto want = want_json.get<std::vector<int32_t>>();
  if (got == want) return testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto at = [](const std::vector<int32_t>& v, size_t k) {
    return k < v.size() ? std::to_string(v[k]) : std::string("<end>");
  };
  return testing::AssertionFailure()
         << what << ": " << got.size() << " ids, HF " << want.size() << "; first difference at "
         << i << ": got " << at(got, i) << ", HF " << at(want, i);
}

std::string write_temp(const std::string& name, const std::string& content) {
  const auto dir = std::filesystem::temp_directory_path() / "deltatron_test_tokenizer";
  std::filesystem::create_directories(dir);
  const auto path = (dir / name).string();
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

// Runs every row of an expected*.jsonl against `t`.
void check_rows(const Tokenizer& t, const std::vector<json>& rows, const std::string& label) {
  int checked = 0;
  for (const json& r : rows) {
    const std::string name = label + "/" + r["name"].get<std::string>();
    const std::string text =
        r.contains("bytes_hex") ? from_hex(r["bytes_hex"]) : r["text"].get<std::string>();
    const std::vector<int32_t> ids = t.encode(text);
    const std::vector<int32_t> ids_special = t.encode_with_special(text);
    EXPECT_TRUE(same_ids(name + " encode", ids, r["ids"]));
    EXPECT_TRUE(same_ids(name + " encode_with_special", ids_special, r["ids_special"]));
    EXPECT_EQ(t.decode(ids), r["decoded"].get<std::string>()) << name;
    EXPECT_EQ(t.decode(ids_special), r["decoded_special"].get<std::string>()) << name;
    EXPECT_EQ(t.decode(ids_special, true), r["decoded_special_skip"].get<std::string>()) << name;
    const auto& each = r["decoded_each"];
    for (size_t k = 0; k < each.size() && k < ids_special.size(); ++k) {
      EXPECT_EQ(t.decode({ids_special[k]}), each[k].get<std::string>())
          << name << ": decode of id " << ids_special[k] << " alone";
    }
    ++checked;
  }
  EXPECT_GT(checked, 0) << label;
}

}  // namespace

// ---- Qwen3 parity ---------------------------------------------------------------------------

TEST(TokenizerQwen3, MatchesHfOnCorpus) {
  const std::vector<json> rows = read_jsonl(kData + "/expected.jsonl");
  ASSERT_TRUE(rows.at(0).contains("meta"));
  const json& meta = rows[0]["meta"];
  // The unpacked file is the one the fixtures were made from.
  ASSERT_EQ(qwen3().content_hash(), meta["fnv1a64"].get<std::string>());
  EXPECT_EQ(qwen3().vocab_size(), meta["vocab_size"].get<int64_t>());
  const std::vector<json> corpus(rows.begin() + 1, rows.end());
  check_rows(qwen3(), corpus, "qwen3");
  // decode(encode(x)) == NFC(x) for every text of the corpus.
  for (const json& r : corpus) {
    const std::string text =
        r.contains("bytes_hex") ? from_hex(r["bytes_hex"]) : r["text"].get<std::string>();
    EXPECT_EQ(qwen3().decode(qwen3().encode(text)), r["nfc"].get<std::string>()) << r["name"];
  }
}

TEST(TokenizerQwen3, SpecialTokens) {
  const Tokenizer& t = qwen3();
  EXPECT_EQ(t.vocab_size(), 151669);
  EXPECT_EQ(t.token_to_id("<|endoftext|>"), 151643);
  EXPECT_EQ(t.token_to_id("<|im_start|>"), 151644);
  EXPECT_EQ(t.token_to_id("<|im_end|>"), 151645);
  EXPECT_EQ(t.token_to_id("<tool_call>"), 151657);
  EXPECT_EQ(t.token_to_id("Ġthe"), 279);
  EXPECT_EQ(t.token_to_id("the"), 1782);
  EXPECT_EQ(t.token_to_id("not a token"), std::nullopt);
  const std::string chat = "<|im_start|>user\nhi<|im_end|>";
  // Plain text never yields an added token; with specials the ChatML markers are single ids.
  for (int32_t id : t.encode(chat)) EXPECT_LT(id, 151643);
  EXPECT_EQ(t.encode_with_special(chat), (std::vector<int32_t>{151644, 872, 198, 6023, 151645}));
  EXPECT_EQ(t.decode({151644, 872, 198, 6023, 151645}, true), "user\nhi");
  // Ids without a token are skipped, as HF does.
  EXPECT_EQ(t.decode({-1, 9707, 151669, 1 << 30}), "Hello");
  EXPECT_TRUE(t.encode("").empty());
  EXPECT_TRUE(t.encode_with_special("").empty());
}

TEST(TokenizerQwen3, BatchEqualsSingle) {
  std::vector<std::string> texts;
  for (const json& r : read_jsonl(kData + "/expected.jsonl")) {
    if (r.contains("text")) texts.push_back(r["text"].get<std::string>());
  }
  const size_t n_unique = texts.size();
  for (size_t k = 0; k < 4 * n_unique; ++k) texts.push_back(texts[(k * 7) % n_unique]);
  const auto batch = qwen3().encode_batch(texts);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(batch[i], qwen3().encode(texts[i])) << "text " << i;
  }
  EXPECT_TRUE(qwen3().encode_batch({}).empty());
}

TEST(TokenizerQwen3, LongWhitespaceRuns) {
  // `\s+(?!\S)` backtracks over the whole run; BPE merges the run with the heap algorithm.
  const std::string text = std::string(300'000, ' ') + "x\n" + std::string(200'000, '\n') + "\t";
  const auto ids = qwen3().encode(text);
  EXPECT_EQ(qwen3().decode(ids), text);
  // Beyond PCRE2's match limit (10^7 steps) the regex gives up: a clear error, not a crash
  // (HF's Oniguruma hits its retry limit at the same size and panics).
  try {
    qwen3().encode(std::string(11'000'000, ' ') + "x");
    ADD_FAILURE() << "11M-space run encoded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("match limit"), std::string::npos) << e.what();
  }
}

// ---- tiny hand-specified tokenizers ---------------------------------------------------------

TEST(TokenizerTiny, MatchesHf) {
  std::map<std::string, std::vector<json>> by_tokenizer;
  for (json& r : read_jsonl(kData + "/expected_tiny.jsonl")) {
    r["name"] = r["text"];
    by_tokenizer[r["tokenizer"].get<std::string>()].push_back(r);
  }
  ASSERT_EQ(by_tokenizer.size(), 3u);
  for (const auto& [name, rows] : by_tokenizer) {
    check_rows(Tokenizer::load(kData + "/" + name + ".json"), rows, name);
  }
}

TEST(TokenizerTiny, Qwen35RegexTreatsMarksAsLetters) {
  const Tokenizer t = Tokenizer::load(kData + "/tiny_qwen35.json");
  // Devanagari virama and vowel signs are \p{M}: "स्ते" is one pre-token, merged to one id.
  const auto ids = t.encode("स्ते");
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ(t.decode(ids), "स्ते");
  // VS16 (U+FE0F, Mn) continues the heart: "❤️" is one pre-token and one merged id.
  EXPECT_EQ(t.encode("\u2764\ufe0f").size(), 1u);
}

TEST(TokenizerTiny, AddedTokenFlags) {
  const Tokenizer t = Tokenizer::load(kData + "/tiny_qwen35.json");
  const int32_t mask = *t.token_to_id("<mask>"), sep = *t.token_to_id("[SEP]");
  const int32_t words = *t.token_to_id("words");
  // lstrip: the spaces before <mask> belong to the token.
  EXPECT_EQ(t.encode_with_special("   <mask>"), std::vector<int32_t>{mask});
  // rstrip: the whitespace after [SEP] belongs to the token.
  EXPECT_EQ(t.encode_with_special("[SEP] \n "), std::vector<int32_t>{sep});
  // single_word: matches "words" alone but not inside "awordsy".
  EXPECT_EQ(t.encode_with_special("words"), std::vector<int32_t>{words});
  for (int32_t id : t.encode_with_special("awordsy")) EXPECT_NE(id, words);
  // normalized: the added token "cafe\u0301" matches NFC and NFD input alike.
  const int32_t cafe = *t.token_to_id("cafe\u0301");
  EXPECT_EQ(t.encode_with_special("caf\u00e9"), std::vector<int32_t>{cafe});
  EXPECT_EQ(t.encode_with_special("cafe\u0301"), std::vector<int32_t>{cafe});
}

// ---- BPE internals --------------------------------------------------------------------------

TEST(TokenizerBpe, ScanMergeEqualsHeapMerge) {
  const auto model = tok::load_tokenizer_model(DT_QWEN3_TOKENIZER_JSON);
  const tok::Bpe& bpe = *model->bpe;
  tok::BpeScratch scratch;
  std::mt19937_64 rng(42);
  std::string text;
  for (const json& r : read_jsonl(kData + "/expected.jsonl")) {
    if (r.contains("text")) text += r["text"].get<std::string>();
  }
  const std::vector<std::string> alphabets = {"ab",         "a ",         " \n\t",
                                              "0123456789", "ee\xcc\x81", "thequickbrown "};
  int compared = 0;
  for (int k = 0; k < 20000; ++k) {
    std::string piece;
    const size_t len = 2 + rng() % (k % 10 == 0 ? 400 : 40);
    if (k % 2 == 0) {
      piece = text.substr(rng() % (text.size() - len), len);
    } else {
      const std::string& a = alphabets[rng() % alphabets.size()];
      for (size_t i = 0; i < len; ++i) piece.push_back(a[rng() % a.size()]);
    }
    std::vector<int32_t> scan, heap;
    bpe.initial_symbols(piece, scan);
    heap = scan;
    bpe.merge_scan(scan, scratch);
    bpe.merge_heap(heap, scratch);
    ASSERT_EQ(scan, heap) << "piece " << k << " of " << piece.size() << " bytes";
    ++compared;
  }
  EXPECT_EQ(compared, 20000);
}

TEST(TokenizerText, Utf8LossyMatchesPythonReplace) {
  // Expected strings: bytes.decode("utf-8", errors="replace") in Python 3.11.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"ab\x80"
       "cd",
       "ab\uFFFDcd"},
      {"caf\xc3", "caf\uFFFD"},
      {"\xc0\xafx\xe0\x80\xaf", "\uFFFD\uFFFDx\uFFFD\uFFFD\uFFFD"},
      {"\xed\xa0\x80 z", "\uFFFD\uFFFD\uFFFD z"},
      {"\xf4\x90\x80\x80\xf5!", "\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD!"},
      {"\xf0\x9f\x98 \xf0\x9f hi", "\uFFFD \uFFFD hi"},
      {"\xe2\x82", "\uFFFD"},
      {"ok \xe2\x82\xac", "ok \u20ac"},
  };
  for (const auto& [in, want] : cases) {
    std::string got;
    tok::append_utf8_lossy(in, got);
    EXPECT_EQ(got, want);
    EXPECT_EQ(tok::is_valid_utf8(in), in == want);
  }
}

// ---- load errors ----------------------------------------------------------------------------

namespace {

json tiny_json() {
  std::ifstream in(kData + "/tiny_qwen35.json");
  return json::parse(in);
}

// Loading `j` must throw an Error whose message names the file and contains `needle`.
void expect_load_error(const std::string& file, const std::string& content,
                       const std::string& needle) {
  const std::string path = write_temp(file, content);
  try {
    Tokenizer::load(path);
    ADD_FAILURE() << file << ": loaded, expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
  }
}

}  // namespace

TEST(TokenizerLoad, ErrorsNameFileAndComponent) {
  try {
    Tokenizer::load("/nonexistent/tokenizer.json");
    ADD_FAILURE() << "missing file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/tokenizer.json"), std::string::npos);
  }
  expect_load_error("truncated.json", "{\"model\": {\"type\": ", "malformed");

  json j = tiny_json();
  j["model"]["type"] = "WordPiece";
  expect_load_error("wordpiece.json", j.dump(), "model type 'WordPiece'");

  j = tiny_json();
  j["model"] = {{"type", "Unigram"}, {"vocab", json::array()}};
  expect_load_error("unigram.json", j.dump(), "model type 'Unigram'");

  j = tiny_json();
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_load_error("lowercase.json", j.dump(), "normalizer type 'Lowercase'");

  j = tiny_json();
  j["normalizer"] = {{"type", "Sequence"},
                     {"normalizers", {{{"type", "NFC"}}, {{"type", "NFKC"}}}}};
  expect_load_error("nfkc.json", j.dump(), "normalizer type 'NFKC'");

  j = tiny_json();
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  expect_load_error("metaspace.json", j.dump(), "pre_tokenizer type 'Metaspace'");

  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  expect_load_error("removed.json", j.dump(), "behavior 'Removed'");

  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"].erase(1);  // Split only, no ByteLevel
  expect_load_error("no_bytelevel.json", j.dump(), "ByteLevel");

  j = tiny_json();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_load_error("bad_regex.json", j.dump(), "does not compile");

  j = tiny_json();
  j["decoder"] = {{"type", "WordPiece"}};
  expect_load_error("decoder.json", j.dump(), "decoder type 'WordPiece'");

  j = tiny_json();
  j["post_processor"] = {{"type", "TemplateProcessing"}};
  expect_load_error("template.json", j.dump(), "post_processor type 'TemplateProcessing'");

  j = tiny_json();
  j["model"]["byte_fallback"] = true;
  expect_load_error("byte_fallback.json", j.dump(), "byte_fallback");

  j = tiny_json();
  j["model"]["merges"].push_back({"zz", "q"});
  expect_load_error("bad_merge.json", j.dump(), "\"zz\" is not in model.vocab");

  j = tiny_json();
  j["added_tokens"][1]["id"] = 999;
  expect_load_error("bad_added_id.json", j.dump(), "has id 999");
}

TEST(TokenizerLoad, ContentHashFollowsBytes) {
  const json j = tiny_json();
  const Tokenizer a = Tokenizer::load(write_temp("h1.json", j.dump()));
  const Tokenizer b = Tokenizer::load(write_temp("h2.json", j.dump()));
  const Tokenizer c = Tokenizer::load(write_temp("h3.json", j.dump(1)));
  EXPECT_EQ(a.content_hash().size(), 16u);
  EXPECT_EQ(a.content_hash(), b.content_hash());
  EXPECT_NE(a.content_hash(), c.content_hash());
}

// ---- throughput (printed, not asserted) -----------------------------------------------------

namespace {

// ~`bytes` of mixed documents: English-like prose from a large pseudo-word vocabulary, code,
// CJK, other scripts, numbers, emoji. Deterministic.
std::vector<std::string> synthetic_documents(size_t bytes) {
  std::mt19937_64 rng(2024);
  const std::vector<std::string> syll = {"ta", "re",  "on",  "in",  "st", "pro", "ver",  "ment",
                                         "al", "ing", "the", "com", "ex", "ly",  "tion", "ab",
                                         "or", "ed",  "un",  "qu",  "is", "ar",  "ch",   "an"};
  std::vector<std::string> words;
  for (int i = 0; i < 30000; ++i) {
    std::string w;
    const int n = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < n; ++k) w += syll[rng() % syll.size()];
    if (rng() % 10 == 0) w[0] = static_cast<char>(w[0] - 32);
    words.push_back(w);
  }
  auto zipf_word = [&]() -> const std::string& {
    // Index ~ exp(uniform) gives a Zipf-like head.
    const double u = std::uniform_real_distribution<double>(0, std::log(30000.0))(rng);
    return words[static_cast<size_t>(std::exp(u)) - 1];
  };
  auto utf8 = [](char32_t cp) {
    std::string s;
    tok::append_utf8(cp, s);
    return s;
  };
  const std::vector<std::pair<char32_t, char32_t>> scripts = {
      {0x4E00, 0x9FA5}, {0x3041, 0x3096}, {0xAC00, 0xD7A3}, {0x0430, 0x044F},
      {0x0627, 0x064A}, {0x0915, 0x0939}, {0x0E01, 0x0E30}, {0x1F600, 0x1F64F}};
  std::vector<std::string> docs;
  size_t total = 0;
  while (total < bytes) {
    std::string d;
    const auto kind = rng() % 10;
    const size_t target = 1000 + rng() % 4000;
    while (d.size() < target) {
      if (kind < 6) {  // prose
        d += zipf_word();
        const auto p = rng() % 20;
        d += p == 0 ? ". " : p == 1 ? ", " : p == 2 ? "\n\n" : p == 3 ? " 1984 " : " ";
      } else if (kind < 8) {  // code
        d += std::string(4 * (rng() % 4), ' ') + zipf_word() + "_" + zipf_word() + " = " +
             zipf_word() + "(" + std::to_string(rng() % 1000) + ", \"" + zipf_word() + "\")\n";
      } else {  // another script, runs of 2..8 chars separated by spaces/punctuation
        const auto& [lo, hi] = scripts[rng() % scripts.size()];
        for (int k = 0, n = 2 + static_cast<int>(rng() % 7); k < n; ++k) {
          d += utf8(lo + static_cast<char32_t>(rng() % (hi - lo + 1)));
        }
        d += rng() % 4 == 0 ? "，" : " ";
      }
    }
    total += d.size();
    docs.push_back(std::move(d));
  }
  return docs;
}

std::vector<std::string> file_documents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string all = ss.str();
  std::vector<std::string> docs;
  for (size_t i = 0; i < all.size(); i += 4096) docs.push_back(all.substr(i, 4096));
  return docs;
}

}  // namespace

TEST(TokenizerBench, ThroughputReport) {
  const char* env = std::getenv("DT_TOKENIZER_BENCH_CORPUS");
  const auto docs = env ? file_documents(env) : synthetic_documents(5'000'000);
  size_t bytes = 0;
  for (const auto& d : docs) bytes += d.size();
  using clock = std::chrono::steady_clock;
  auto report = [&](const std::string& what, double secs, size_t tokens) {
    std::printf("[tokenizer bench] %-30s %7.3f s  %6.2f MB/s  %9.0f tokens/s\n", what.c_str(), secs,
                bytes / secs / 1e6, tokens / secs);
  };
  std::printf("[tokenizer bench] corpus: %s, %zu documents, %.2f MB\n",
              env ? env : "synthetic mixed", docs.size(), bytes / 1e6);

  // Each measurement uses a freshly loaded tokenizer, so it starts with a cold BPE cache.
  size_t tokens = 0;
  {
    const Tokenizer t = Tokenizer::load(DT_QWEN3_TOKENIZER_JSON);
    const auto t0 = clock::now();
    for (const auto& d : docs) tokens += t.encode(d).size();
    report("encode() loop, 1 thread", std::chrono::duration<double>(clock::now() - t0).count(),
           tokens);
  }
  const int max_threads = omp_get_max_threads();
  for (int threads : {1, 2}) {
    const Tokenizer t = Tokenizer::load(DT_QWEN3_TOKENIZER_JSON);
    omp_set_num_threads(threads);
    const auto t0 = clock::now();
    const auto batch = t.encode_batch(docs);
    const double secs = std::chrono::duration<double>(clock::now() - t0).count();
    size_t n = 0;
    for (const auto& ids : batch) n += ids.size();
    EXPECT_EQ(n, tokens);
    report("encode_batch, " + std::to_string(threads) + " thread(s)", secs, n);
  }
  omp_set_num_threads(max_threads);
}
