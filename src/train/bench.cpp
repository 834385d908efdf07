// `deltatron bench` (see bench.h). Reports real tokens/s (padding-free: every token is a real
// token of some sample), model TFLOP/s and MFU, peak GPU memory and a per-stage breakdown; under
// a launched job, of every rank's share of the same steps (the job's tokens/s, per GPU too).
//
// Model FLOPs per step (stated with the results):
//   6 * T * P_matmul            every weight matrix a token passes through (projections, active
//                               experts + shared expert + router for MoE, LM head), fwd + bwd
// + 3 * 4 * H * hd * sum_s L_s (L_s + 1) / 2 per full-attention layer (QK^T and PV, causal)
// + 3 * 6 * G * dk * dv * T    per Gated DeltaNet layer (state read, write and output per token
//                               and value head, in the recurrent form)
// + the vision tower's, with --vision (formula in bench_vl.cpp; T then counts image tokens too)
// MFU = model FLOP/s / 989.4e12 (H100/H200 SXM dense bf16 peak); with several ranks, per GPU: the
// job's model FLOP/s / ranks.
#include "train/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "core/error.h"
#include "core/step_scalars.h"
#include "data/pack.h"
#include "dist/comm.h"
#include "model/adapters.h"
#include "model/config.h"
#include "model/footprint.h"
#include "model/params.h"
#include "ops/device.h"
#include "ops/linear.h"
#include "ops/moe.h"
#include "ops/profile.h"
#include "ops/step_scalars.h"
#include "ops/tensor.h"
#include "train/bench_weights.h"
#include "train/engine.h"
#include "train/expert_parallel.h"
#include "train/memory_plan.h"
#include "train/optimizer.h"
#include "train/parallel.h"
#include "train/presets.h"
#include "train/run_setup.h"
#include "train/tensor_parallel.h"
#include "train/train_config.h"

namespace deltatron::train {

namespace {

constexpr double kPeakFlops = 989.4e12;

// A batches file's micro-batches as the run's steps of M each: warm-up step w takes micro-batches
// (w M + j) mod F of the file's F, timed step t (t M + j) mod F, the stage-profiled step after
// them j mod F. With M = 1 and F timed steps: warm-up cycling from the start, the file's steps
// timed in order, then its first again, as the peer script does.
template <typename MicroBatch>
std::vector<MicroBatch> run_micro_batches(const std::vector<MicroBatch>& file, int64_t warmup,
                                          int64_t timed, int64_t M) {
  std::vector<MicroBatch> out;
  const int64_t F = int64_t(file.size());
  for (int64_t w = 0; w < warmup; ++w)
    for (int64_t j = 0; j < M; ++j) out.push_back(file[(w * M + j) % F]);
  for (int64_t t = 0; t < timed; ++t)
    for (int64_t j = 0; j < M; ++j) out.push_back(file[(t * M + j) % F]);
  for (int64_t j = 0; j < M; ++j) out.push_back(file[j % F]);
  return out;
}

// A batches file (JSON), or an error naming it.
nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  DT_CHECK(in.good(), path, ": cannot open");
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    core::fail(path, ": not valid JSON (", e.what(), ")");
  }
}

// Micro-batches of sample lengths: log-normal (median, sigma) clipped to [min, max], packed
// greedily in draw order into micro-batches of at most `budget` tokens.
std::vector<std::vector<int64_t>> draw_lengths(const BenchOptions& o, int64_t nsteps) {
  std::mt19937_64 rng(o.seed);
  std::lognormal_distribution<double> ln(std::log(o.median_len), o.sigma);
  std::vector<std::vector<int64_t>> steps(1);
  int64_t used = 0;
  while (int64_t(steps.size()) <= nsteps) {
    const int64_t L = std::clamp<int64_t>(int64_t(ln(rng)), o.min_len, o.max_len);
    if (used + L > o.micro_batch_tokens) {
      steps.emplace_back();
      used = 0;
    }
    steps.back().push_back(L);
    used += L;
  }
  steps.pop_back();
  return steps;
}

