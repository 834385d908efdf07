// ZeRO stage 3 (parallel.zero = 3, docs/parallel.md): every parameter's state (the f32 weights or
// fp32 masters, the bf16 compute copies, the gradients, the AdamW moments) sharded over the
// data-parallel ranks by flat element range per unit, and each unit gathered onto every rank
// only while the model runs it (model/param_gather.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "dist/comm.h"
#include "model/config.h"
#include "model/param_gather.h"
#include "model/params.h"
#include "ops/adamw.h"
#include "train/engine.h"

namespace deltatron::train {

// The layout. Units: trunk layer i (the tensors under c.name("layers.<i>.")) and the outer unit
// (all other tensors), as model::ParamGather. A unit's tensors (in Params::names() order) lie
// in its own flat space at 64-element aligned offsets, n elements in all; the space is cut into
// `ranks` equal pieces of p = ceil(n / ranks) rounded up to 64 elements (zero padding at the
// end), and rank r holds piece r: [r p, (r + 1) p). A rank's shard is its pieces of every unit
// one after the other (units in order: outer, layer 0, 1, ...). So gathering a unit is one
// all_gather of equal blocks and reducing its gradient one reduce_scatter; a tensor may lie in
// the pieces of several ranks.
// Expert parallelism (expert_ranks > 0): the routed-expert slices of each model unit form a unit
// of their own (the expert units, after the others: outer, layer 0, 1, ...; empty for a layer
// without routed experts), cut into expert_ranks pieces over the ranks holding the same experts
// (rank expert_rank among them), as Megatron and DeepSpeed shard expert state over the
// expert-data-parallel group; the other units are cut over the data-parallel ranks.
struct Zero3Layout {
  struct Tensor {
    std::string name;
    int unit = 0;        // index into units (0: outer, 1 + i: layer i)
    int64_t offset = 0;  // in its unit's space
    int64_t numel = 0;
    int64_t one_rank = 0;   // model::Params offset (the AdamW stochastic-rounding counter)
    bool f32_read = false;  // the model reads its f32 weight (model::keeps_f32_weight)
  };
  struct Unit {
    std::vector<size_t> tensors;  // into Zero3Layout::tensors
    int64_t numel = 0;            // the unit space's extent (aligned tensors)
    int64_t piece = 0;            // elements per rank
    int64_t local = 0;            // this rank's piece in the shard
    bool f32_read = false;        // holds a tensor read in f32
    bool expert = false;          // an expert unit (over the same-experts ranks)
  };
  int ranks = 1, rank = 0;                // the data-parallel ranks
  int expert_ranks = 0, expert_rank = 0;  // the same-experts ranks (0: no expert units)
  int model_units = 0;                    // the model's units: num_hidden_layers + 1
  std::vector<Tensor> tensors;            // Params::names() order
  std::map<std::string, size_t> index;
  std::vector<Unit> units;
  int64_t shard = 0;                                             // elements in this rank's shard
  static int unit_of(int model_unit) { return model_unit + 1; }  // kOuterUnit -> 0
  // The expert unit of a model unit; -1 without expert units.
  int expert_unit_of(int model_unit) const {
    return expert_ranks > 0 ? model_units + model_unit + 1 : -1;
  }
  int ranks_of(const Unit& u) const { return u.expert ? expert_ranks : ranks; }
  int rank_of(const Unit& u) const { return u.expert ? expert_rank : rank; }
  const Tensor& tensor(const std::string& name) const;
};
// The model unit of a tensor (model::ParamGather): i for one under c.name("layers.<i>."), else
// kOuterUnit; and a unit-space extent: n elements rounded up to the 64-element alignment.
int zero3_model_unit(const model::Config& c, const std::string& name);
int64_t zero3_aligned(int64_t n);

// expert_ranks > 0: expert parallelism (the store holds this rank's expert slices), the
// routed-expert tensors in expert units over expert_ranks ranks.
Zero3Layout zero3_layout(const model::Params& p, const model::Config& c, int ranks, int rank,
                         int expert_ranks = 0, int expert_rank = 0);

// This rank's shard and the gathers of model::ParamGather. The store binds the gathered views
// into `params` (a StateOptions::gathered store of the same layout). The buffers are on comm's
// device: master (f32 [shard]: the f32 weights of an f32-computing model, else the fp32
// masters), compute (bf16 [shard] when the model computes in bf16), grad (f32 [shard]) and the
// moments (f32 or bf16 [shard], alloc_moments). training.master = remainder (the params'
// StateOptions::master_remainder; docs/lean-state.md): no fp32 master; the pair compute (bf16
// weights [shard]) and remainder (u16 [shard]), stepped in place by AdamW; master f32 [shard]
// only for an f32-computing model (its f32 weights, written by the step), and for a bf16 model
// the f32 weights of the tensors it reads in f32 (the routers' parts of this rank's pieces),
// placed into the gathered f32 unit by an all_gather of this rank's block. experts: with expert
// parallelism, the ranks holding the same experts (the expert units' communicator); null: none.
// A frozen store (the base of a LoRA run, model::StateOptions::frozen): the weights alone, no
// gradients or moments (gather and release without grads; read of a weight only in an f32
// model); in a bf16 model the shard is the compute copies alone (the fp32 values are dropped
// after finish_load), and the tensors read in f32 (the MoE routers, model::keeps_f32_weight) are
// kept whole in f32 on every rank (a few per mille of the model) and bound from there.
// training.offload (`offload`, docs/lean-state.md): this rank's shard of the moments (moments),
// and of the masters (master: the fp32 masters of a bf16 model, or the remainders of the lean
// pair) in pinned host memory instead, stepped by ops::adamw_step_offloaded; the weights the
// units gather (the bf16 compute copies, an f32 model's f32 weights) stay on the device. With
// offloaded fp32 masters the f32 masters of the tensors a bf16 model reads in f32 (the routers'
// parts of this rank's pieces) stay on the device and are stepped there, as with the lean pair.
class Zero3Store final : public model::ParamGather {
 public:
  Zero3Store(model::Params& params, const model::Config& c, dist::Comm& comm,
             dist::Comm* experts = nullptr, const ops::AdamWOffload& offload = {});

