// ZeRO stages 1 and 2 (parallel.zero, docs/parallel.md): which rank owns which parameters' AdamW
// state, and the collectives of a sharded step (gradients reduce-scattered, the global gradient
// norm, the updated weights sent from their owners).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/view.h"
#include "dist/comm.h"
#include "model/params.h"

namespace deltatron::train {

// Which tensors a sharding covers (by name); empty: every tensor. With expert parallelism the
// routed-expert slices are sharded over the ranks holding the same experts and every other
// tensor over the data-parallel ranks (two shardings of one store, train/engine.cpp).
using TensorFilter = std::function<bool(const std::string&)>;

// The shards: tensor-aligned ranges of the flat parameter space (model::Params offsets, in
// Params::names() order), balanced by element count over the covered tensors: the i-th covered
// tensor belongs to the rank r with r * total / ranks <= its midpoint < (r + 1) * total / ranks
// (total, midpoint: over the covered tensors' elements). Rank r owns the covered tensors with
// offsets in [bounds[r], bounds[r + 1]); a rank may own nothing when there are fewer tensors
// than ranks. Its runs: the flat ranges of its tensors, consecutive covered tensors merged (the
// alignment padding between them included), so without a filter a rank's shard is one run.
struct ZeroShards {
  struct Run {
    int64_t begin = 0, end = 0;
    int64_t size() const { return end - begin; }
  };
  std::vector<int64_t> bounds;         // ranks + 1 flat offsets, bounds[0] = 0, last = total
  std::vector<std::vector<Run>> runs;  // per rank, in offset order
  int ranks() const { return int(bounds.size()) - 1; }
  int64_t lo(int r) const { return bounds[size_t(r)]; }
  int64_t hi(int r) const { return bounds[size_t(r) + 1]; }
  int64_t size(int r) const;  // elements in rank r's runs
  int64_t largest() const;
  // The rank owning a covered tensor at the flat offset (its Entry::offset).
  int owner(int64_t offset) const;
};
ZeroShards zero_shards(const model::Params& p, int ranks, const TensorFilter& covers = {});
// The same rule from the store's tensors alone (in store order, as model::Params lays them out):
// each tensor's owner among `ranks`, -1 for one the sharding does not cover. What a store made
// with StateOptions::offload_owned (ZeRO 1/2 with offloaded masters) answers before it exists.
std::vector<int> zero_owners(const std::vector<model::ParamSpec>& tensors, int ranks,
                             const TensorFilter& covers = {});

// The sum of squares of rank r's shard of grad_flat (f32 [total]).
double shard_sum_squares(const ZeroShards& s, int r, const core::View& grad_flat);

// ZeRO 2: grad_flat (f32 [total], every rank's partial sums) summed over the ranks of comm into
// this rank's shard only: its runs hold the sum afterwards, the covered tensors outside them are
// left undefined (the rank's partial sums; tensors the sharding does not cover are untouched).
// comm's reduce_scatter takes equal blocks, so the shards (a shard: its runs one after the
// other) travel in rounds of at most `chunk` elements per rank through a staging buffer of
// (ranks + 1) x chunk f32 (block r of a round: the next piece of shard r, zero-padded): exact,
// the same sums as an all-reduce.
void reduce_scatter_shards(dist::Comm& comm, const ZeroShards& s, const core::View& grad_flat,
                           int64_t chunk = int64_t(1) << 22);

// The sum over the ranks of comm of one double per rank, added in rank order on every rank (an
// all_gather: bitwise the same value everywhere).
double sum_over_ranks(dist::Comm& comm, double x);

// After each rank's AdamW step on its shard: every buffer the model reads or the step keeps
// (masters or f32 weights, compute copies, remainders) of shard r broadcast from rank r (one
// broadcast per buffer and run), so every rank holds the updated weights of all shards. covers:
// the sharding's filter (zero_shards). Offloaded masters (training.offload = master+moments) stay
// with their owner: the fp32 masters or remainders in host memory are not sent (a rank keeps its
// shard's only, StateOptions::offload_owned), the MoE routers' device masters are.
void broadcast_shard_weights(dist::Comm& comm, const ZeroShards& s, const model::Params& p,
                             const TensorFilter& covers = {});

// Host f32 values of n elements of a moment view (f32 copied, bf16 widened exactly) and back
// (bf16 rounded to nearest even: bf16 values round-trip exactly).
void moment_to_host(const core::View& x, float* out);
void moment_from_host(const float* in, const core::View& x);

}  // namespace deltatron::train
