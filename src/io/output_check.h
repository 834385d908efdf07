// Output-path checks done before any work starts, so a bad path fails fast.
#pragma once

#include <string>

namespace deltatron::io {

// Throws core::Error naming the directory if a file cannot be created in path's directory.
void check_writable_parent(const std::string& path);

// True when a and b name the same file: the same identity when both exist (hard links and
// symlinks included), else the same absolute path once symlinks in existing parents resolve.
bool same_file(const std::string& a, const std::string& b);

}  // namespace deltatron::io
