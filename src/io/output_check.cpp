// Output-path checks done before any work starts.
#include "io/output_check.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace deltatron::io {

void check_writable_parent(const std::string& path) {
  std::filesystem::path p(path);
  std::filesystem::path dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
  DT_CHECK(std::filesystem::is_directory(dir), path, ": output directory ", dir.string(),
           " does not exist");
  DT_CHECK(::access(dir.c_str(), W_OK) == 0, path, ": output directory ", dir.string(),
           " is not writable");
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (std::filesystem::exists(a, ec) && std::filesystem::exists(b, ec))
    return std::filesystem::equivalent(a, b, ec) && !ec;
  const auto ca = std::filesystem::weakly_canonical(a, ec);
  if (ec) return false;
  return ca == std::filesystem::weakly_canonical(b, ec) && !ec;
}

}  // namespace deltatron::io
