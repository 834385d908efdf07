// Training on the CPU engine for the state tests (lean state, offload): `steps` AdamW steps over
// `packs` in turn with a varying learning rate, optionally handing the state back to the host
// and restarting the engine from it at step `restart` (a resume), then the final weights and
// moments on the host.
#pragma once

#include <cmath>
#include <vector>

#include "data/pack.h"
#include "model/params.h"
#include "train/engine.h"
#include "train/optimizer.h"

namespace dt_test {

struct EngineRun {
  std::vector<double> losses;
  deltatron::model::TensorMap params, m, v;
};

inline EngineRun run_engine(const deltatron::model::Config& c,
                            const deltatron::model::TensorMap& init,
                            const std::vector<deltatron::data::Pack>& packs, int steps,
                            const deltatron::model::StateOptions& so, int restart = -1) {
  namespace dt = deltatron;
  dt::model::TensorMap params = init;
  dt::train::AdamWOptions ao;
  ao.beta2 = 0.95;
  ao.weight_decay = 0.1;
  ao.bf16_moments = so.moments == dt::core::DType::bf16;
  dt::train::AdamW opt(params, ao);
  auto engine = dt::train::make_engine("cpu", "fp32", c, params, &opt, false, so);
  EngineRun r;
  for (int s = 0; s < steps; ++s) {
    if (s == restart) {
      engine->sync_to_host(params, opt);
      engine = dt::train::make_engine("cpu", "fp32", c, params, &opt, false, so);
    }
    const dt::data::Pack& pack = packs[size_t(s) % packs.size()];
    engine->zero_grads();
    dt::model::ModelOptions mo;
    mo.ce_scale = 1.f / float(pack.N);
    const dt::model::PackLoss pl = engine->fwd_bwd(pack, true, mo);
    double loss = 0;
    for (double x : pl.loss_sum) loss += x;
    r.losses.push_back(loss);
    engine->clip(1.0);
    engine->step(opt, 3e-3 * (1.0 + 0.5 * std::cos(double(s))));
  }
  engine->sync_to_host(params, opt);
  r.params = params;
  r.m = opt.exp_avg();
  r.v = opt.exp_avg_sq();
  return r;
}

}  // namespace dt_test
