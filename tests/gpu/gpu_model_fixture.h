// Helpers of the GPU model-level tests: the test data directory on either machine, scoring a pack
// with gpu::Model or the CPU reference, and worst-error bookkeeping that names the culprit.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "data/pack.h"
#include "gpu/model.h"
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

inline const char* mode_name(dt::gpu::DType dt) {
  return dt == dt::gpu::DType::f32 ? "f32" : "bf16";
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
inline Scored score_gpu(dt::gpu::Model& m, const dt::model::TensorMap& like,
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
    if (e > err || where.empty()) {
      err = e;
      where = w;
    }
  }
  std::string str() const { return where.empty() ? "-" : std::to_string(err) + " (" + where + ")"; }
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

}  // namespace dt_gpu_test
