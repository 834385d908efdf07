// Reader and validator for pre-tokenised JSONL samples.
#include "data/sample.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <type_traits>

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

// A flat array of numbers, or an array of equal-length arrays (rows) flattened: HF processors
// write image_grid_thw as [[t, h, w], ...], pixel_values as [[...], ...], position_ids as
// [[T...], [H...], [W...]]. cols: the row length found (0 when flat).
template <typename T>
std::vector<T> read_flat(const nlohmann::json& j, const char* key, const std::string& where,
                         int64_t& cols) {
  DT_CHECK(j.is_array(), where, ": \"", key, "\" must be an array");
  std::vector<T> out;
  cols = 0;
  const auto take = [&](const nlohmann::json& v, size_t i) {
    if constexpr (std::is_integral_v<T>)
      DT_CHECK(v.is_number_integer(), where, ": \"", key, "\"[", i, "] is not an integer");
    else
      DT_CHECK(v.is_number(), where, ": \"", key, "\"[", i, "] is not a number");
    out.push_back(v.get<T>());
  };
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_array()) {
      DT_CHECK(cols == 0, where, ": \"", key, "\" mixes numbers and arrays");
      take(j[i], i);
      continue;
    }
    DT_CHECK(i == 0 || cols > 0, where, ": \"", key, "\" mixes numbers and arrays");
    DT_CHECK(i == 0 ? !j[i].empty() : int64_t(j[i].size()) == cols, where, ": \"", key, "\"[", i,
             "] has ", j[i].size(), " values; every row must have the first row's ", cols);
    cols = int64_t(j[i].size());
    for (const auto& v : j[i]) take(v, i);
  }
  return out;
}

// Optional vision-language fields (docs/vision.md): MRoPE rows and the sample's images as an HF
// processor gives them. The patch width (pixel_values per patch) is checked by the model against
// its vision config.
void read_vision_fields(const nlohmann::json& j, const std::string& where, Sample& s) {
  const int64_t L = int64_t(s.input_ids.size());
  int64_t cols = 0;
  if (j.contains("position_ids") && !j["position_ids"].is_null()) {
    s.position_ids = read_flat<int32_t>(j["position_ids"], "position_ids", where, cols);
    DT_CHECK(int64_t(s.position_ids.size()) == 3 * L, where, ": \"position_ids\" has ",
             s.position_ids.size(), " values; MRoPE needs 3 rows (T, H, W) of ", L);
    for (size_t i = 0; i < s.position_ids.size(); ++i)
      DT_CHECK(s.position_ids[i] >= 0, where, ": \"position_ids\" value ", i, " is negative");
  }
  const bool grid = j.contains("image_grid_thw") && !j["image_grid_thw"].is_null();
  const bool pix = j.contains("pixel_values") && !j["pixel_values"].is_null();
  DT_CHECK(grid == pix, where, ": \"", grid ? "image_grid_thw" : "pixel_values", "\" without \"",
           grid ? "pixel_values" : "image_grid_thw", "\"");
  if (!grid) return;
  s.image_grid_thw = read_flat<int32_t>(j["image_grid_thw"], "image_grid_thw", where, cols);
  DT_CHECK(!s.image_grid_thw.empty() && s.image_grid_thw.size() % 3 == 0, where,
           ": \"image_grid_thw\" must hold (t, h, w) per image, got ", s.image_grid_thw.size(),
           " values");
  int64_t patches = 0;
  for (size_t i = 0; i < s.image_grid_thw.size(); ++i) {
    DT_CHECK(s.image_grid_thw[i] > 0, where, ": \"image_grid_thw\" value ", i, " is ",
             s.image_grid_thw[i], "; grids are positive");
    if (i % 3 == 2)
      patches += int64_t(s.image_grid_thw[i - 2]) * s.image_grid_thw[i - 1] * s.image_grid_thw[i];
  }
  s.pixel_values = read_flat<float>(j["pixel_values"], "pixel_values", where, cols);
  DT_CHECK(!s.pixel_values.empty() && int64_t(s.pixel_values.size()) % patches == 0 &&
               (cols == 0 || int64_t(s.pixel_values.size()) / cols == patches),
           where, ": \"pixel_values\" has ", s.pixel_values.size(), " values",
           cols ? " in rows of " + std::to_string(cols) : std::string(), "; the grids give ",
           patches, " patches");
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
    read_vision_fields(j, where, s);
    samples.push_back(std::move(s));
  }
  DT_CHECK(in.eof(), path, ": read error after line ", line_no);
  DT_CHECK(!samples.empty(), path, ": no samples");
  return samples;
}

}  // namespace deltatron::data
