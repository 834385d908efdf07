// `deltatron score`: load, pack in order, run forward (+ backward), write results atomically.
#include "train/score.h"

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "data/pack.h"
#include "data/sample.h"
#include "io/checkpoint.h"
#include "io/file_util.h"
#include "io/hf_layout.h"
#include "io/output_check.h"
#include "model/model.h"
#include "train/engine.h"

namespace deltatron::train {

namespace {

std::vector<data::Pack> make_packs(const std::vector<data::Sample>& samples,
                                   const ScoreOptions& opt) {
  std::vector<data::Pack> packs;
  std::vector<int64_t> lengths;
  for (const auto& s : samples) lengths.push_back(static_cast<int64_t>(s.input_ids.size()));
  for (const auto& group : data::group_in_order(lengths, opt.pack_tokens, opt.pad_multiple)) {
    std::vector<const data::Sample*> members;
    for (int64_t i : group) members.push_back(&samples[i]);
    packs.push_back(data::make_pack(members, group, opt.pad_multiple));
  }
  return packs;
}

}  // namespace

void run_score(const ScoreOptions& opt) {
  io::check_writable_parent(opt.output_path);
  if (!opt.grad_out.empty()) io::check_writable_parent(opt.grad_out);
  io::LoadOptions load_opt;
  load_opt.ignore_mtp = opt.ignore_mtp;
  io::Checkpoint ck = io::load_checkpoint(opt.model_dir, load_opt);
  const model::Config& c = ck.config;
  const std::vector<data::Sample> samples = data::read_token_jsonl(opt.data_path, c.vocab_size);
  const std::vector<data::Pack> packs = make_packs(samples, opt);
  const auto engine = make_engine(opt.device, opt.precision, c, ck.params);

  model::ModelOptions mopt;
  mopt.mtp_ce_scale = static_cast<float>(opt.mtp_scale);
  mopt.router = opt.router;
  model::GlobalRouterCounts global;
  if (c.is_moe() && opt.router.aux_coef != 0.0 &&
      opt.router.aux_type == model::AuxLossType::global) {
    for (const auto& pack : packs) engine->count_routes(pack, global);
    mopt.global_counts = &global;
  }

  const bool with_grads = !opt.grad_out.empty();
  if (with_grads) engine->zero_grads();
  const size_t S = samples.size();
  std::vector<double> loss_sum(S, 0.0), mtp_loss_sum(S, 0.0);
  std::vector<int64_t> n_tokens(S, 0), mtp_n_tokens(S, 0);
  double router_loss = 0;
  const auto t0 = std::chrono::steady_clock::now();
  size_t done = 0;
  for (const auto& pack : packs) {
    const model::PackLoss r = engine->fwd_bwd(pack, with_grads, mopt);
    for (int s = 0; s < pack.num_samples(); ++s) {
      const int64_t i = pack.sample_index[s];
      loss_sum[i] = r.loss_sum[s];
      n_tokens[i] = r.n_tokens[s];
      if (c.mtp_enabled) {
        mtp_loss_sum[i] = r.mtp_loss_sum[s];
        mtp_n_tokens[i] = r.mtp_n_tokens[s];
      }
    }
    router_loss += r.router_loss;
    done += pack.num_samples();
    if (!opt.quiet) {
      double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "score: %zu/%zu samples, %.1f s\n", done, S, sec);
    }
  }
  if (!opt.quiet && opt.router.active())
    std::fprintf(stderr, "score: router loss (sum over MoE layers) %.9g\n", router_loss);

  std::string out;
  for (size_t i = 0; i < S; ++i) {
    nlohmann::json j = {{"index", i}, {"loss_sum", loss_sum[i]}, {"n_tokens", n_tokens[i]}};
    if (c.mtp_enabled) {
      j["mtp_loss_sum"] = mtp_loss_sum[i];
      j["mtp_n_tokens"] = mtp_n_tokens[i];
    }
    out += j.dump() + "\n";
  }
  if (with_grads) {
    model::TensorMap grads = model::zeros_like(ck.params);
    engine->grads_to_host(grads);
    io::save_tensors_f32(opt.grad_out, io::to_checkpoint_names(ck, grads));
  }
  io::write_file_atomic(opt.output_path, out);
}

}  // namespace deltatron::train
