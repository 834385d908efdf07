// The collectives of tensor and sequence parallelism inside the model (model/tensor_parallel.h):
// the token gather before the column-parallel projections, the sum (or reduce-scatter) after the
// row-parallel ones, and their backward counterparts. Without tensor parallelism every helper is
// the one-rank code path itself (no copy, no communication).
//
// Shapes: N tokens of the (padded) pack, Nl = N / P this rank's token shard with sp (rows
// [r Nl, (r+1) Nl)), Nl = N without; D the width of the rows exchanged.
#pragma once

#include <cstdint>
#include <string>

#include "data/pack.h"
#include "model/context.h"

namespace deltatron::model {

// Sequence parallel: x_local [Nl, D] of every rank gathered into storage [N, D] (allocated in
// x's dtype when empty), which is returned; otherwise x_local itself.
View tp_gather_tokens(const Ctx& cx, const View& x_local, int64_t D, Buffer& storage,
                      const char* what);

// The input gradient of a column-parallel block, dx_full [N, D] (compute dtype), holds this
// rank's heads' share: summed over the group, in place (dx_local is dx_full), or with sp
// reduce-scattered into dx_local [Nl, D].
void tp_reduce_tokens(const Ctx& cx, const View& dx_full, const View& dx_local, int64_t D);

// resid_local [Nl, O] (f32) += the sum over the group of y [N, O] (f32, this rank's partial sums;
// overwritten): all-reduced, or with sp reduce-scattered to the token shards. Tensor parallel
// only (cx.tp set).
void tp_sum_into(const Ctx& cx, const View& y, int64_t O, const View& resid);

// A row-parallel projection into the f32 residual stream: resid_local [Nl, O] += the sum over the
// group of x [N, I] W^T. One rank: proj_fwd accumulating into resid.
void tp_proj_fwd_sum(const Ctx& cx, const std::string& weight, const View& x, int64_t I, int64_t O,
                     const View& resid);

// This rank's rows [r Nl, (r+1) Nl) of a full [N, D] tensor (a view); full itself without sp.
View tp_local_rows(const Ctx& cx, const View& full, int64_t D);

// The embedding of this rank's tokens: out [Nl, D] (f32) = table[ids[r Nl + n]]. The one place
// where the token dimension is scattered: the trunk and the MTP head both embed through it.
void tp_embed(const Ctx& cx, const View& ids_N, const View& out);

// The embedding gradient from this rank's token rows dx [Nl, D] (f32): gathered to every token
// (sp) and added into the table's gradient, which each rank then holds whole.
void tp_embed_bwd(const Ctx& cx, const View& grad_ids_N, const View& dx);

// Sequence parallel packs hold a multiple of P tokens: `pack` with its last sample's span
// extended by padding slots (input 0, targets -100, positions continuing, is_pad 1; its MTP
// inputs as data::make_pack would roll them). The real tokens and their results are unchanged.
data::Pack tp_pad_pack(const data::Pack& pack, int64_t P);

}  // namespace deltatron::model
