// `deltatron score`: load, pack in order, run forward (+ backward), write results atomically.
#include "train/score.h"

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "data/pack.h"
#include "data/sample.h"
#include "io/file_util.h"
#include "io/output_check.h"
#include "io/checkpoint.h"
#include "model/model.h"

namespace deltatron::train {

void run_score(const ScoreOptions& opt) {
  io::check_writable_parent(opt.output_path);
  if (!opt.grad_out.empty()) io::check_writable_parent(opt.grad_out);
  const io::Checkpoint ck = io::load_checkpoint(opt.model_dir);
  const model::Config& c = ck.config;
  const std::vector<data::Sample> samples = data::read_token_jsonl(opt.data_path, c.vocab_size);
  const auto groups = data::group_in_order(samples, opt.pack_tokens, opt.pad_multiple);

  model::TensorMap grads;
  if (!opt.grad_out.empty()) grads = model::zeros_like(ck.params);
  std::vector<double> loss_sum(samples.size(), 0.0);
  std::vector<int64_t> n_tokens(samples.size(), 0);
  const auto t0 = std::chrono::steady_clock::now();
  size_t done = 0;
  for (const auto& group : groups) {
    std::vector<const data::Sample*> members;
    for (int64_t i : group) members.push_back(&samples[i]);
    const data::Pack pack = data::make_pack(members, group, opt.pad_multiple);
    const model::PackLoss r = model::model_fwd_bwd(opt.device, c, ck.params, pack,
                                                   opt.grad_out.empty() ? nullptr : &grads);
    for (int s = 0; s < pack.num_samples(); ++s) {
      loss_sum[pack.sample_index[s]] = r.loss_sum[s];
      n_tokens[pack.sample_index[s]] = r.n_tokens[s];
    }
    done += group.size();
    if (!opt.quiet) {
      double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "score: %zu/%zu samples, %.1f s\n", done, samples.size(), sec);
    }
  }

  std::string out;
  for (size_t i = 0; i < samples.size(); ++i) {
    nlohmann::json j = {{"index", i}, {"loss_sum", loss_sum[i]}, {"n_tokens", n_tokens[i]}};
    out += j.dump() + "\n";
  }
  if (!opt.grad_out.empty()) io::save_tensors_f32(opt.grad_out, grads);
  io::write_file_atomic(opt.output_path, out);
}

}  // namespace deltatron::train
