// Contract for the token embedding op family.
//
// Shape suffixes: N tokens in the pack, V vocabulary size, D hidden size. Views
// (docs/ops-views.md), one device per call: ids_N i32; table_VD dt (f32 or bf16 on CUDA, f32 on
// the CPU); x_ND, dx_ND, dtable_VD f32.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// Forward: x[n, :] = table[ids[n], :]   (no scaling; spec 2.1)
//   ids_N    [N]     in   token ids in [0, V): on the CPU an id outside [0, V) is a core::Error
//                         naming its position; on CUDA the ids stay on the device, so the caller
//                         validates them (such a row of x is zeros)
//   table_VD [V, D]  in   embed_tokens.weight
//   x_ND     [N, D]  out  overwritten
// Saved for backward: ids_N only.
void embedding_fwd(const core::View& ids_N, const core::View& table_VD, int64_t N, int64_t V,
                   int64_t D, const core::View& x_ND);

// Backward: dtable[ids[n], :] += dx[n, :] for every n (repeated ids sum).
//   ids_N     [N]     in     the ids given to embedding_fwd; ids outside [0, V) (e.g. negative
//                            padding ids) are skipped on both devices
//   dx_ND     [N, D]  in     gradient of the looked-up rows
//   dtable_VD [V, D]  inout  parameter gradient, ACCUMULATED; rows not looked up are untouched
// No padding_idx handling: released configs have pad_token_id = None (spec 2.1).
void embedding_bwd(const core::View& ids_N, const core::View& dx_ND, int64_t N, int64_t D,
                   int64_t V, const core::View& dtable_VD);

// Weighted bag of rows (the vision tower's learned position embedding, interpolated bilinearly:
// spec 3.3, B = 4 corners): for every row n
//   x[n, :] (+)= sum_b w[n,b] * table[idx[n,b], :]
//   idx_NB [N, B] i32 in: rows of table, each in [0, V) (checked on the CPU: a core::Error; on
//                         CUDA the indices stay on the device, so the caller validates them: an
//                         index outside [0, V) is skipped)
//   w_NB   [N, B] f32 in: their weights
//   table_VD [V, D] dt in (f32, or bf16 on CUDA);  x_ND [N, D] f32: OVERWRITTEN, or ACCUMULATED
//   when accumulate
// Saved for backward: idx_NB, w_NB.
void embedding_bag_fwd(const core::View& idx_NB, const core::View& w_NB, const core::View& table_VD,
                       int64_t N, int64_t B, int64_t V, int64_t D, const core::View& x_ND,
                       bool accumulate);

// Backward: dtable[idx[n,b], :] += w[n,b] * dx[n, :] for every n, b (rows in order: the sums
// do not depend on the thread count; CUDA: a stable sort by row, no atomics, cuda/embedding.h).
//   idx_NB, w_NB as given to the forward;  dx_ND [N, D] f32 in;
//   dtable_VD [V, D] f32 inout, ACCUMULATED.
void embedding_bag_bwd(const core::View& idx_NB, const core::View& w_NB, const core::View& dx_ND,
                       int64_t N, int64_t B, int64_t V, int64_t D, const core::View& dtable_VD);

}  // namespace deltatron::ops
