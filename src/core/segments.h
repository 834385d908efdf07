// Segment boundaries of a packed (THD) token stream, as every token-mixing op receives them.
#pragma once

#include <cstdint>

namespace deltatron::core {

// Physical segments of a pack: segment s owns tokens [cu[s], cu[s+1]); cu[0] = 0 and
// cu[n] = N, the pack length. Token-mixing ops (attention, conv1d, the delta rule) treat every
// segment as an independent sequence: causal inside it, never reading across a start. A
// sample's alignment padding trails its real tokens inside its own physical segment, so pads
// can never influence real tokens (they only look backwards). Padding-only segments are allowed.
struct Segments {
  const int32_t* cu = nullptr;  // [n + 1], non-decreasing
  int n = 0;                    // number of segments
};

}  // namespace deltatron::core