  const Zero3Layout& layout() const { return l_; }
  // What lives in host memory (training.offload); nothing when both are off.
  const ops::AdamWOffload& offload() const { return offload_; }
  bool offloaded() const { return offload_.moments || offload_.master; }
  // The allocator's out-of-memory hint while the shard's buffers are made: its size and options.
  std::string shard_hint() const;
  dist::Comm& comm() const { return comm_; }
  dist::Comm* experts() const { return experts_; }

  // The host values of one tensor (every rank gives every tensor; each keeps its pieces); then
  // finish_load once (the bf16 compute copies, rounded as model::Params rounds them). n: the
  // elements at host: the whole tensor's (or -1), or this rank's piece of it alone (what
  // train/local_slices.h's zero3_slices reads from the files; an error names any other count).
  void load_weight(const std::string& name, const float* host, int64_t n = -1);
  void finish_load();
  void alloc_moments(core::DType dt);
  bool has_moments() const { return m_.numel() > 0; }
  void load_moment(const std::string& name, bool second, const float* host, int64_t n = -1);
  // The elements of this rank's piece of a tensor (0: none).
  int64_t piece_size(const std::string& name) const;

  // Collective (every rank, the same name): the tensor's values from the ranks holding its
  // pieces (a broadcast per piece), on every rank, as host f32 (bf16 moments widened exactly).
  enum class Part { weight, grad, exp_avg, exp_avg_sq };
  void read(const std::string& name, Part part, float* out);

  // The AdamW views of this rank's pieces of every tensor (a piece: the part of a tensor in the
  // rank's shard; index = its one-rank counter); m and v set, weight_decay the caller's.
  struct Piece {
    ops::AdamWTensor t;
    size_t tensor = 0;  // into layout().tensors
  };
  std::vector<Piece> pieces() const;
  const core::Buffer& grad() const { return grad_; }
  void zero_grads() { ops_zero(grad_); }

  // model::ParamGather.
  void gather(int unit, bool grads) override;
  void prefetch(int unit) override;
  void release(int unit, bool grads) override;

 private:
  struct Gathered {
    core::Buffer w, f32, g;  // the unit's weights (dt), f32 weights (bf16 models), gradients
  };
  Gathered gather_weights(int u);  // the weights' all_gathers
  dist::Comm& comm_of(const Zero3Layout::Unit& u) const { return u.expert ? *experts_ : comm_; }
  // The layout units of a model unit that hold tensors (its unit; its expert unit if not empty).
  std::vector<int> units_of(int model_unit) const;
  static void ops_zero(const core::Buffer& b);
  static int64_t overlap_size(const Zero3Layout::Unit& u, int r, int64_t offset, int64_t numel);
  void read_pair(const std::string& name, float* out);  // Part::weight of a lean bf16 store
  // The gather buffers are reused (no allocation per layer): released ones wait in a pool per
  // kind of unit (0: the outer unit, 1: layers, whose buffers all have the largest layer's
  // size; 2, 3: the same for expert units); take gives one of dtype dt and at least n elements
  // from it, or a new one.
  int pool_of(int u) const;
  core::Buffer take(int u, core::DType dt, int64_t n, const char* what);
  void give(int u, core::Buffer&& b);
  int64_t largest_layer_[2] = {0, 0};  // elements of the largest gathered layer unit (x expert)
  std::vector<core::Buffer> pool_[4];
  core::Buffer piece_sum_;  // a reduce_scatter's result (the largest piece)
  bool lean_ = false;       // training.master = remainder
  bool frozen_ = false;     // the base of a LoRA run: weights alone
  ops::AdamWOffload offload_;
  bool host_master_ = false;    // the fp32 masters of a bf16 model in host memory (offload_.master)
  bool routers_apart_ = false;  // the routers' f32 weights in router_ (lean or host masters, bf16)
  model::Params& p_;
  dist::Comm& comm_;
  dist::Comm* experts_ = nullptr;
  Zero3Layout l_;
  core::Buffer master_, compute_, remainder_, router_, grad_, m_, v_;
  std::vector<int64_t> router_at_;  // routers_apart_: a tensor's piece in router_, or -1
  core::Buffer frozen_routers_;     // frozen bf16: the f32-read tensors, whole
  std::map<std::string, int64_t> frozen_router_at_;  // and their offsets in it
  std::map<int, Gathered> live_, ready_;  // bound units; prefetched ones (by layout unit)
};

// The engine of parallel.zero = 3 (engine.h's make_engine dispatches here): model::Model over a
// gathered store, a Zero3Store over zero.comm (one rank: one shard holding everything) and, with
// expert parallelism, zero.experts.
std::unique_ptr<Engine> make_zero3_engine(core::Device dev, core::DType dt, const model::Config& c,
                                          const model::TensorMap* params,
                                          const model::ParamSource* source, const AdamW* opt,
                                          bool recompute, const model::StateOptions& state,
                                          const ZeroSetup& zero);

}  // namespace deltatron::train
