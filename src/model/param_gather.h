// The hook through which Model brings a unit of parameters onto the device before it runs and
// lets it go after (ZeRO 3, train/zero3.h): the model calls it; the owner of the shards
// implements it by binding the unit's gathered views into the Params (Params::bind).
#pragma once

namespace deltatron::model {

// Units: trunk layer i (0 <= i < num_hidden_layers: the tensors under "layers.<i>."), and
// kOuterUnit (every other tensor: embeddings, final norm, lm_head, the MTP head and layer).
// Per pack, Model::fwd_bwd (and count_routes) calls, in this order on every rank alike:
//   gather(outer, grads)                                   the outer unit for the whole pack
//   forward, i = 0..L-1: gather(i, false), prefetch(i + 1) when i + 1 < L, fwd, release(i, false)
//   backward, i = L-1..0: gather(i, true), prefetch(i - 1) when i > 0, [recompute], bwd,
//                         release(i, true)
//   release(outer, grads)
// (release(outer, false) right after the forward when there is no backward.) Every call may be
// a collective over the data-parallel ranks, so all ranks make the same calls in the same order.
class ParamGather {
 public:
  static constexpr int kOuterUnit = -1;
  virtual ~ParamGather() = default;
  // The unit's weights (w, and master where the model reads one) bound in the Params; grads:
  // also a zeroed gradient buffer bound as g (the backward accumulates into it). Takes the
  // gather prefetch(unit) started, if any.
  virtual void gather(int unit, bool grads) = 0;
  // May start the gather of `unit` early (the unit the model runs next), so that its transfer
  // overlaps the current unit's compute; a no-op is correct.
  virtual void prefetch(int unit) { (void)unit; }
  // Unbinds the unit's views; grads: its gradient first reduced (summed over the ranks) into the
  // owners' shards, so no rank keeps the unit's full gradient.
  virtual void release(int unit, bool grads) = 0;
};

}  // namespace deltatron::model
