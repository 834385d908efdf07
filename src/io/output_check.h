// Output-path checks done before any work starts, so a bad path fails fast.
#pragma once

#include <string>

namespace deltatron::io {

// Throws core::Error naming the directory if a file cannot be created in path's directory.
void check_writable_parent(const std::string& path);

}  // namespace deltatron::io
