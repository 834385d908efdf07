// `deltatron merge`: W + s B A for every module of a PEFT LoRA adapter, written as a checkpoint.
//
// Legend: O a linear layer's output features, I its input features, R the adapter's rank r.
#include "train/merge_cmd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <vector>

#include "core/error.h"
#include "io/hf_layout.h"
#include "io/output_dir.h"
#include "io/safetensors.h"
#include "model/lora.h"

namespace deltatron::train {

namespace fs = std::filesystem;

namespace {

enum class Rounding { f32, bf16, f16 };

Rounding rounding_of(const std::string& dtype, const std::string& what) {
  if (dtype == "F32") return Rounding::f32;
  if (dtype == "BF16") return Rounding::bf16;
  if (dtype == "F16") return Rounding::f16;
  core::fail(what, ": the base weight has dtype ", dtype, "; merge writes F32, BF16 or F16");
}

// v rounded to f32 "to odd": v itself when exact, else whichever of the two f32 neighbours of v
// has an odd significand. Rounding that f32 to nearest-even in a format with at least two fewer
// significand bits (bf16: 8, f16: 11; f32 has 24) gives what rounding v there directly gives:
// the odd last bit stands for "inexact", so the second rounding never meets a false tie (Boldo
// and Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using rounding
// to odd", IEEE TC 2008). A plain double -> f32 -> bf16 would round twice and miss by one ulp
// where the first rounding lands on a bf16 tie.
float round_to_odd(double v) {
  const float f = static_cast<float>(v);  // to nearest: one of the two neighbours of v
  if (!std::isfinite(f) || static_cast<double>(f) == v) return f;
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if (bits & 1u) return f;
  return std::nextafter(f, v > static_cast<double>(f) ? std::numeric_limits<float>::infinity()
                                                      : -std::numeric_limits<float>::infinity());
}

// v rounded once, to nearest with ties to even, to the dtype; returned as the f32 holding it.
float round_to(double v, Rounding r) {
  switch (r) {
    case Rounding::f32:
      return static_cast<float>(v);
    case Rounding::bf16:
      return io::bf16_to_float(io::float_to_bf16(round_to_odd(v)));
    case Rounding::f16:
      return io::f16_to_float(io::float_to_f16(round_to_odd(v)));
  }
  return 0;
}

}  // namespace

void merge_lora_weight(core::Tensor& w_OI, const std::string& dtype, const core::Tensor& a_RI,
                       const core::Tensor& b_OR, double scale, const std::string& what) {
  DT_CHECK(w_OI.shape.size() == 2 && a_RI.shape.size() == 2 && b_OR.shape.size() == 2 &&
               a_RI.shape[0] == b_OR.shape[1] && a_RI.shape[1] == w_OI.shape[1] &&
               b_OR.shape[0] == w_OI.shape[0] && w_OI.numel() == core::numel(w_OI.shape) &&
               a_RI.numel() == core::numel(a_RI.shape) && b_OR.numel() == core::numel(b_OR.shape),
           what, ": lora_A ", core::shape_str(a_RI.shape), " and lora_B ",
           core::shape_str(b_OR.shape), " do not fit the weight ", core::shape_str(w_OI.shape),
           " (expected lora_A [r, in] and lora_B [out, r] for a weight [out, in])");
  const Rounding rounding = rounding_of(dtype, what);
  const int64_t O = w_OI.shape[0], I = w_OI.shape[1], R = a_RI.shape[0];
  const float* a = a_RI.ptr();
  const float* b = b_OR.ptr();
  float* w = w_OI.ptr();
  int64_t first_bad = std::numeric_limits<int64_t>::max();  // flat index of a new non-finite
#pragma omp parallel
  {
    std::vector<double> acc_I(static_cast<size_t>(I));
#pragma omp for schedule(static)
    for (int64_t o = 0; o < O; ++o) {
      // acc[i] = sum_k b[o, k] a[k, i], k ascending, every product and sum in float64.
      std::fill(acc_I.begin(), acc_I.end(), 0.0);
      for (int64_t k = 0; k < R; ++k) {
        const double bk = b[o * R + k];
        const float* ak = a + k * I;
        for (int64_t i = 0; i < I; ++i) acc_I[size_t(i)] += bk * static_cast<double>(ak[i]);
      }
      float* wo = w + o * I;
      for (int64_t i = 0; i < I; ++i) {
        const float merged =
            round_to(static_cast<double>(wo[i]) + scale * acc_I[size_t(i)], rounding);
        if (!std::isfinite(merged) && std::isfinite(wo[i])) {
#pragma omp critical(merge_first_bad)
          first_bad = std::min(first_bad, o * I + i);
        }
        wo[i] = merged;
      }
    }
  }
  if (first_bad != std::numeric_limits<int64_t>::max())
    core::fail(what, ": the merged weight is not finite at [", first_bad / I, ", ", first_bad % I,
               "] (", w[first_bad], " in ", dtype, "; scale ", scale,
               "): the adapter holds a non-finite value or W + s B A overflows the base dtype");
}

MergeReport merge_adapter(io::Checkpoint& ck, const io::PeftAdapter& ad, const std::string& where) {
  const model::Config& c = ck.config;
  MergeReport rep;
  // Resolve and check every module before a parameter changes.
  std::map<std::string, std::string> param_of;         // adapter module -> base parameter
  std::map<std::string, std::string> module_of;        // base parameter -> adapter module
  std::map<std::string, std::string> expert_param_of;  // expert module -> fused parameter
  for (const auto& [module, a] : ad.a) {
    const core::Tensor& b = ad.b.at(module);  // load_peft_adapter pairs every A with a B
    if (io::is_expert_module(module)) {       // routed experts: W[e] += s B_e A_e
      DT_CHECK(ad.target_parameters.size() == 2, where, ": module ", module,
               ": routed-expert adapters merge when both fused parameters are targeted");
      const std::string w = io::adapter_module_weight(c, io::expert_param_of(module));
      const std::string param = w.substr(0, w.size() - 7);  // no ".weight" on a fused tensor
      auto it = ck.params.find(param);
      DT_CHECK(it != ck.params.end(), where, ": module ", module, " is not in the base model: it ",
               "has no tensor '", param, "'");
      const core::Shape& ws = it->second.shape;
      DT_CHECK(ws.size() == 3 && a.shape[0] == ad.options.r * ws[0] && a.shape[1] == ws[2] &&
                   b.shape[0] == ws[1] && b.shape[1] == a.shape[0],
               where, ": module ", module, " has lora_A ", core::shape_str(a.shape), " and lora_B ",
               core::shape_str(b.shape), ", but ", param, " is ", core::shape_str(ws));
      expert_param_of.emplace(module, param);
      continue;
    }
    const std::string param = io::adapter_module_weight(c, module);
    const bool renamed = param != module + ".weight";
    if (io::is_passthrough_name(param))
      core::fail(where, ": module ", module, " is in the ",
                 io::is_mtp_name(param) ? "MTP head" : "vision tower",
                 ", which merge carries through untouched (it merges the language model's "
                 "linear layers only)");
    auto it = ck.params.find(param);
    if (it == ck.params.end()) {
      if (param == "lm_head.weight" && c.tie_word_embeddings)
        core::fail(where, ": module lm_head: the base model ties lm_head to the input embeddings ",
                   "(tie_word_embeddings), so it has no lm_head.weight to merge into");
      core::fail(where, ": module ", module, " is not in the base model: it has no tensor '", param,
                 "'", renamed ? " (the module's name in this checkpoint's layout)" : "",
                 "; was the adapter trained on another model?");
    }
    const core::Shape& w = it->second.shape;
    DT_CHECK(w.size() == 2, where, ": module ", module, ": ", param, " has shape ",
             core::shape_str(w), ", not a linear layer's weight [out, in]");
    DT_CHECK(a.shape[1] == w[1] && b.shape[0] == w[0], where, ": module ", module, " has lora_A ",
             core::shape_str(a.shape), " and lora_B ", core::shape_str(b.shape), ", but ", param,
             " is ", core::shape_str(w), " (expected lora_A [", ad.options.r, ", ", w[1],
             "] and lora_B [", w[0], ", ", ad.options.r, "])");
    auto [prev, fresh] = module_of.emplace(param, module);
    DT_CHECK(fresh, where, ": modules ", prev->second, " and ", module, " both name ", param);
    param_of.emplace(module, param);
    rep.renamed += renamed;
  }

  // The adapter's own target_modules, resolved on this config, should give exactly its modules.
  std::string mismatch;
  try {
    std::vector<model::LoraModule> mods = model::lora_modules(c, ad.options, where);
    for (model::LoraModule& m : mods) {
      auto it = module_of.find(m.weight);
      if (it != module_of.end()) m.name = it->second;  // the adapter's spelling of the module
    }
    io::check_adapter_matches(ad, mods, where);
    rep.targets_checked = true;
  } catch (const core::Error& e) {
    mismatch = e.what();
  }
  if (!mismatch.empty())
    std::fprintf(stderr,
                 "merge: warning: the adapter's target_modules do not resolve to exactly its "
                 "modules on this model (%s); merging the %zu modules it holds\n",
                 mismatch.c_str(), ad.a.size());

  const double scale = ad.options.scale();
  for (const auto& [module, param] : param_of) {
    auto d = ck.param_dtypes.find(param);
    merge_lora_weight(ck.params.at(param), d == ck.param_dtypes.end() ? "F32" : d->second,
                      ad.a.at(module), ad.b.at(module), scale, where + ": module " + module);
    ++rep.modules;
  }
  for (const auto& [module, param] : expert_param_of) {
    core::Tensor& W = ck.params.at(param);
    const int64_t E = W.shape[0], O = W.shape[1], I = W.shape[2], r = ad.options.r;
    const core::Tensor B = io::expert_b_to_model(ad.b.at(module), r, E);  // [E, O, r]
    auto d = ck.param_dtypes.find(param);
    for (int64_t e = 0; e < E; ++e) {
      core::Tensor w({O, I}), a({r, I}), b({O, r});
      std::copy_n(W.ptr() + e * O * I, O * I, w.ptr());
      std::copy_n(ad.a.at(module).ptr() + e * r * I, r * I, a.ptr());
      std::copy_n(B.ptr() + e * O * r, O * r, b.ptr());
      merge_lora_weight(w, d == ck.param_dtypes.end() ? "F32" : d->second, a, b, scale,
                        where + ": module " + module + " expert " + std::to_string(e));
      std::copy_n(w.ptr(), O * I, W.ptr() + e * O * I);
    }
    ++rep.modules;
  }
  return rep;
}

void run_merge(const MergeOptions& opt) {
  DT_CHECK(opt.max_shard_mb > 0, "--max-shard-mb must be positive");
  io::check_not_same_dir(opt.model_dir, opt.out_dir, "--model", "--out");
  io::check_not_same_dir(opt.adapter_dir, opt.out_dir, "--adapter", "--out");
  io::check_output_dir(opt.out_dir, opt.overwrite);
  io::remove_stale_staging(opt.out_dir);
  const io::PeftAdapter ad = io::load_peft_adapter(opt.adapter_dir);
  io::LoadOptions load;
  load.ignore_mtp = opt.ignore_mtp;
  io::Checkpoint ck = io::load_checkpoint(opt.model_dir, load);
  const std::string where = (fs::path(opt.adapter_dir) / io::kAdapterWeightsName).string();
  const MergeReport rep = merge_adapter(ck, ad, where);
  io::StagedOutput out(opt.out_dir);
  io::write_checkpoint_files(out.path(), ck, opt.max_shard_mb * 1'000'000);
  out.install("merge");
  std::fprintf(stderr,
               "merge: merged %lld adapted modules (r = %lld, scale = %g%s)%s into %s; wrote %zu "
               "parameters and %zu pass-through tensors to %s\n",
               static_cast<long long>(rep.modules), static_cast<long long>(ad.options.r),
               ad.options.scale(), ad.options.rslora ? ", rsLoRA" : "",
               rep.renamed ? " (named for the other text/multimodal layout)" : "",
               opt.model_dir.c_str(), ck.params.size(), ck.passthrough.size(), opt.out_dir.c_str());
}

}  // namespace deltatron::train
