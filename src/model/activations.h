// The activation account: which tensors the model's forward keeps for its backward, per part of a
// layer (norms, gated attention, Gated DeltaNet, MLP, MoE) and for the model (residual stream,
// LM head, MTP head), and the largest set alive at once in a pack's forward and backward. It
// mirrors the model code tensor by tensor (the `what` labels are the model's Buffer labels;
// tests/test_activation_memory.cpp holds the two together through the CPU allocator), so the
// memory plan (train/memory_plan.h) can print it and trust it.
//
// Sizes are one rank's without tensor, sequence or expert parallelism, LoRA or images (the
// vision tower has its own estimate: model::vision_activation_bytes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "model/config.h"

namespace deltatron::model {

struct ActivationOptions {
  bool recompute = false;  // whole-layer recomputation (training.recompute, Model::set_recompute)
  bool selective = true;   // selective recomputation (training.recompute_selective, Ctx::selective)
};

// One tensor a layer's forward keeps for its backward.
struct SavedTensor {
  const char* what;  // the model code's Buffer label
  int64_t numel;
  core::DType dtype;
  bool recomputed;  // selective recomputation drops it after the forward and rebuilds it
  double bytes() const { return double(numel) * double(core::dtype_size(dtype)); }
};

// A layer's parts, every tensor listed whether selective recomputation keeps it or not. N
// tokens, dt the compute dtype. layer_norm_tensors: the decoder layer's own (its residual copies
// and the two RMSNorms); layer_tensors: the layer's whole list (norms, mixer, FFN).
std::vector<SavedTensor> layer_norm_tensors(const Config& c, int64_t N, core::DType dt);
std::vector<SavedTensor> attention_tensors(const Config& c, int64_t N, core::DType dt);
std::vector<SavedTensor> gdn_tensors(const Config& c, int64_t N, core::DType dt);
std::vector<SavedTensor> ffn_tensors(const Config& c, int64_t N, core::DType dt);  // MLP or MoE
std::vector<SavedTensor> layer_tensors(const Config& c, LayerType t, int64_t N, core::DType dt);

// Bytes of a list kept: every tensor, or with selective recomputation those not recomputed.
double kept_bytes(const std::vector<SavedTensor>& ts, bool selective);

// One layer's activation bytes: kept for the backward (with o.selective), all of its tensors
// (without), and the largest live sets of its own buffers in its forward (its kept tensors and
// temporaries; an upper bound) and in its backward (besides its kept tensors and the incoming
// f32 gradient: the gradients, the recomputed tensors and the blocks' temporaries).
struct LayerActivation {
  double kept, all, fwd, bwd;
};
LayerActivation layer_activation(const Config& c, LayerType t, int64_t N, core::DType dt,
                                 bool selective);

// The pack's activation memory over one forward and backward (Model::fwd_bwd).
struct ActivationAccount {
  double layer_kept[2] = {0, 0};  // bytes one layer keeps, by type: [0] GDN, [1] attention
  double layer_all[2] = {0, 0};   // the same without selective recomputation
  double kept = 0;                // every layer's kept tensors (trunk and MTP)
  double peak = 0;                // the largest live set of activation buffers at any moment
  std::string peak_phase;         // where it is ("backward of layer 23", "LM head", ...)
};
ActivationAccount activation_account(const Config& c, int64_t N, core::DType dt,
                                     const ActivationOptions& o);

// A few lines for the plan's printout: per layer type the bytes kept (and, with selective
// recomputation, the bytes it saves), the whole stack's, and the peak with its phase; a: the
// account activation_account(c, N, dt, o) made.
std::string describe_activations(const Config& c, int64_t N, core::DType dt,
                                 const ActivationOptions& o, const ActivationAccount& a);

}  // namespace deltatron::model
