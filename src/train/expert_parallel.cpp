// Expert parallelism: groups, expert slices and their gathering (expert_parallel.h).
#include "train/expert_parallel.h"

#include <cstring>

#include "core/buffer.h"
#include "core/error.h"
#include "ops/tensor.h"

namespace deltatron::train {

ExpertGroups setup_expert_groups(const Parallel& par, int64_t ep, const model::Config& c,
                                 const std::string& where) {
  ExpertGroups g;
  if (ep == 1) return g;
  DT_CHECK(ep > 1, where, ": the expert-parallel size must be >= 1, got ", ep);
  DT_CHECK(c.is_moe(), where, ": expert parallelism (", ep, ") needs a MoE model");
  DT_CHECK(par.size() % ep == 0, where, ": expert parallelism over ", ep,
           " ranks needs a multiple of ", ep, " ranks, the job has ", par.size());
  DT_CHECK(c.num_experts % ep == 0, where, ": expert parallelism over ", ep, " ranks needs ",
           "num_experts (", c.num_experts, ") divisible by ", ep);
  const int r = par.rank();
  g.group = par.comm->split(int(r / ep), r);
  g.same_experts = par.comm->split(int(r % ep), r);
  g.model.comm = g.group.get();
  g.model.num_local = c.num_experts / ep;
  g.model.first = int64_t(g.group->rank()) * g.model.num_local;
  return g;
}

void keep_local_experts(model::TensorMap& params, const ExpertGroups& g) {
  if (!g.on()) return;
  const int64_t El = g.model.num_local, e0 = g.model.first;
  for (auto& [name, t] : params) {
    if (!model::is_routed_expert_tensor(name)) continue;
    const int64_t E = t.shape.at(0), per = t.numel() / E;
    DT_CHECK(E == El * g.group->size(), name, ": ", E, " experts, expected ", El * g.group->size());
    core::Shape s = t.shape;
    s[0] = El;
    core::Tensor local(s);
    std::memcpy(local.ptr(), t.ptr() + e0 * per, size_t(El * per) * sizeof(float));
    t = std::move(local);
  }
}

void gather_experts(model::TensorMap& tensors, const ExpertGroups& g, core::Device dev) {
  if (!g.on()) return;
  const int64_t Q = g.group->size();
  for (auto& [name, t] : tensors) {
    if (!model::is_routed_expert_tensor(name)) continue;
    const int64_t n = t.numel();
    core::Shape s = t.shape;
    s[0] *= Q;
    core::Tensor full(s);
    if (dev == core::Device::cpu) {
      g.group->all_gather(core::View::of(t), core::View::of(full));
    } else {
      core::Buffer in(dev, core::DType::f32, {n}, "expert slice");
      core::Buffer out(dev, core::DType::f32, {n * Q}, "gathered experts");
      ops::copy_from_host(in, t.ptr());
      g.group->all_gather(in, out);
      ops::copy_to_host(out, full.ptr());
    }
    t = std::move(full);
  }
}

void keep_local_experts(AdamW& opt, const model::TensorMap& local_params, const ExpertGroups& g) {
  if (!g.on()) return;
  AdamW local(local_params, opt.options());
  if (opt.step_count() > 0) {  // resumed: the checkpoint's moments
    model::TensorMap m = opt.exp_avg(), v = opt.exp_avg_sq();
    keep_local_experts(m, g);
    keep_local_experts(v, g);
    local.set_state(opt.step_count(), std::move(m), std::move(v));
  }
  opt = std::move(local);
}

}  // namespace deltatron::train
