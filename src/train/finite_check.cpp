// Scan of named tensors for NaN and infinity (finite_check.h).
#include "train/finite_check.h"

#include <cmath>
#include <cstdio>

namespace deltatron::train {

std::optional<NonFinite> find_non_finite(const model::TensorMap& tensors) {
  for (const auto& [name, t] : tensors) {
    const float* p = t.ptr();
    const int64_t n = t.numel();
    int64_t count = 0, first = -1;
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p[i])) {
        if (first < 0) first = i;
        ++count;
      }
    if (count > 0) return NonFinite{name, first, p[first], count};
  }
  return std::nullopt;
}

std::string describe(const NonFinite& nf) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", double(nf.value));
  return nf.name + "[" + std::to_string(nf.index) + "] = " + buf + " (" + std::to_string(nf.count) +
         " non-finite value" + (nf.count == 1 ? "" : "s") + ")";
}

}  // namespace deltatron::train