data::Pack make_random_pack(const std::vector<int64_t>& lens, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, int32_t(vocab - 1));
  std::vector<data::Sample> samples(lens.size());
  std::vector<const data::Sample*> ptrs;
  std::vector<int64_t> index;
  for (size_t i = 0; i < lens.size(); ++i) {
    samples[i].input_ids.resize(lens[i]);
    for (auto& t : samples[i].input_ids) t = tok(rng);
    samples[i].labels = samples[i].input_ids;
    ptrs.push_back(&samples[i]);
    index.push_back(int64_t(i));
  }
  return data::make_pack(ptrs, index, 1);
}

// weight_grads = false (LoRA): the projections' forward and input-gradient GEMMs only (4 T per
// weight instead of 6); the adapters' own GEMMs (rank r) are not counted.
double step_flops(const model::Config& c, const std::vector<int64_t>& lens, bool weight_grads) {
  double T = 0, pairs = 0;
  for (int64_t L : lens) {
    T += double(L);
    pairs += double(L) * double(L + 1) / 2;
  }
  const double D = c.hidden_size;
  double pm = double(c.vocab_size) * D;  // LM head
  const double lin_c = 2.0 * c.linear_num_key_heads * c.linear_key_head_dim +
                       double(c.linear_num_value_heads) * c.linear_value_head_dim;
  const double gv = double(c.linear_num_value_heads) * c.linear_value_head_dim;
  double extra = 0;
  for (auto t : c.layer_types) {
    if (t == model::LayerType::full_attention) {
      const double hk = double(c.num_attention_heads) * c.head_dim;
      pm += D * 2 * hk + 2 * D * double(c.num_key_value_heads) * c.head_dim + hk * D;
      extra += 3.0 * 4.0 * hk * pairs;
    } else {
      pm += D * (lin_c + gv + 2.0 * c.linear_num_value_heads) + gv * D;
      extra += 3.0 * 6.0 * c.linear_num_value_heads * double(c.linear_key_head_dim) *
               c.linear_value_head_dim * T;
    }
    if (c.is_moe())
      pm += D * c.num_experts + double(c.num_experts_per_tok) * 3.0 * D * c.moe_intermediate_size +
            3.0 * D * c.shared_expert_intermediate_size + D;
    else
      pm += 3.0 * D * c.intermediate_size;
  }
  return (weight_grads ? 6.0 : 4.0) * T * pm + extra;
}

double gib(double b) { return b / double(1ull << 30); }

}  // namespace

