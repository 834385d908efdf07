// Tensor parallelism: groups, shard slices and their gathering (tensor_parallel.h).
#include "train/tensor_parallel.h"

#include "core/buffer.h"
#include "core/error.h"
#include "ops/tensor.h"

namespace deltatron::train {

TensorGroups setup_tensor_groups(const Parallel& par, int64_t tp, bool sp, const model::Config& c,
                                 const std::string& where) {
  TensorGroups g;
  DT_CHECK(tp >= 1, where, ": the tensor-parallel size must be >= 1, got ", tp);
  DT_CHECK(tp > 1 || !sp, where,
           ": sequence parallelism splits the tokens over a tensor-parallel group; it needs "
           "tp > 1");
  if (tp == 1) return g;
  model::check_tensor_parallel(c, tp, where);
  DT_CHECK(par.size() % tp == 0, where, ": tensor parallelism over ", tp,
           " ranks needs a multiple of ", tp, " ranks, the job has ", par.size());
  const int r = par.rank();
  g.group = par.comm->split(int(r / tp), r);
  g.dp.comm = par.comm->split(int(r % tp), r);
  g.model.comm = g.group.get();
  g.model.sp = sp;
  return g;
}

void keep_local_shards(model::TensorMap& params, const TensorGroups& g, const model::Config& c) {
  if (!g.on()) return;
  for (auto& [name, t] : params)
    if (model::is_tp_sharded(c, name))
      t = model::tp_slice(c, name, t, g.model.rank(), g.model.size());
}

void keep_local_shards(AdamW& opt, const model::TensorMap& local_params, const TensorGroups& g,
                       const model::Config& c) {
  if (!g.on()) return;
  AdamW local(local_params, opt.options());
  if (opt.step_count() > 0) {  // resumed: the checkpoint's moments
    model::TensorMap m = opt.exp_avg(), v = opt.exp_avg_sq();
    keep_local_shards(m, g, c);
    keep_local_shards(v, g, c);
    local.set_state(opt.step_count(), std::move(m), std::move(v));
  }
  opt = std::move(local);
}

void keep_local_shards(model::LoraSetup& s, const TensorGroups& g, const model::Config& c) {
  if (!g.on()) return;
  keep_local_shards(s.adapters, g, c);
  s.tp = g.model.size();
}

void gather_shards(model::TensorMap& tensors, const TensorGroups& g, const model::Config& c,
                   core::Device dev) {
  if (!g.on()) return;
  const int64_t P = g.model.size();
  for (auto& [name, t] : tensors) {
    if (!model::is_tp_sharded(c, name)) continue;
    const int64_t n = t.numel();
    std::vector<float> all(size_t(n * P));
    if (dev == core::Device::cpu) {
      g.group->all_gather(core::View::of(t),
                          core::View(all.data(), core::DType::f32, dev, {n * P}));
    } else {
      core::Buffer in(dev, core::DType::f32, {n}, "tensor-parallel slice");
      core::Buffer out(dev, core::DType::f32, {n * P}, "gathered tensor-parallel slices");
      ops::copy_from_host(in, t.ptr());
      g.group->all_gather(in, out);
      ops::copy_to_host(out, all.data());
    }
    t = model::tp_join(c, name, all.data(), t.shape, P);
  }
}

}  // namespace deltatron::train
