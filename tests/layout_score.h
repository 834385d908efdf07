// `score` of a golden fixture on parallel layouts against the one-rank run (the layout tests:
// test_tensor_parallel, test_tp_ep, test_zero_tp, test_tp_vision): every per-sample loss, the
// router loss and every gradient.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "ranks_run.h"
#include "test_util.h"

namespace dt_test {

struct ScoreLayout {
  int ranks;
  std::string flags, name;
  double grad_tol = 0;  // this layout's gradient bound; 0: the call's grad_tol
};

// The router loss a score run reports on stderr (rank 0; without --quiet), or NaN.
inline double router_loss_of(const std::filesystem::path& err) {
  const std::string text = read_file(err), key = "router loss (sum over MoE layers) ";
  const size_t at = text.find(key);
  return at == std::string::npos ? std::nan("") : std::stod(text.substr(at + key.size()));
}

// `score` of a golden fixture with `flags` (packs of 64 tokens, so odd lengths: sequence
// parallelism pads them to a multiple of 2) on every layout against one rank: every per-sample
// loss (within 1e-6 relative), the router loss (when `router`; 1e-6 relative) and every gradient
// (worst tensor rel RMS within grad_tol); against Hugging Face's float64 too when `vs_f64` (the
// objective the fixture's gradients hold; the same bound). Gradient bound: fp32 rounding,
// amplified by the GDN gates' conditioning (docs/ops/gdn.md): the one-rank runs themselves are
// about 2e-5 from float64.
// model: the checkpoint directory (vs_f64: its grads.safetensors), data: the token JSONL.
inline void score_vs_one_rank(const std::filesystem::path& tmp, const std::filesystem::path& model,
                              const std::filesystem::path& data, const std::string& flags,
                              const std::string& tag, bool router, bool vs_f64,
                              const std::vector<ScoreLayout>& layouts, double grad_tol = 5e-5) {
  namespace fs = std::filesystem;
  const fs::path& d = model;
  const std::string base =
      "score --model " + d.string() + " --data " + data.string() + " --pack-tokens 64 " + flags;
  const auto run = [&](int ranks, const std::string& layout, const fs::path& o) {
    ASSERT_EQ(score_ranks(ranks, base + " " + layout, o), 0)
        << tag << " " << layout << ": " << read_file(o.string() + ".err");
  };
  const fs::path one = tmp / (tag + "_one");
  run(1, "", one);
  const auto want = jsonl(one.string() + ".jsonl");
  ASSERT_GE(want.size(), 3u);
  const double router_want = router_loss_of(one.string() + ".err");
  if (router) {
    ASSERT_TRUE(std::isfinite(router_want)) << tag << ": " << read_file(one.string() + ".err");
    std::printf("  %s one rank: router loss %.9g\n", tag.c_str(), router_want);
  }
  if (vs_f64) {
    std::string name1;
    const double one64 =
        worst_rel_rms(one.string() + ".safetensors", d / "grads.safetensors", name1);
    std::printf("  %s one rank: worst gradient rel RMS vs float64 %.2e (%s)\n", tag.c_str(), one64,
                name1.c_str());
  }
  for (const ScoreLayout& l : layouts) {
    const std::string what = tag + " " + l.name;
    const fs::path o = tmp / (tag + "_" + l.name);
    run(l.ranks, l.flags, o);
    const auto got = jsonl(o.string() + ".jsonl");
    ASSERT_EQ(got.size(), want.size()) << what;
    double worst = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(got[i]["n_tokens"], want[i]["n_tokens"]) << what << ", sample " << i;
      for (const char* key : {"loss_sum", "mtp_loss_sum"}) {
        if (!want[i].contains(key)) continue;
        const double a = got[i][key], b = want[i][key];
        worst = std::max(worst, std::abs(a - b) / std::max(1.0, std::abs(b)));
        EXPECT_NEAR(a, b, 1e-6 * std::max(1.0, std::abs(b)))
            << what << ", sample " << i << " " << key;
      }
    }
    std::string name;
    const double r =
        worst_rel_rms(o.string() + ".safetensors", one.string() + ".safetensors", name);
    std::printf("  %s: losses %.2e; worst gradient rel RMS vs one rank %.2e (%s)", what.c_str(),
                worst, r, name.c_str());
    if (router) {  // counted once per group: one rank's value
      const double a = router_loss_of(o.string() + ".err");
      const double rel = std::abs(a - router_want) / std::abs(router_want);
      std::printf(", router loss %.2e", rel);
      EXPECT_LE(rel, 1e-6) << what << ": router loss " << a << ", one rank " << router_want;
    }
    const double tol = l.grad_tol > 0 ? l.grad_tol : grad_tol;
    EXPECT_LE(r, tol) << what << ": " << name;
    if (vs_f64) {
      std::string name64;
      const double g = worst_rel_rms(o.string() + ".safetensors", d / "grads.safetensors", name64);
      std::printf(", vs float64 %.2e (%s)", g, name64.c_str());
      EXPECT_LE(g, grad_tol) << what << ": " << name64;
    }
    std::printf("\n");
  }
}

// A golden fixture (tests/data/golden/<fixture>) on its samples.jsonl.
inline void score_vs_one_rank(const std::filesystem::path& tmp, const std::string& fixture,
                              const std::string& flags, const std::string& tag, bool router,
                              bool vs_f64, const std::vector<ScoreLayout>& layouts,
                              double grad_tol = 5e-5) {
  const std::filesystem::path d = std::filesystem::path(DT_TEST_DATA) / "golden" / fixture;
  score_vs_one_rank(tmp, d, d / "samples.jsonl", flags, tag, router, vs_f64, layouts, grad_tol);
}

}  // namespace dt_test
