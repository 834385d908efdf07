// `deltatron score`: load, pack in order, run forward (+ backward), write results atomically.
#include "train/score.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "data/pack.h"
#include "data/sample.h"
#include "io/checkpoint.h"
#include "io/file_util.h"
#include "io/hf_layout.h"
#include "io/output_check.h"
#include "io/peft_adapter.h"
#include "model/model.h"
#include "train/engine.h"
#include "train/expert_parallel.h"
#include "train/finite_check.h"
#include "train/local_slices.h"
#include "train/parallel.h"
#include "train/tensor_parallel.h"

namespace deltatron::train {

namespace {

namespace fs = std::filesystem;

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

// Throws when an output path names an input (or the other output): the data, a file of the
// model directory, or --output and --grad-out the same file.
void check_outputs_are_not_inputs(const ScoreOptions& opt) {
  std::vector<std::pair<std::string, std::string>> inputs = {{"--data", opt.data_path}};
  std::error_code ec;
  for (fs::directory_iterator it(opt.model_dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->is_regular_file(ec)) inputs.push_back({"--model", it->path().string()});
  if (!opt.adapter_dir.empty())
    for (fs::directory_iterator it(opt.adapter_dir, ec), end; !ec && it != end; it.increment(ec))
      if (it->is_regular_file(ec)) inputs.push_back({"--adapter", it->path().string()});
  std::vector<std::pair<std::string, std::string>> outputs = {{"--output", opt.output_path}};
  if (!opt.grad_out.empty()) {
    outputs.push_back({"--grad-out", opt.grad_out});
    inputs.push_back({"--output", opt.output_path});
  }
  for (const auto& [oflag, out] : outputs)
    for (const auto& [iflag, in] : inputs) {
      if (oflag == iflag) continue;
      if (io::same_file(in, out))
        core::fail(oflag, " ", out, " is the same file as ", iflag, " ", in,
                   ": it would be overwritten; choose another output path");
    }
}

// Throws when a sample's loss is NaN or infinite, naming the samples (and a non-finite weight,
// when there is one, as the likely cause), before anything is written.
void check_finite_losses(const std::vector<double>& loss_sum, const std::vector<double>& mtp_sum,
                         double router_loss, const io::Checkpoint& ck, const ScoreOptions& opt) {
  std::vector<size_t> bad;
  for (size_t i = 0; i < loss_sum.size(); ++i)
    if (!std::isfinite(loss_sum[i]) || !std::isfinite(mtp_sum[i])) bad.push_back(i);
  if (bad.empty() && std::isfinite(router_loss)) return;
  std::string which;
  for (size_t k = 0; k < bad.size() && k < 5; ++k)
    which += (k ? ", " : "") + std::to_string(bad[k]);
  if (bad.size() > 5) which += ", ...";
  const auto weight = find_non_finite(ck.params);
  const std::string cause =
      weight ? "; the model holds a non-finite weight: " + describe(*weight) : "";
  if (bad.empty())
    core::fail(opt.data_path, ": the router loss is not finite", cause, "; nothing written");
  core::fail(opt.data_path, ": ", bad.size(), " of ", loss_sum.size(),
             " samples have a non-finite loss (index ", which, ")", cause, "; nothing written");
}

}  // namespace

void run_score(const ScoreOptions& opt) {
  DT_CHECK(std::isfinite(opt.mtp_scale) && opt.mtp_scale >= 0, "--mtp-scale must be >= 0, got ",
           opt.mtp_scale);
  check_outputs_are_not_inputs(opt);
  io::check_writable_parent(opt.output_path);
  if (!opt.grad_out.empty()) io::check_writable_parent(opt.grad_out);
  // Several ranks (a launcher's environment): pack i runs on rank i mod ranks; the results and
  // gradients are summed over the ranks and rank 0 writes them.
  const Parallel par = setup_parallel(opt.device == "cuda" ? core::Device::cuda : core::Device::cpu,
                                      "deltatron score");
  io::LoadOptions load_opt;
  load_opt.ignore_mtp = opt.ignore_mtp;
  // The data first (its vocabulary check needs only the config): whether it has images decides
  // the vision tower's default mode.
  const std::vector<data::Sample> samples = data::read_token_jsonl(
      opt.data_path,
      model::load_config((fs::path(opt.model_dir) / "config.json").string()).vocab_size);
  const bool images = std::any_of(samples.begin(), samples.end(),
                                  [](const data::Sample& s) { return !s.image_grid_thw.empty(); });
  load_opt.vision = opt.vision == "auto"
                        ? (images ? model::VisionMode::frozen : model::VisionMode::off)
                        : model::parse_vision_mode(opt.vision, "deltatron score --vision");
  // The layouts' groups from the config alone, so that each rank reads only its slices.
  model::Config c0 = model::load_config((fs::path(opt.model_dir) / "config.json").string());
  c0.mtp_enabled = c0.mtp_num_hidden_layers > 0 && !opt.ignore_mtp;
  c0.vision_mode = load_opt.vision;
  // Tensor parallelism: this rank's shards; a group's ranks run the same packs, the groups split
  // them (dp: the data-parallel ranks). ZeRO 3: every layer is gathered over the data-parallel
  // ranks (a collective; with --tp those holding the same tp slice), so, as with --ep, every
  // rank runs as many packs as the others.
  DT_CHECK(opt.zero == 0 || opt.zero == 3, "deltatron score --zero ", opt.zero,
           ": 0 or 3 (stages 1 and 2 shard the optimizer state, which scoring does not have)");
  const TensorGroups tg = setup_tensor_groups(par, opt.tp, opt.sp, c0, "deltatron score --tp");
  const Parallel& dp = tg.data(par);
  // Expert parallelism: this rank's slices of the routed experts (with --tp, of its tp slice),
  // over the data-parallel ranks; every rank runs as many packs as the others (idle packs where
  // it has none left), since each MoE layer is a collective exchange.
  const ExpertGroups eg = setup_expert_groups(dp, opt.ep, c0, "deltatron score --ep");
  // ZeRO 3: each rank reads only its pieces of its local tensors (zero3_slices, as the trainer;
  // of a LoRA adapter's frozen base too, whose routers a bf16 model keeps whole), and the
  // engine is made from them.
  const io::SliceFn local = local_slices(eg, tg);
  load_opt.slice = read_slices(
      c0, local, opt.zero == 3, dp, eg,
      Zero3Read{!opt.adapter_dir.empty(), opt.device == "cuda" && opt.precision == "bf16"});
  io::LoadStats load_stats;
  load_opt.stats = &load_stats;
  io::Checkpoint ck = io::load_checkpoint(opt.model_dir, load_opt);
  const model::Config& c = ck.config;
  if (par.size() > 1) print_load_stats("score", par, load_stats, c);
  const std::vector<data::Pack> packs = make_packs(samples, opt);
  std::optional<model::LoraSetup> lora;
  if (!opt.adapter_dir.empty()) {
    lora = io::to_lora_setup(io::load_peft_adapter(opt.adapter_dir), c, /*dropout=*/0,
                             opt.adapter_dir);  // scoring: no dropout
  }
  if (lora) {  // the routed-expert adapters with their experts; the split adapter factors (tp)
    keep_local_experts(*lora, eg);
    keep_local_shards(*lora, tg, c);
  }
  const ZeroSetup zero{int(opt.zero), dp.comm.get(), eg.same_experts.get()};
  const auto engine =
      opt.zero == 3 ? make_engine(opt.device, opt.precision, c, piece_source(c, local, ck.params),
                                  nullptr, false, {}, lora ? &*lora : nullptr, zero)
                    : make_engine(opt.device, opt.precision, c, ck.params, nullptr, false, {},
                                  lora ? &*lora : nullptr, zero);
  if (eg.on()) engine->set_expert_parallel(eg.model);
  if (tg.on()) engine->set_tensor_parallel(tg.model);
  const std::vector<int64_t> items =
      rank_items(dp, int64_t(packs.size()), eg.on() || opt.zero == 3);
  const data::Pack idle = idle_pack();
  const auto pack_of = [&](int64_t i) -> const data::Pack& { return i < 0 ? idle : packs[i]; };

  model::ModelOptions mopt;
  mopt.mtp_ce_scale = static_cast<float>(opt.mtp_scale);
  mopt.router = opt.router;
  model::GlobalRouterCounts global;
  if (c.is_moe() && opt.router.aux_coef != 0.0 &&
      opt.router.aux_type == model::AuxLossType::global) {
    for (int64_t i : items) engine->count_routes(pack_of(i), global);
    all_reduce_counts(dp, global, engine->moe_prefixes(), c.num_experts);
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
  for (int64_t i : items) {
    const data::Pack& pack = pack_of(i);
    const model::PackLoss r = engine->fwd_bwd(pack, with_grads, mopt);
    if (i < 0) continue;  // an idle pack: nothing to record
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
    if (!opt.quiet && par.root()) {
      double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::fprintf(stderr, "score: %zu/%zu samples, %.1f s\n", done, S, sec);
    }
  }
  if (dp.size() > 1) {  // each sample's numbers come from one (data-parallel) rank: exact sums
    all_reduce_sum(dp, loss_sum);
    all_reduce_sum(dp, mtp_loss_sum);
    all_reduce_sum(dp, n_tokens);
    all_reduce_sum(dp, mtp_n_tokens);
    router_loss = all_reduce_sum(dp, router_loss);
    if (with_grads) engine->reduce_grads(*dp.comm, eg.same_experts.get());
  }
  if (!opt.quiet && par.root() && opt.router.active())
    std::fprintf(stderr, "score: router loss (sum over MoE layers) %.9g\n", router_loss);

  check_finite_losses(loss_sum, mtp_loss_sum, router_loss, ck, opt);

  model::TensorMap grads;
  if (with_grads) {
    if (lora) {
      grads = model::zeros_like(lora->adapters);
    } else {  // at the local shapes (ck.params holds ZeRO 3 pieces)
      for (const model::ParamSpec& sp : local_specs(c, local)) grads.emplace(sp.name, sp.shape);
    }
    if (!lora)  // the frozen part of the vision tower has no gradient to write
      std::erase_if(grads, [&](const auto& kv) { return !model::vision_trains(c, kv.first); });
    engine->grads_to_host(grads);
    gather_experts(grads, eg, par.comm->device());    // the full expert tensors
    gather_shards(grads, tg, c, par.comm->device());  // the full tensor-parallel tensors
  }
  if (!par.root()) {  // rank 0 checks and writes the gradients and the scores
    par.comm->barrier();
    return;
  }
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
    if (const auto nf = find_non_finite(grads))
      core::fail(lora ? opt.adapter_dir : opt.model_dir,
                 ": the gradient is not finite: ", describe(*nf), "; nothing written");
    if (lora) {  // under the adapter file's own names
      const io::PeftAdapter g = io::to_peft_adapter(
          lora->options, grads, model::lora_modules(c, lora->options, opt.adapter_dir), "");
      std::map<std::string, core::Tensor> named;
      for (const auto& [module, a] : g.a) {
        named.emplace(io::peft_a_name(module), a);
        named.emplace(io::peft_b_name(module), g.b.at(module));
      }
      io::save_tensors_f32(opt.grad_out, named);
    } else {
      io::save_tensors_f32(opt.grad_out, io::to_checkpoint_names(ck, grads));
    }
  }
  io::write_file_atomic(opt.output_path, out);
  par.comm->barrier();
}

}  // namespace deltatron::train