void run_bench(const BenchOptions& o) {
  DT_CHECK(o.steps >= 0 && o.warmup >= 0, "bench: --steps and --warmup must be >= 0");
  DT_CHECK(o.accum >= 1, "bench: --accum must be >= 1");
  DT_CHECK(o.vision != "off" || !o.lengths_in.empty() || o.micro_batch_tokens >= o.max_len,
           "bench: --tokens (", o.micro_batch_tokens, ") must be at least the longest sample (",
           o.max_len, ")");
  DT_CHECK(o.device == "cuda" || o.device == "cpu", "bench: unknown device '", o.device, "'");
  const core::Device dev = o.device == "cuda" ? core::Device::cuda : core::Device::cpu;
  // The job's ranks first (a launcher's environment; else one rank): a rank uses GPU LOCAL_RANK.
  const Parallel par = setup_parallel(dev, "deltatron bench");
  const bool root = par.root();
  ops::check_device(dev);
  nlohmann::json cj = preset_config(o.preset);
  nlohmann::json& tj = cj.contains("text_config") ? cj["text_config"] : cj;  // VL: the LM's
  if (o.layers > 0) {
    tj["num_hidden_layers"] = o.layers;
    tj.erase("layer_types");
  }
  if (!o.mtp) tj["mtp_num_hidden_layers"] = 0;
  model::Config c = model::parse_config(cj, "preset " + o.preset);
  c.vision_mode = model::parse_vision_mode(o.vision, "bench --vision");
  const bool vl = c.vision_mode != model::VisionMode::off;
  if (vl) model::check_vision(c, "preset " + o.preset + " (bench --vision " + o.vision + ")");

  // The layout: the [parallel] keys of a training config, checked and turned into one rank's
  // share by the trainer's code (dp = the job's ranks / tp).
  TrainConfig lc;
  lc.source = "bench (--zero, --ep, --tp, --sp: parallel.*; --master, --offload, --lora)";
  lc.parallel_zero = o.zero;
  lc.parallel_ep = o.ep;
  lc.parallel_tp = o.tp;
  lc.parallel_sp = o.sp;
  lc.master = o.master;
  lc.offload = o.offload;
  lc.lora = o.lora;
  check_parallel(lc);
  const TensorGroups tg = setup_tensor_groups(par, o.tp, o.sp, c, "bench --tp");
  const Parallel& dp = tg.data(par);
  const ExpertGroups eg = setup_expert_groups(dp, o.ep, c, "bench --ep");  // among dp's ranks
  const PlanLayout layout =
      run_layout(lc, par.size(), par.size() > 1 ? dist::world_from_env().local_size : 1);
  const int64_t M = o.accum * dp.size();  // micro-batches of a step

  VlDrawOptions vo = o.vl;
  vo.micro_batch_tokens = o.micro_batch_tokens;
  vo.seed = o.seed;
  if (vl) {
    vo.patch_size = c.vision.patch_size;
    vo.merge_size = c.vision.spatial_merge_size;
  }
  const int64_t merge_unit = vl ? c.vision.merge_unit() : 1;
  // Every micro-batch of the run, step s's M at [s M, (s + 1) M): warm-up, timed, profiled.
  std::vector<std::vector<int64_t>> lens;  // the samples' tokens of each micro-batch
  std::vector<VlStep> vl_steps;            // with --vision: the samples of each micro-batch
  int64_t timed_steps = o.steps > 0 ? o.steps : 10;
  if (vl) {
    if (!o.lengths_in.empty()) {
      const nlohmann::json lj = read_json_file(o.lengths_in);
      const std::vector<VlStep> file = read_vl_steps(lj, c, o.micro_batch_tokens, o.lengths_in);
      // As the text file: its micro-batches are the timed ones, warm-up and profiling reuse them.
      if (o.steps == 0) timed_steps = (int64_t(file.size()) + M - 1) / M;
      vl_steps = run_micro_batches(file, o.warmup, timed_steps, M);
    } else {
      vl_steps = draw_vl_steps(vo, (o.warmup + timed_steps + 1) * M);
    }
    for (const VlStep& st : vl_steps) {
      lens.emplace_back();
      for (const VlSample& smp : st) lens.back().push_back(smp.tokens(merge_unit));
    }
  } else if (!o.lengths_in.empty()) {
    // A lengths file (tools/bench/make_lengths.py, or --lengths-out): its steps (micro-batches)
    // are the timed ones; warm-up and the profiled step reuse them from the start, as the peer
    // script does.
    const nlohmann::json lj = read_json_file(o.lengths_in);
    DT_CHECK(lj.contains("steps") && lj["steps"].is_array() && !lj["steps"].empty(), o.lengths_in,
             ": expected {\"steps\": [[len, ...], ...]}");
    const auto file = lj["steps"].get<std::vector<std::vector<int64_t>>>();
    for (const auto& st : file) {
      int64_t sum = 0;
      for (int64_t L : st) {
        DT_CHECK(L > 0, o.lengths_in, ": sample lengths must be positive");
        sum += L;
      }
      DT_CHECK(sum <= o.micro_batch_tokens, o.lengths_in, ": a step has ", sum,
               " tokens, more than --tokens ", o.micro_batch_tokens);
    }
    if (o.steps == 0) timed_steps = (int64_t(file.size()) + M - 1) / M;
    lens = run_micro_batches(file, o.warmup, timed_steps, M);
  } else {
    lens = draw_lengths(o, (o.warmup + timed_steps + 1) * M);
  }
  const int64_t first_timed = o.warmup * M, end_timed = (o.warmup + timed_steps) * M;
  if (root && vl && !o.lengths_out.empty()) {
    const std::vector<VlStep> timed(vl_steps.begin() + first_timed, vl_steps.begin() + end_timed);
    std::ofstream(o.lengths_out) << vl_steps_json(timed, vo).dump() << "\n";
  } else if (root && !o.lengths_out.empty()) {
    // The timed micro-batches only: the peer times exactly these batches.
    const std::vector<std::vector<int64_t>> timed(lens.begin() + first_timed,
                                                  lens.begin() + end_timed);
    nlohmann::json lj = {{"micro_batch_tokens", o.micro_batch_tokens}, {"steps", timed}};
    std::ofstream(o.lengths_out) << lj.dump() << "\n";
  }

  const model::StateOptions state =
      model::parse_state_options(o.master, o.moments, o.offload, "bench");
  const core::DType compute_dt =
      dev == core::Device::cuda && o.precision == "bf16" ? core::DType::bf16 : core::DType::f32;
  const model::StateBytes state_bytes = model::state_bytes(compute_dt, state);
  std::optional<model::LoraSetup> lora;
  std::vector<model::LoraModule> lora_mods;
  DT_CHECK(!o.lora || c.vision_mode == model::VisionMode::off ||
               c.vision_mode == model::VisionMode::frozen,
           "bench: --lora with --vision ", o.vision,
           " is not supported: the vision tower is part of the frozen base (use --vision frozen)");
  if (o.lora) {
    lora.emplace();
    lora->options.r = o.lora_r;
    lora->options.alpha = o.lora_alpha;
    lora->options.experts = o.lora_experts;
    for (size_t b = 0; b < o.lora_targets.size();) {
      size_t e = o.lora_targets.find(',', b);
      if (e == std::string::npos) e = o.lora_targets.size();
      if (e > b) lora->options.targets.push_back(o.lora_targets.substr(b, e - b));
      b = e + 1;
    }
    lora_mods = model::lora_modules(c, lora->options, "bench");
  }
  // The weights are made one tensor at a time (no f32 host copy of the model on any rank: the
  // 35b-a3b preset's would not fit a 128 GiB host once, 8 ranks' 2b copies not a host whose
  // available memory starts small), except with tensor parallelism, whose shards are cut from
  // the whole tensors of a host map.
  const bool streamed = !tg.on();
  PlanInput plan_in;
  plan_in.device = dev;
  plan_in.compute = compute_dt;
  plan_in.state = state;
  plan_in.lora_params = o.lora ? model::lora_param_count(lora_mods, o.lora_r) : -1;
  plan_in.streamed_weights = streamed;
  plan_in.micro_batch_tokens = o.micro_batch_tokens;
  plan_in.recompute = o.recompute;
  plan_in.recompute_selective = o.recompute_selective;
  plan_in.saves_checkpoints = false;
  plan_in.layout = layout;
  for (const VlStep& st : vl_steps) {  // the densest micro-batch bounds the tower's activations
    int64_t patches = 0;
    for (const VlSample& smp : st) patches += smp.patches();
    plan_in.image_patches_per_token =
        std::max(plan_in.image_patches_per_token, double(patches) / double(o.micro_batch_tokens));
  }
  check_memory_plan(c, plan_in, available_memory(dev), "bench");
  const MemoryPlan plan = plan_memory(c, plan_in);
  const size_t free0 = ops::memory_info(dev).free;
  const int64_t nparams = model::param_count(c);
  // A vision tower the bench does not train (--vision frozen / merger): held apart as compute-
  // dtype weights alone (model/model.h); the training state is the other parameters'.
  const int64_t nfrozen = plan.frozen, ntrained = nparams - nfrozen;
  AdamWOptions ao;
  ao.weight_decay = 0.1;
  ao.bf16_moments = state.moments == core::DType::bf16;
  if (lora) {  // as the trainer: the routed-expert adapters with their experts, the tp factors
    lora->adapters = model::lora_init(lora_mods, o.lora_r, o.seed);
    keep_local_experts(*lora, eg);
    keep_local_shards(*lora, tg, c);
  }
  // This rank's share of the weights (its expert slices and tensor-parallel shards).
  model::TensorMap params = streamed ? model::TensorMap{} : bench_params(c, o.seed, eg, tg);
  const model::ParamSource source = streamed ? bench_source(c, o.seed, eg) : model::ParamSource{};
  // Decay groups by name (the host moments are never allocated: the engine keeps its own).
  AdamW opt(lora ? lora->adapters : streamed ? shapes_only(source) : params, ao);
  const ZeroSetup zero{int(o.zero), dp.comm.get(), eg.same_experts.get()};
  auto engine = streamed ? make_engine(o.device, o.precision, c, source, nullptr, o.recompute,
                                       state, lora ? &*lora : nullptr, zero)
                         : make_engine(o.device, o.precision, c, params, nullptr, o.recompute,
                                       state, lora ? &*lora : nullptr, zero);
  engine->set_recompute_selective(o.recompute_selective);
  if (eg.on()) engine->set_expert_parallel(eg.model);
  if (tg.on()) engine->set_tensor_parallel(tg.model);
  params.clear();
  if (lora) {
    lora->adapters.clear();
    if (root)
      for (const std::string& line : model::lora_report(lora_mods))
        std::fprintf(stderr, "bench: LoRA r %lld, %s\n", static_cast<long long>(o.lora_r),
                     line.c_str());
  }

  const std::string layout_str =
      "world " + std::to_string(par.size()) + ": dp " + std::to_string(dp.size()) + " x accum " +
      std::to_string(o.accum) + " micro-batches, zero " + std::to_string(o.zero) + ", ep " +
      std::to_string(o.ep) + ", tp " + std::to_string(o.tp) + (o.sp ? " + sp" : "");
  if (root)
    std::fprintf(
        stderr,
        "bench: %s%s, %.3fB parameters, %s, %lld-token micro-batches, master %s, moments "
        "%s, offload %s (%g bytes of state per parameter on the device, %g in host memory)\n"
        "bench: layout %s\nbench: memory plan (one rank): %s\nbench: %s\n",
        o.preset.c_str(),
        o.layers > 0 ? (" (" + std::to_string(o.layers) + " layers)").c_str() : "",
        double(nparams) / 1e9, o.precision.c_str(), static_cast<long long>(o.micro_batch_tokens),
        o.master.c_str(), o.moments.c_str(), o.offload.c_str(), state_bytes.train, state_bytes.host,
        layout_str.c_str(), describe(plan).c_str(), plan.activation_detail.c_str());
  std::vector<double> times, tokens, flops, patches, image_tokens, vflops, losses;
  std::map<std::string, double> stages;
  int64_t reads = 0;          // the host's reads of the device in the last step (ops::host_reads)
  int64_t searches = 0;       // GEMM algorithm searches during the timed steps (new shapes)
  ops::LinearPlanMs plan_ms;  // their host time (searches, first calls), timed steps
  const auto sync = [&] {     // the device's work done, on every rank
    ops::synchronize(dev);
    if (par.size() > 1) par.comm->barrier();
  };
  for (int64_t s = 0; s < o.warmup + timed_steps + 1; ++s) {
    const bool timed = s >= o.warmup && s < o.warmup + timed_steps;
    const bool profiled = s == o.warmup + timed_steps;  // one extra step with stage events
    // The step's micro-batches: this rank's (m mod dp ranks = its data-parallel rank, as in
    // training), the objective's scale over all of them.
    std::vector<data::Pack> packs;
    int64_t label_tokens = 0;
    for (int64_t m = 0; m < M; ++m) {
      const int64_t g = s * M + m;
      for (int64_t L : lens[g]) label_tokens += L - 1;
      if (!dp.mine(m)) continue;
      const uint64_t seed = o.seed * 7919 + uint64_t(g);
      packs.push_back(vl ? make_vl_pack(vl_steps[g], c, seed)
                         : make_random_pack(lens[g], c.vocab_size, seed));
    }
    ops::profile_enable(dev, profiled);
    sync();
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t reads0 = ops::host_reads(dev);
    const int64_t searches0 = ops::linear_heuristic_queries(dev);
    const ops::LinearPlanMs plan0 = ops::linear_plan_ms(dev);
    engine->zero_grads();
    // The trainer's step (train_step): losses, norm, clip and skip on the device, one read.
    core::Buffer scalars(dev, core::DType::f64, {core::kStepScalars}, "step scalars");
    ops::zero(scalars);
    model::ModelOptions mo;
    mo.ce_scale = 1.f / float(std::max<int64_t>(1, label_tokens));
    mo.step_scalars = scalars.view();
    for (const data::Pack& pack : packs) engine->fwd_bwd(pack, true, mo);
    if (dp.size() > 1) {  // the gradients, and the three loss sums as one f64 view
      engine->reduce_grads(*dp.comm, eg.same_experts.get());
      dp.comm->all_reduce(scalars.view().slice(core::kStepCeSum, 3), dist::ReduceOp::sum);
    }
    const double labels = double(std::max<int64_t>(1, label_tokens));
    {
      ops::Stage st(dev, "optimizer (clip + fused AdamW)");
      engine->grad_squares(scalars.view().slice(core::kStepGradSquares, 1));
      ops::step_gate(scalars, 1.0, labels);
      engine->step_gated(opt, 1e-5, scalars.view().slice(core::kStepGate, 2));
    }
    core::StepScalars h;
    ops::copy_to_host(scalars, &h);
    engine->end_step(h.skip == 0);
    if (h.moe_error != 0) {  // a MoE error the forward recorded (ops/moe.h)
      const int32_t w[3] = {int32_t(h.moe_bad[0]), int32_t(h.moe_bad[1]), int32_t(h.moe_bad[2])};
      ops::moe_fail_bad(w, c.num_experts);
    }
    reads = ops::host_reads(dev) - reads0;
    if (timed) {
      searches += ops::linear_heuristic_queries(dev) - searches0;
      const ops::LinearPlanMs plan1 = ops::linear_plan_ms(dev);
      plan_ms.search += plan1.search - plan0.search;
      plan_ms.first_call += plan1.first_call - plan0.first_call;
    }
    sync();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double step_loss = h.ce_sum / labels;  // the whole step's, every rank's sums
    DT_CHECK(std::isfinite(step_loss), "bench: step ", s, " has a non-finite loss");
    if (profiled) {
      stages = ops::profile_collect(dev);
      ops::profile_enable(dev, false);
      double sum = 0;
      for (auto& [k, v] : stages) sum += v;
      stages["other (norms, residual, embedding, casts)"] = dt * 1e3 - sum;
      stages["total step"] = dt * 1e3;
    }
    if (!timed) continue;
    times.push_back(dt);
    losses.push_back(step_loss);
    double T = 0, F = 0, VF = 0, P = 0, img = 0;
    for (int64_t m = 0; m < M; ++m) {
      const int64_t g = s * M + m;
      for (int64_t L : lens[g]) T += double(L);
      const double vf = vl ? vision_step_flops(c, vl_steps[g]) : 0.0;
      F += step_flops(c, lens[g], !o.lora) + vf;
      VF += vf;
      if (vl)
        for (const VlSample& smp : vl_steps[g]) {
          P += double(smp.patches());
          img += double(smp.patches() / merge_unit);
        }
    }
    tokens.push_back(T);
    flops.push_back(F);
    vflops.push_back(VF);
    patches.push_back(P);
    image_tokens.push_back(img);
  }
  // Every rank's device memory taken by the run (the CPU: 0), known to rank 0.
  std::vector<double> peaks(size_t(par.size()), 0.0);
  peaks[size_t(par.rank())] = gib(double(free0) - double(ops::memory_info(dev).free));
  all_reduce_sum(par, peaks);
  if (!root) return;
  const double peak = *std::max_element(peaks.begin(), peaks.end());
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted[sorted.size() / 2];
  double tok = 0, fl = 0, tsum = 0, npatch = 0, nimg = 0, vfl = 0;
  for (size_t i = 0; i < times.size(); ++i) {
    tok += tokens[i], fl += flops[i], tsum += times[i];
    npatch += patches[i], nimg += image_tokens[i], vfl += vflops[i];
  }
  const double ranks = double(par.size());
  const double tps = tok / tsum, tflops = fl / tsum / 1e12 / ranks;
  const std::string device_name = ops::device_name(dev);

  std::printf(
      "bench %s: %s, %.3fB params, %lld timed steps of %lld micro-batch(es) of <= %lld tokens "
      "(%.0f real tokens/step)\n",
      o.preset.c_str(), device_name.c_str(), double(nparams) / 1e9,
      static_cast<long long>(times.size()), static_cast<long long>(M),
      static_cast<long long>(o.micro_batch_tokens), tok / double(times.size()));
  if (par.size() > 1) std::printf("  layout               %s\n", layout_str.c_str());
  if (!o.lengths_in.empty()) std::printf("  batches from          %s\n", o.lengths_in.c_str());
  if (vl)
    std::printf(
        "  vision               %s (tower depth %lld, hidden %lld): %.0f image tokens (%.0f%% of "
        "the tokens) and %.0f patches a step; tower %.1f%% of the model FLOPs\n",
        o.vision.c_str(), static_cast<long long>(c.vision.depth),
        static_cast<long long>(c.vision.hidden_size), nimg / double(times.size()),
        100.0 * nimg / tok, npatch / double(times.size()), 100.0 * vfl / fl);
  std::printf("  loss (last step)     %.4f (random weights and tokens: about ln(vocab) = %.2f)\n",
              losses.back(), std::log(double(c.vocab_size)));
  if (!lora)
    std::printf(
        "  training state       master %s, moments %s, offload %s: %g bytes per parameter on the "
        "device (%g weights and gradient + %g AdamW moments), %.2f GiB%s; %g bytes per parameter "
        "in host memory, %.2f GiB\n",
        o.master.c_str(), o.moments.c_str(), o.offload.c_str(), state_bytes.train, state_bytes.held,
        state_bytes.train - state_bytes.held, gib(state_bytes.train * double(ntrained)),
        layout.on() ? " for the whole model (one rank's: the memory plan)" : "", state_bytes.host,
        gib(state_bytes.host * double(ntrained)));
  if (nfrozen > 0)
    std::printf(
        "  frozen               %.3fB parameters (the vision tower%s, --vision %s): %g bytes per "
        "parameter (%s weights alone, no master, gradient or moments), %.2f GiB\n",
        double(nfrozen) / 1e9,
        c.vision_mode == model::VisionMode::merger ? " without its merger" : "", o.vision.c_str(),
        plan.frozen_per_param, core::dtype_name(compute_dt),
        gib(plan.frozen_per_param * double(nfrozen)));
  std::printf("  memory plan          %s\n", describe(plan).c_str());
  if (lora)
    std::printf(
        "  LoRA                 r %lld, alpha %g, %zu modules, %lld trainable parameters "
        "(fp32 masters + AdamW), the base frozen in %s (its weights alone); MFU counts "
        "forward + input-gradient GEMMs\n",
        static_cast<long long>(o.lora_r), o.lora_alpha, lora_mods.size(),
        static_cast<long long>(model::lora_param_count(lora_mods, o.lora_r)),
        core::dtype_name(compute_dt));
  if (par.size() > 1)
    std::printf("  real tokens/s        %.0f (the job's), %.0f per GPU%s\n", tps, tps / ranks,
                vl ? " (text + image tokens)" : "");
  else
    std::printf("  real tokens/s        %.0f%s\n", tps, vl ? " (text + image tokens)" : "");
  if (vl) std::printf("  image patches/s      %.0f\n", npatch / tsum);
  std::printf("  median step          %.1f ms\n", med * 1e3);
  std::printf("  host reads per step  %lld (device -> host copies, each a synchronisation)\n",
              static_cast<long long>(reads));
  std::printf(
      "  GEMM searches        %lld in the timed steps (cuBLASLt heuristic queries for new "
      "shapes), host %.1f ms searching + %.1f ms in their first calls\n",
      static_cast<long long>(searches), plan_ms.search, plan_ms.first_call);
  std::printf(
      "  model TFLOP/s        %.1f%s   (MFU %.1f%% of 989.4 TFLOP/s; formula in "
      "src/train/bench.cpp)\n",
      tflops, par.size() > 1 ? " per GPU" : "", 100.0 * tflops * 1e12 / kPeakFlops);
  std::printf(
      "  peak GPU memory      %.1f GiB%s (device memory taken by the run, cudaMemGetInfo)\n", peak,
      par.size() > 1 ? ", the largest of the ranks'" : "");
  std::printf("  stages of one step (ms%s):\n", par.size() > 1 ? ", rank 0" : "");
  for (auto& [k, v] : stages) std::printf("    %-45s %8.1f\n", k.c_str(), v);
  if (!o.json_out.empty()) {
    nlohmann::json j = {{"preset", o.preset},
                        {"layers", c.num_hidden_layers},
                        {"gpu", device_name},
                        {"params", nparams},
                        {"frozen_params", nfrozen},
                        {"precision", o.precision},
                        {"master", o.master},
                        {"moments", o.moments},
                        {"state_bytes_per_param", state_bytes.train},
                        {"offload", o.offload},
                        {"lora", o.lora},
                        {"lora_r", o.lora ? o.lora_r : 0},
                        {"lora_modules", lora_mods.size()},
                        {"lora_params", o.lora ? model::lora_param_count(lora_mods, o.lora_r) : 0},
                        {"host_state_bytes_per_param", state_bytes.host},
                        {"planned_device_gib", gib(plan.device_total())},
                        {"planned_activations_gib", gib(plan.activations)},
                        {"recompute", o.recompute},
                        {"recompute_selective", o.recompute_selective},
                        {"world_size", par.size()},
                        {"layout",
                         {{"dp", dp.size()},
                          {"accum", o.accum},
                          {"zero", o.zero},
                          {"ep", o.ep},
                          {"tp", o.tp},
                          {"sp", o.sp}}},
                        {"micro_batches_per_step", M},
                        {"steps", times.size()},
                        {"real_tok_per_s", tps},
                        {"global_tok_per_s", tps},
                        {"tok_per_s_per_gpu", tps / ranks},
                        {"step_s_median", med},
                        {"host_reads_per_step", reads},
                        {"gemm_searches_timed", searches},
                        {"gemm_search_host_ms", plan_ms.search},
                        {"gemm_first_call_host_ms", plan_ms.first_call},
                        {"step_s", times},
                        {"losses", losses},
                        {"tflops", tflops},
                        {"mfu", tflops * 1e12 / kPeakFlops},
                        {"peak_gib", peak},
                        {"peak_gib_ranks", peaks},
                        {"stages_ms", stages}};
    if (vl) {
      j["vision"] = o.vision;
      j["vision_depth"] = c.vision.depth;
      j["image_tokens"] = nimg;
      j["text_tokens"] = tok - nimg;
      j["image_patches"] = npatch;
      j["image_patches_per_s"] = npatch / tsum;
      j["vision_tflops_share"] = vfl / fl;
    }
    std::ofstream(o.json_out) << j.dump(1) << "\n";
  }
}

}  // namespace deltatron::train
