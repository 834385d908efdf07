// One optimizer step, top to bottom: micro-batches -> forward/backward -> clip -> AdamW, with
// the step's scalars on the device and read by the host once, after the update is queued.
#include "train/train_step.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "core/step_scalars.h"
#include "data/pack.h"
#include "model/model.h"
#include "ops/moe.h"
#include "ops/step_scalars.h"
#include "ops/tensor.h"
#include "train/objective.h"

namespace deltatron::train {

namespace {

// The step's cfg.grad_accum micro-batches per rank, drawn from the batch stream and packed.
std::vector<data::Pack> next_packs(const TrainConfig& cfg, const TrainData& d,
                                   data::EpochIterator& batches, int ranks) {
  std::vector<data::Pack> packs;
  for (int64_t m = 0; m < cfg.grad_accum * ranks; ++m) {
    std::vector<int64_t> local = batches.next();
    for (auto& i : local) i = d.train_index[i];
    packs.push_back(data::make_dataset_pack(*d.train_set, local, cfg.divisible_by,
                                            cfg.truncate ? cfg.micro_batch_tokens : -1));
  }
  return packs;
}

// A step with a non-finite loss or gradient: counted, reported, and an error past the limit.
void count_bad_step(const TrainConfig& cfg, int64_t step, int64_t& bad_steps) {
  ++bad_steps;
  std::fprintf(stderr,
               "\ntrain: step %lld has a non-finite loss or gradient; skipped (%lld/%lld)\n",
               static_cast<long long>(step), static_cast<long long>(bad_steps),
               static_cast<long long>(cfg.max_bad_steps));
  DT_CHECK(bad_steps <= cfg.max_bad_steps, "stopping: ", bad_steps,
           " steps with non-finite loss or gradients (training.max_bad_steps = ", cfg.max_bad_steps,
           ")");
}

}  // namespace

StepResult train_step(const StepContext& ctx, TrainState& st, int64_t& bad_steps) {
  const TrainConfig& cfg = ctx.cfg;
  const auto t0 = std::chrono::steady_clock::now();
  const core::Device dev = cfg.device == "cuda" ? core::Device::cuda : core::Device::cpu;
  const int64_t reads_before = ops::host_reads(dev);

  // 1. The step's micro-batches and the objective's scales over all of them.
  const Parallel& par = ctx.par;
  const std::vector<data::Pack> packs = next_packs(cfg, ctx.data, ctx.batches, par.size());
  const StepCounts n = count_step(packs, ctx.model.mtp_enabled);
  model::ModelOptions mo = step_options(cfg, ctx.model, n);
  model::GlobalRouterCounts running;
  running.step_tokens = double(n.real_tokens);
  mo.running_counts = &running;
  // Several ranks: each MoE layer's counts are exchanged so every pack sees one rank's counts.
  if (ctx.par.size() > 1) running.ranks = ctx.par.comm.get();

  // 2. Gradients of the objective, accumulated over the micro-batches; the losses summed on the
  // device into the step's scalars (core/step_scalars.h), in the order the host summed them.
  core::Buffer scalars(dev, core::DType::f64, {core::kStepScalars}, "step scalars");
  ops::zero(scalars);
  mo.step_scalars = scalars.view();
  ctx.engine.zero_grads();
  for (size_t m = 0; m < packs.size(); ++m) {
    if (!par.mine(int64_t(m))) continue;
    const data::Pack& pack = packs[m];
    // LoRA dropout's masks (lora.dropout > 0): counter-based in (seed, step, micro-batch), so a
    // resumed run draws the same ones.
    mo.dropout_key = core::random_key(cfg.seed ^ 0x4c6f5241ull, uint64_t(st.step) * 65536 + m) | 1;
    ctx.engine.fwd_bwd(pack, true, mo);
  }
  if (par.size() > 1) {  // the gradients, and the three loss sums as one f64 view
    ctx.engine.reduce_grads(*par.comm, ctx.same_experts);
    par.comm->all_reduce(scalars.view().slice(core::kStepCeSum, 3), dist::ReduceOp::sum);
  }

  // 3. Clip, the skip of a non-finite step and the learning rate: the norm, the clip factor and
  // the skip computed on the device (ops::step_gate), which the update reads there.
  ctx.engine.grad_squares(scalars.view().slice(core::kStepGradSquares, 1));
  const double label_tokens = double(std::max<int64_t>(1, n.label_tokens));
  ops::step_gate(scalars, cfg.grad_clip, label_tokens);
  StepResult r;
  r.tokens = n.real_tokens;
  r.lr = learning_rate(ctx.schedule, st.step);

  // 4. The update (nothing written when skipped), then the step's one read of the device.
  ctx.engine.step_gated(ctx.opt, r.lr, scalars.view().slice(core::kStepGate, 2));
  core::StepScalars h;
  ops::copy_to_host(scalars, &h);
  r.skipped = h.skip != 0;
  ctx.engine.end_step(!r.skipped);
  if (h.moe_error != 0) {  // a pack's MoE error (not updated): the error its forward threw before
    const int32_t words[3] = {int32_t(h.moe_bad[0]), int32_t(h.moe_bad[1]), int32_t(h.moe_bad[2])};
    ops::moe_fail_bad(words, ctx.model.num_experts);
  }
  r.loss = h.ce_sum / label_tokens;
  r.mtp_loss = h.mtp_sum / double(std::max<int64_t>(1, n.mtp_tokens));
  r.router_loss = h.router_sum;
  r.grad_norm = h.grad_norm;
  if (r.skipped) count_bad_step(cfg, st.step, bad_steps);

  // 5. Advance the state.
  st.step += 1;
  st.epoch = ctx.batches.epoch();
  st.data_cursor = ctx.batches.cursor();
  if (std::isfinite(r.loss)) st.extra["last_loss"] = r.loss;
  r.step = st.step;
  r.host_reads = ops::host_reads(dev) - reads_before;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace deltatron::train
