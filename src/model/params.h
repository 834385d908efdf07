// The model's parameters on its device: the masters (fp32, or the lean pair of a bf16 weight and
// a 16-bit remainder: training.master), the compute copies (bf16 on CUDA, or f32 weights, always
// so on the CPU) and fp32 gradients, each one flat buffer; tensors are addressed by HF name.
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "model/config.h"
#include "model/weights.h"
#include "ops/adamw.h"

namespace deltatron::model {

// Parameters made one host tensor at a time: the names and shapes, and a function giving a
// tensor's f32 values.
struct ParamSource {
  std::vector<ParamSpec> specs;
  std::function<core::Tensor(const ParamSpec&)> make;
};

// How the training state is stored (training.master, training.moments; ops/adamw.h).
struct StateOptions {
  // false ("fp32"): an fp32 master per parameter, and a bf16 compute copy when the model
  // computes in bf16. true ("remainder"): no fp32 master; the bf16 weight and a u16 remainder
  // (core/bf16.h) hold it exactly. A model computing in f32 (the CPU, CUDA in fp32 precision)
  // keeps f32 weights beside the pair (the master joined after every step: no saving there, the
  // reference of the CUDA path), and a bf16 model keeps f32 copies only of the tensors it reads
  // in f32 (keeps_f32_weight).
  bool master_remainder = false;
  core::DType moments = core::DType::f32;  // AdamW exp_avg / exp_avg_sq: f32 or bf16
  // training.offload: which state lives in (pinned) host memory, streamed through the device by
  // the step (ops::adamw_step_offloaded). The moments (the engine's); the masters: the fp32
  // masters (which needs bf16 compute: with f32 compute the f32 weights are the masters; the MoE
  // routers' stay on the device, where the model reads them) or the remainders.
  bool offload_moments = false, offload_master = false;
  // ZeRO 1 and 2 with offloaded masters (train/zero.h): which of the store's tensors (given in
  // store order) this rank owns; only those keep their offloaded masters (fp32, or the
  // remainders), so the host holds the rank's share. The others' are their owners': the store
  // gives them no offloaded view (adamw_tensor), and download refuses them (the engine reads them
  // from their owners). Empty: every tensor's.
  std::function<std::vector<bool>(const std::vector<ParamSpec>&)> offload_owned;
  // A frozen store (the base model of a LoRA run): only the weights the model reads (the compute
  // copies, and f32 copies of keeps_f32_weight's tensors in a bf16 model), no master, gradient or
  // moments; g() gives empty views, which the blocks take as "no gradient wanted".
  bool frozen = false;
  // ZeRO 3 (train/zero3.h): the store holds no buffers, only the layout (names, shapes, the
  // one-rank offsets); the owner of the shards binds each tensor's gathered views (bind) while
  // its unit runs (model/param_gather.h) and unbinds them after. w, master and g of an unbound
  // tensor are errors; the flat-buffer methods (adamw_tensor, download, ...) are not available.
  // With master_remainder the shards' owner keeps the lean pair (bf16 weights + remainders).
  // With frozen (the base of a LoRA run under ZeRO 3): the bound views are the weights alone.
  bool gathered = false;
  // model::Model: a vision tower the run does not train (model.vision = frozen, merger) is held
  // apart in a frozen store (its compute weights alone: no master, gradient or moments). false:
  // it stays in this store with the whole training state and is never stepped (the layout before
  // issue 17; the reference of the equivalence test, tests/test_vision_train.cpp).
  bool frozen_apart = true;
};

// "fp32" / "remainder" and "fp32" / "bf16", the config spellings.
std::string master_name(const StateOptions& o);
std::string moments_name(const StateOptions& o);
std::string offload_name(const StateOptions& o);  // none | moments | master+moments
// The offloaded AdamW step's flags for these options (what training.offload puts in host memory).
ops::AdamWOffload adamw_offload(const StateOptions& o);
// The options from their config spellings; an error naming `where` and the key for a bad one.
StateOptions parse_state_options(const std::string& master, const std::string& moments,
                                 const std::string& offload, const std::string& where);

// Bytes per parameter on the device: weights and gradients (held), and with the AdamW moments
// (train); and in host memory (offloaded state). dt = the compute dtype. fp32 master: 4 + 4
// gradient (+ 2 bf16 copy); remainder: 2 + 2 + 4 gradient (+ 4 f32 weights when dt is f32);
// moments 8 (fp32) or 4 (bf16). For bf16: 18 (fp32, fp32) -> 16 (remainder) -> 12 (remainder,
// bf16 moments) -> 8 (offloaded moments) -> 6 (offloaded masters too). The MoE routers' f32
// weights (a few per mille of a model) are not counted.
struct StateBytes {
  double held = 0, train = 0, host = 0;
};
StateBytes state_bytes(core::DType dt, const StateOptions& o);

// The tensors a bf16 model reads in f32 from the master (Params::master): the MoE routers
// ("...mlp.gate.weight", model/moe_block.cpp computes the router logits in fp32).
bool keeps_f32_weight(const std::string& name);

// Which parameters a store holds (model/model.h: a run that trains part of the model keeps the
// rest in a frozen store of its own); empty: every one.
using NameFilter = std::function<bool(const std::string& name)>;

class Params {
 public:
  struct Entry {
    int64_t offset = 0, numel = 0;
    core::Shape shape;
    // The tensor's offset in the layout of every given parameter, the ones held apart included
    // (= offset when none is): the AdamW stochastic-rounding counter (ops/adamw.h), so a store
    // without the frozen tensors draws the bits the whole store draws.
    int64_t counter = 0;
    int64_t f32_offset = -1;     // in the f32 buffer (masters or f32 weights), -1: none
    int64_t router_offset = -1;  // in router_ (offloaded fp32 masters, MoE routers), -1: none
    // In the offloaded masters (offload_master: the fp32 masters or the remainders): = offset
    // unless StateOptions::offload_owned says another rank keeps them (-1).
    int64_t host_offset = -1;
    // StateOptions::gathered: the views bound by bind() (empty: not bound).
    core::View bound_w, bound_f32, bound_g;
  };
  // Copies `host` (every tensor, keyed by HF name) to `dev`. dt = compute / activation storage
  // type (f32 on the CPU). keep: the tensors this store holds (empty: all); the others are held
  // apart (held_apart): the host-map methods below skip them (upload, download, to_flat) or give
  // them zeros (download_grads, from_flat: a frozen tensor's gradient), and entry() refuses them.
  Params(core::Device dev, core::DType dt, const TensorMap& host, const StateOptions& opt = {},
         const NameFilter& keep = {});
  // The same from a source that makes one host tensor at a time (freed once uploaded): a model
  // whose f32 host copy would not fit in host memory. Only the kept tensors are made.
  Params(core::Device dev, core::DType dt, const ParamSource& src, const StateOptions& opt = {},
         const NameFilter& keep = {});

