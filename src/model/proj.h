// A projection y = x W^T of a block, with its LoRA adapter when the module is adapted
// (model/adapters.h) and without a weight gradient when the base is frozen: every block calls
// these instead of the linear ops, so LoRA is written once for every block and device.
#pragma once

#include <string>

#include "model/context.h"

namespace deltatron::model {

// y (+)= x W^T (+ s (x A^T) B^T); W = the compute weight of `weight` (cx.p.w), or the given one
// (the MoE router reads its f32 master). The adapter is read in x's dtype: its compute copies
// for compute-dtype inputs, its f32 masters for f32 ones.
void proj_fwd(const Ctx& cx, const std::string& weight, const View& x, int64_t I, int64_t O,
              const View& y, bool accumulate);
void proj_fwd(const Ctx& cx, const std::string& weight, const View& W, const View& x, int64_t I,
              int64_t O, const View& y, bool accumulate);

// dx (+)= dy W (+ the adapter's share); dW += dy^T x unless the base is frozen (into cx.g: the
// group's partial store for a replicated weight under tensor parallelism); the adapter's
// dA, dB accumulate into the adapter store's gradients.
void proj_bwd(const Ctx& cx, const std::string& weight, const View& x, const View& dy, int64_t I,
              int64_t O, const View& dx, bool accumulate);
void proj_bwd(const Ctx& cx, const std::string& weight, const View& W, const View& x,
              const View& dy, int64_t I, int64_t O, const View& dx, bool accumulate);

// Whether `weight` carries a LoRA adapter in this context.
bool proj_adapted(const Ctx& cx, const std::string& weight);

// proj_bwd in two halves, for a projection without an adapter (proj_adapted false; checked):
// dx (+)= dy W first, then dW += dy^T x once the caller has x. Selective recomputation rebuilds
// the MLP's hidden x in the same pass that turns dx into the gate and up gradients.
void proj_bwd_dx(const Ctx& cx, const std::string& weight, const View& dy, int64_t I, int64_t O,
                 const View& dx, bool accumulate);
void proj_bwd_dw(const Ctx& cx, const std::string& weight, const View& x, const View& dy, int64_t I,
                 int64_t O);

// The gradient of `name`, or, when the base is frozen, `scratch` allocated (zeroed) to its size:
// for the ops whose weight gradient is not optional (tiny tensors: conv1d, the GDN gates).
View grad_or_scratch(const Ctx& cx, const std::string& name, Buffer& scratch);

}  // namespace deltatron::model
