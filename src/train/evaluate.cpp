// The trainer's held-out evaluation (evaluate.h).
#include "train/evaluate.h"

#include <algorithm>

#include "data/pack.h"
#include "model/model.h"

namespace deltatron::train {

EvalResult evaluate(const TrainConfig& cfg, Engine& engine, const TrainData& d) {
  EvalResult r;
  if (d.eval_index.empty()) return r;
  const data::Dataset& ds = d.eval_set ? *d.eval_set : *d.train_set;
  double loss = 0;
  int64_t tokens = 0, exact = 0;
  model::ModelOptions o;
  o.want_correct = cfg.answer_accuracy;
  for (const auto& batch : eval_batches(d, cfg.micro_batch_tokens, cfg.divisible_by)) {
    const data::Pack pack =
        data::make_dataset_pack(ds, batch, cfg.divisible_by, cfg.micro_batch_tokens);
    const model::PackLoss l = engine.fwd_bwd(pack, false, o);
    for (int s = 0; s < pack.num_samples(); ++s) {
      loss += l.loss_sum[s];
      tokens += l.n_tokens[s];
      if (cfg.answer_accuracy) exact += l.exact[s] && l.n_tokens[s] > 0;
    }
    r.samples += pack.num_samples();
  }
  r.loss = loss / double(std::max<int64_t>(1, tokens));
  r.accuracy = double(exact) / double(std::max<int64_t>(1, r.samples));
  return r;
}

}  // namespace deltatron::train