  core::Device device() const { return dev_; }
  core::DType dt() const { return dt_; }
  const StateOptions& options() const { return opt_; }
  const std::vector<std::string>& names() const { return names_; }
  const Entry& entry(const std::string& name) const;
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  // A given parameter this store does not hold (the constructor's keep said no).
  bool held_apart(const std::string& name) const { return apart_.count(name) != 0; }
  int64_t total() const { return total_; }
  // The out-of-memory hint for the parameter state: bytes per parameter for the options, its
  // size in GiB with and without the AdamW moments, and what to change when it alone does not
  // fit.
  std::string state_hint() const;

  core::View w(const std::string& name) const;  // compute weights (dt)
  // The gradient (f32; empty when frozen), zeroed here on the step's first access (zero_grads).
  core::View g(const std::string& name) const;
  // The gradient for a writer that can overwrite it (a weight-gradient GEMM): the view and
  // whether to add to it. On the step's first access (zero_grads left it unwritten) accumulate
  // is false and the caller must OVERWRITE every element; afterwards it adds.
  struct GradTarget {
    core::View g;
    bool accumulate = true;
  };
  GradTarget g_target(const std::string& name) const;
  bool frozen() const { return opt_.frozen; }
  // The f32 master (master "fp32"), or with "remainder" its f32 copy (every tensor when dt is
  // f32, else only keeps_f32_weight's); an error for a tensor without one.
  core::View master(const std::string& name) const;
  const core::View& grad_flat() const {  // every gradient (settled: see zero_grads)
    settle_grads();
    return grad_.view();
  }
  // The parameter views of the tensor's AdamW step (master, compute_copy, remainder, grad and
  // the stochastic-rounding counter index = its offset in the store); m and v are the caller's.
  ops::AdamWTensor adamw_tensor(const std::string& name) const;

