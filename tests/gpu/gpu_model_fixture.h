// Helpers of the GPU model-level tests: the test data directory on either machine, scoring a pack
// with model::Model on CUDA or the CPU reference, and worst-error bookkeeping that names the
// culprit.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "data/pack.h"
#include "model/model.h"
#include "test_util.h"

namespace dt_gpu_test {

namespace dt = deltatron;

// tests/data: $DT_TEST_DATA_DIR when set (on the GPU machine the repository lives at another
// path), else the build's DT_TEST_DATA, else tests/data beside this file.
inline std::filesystem::path test_data_dir() {
  if (const char* e = std::getenv("DT_TEST_DATA_DIR"); e && *e) return e;
#ifdef DT_TEST_DATA
  return DT_TEST_DATA;
#else
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "data";
#endif
}

inline const char* mode_name(dt::core::DType dt) {
  return dt == dt::core::DType::f32 ? "f32" : "bf16";
}

// The tiny MoE + MTP variant of model_fixture.h's dense config (as test_model_moe_mtp.cpp).
inline nlohmann::json moe_mtp_overrides() {
  return {{"model_type", "qwen3_5_moe_text"},
          {"intermediate_size", nullptr},
          {"num_experts", 4},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 12},
          {"shared_expert_intermediate_size", 10},
          {"mtp_num_hidden_layers", 1}};
}

struct Scored {
  dt::model::PackLoss loss;
  dt::model::TensorMap grads;
};

// One pack on the GPU model, gradients from zero (downloaded into a map shaped like `like`).
inline Scored score_gpu(dt::model::Model& m, const dt::model::TensorMap& like,
                        const dt::data::Pack& pack, const dt::model::ModelOptions& opt) {
  m.params().zero_grads();
  Scored r;
  r.loss = m.fwd_bwd(pack, true, opt);
  r.grads = dt::model::zeros_like(like);
  m.params().download_grads(r.grads);
  return r;
}

// The same on the CPU reference (model::model_fwd_bwd).
inline Scored score_cpu(const dt::model::Config& c, const dt::model::TensorMap& p,
                        const dt::data::Pack& pack, const dt::model::ModelOptions& opt) {
  Scored r;
  r.grads = dt::model::zeros_like(p);
  r.loss = dt::model::model_fwd_bwd(dt::core::Device::cpu, c, p, pack, &r.grads, opt);
  return r;
}

inline double rel(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

// The largest error seen and where.
struct Worst {
  double err = 0;
  std::string where;
  void add(double e, const std::string& w) {
    if (std::isnan(err)) return;  // a NaN stays the worst
    if (std::isnan(e) || e > err || where.empty()) {
      err = e;
      where = w;
    }
  }
  std::string str() const {
    if (where.empty()) return "-";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", err);
    return std::string(buf) + " (" + where + ")";
  }
};

// Every gradient tensor of `want` against `got`: relative RMS <= tol (tol < 0: measured only).
inline Worst compare_grads(const dt::model::TensorMap& got, const dt::model::TensorMap& want,
                           double tol, const std::string& what) {
  Worst w;
  for (const auto& [name, t] : want) {
    const auto r = dt_test::compare(got.at(name).data, t.data);
    w.add(r.rel_rms, name);
    if (tol >= 0) {
      EXPECT_LE(r.rel_rms, tol) << what << " " << name << ": " << r.str();
    }
  }
  return w;
}

// Weights perturbed at a given precision, to measure how much the CPU model's own gradients move
// (its conditioning): each weight w becomes w (1 + rel u), u uniform in [-1, 1] (rel = 2^-8: a
// bf16 rounding error), or moves by one float32 ulp up or down (rel = 0). A lower-precision
// computation of an ill-conditioned model cannot beat that, so its tolerance scales with it
// (flash-attention's rule: compare with how wrong the reference already is).
inline dt::model::TensorMap perturb_weights(const dt::model::TensorMap& p, double rel,
                                            uint64_t seed) {
  dt::model::TensorMap q = p;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1.0, 1.0);
  for (auto& [name, t] : q)
    for (auto& v : t.data)
      v = rel > 0 ? static_cast<float>(v * (1.0 + rel * u(rng)))
                  : std::nextafter(v, (rng() & 1) ? 1e30f : -1e30f);
  return q;
}
constexpr double kBf16Noise = 1.0 / 256;  // 2^-8
// The response of these models to a perturbation varies several-fold with its direction, so the
// sensitivity is the largest over a few draws.
constexpr uint64_t kNoiseDraws = 3;

// Per tensor: relative RMS of `moved` (gradients at perturbed weights) against `base`; with `acc`,
// the elementwise maximum with what it already holds.
inline void sensitivity(const dt::model::TensorMap& moved, const dt::model::TensorMap& base,
                        std::map<std::string, double>& acc) {
  for (const auto& [name, t] : base) {
    const double e = dt_test::compare(moved.at(name).data, t.data).rel_rms;
    auto [it, fresh] = acc.emplace(name, e);
    if (!fresh) it->second = std::max(it->second, e);
  }
}

// The same for CPU-scored packs (internal names), the maximum over kNoiseDraws draws.
inline std::map<std::string, double> cpu_sensitivity(const dt::model::Config& c,
                                                     const dt::model::TensorMap& p,
                                                     const dt::data::Pack& pack,
                                                     const dt::model::ModelOptions& opt,
                                                     const dt::model::TensorMap& base, double rel) {
  std::map<std::string, double> out;
  for (uint64_t seed = 1; seed <= kNoiseDraws; ++seed)
    sensitivity(score_cpu(c, perturb_weights(p, rel, seed), pack, opt).grads, base, out);
  return out;
}

constexpr double kSensitivityFactor = 3.0;  // bound = max(fixed bound, 3 x the CPU's sensitivity)

// Every gradient tensor of `want` against `got` within max(tol, kSensitivityFactor * sens[name]);
// returns the worst error and, in `ratio`, the worst error / sensitivity.
inline Worst compare_grads_conditioned(const dt::model::TensorMap& got,
                                       const dt::model::TensorMap& want,
                                       const std::map<std::string, double>& sens, double tol,
                                       const std::string& what, Worst* ratio) {
  Worst w;
  for (const auto& [name, t] : want) {
    const auto r = dt_test::compare(got.at(name).data, t.data);
    const double si = sens.at(name), bound = std::max(tol, kSensitivityFactor * si);
    w.add(r.rel_rms, name);
    if (ratio) ratio->add(r.rel_rms / std::max(si, 1e-30), name);
    EXPECT_LE(r.rel_rms, bound) << what << " " << name << " (CPU sensitivity " << si
                                << "): " << r.str();
  }
  return w;
}

}  // namespace dt_gpu_test
