// Non-finite values in named tensors: found, not trained on, never written to a checkpoint.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "model/weights.h"

namespace deltatron::train {

struct NonFinite {
  std::string name;   // the tensor
  int64_t index = 0;  // flat index of its first non-finite element
  float value = 0;    // NaN or +-inf
  int64_t count = 0;  // non-finite elements in that tensor
};

// The first tensor (in name order) holding a NaN or an infinity, if any.
std::optional<NonFinite> find_non_finite(const model::TensorMap& tensors);

// "model.norm.weight[3] = nan (1 non-finite value)", for messages.
std::string describe(const NonFinite& nf);

}  // namespace deltatron::train
