// Reader and validator for pre-tokenised JSONL samples.
#include "data/sample.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace deltatron::data {

int64_t count_label_tokens(const Sample& s) {
  int64_t n = 0;
  for (size_t t = 1; t < s.labels.size(); ++t) n += s.labels[t] != kIgnoreIndex;
  return n;
}

namespace {

std::vector<int32_t> read_int_array(const nlohmann::json& j, const char* key,
                                    const std::string& where, int64_t vocab_size,
                                    bool allow_ignore) {
  DT_CHECK(j.is_array(), where, ": \"", key, "\" must be an array of integers");
  std::vector<int32_t> out;
  out.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& v = j[i];
    DT_CHECK(v.is_number_integer(), where, ": \"", key, "\"[", i, "] is not an integer");
    int64_t x = v.get<int64_t>();
    bool ok = (x >= 0 && x < vocab_size) || (allow_ignore && x == kIgnoreIndex);
    DT_CHECK(ok, where, ": \"", key, "\"[", i, "] = ", x, " is outside the vocabulary [0, ",
             vocab_size, ")", allow_ignore ? " and is not -100" : "");
    out.push_back(static_cast<int32_t>(x));
  }
  return out;
}

}  // namespace

std::vector<Sample> read_token_jsonl(const std::string& path, int64_t vocab_size) {
  std::ifstream in(path);
  DT_CHECK(in.good(), path, ": cannot open data file");
  std::vector<Sample> samples;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      core::fail(where, ": malformed JSON (", e.what(), ")");
    }
    DT_CHECK(j.is_object(), where, ": expected a JSON object");
    DT_CHECK(j.contains("input_ids"), where, ": missing \"input_ids\"");
    Sample s;
    s.input_ids = read_int_array(j["input_ids"], "input_ids", where, vocab_size, false);
    DT_CHECK(!s.input_ids.empty(), where, ": empty sample (\"input_ids\" has no tokens)");
    if (j.contains("labels") && !j["labels"].is_null()) {
      s.labels = read_int_array(j["labels"], "labels", where, vocab_size, true);
      DT_CHECK(s.labels.size() == s.input_ids.size(), where, ": \"labels\" has ", s.labels.size(),
               " entries but \"input_ids\" has ", s.input_ids.size());
    } else {
      s.labels = s.input_ids;
    }
    samples.push_back(std::move(s));
  }
  DT_CHECK(in.eof(), path, ": read error after line ", line_no);
  DT_CHECK(!samples.empty(), path, ": no samples");
  return samples;
}

}  // namespace deltatron::data
