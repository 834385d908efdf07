// What every block needs: the config, the parameters, the pack on the model's device, and
// buffers for activations in the compute dtype.
#pragma once

#include <string>

#include "core/buffer.h"
#include "data/pack.h"
#include "model/config.h"
#include "model/expert_parallel.h"
#include "model/params.h"
#include "model/tensor_parallel.h"

namespace deltatron::model {

using core::Buffer;
using core::View;

class Adapters;

// A pack's index tensors on the model's device, built once per pack. The token ids and
// targets are validated here against the vocabulary (an error names the position); segment
// bounds are kept on the host too, for launch plans.
struct Batch {
  const data::Pack& host;
  int64_t N;
  int nseg;
  core::Segments seg;  // host bounds (pack.cu_seqlens_padded)
  Buffer ids, targets, pos3, cu;
  Buffer grad_ids;  // ids with HF's padding_idx rows set to -1 (no embedding grad)
  Buffer mtp_ids, mtp_targets, mtp_grad_ids;  // the pack's rolled MTP inputs (MTP models)
  Buffer group_all, group_seq;  // router-loss groups (MoE models): one group / one per sample,
                                // -1 on padding
  // The pack's MoE error words (ops/moe.h, bad_3; MoE models): every MoE layer's router and
  // permutation record a non-finite router logit or a bad expert id there on the device, and
  // the model reads them once, after the forward (check_moe_errors), instead of once per layer.
  Buffer moe_bad;
  Batch(const Config& c, const data::Pack& p, core::Device dev);
};

struct Ctx {
  const Config& c;
  Params& p;
  const Batch& b;
  const Adapters* lora = nullptr;      // a LoRA run's adapters (model/proj.h applies them)
  uint64_t dropout_key = 0;            // LoRA dropout's masks for this pack; 0: none
  const ExpertParallel* ep = nullptr;  // expert parallelism (model/expert_parallel.h); null: off
  // Tensor parallelism (model/tensor_parallel.h); null: off. tpg: this pack's partial gradients.
  const TensorParallel* tp = nullptr;
  const TpGrads* tpg = nullptr;
  // Selective recomputation (docs/perf.md, "Activation memory"): the blocks keep only the tensors
  // that are expensive to rebuild and recompute the cheap ones (norm outputs, SwiGLU products,
  // the GDN conv outputs and gates, attention's normed q/k and gated output) in the backward with
  // the forward's own ops, so the gradients are bitwise the same. false: keep everything.
  bool selective = false;
  // The parameters held apart from p in a frozen store (model/model.h: the vision tower's that
  // model.vision does not train); null: p holds every parameter.
  const Params* apart = nullptr;
  // Tensor parallelism with LoRA: this pack's partial gradients of the adapter tensors the group
  // sums (model/tensor_parallel.h); null: none.
  const TpGrads* lora_tpg = nullptr;
  // The store holding `name` (p, or apart for a tensor p holds apart), and its compute weight.
  const Params& store(const std::string& name) const {
    return apart != nullptr && p.held_apart(name) ? *apart : p;
  }
  View w(const std::string& name) const { return store(name).w(name); }
  core::Device dev() const { return p.device(); }
  core::DType dt() const { return p.dt(); }
  // N: the pack's tokens, which every mixer and FFN sees (sp: padded to a multiple of the group);
  // Nl: this rank's rows of the residual stream (N / group size with sp, else N).
  int64_t N() const { return b.N; }
  int64_t Nl() const { return sp() ? b.N / tp->size() : b.N; }
  bool sp() const { return tp != nullptr && tp->sp; }
  // A block's share of `n` heads (or FFN columns) under tensor parallelism.
  int64_t local(int64_t n) const { return tp ? n / tp->size() : n; }
  // The gradient a block accumulates into for `name`: this pack's partial store for a replicated
  // parameter the group sums (TpGrads), else the parameter's gradient (p.g).
  View g(const std::string& name) const {
    if (tpg) {
      const View v = tpg->at(name);
      if (!v.empty()) return v;
    }
    return p.g(name);
  }
  // g for a writer that can overwrite (Params::g_target): on the step's first write of `name`
  // accumulate is false; a partial store always adds.
  Params::GradTarget g_target(const std::string& name) const {
    if (tpg) {
      const View v = tpg->at(name);
      if (!v.empty()) return {v, true};
    }
    return p.g_target(name);
  }
  // The gradient an adapter tensor accumulates into (lora's store, or its partial store).
  View lora_g(const std::string& key) const;
  Buffer act(int64_t n, const char* what) const { return Buffer(dev(), dt(), {n}, what); }
  Buffer f32(int64_t n, const char* what) const {
    return Buffer(dev(), core::DType::f32, {n}, what);
  }
  Buffer i32(int64_t n, const char* what) const {
    return Buffer(dev(), core::DType::i32, {n}, what);
  }
};

}  // namespace deltatron::model
