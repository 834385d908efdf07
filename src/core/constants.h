// Constants shared by every part of the engine, defined once.
#pragma once

#include <cstdint>

namespace deltatron::core {

// Label of a position that is not a target (Hugging Face's ignore_index).
constexpr int32_t kIgnoreIndex = -100;

}  // namespace deltatron::core
