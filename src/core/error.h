// Error type and checks: every failure the user can cause becomes one readable line.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace deltatron::core {

// Thrown for bad input (files, configs, data) and violated contracts. The message is one line
// that names the file, line or tensor involved; the CLI prints it and exits non-zero.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename A, typename... Rest>
void append(std::ostringstream& os, const A& a, const Rest&... rest) {
  os << a;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from parts: fail("tensor ", name, " has shape ", s).
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  throw Error(os.str());
}

}  // namespace deltatron::core

// DT_CHECK(cond, parts...): throws core::Error with the concatenated parts when cond is false.
#define DT_CHECK(cond, ...)                            \
  do {                                                 \
    if (!(cond)) ::deltatron::core::fail(__VA_ARGS__); \
  } while (0)
