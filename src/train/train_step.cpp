// One optimizer step, top to bottom: micro-batches -> forward/backward -> clip -> AdamW.
#include "train/train_step.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/bf16.h"
#include "core/error.h"
#include "data/pack.h"
#include "model/model.h"
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

  // 2. Gradients of the objective, accumulated over the micro-batches.
  ctx.engine.zero_grads();
  double ce = 0, mtp = 0, router = 0;
  for (size_t m = 0; m < packs.size(); ++m) {
    if (!par.mine(int64_t(m))) continue;
    const data::Pack& pack = packs[m];
    // LoRA dropout's masks (lora.dropout > 0): counter-based in (seed, step, micro-batch), so a
    // resumed run draws the same ones.
    mo.dropout_key = core::random_key(cfg.seed ^ 0x4c6f5241ull, uint64_t(st.step) * 65536 + m) | 1;
    const model::PackLoss l = ctx.engine.fwd_bwd(pack, true, mo);
    for (double x : l.loss_sum) ce += x;
    for (double x : l.mtp_loss_sum) mtp += x;
    router += l.router_loss;
  }
  if (par.size() > 1) {
    ctx.engine.reduce_grads(*par.comm, ctx.same_experts);
    std::vector<double> sums = {ce, mtp, router};
    all_reduce_sum(par, sums);
    ce = sums[0], mtp = sums[1], router = sums[2];
  }
  StepResult r;
  r.tokens = n.real_tokens;
  r.loss = ce / double(std::max<int64_t>(1, n.label_tokens));
  r.mtp_loss = mtp / double(std::max<int64_t>(1, n.mtp_tokens));
  r.router_loss = router;

  // 3. Clip, and the learning rate of this step.
  r.grad_norm = ctx.engine.clip(cfg.grad_clip);
  r.lr = learning_rate(ctx.schedule, st.step);

  // 4. Update, or skip a non-finite step.
  r.skipped = !(std::isfinite(r.loss) && std::isfinite(r.grad_norm) && std::isfinite(router));
  if (!r.skipped)
    ctx.engine.step(ctx.opt, r.lr);
  else
    count_bad_step(cfg, st.step, bad_steps);

  // 5. Advance the state.
  st.step += 1;
  st.epoch = ctx.batches.epoch();
  st.data_cursor = ctx.batches.cursor();
  if (std::isfinite(r.loss)) st.extra["last_loss"] = r.loss;
  r.step = st.step;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace deltatron::train
