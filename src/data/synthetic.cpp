// Generator for the bundled addition task.
#include "data/synthetic.h"

#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"

namespace deltatron::data {

namespace {
std::string padded(int64_t v, int width) {
  std::string s = std::to_string(v);
  return width > 0 && static_cast<int>(s.size()) < width ? std::string(width - s.size(), '0') + s
                                                         : s;
}
}  // namespace

std::string addition_jsonl(int64_t n, int max_digits, uint64_t seed, bool fixed_width) {
  DT_CHECK(n > 0 && max_digits >= 1 && max_digits <= 9,
           "addition data: n > 0 and 1 <= digits <= 9");
  std::mt19937_64 rng(seed);
  auto operand = [&]() {
    const int digits = static_cast<int>(rng() % max_digits) + 1;
    int64_t lo = 1, hi = 9;
    for (int d = 1; d < digits; ++d) lo *= 10, hi = hi * 10 + 9;
    if (digits == 1) lo = 0;
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  const int w = fixed_width ? max_digits : 0;
  std::string out;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t a = operand(), b = operand();
    nlohmann::json j = {
        {"messages",
         {{{"role", "user"}, {"content", "What is " + padded(a, w) + " + " + padded(b, w) + "?"}},
          {{"role", "assistant"}, {"content", padded(a + b, w ? w + 1 : 0)}}}}};
    out += j.dump() + "\n";
  }
  return out;
}

}  // namespace deltatron::data