  // Every method taking a host map accepts the names held apart (see the constructor).
  void upload(const TensorMap& host);    // masters <- host (exact), compute copies
  void download(TensorMap& host) const;  // host <- masters (exact; same names/shapes)
  void download_tensor(const std::string& name, float* out) const;  // one tensor's (entry numel)
  // Whether this store keeps the tensor's offloaded masters (StateOptions::offload_owned; true
  // when nothing is offloaded or no owners are given), and the elements it keeps of them.
  bool owns_master(const std::string& name) const;
  int64_t offloaded_master_elements() const { return host_total_; }
  void download_grads(TensorMap& host) const;  // host (zeros_like params) <- gradients
  // Named host f32 tensors to / from a flat buffer laid out like the parameters (gradients,
  // AdamW moments): an f32 flat is copied, a bf16 one converted (to bf16 rounding to nearest
  // even, so bf16 values round-trip exactly); `what` names the tensors in the size error.
  void to_flat(const TensorMap& host, const core::View& flat, const char* what) const;
  void from_flat(const core::View& flat, TensorMap& host, const char* what) const;
  // One tensor of such a flat buffer to host floats (entry(name).numel of them).
  void flat_to_host(const core::View& flat, const std::string& name, float* out) const;
  // Every gradient to zero for a new step. Lazily: the gradients are only marked unwritten;
  // g() zeroes one on its first access, g_target() lets its first writer overwrite it, and
  // settle_grads() zeroes those still unwritten. Every whole-store accessor (grad_flat,
  // adamw_tensor, download_grads) settles first, so no reader sees an unwritten gradient. This
  // saves the step's memset of all gradients and the first read of each GEMM-written one.
  void zero_grads();
  void settle_grads() const;

  // StateOptions::gathered only: the views w(name), master(name) and g(name) return until
  // unbind(name) (f32: the f32 weights, w itself when dt is f32; g: empty when no gradient is
  // wanted). Shapes and dtypes are checked against the entry.
  bool gathered() const { return opt_.gathered; }
  void bind(const std::string& name, const core::View& w, const core::View& f32,
            const core::View& g);
  void unbind(const std::string& name);

 private:
  Params(core::Device dev, core::DType dt, std::vector<ParamSpec> specs, const StateOptions& opt,
         const NameFilter& keep);
  void upload_tensor(const std::string& name, const core::Tensor& t);
  void finish_upload();
  core::View at(const core::Buffer& b, const std::string& name) const;
  core::View at_f32(const std::string& name) const;
  // Whether `name` was unwritten this step (zero_grads); it counts as written from now on.
  bool take_unwritten(const std::string& name) const;
  core::Device dev_;
  core::DType dt_;
  StateOptions opt_;
  std::vector<std::string> names_;
  std::map<std::string, Entry> index_;
  std::set<std::string> apart_;
  int64_t total_ = 0, f32_total_ = 0, host_total_ = 0;
  // master_: f32 masters (fp32) or f32 weights (remainder); compute_: bf16 compute copies
  // (fp32, dt bf16) or the pair's weights (remainder); remainder_: u16 (remainder).
  // router_: with offloaded fp32 masters, the device f32 masters of keeps_f32_weight's tensors.
  core::Buffer master_, compute_, remainder_, grad_, router_;
  mutable std::set<std::string> unwritten_;  // gradients not yet written this step (zero_grads)
};

}  // namespace deltatron::model
