// ZeRO stages 1 and 2 (parallel.zero, docs/parallel.md): which rank owns which parameters' AdamW
// state, and the collectives of a sharded step (gradients reduce-scattered, the global gradient
// norm, the updated weights sent from their owners).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/view.h"
#include "dist/comm.h"
#include "model/params.h"

namespace deltatron::train {

// The shards: contiguous, tensor-aligned ranges of the flat parameter space (model::Params
// offsets, in Params::names() order), balanced by element count: a tensor belongs to the rank r
// with r * total / ranks <= its midpoint < (r + 1) * total / ranks. Rank r owns the flat range
// [bounds[r], bounds[r + 1]) (the alignment padding between tensors included); a rank may own
// nothing when there are fewer tensors than ranks.
struct ZeroShards {
  std::vector<int64_t> bounds;  // ranks + 1 flat offsets, bounds[0] = 0, bounds[ranks] = total
  int ranks() const { return int(bounds.size()) - 1; }
  int64_t lo(int r) const { return bounds[size_t(r)]; }
  int64_t hi(int r) const { return bounds[size_t(r) + 1]; }
  int64_t size(int r) const { return hi(r) - lo(r); }
  int64_t largest() const;
  // The rank owning the flat offset (a tensor's Entry::offset).
  int owner(int64_t offset) const;
};
ZeroShards zero_shards(const model::Params& p, int ranks);

// ZeRO 2: grad_flat (f32 [total], every rank's partial sums) summed over the ranks of comm into
// this rank's shard only: grad_flat[lo(rank), hi(rank)) holds the sum afterwards, the rest of it
// is left undefined (the rank's partial sums). comm's reduce_scatter takes equal blocks, so the
// shards travel in rounds of at most `chunk` elements per rank through a staging buffer of
// (ranks + 1) x chunk f32 (block r of a round: the next piece of shard r, zero-padded): exact,
// the same sums as an all-reduce.
void reduce_scatter_shards(dist::Comm& comm, const ZeroShards& s, const core::View& grad_flat,
                           int64_t chunk = int64_t(1) << 22);

// The sum over the ranks of comm of one double per rank, added in rank order on every rank (an
// all_gather: bitwise the same value everywhere).
double sum_over_ranks(dist::Comm& comm, double x);

// After each rank's AdamW step on its shard: every buffer the model reads or the step keeps
// (masters or f32 weights, compute copies, remainders) of shard r broadcast from rank r, so every
// rank holds the updated weights of all shards. Offloaded state is not supported (refused by the
// config).
void broadcast_shard_weights(dist::Comm& comm, const ZeroShards& s, const model::Params& p);

// Host f32 values of n elements of a moment view (f32 copied, bf16 widened exactly) and back
// (bf16 rounded to nearest even: bf16 values round-trip exactly).
void moment_to_host(const core::View& x, float* out);
void moment_from_host(const float* in, const core::View& x);

}  // namespace deltatron::train
