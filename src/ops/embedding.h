// Contract for the token embedding op family (dispatches to cpu:: or cuda::).
//
// Shape suffixes: N tokens in the pack, V vocabulary size, D hidden size.
// All tensors are contiguous row-major float32; ids are int32.
#pragma once

#include <cstdint>

#include "core/device.h"

namespace deltatron::ops {

// Forward: x[n, :] = table[ids[n], :]   (no scaling; spec 2.1)
//   ids_N    [N]     in   token ids; each must lie in [0, V), else core::Error
//   table_VD [V, D]  in   embed_tokens.weight
//   x_ND     [N, D]  out  overwritten
// Saved for backward: ids_N only.
void embedding_fwd(core::Device dev, const int32_t* ids_N, const float* table_VD, int64_t N,
                   int64_t V, int64_t D, float* x_ND);

// Backward: dtable[ids[n], :] += dx[n, :] for every n (repeated ids sum).
//   ids_N     [N]     in     the ids given to embedding_fwd (already range-checked there)
//   dx_ND     [N, D]  in     gradient of the looked-up rows
//   dtable_VD [V, D]  inout  parameter gradient, ACCUMULATED; rows not looked up are untouched
// No padding_idx handling: released configs have pad_token_id = None (spec 2.1).
void embedding_bwd(core::Device dev, const int32_t* ids_N, const float* dx_ND, int64_t N, int64_t D,
                   float* dtable_VD);

}  // namespace deltatron::ops
