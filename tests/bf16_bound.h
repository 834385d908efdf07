// The conditioned bf16 check of docs/tolerances.md, shared by the CUDA bf16-vs-fp32 tests: every
// gradient of a bf16 run within max(5e-2, 3 x the fp32 gradient's own change when the weights are
// rounded to bf16) of the fp32 run's.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>

#include "core/bf16.h"
#include "model/weights.h"
#include "test_util.h"

namespace dt_test {

// `w` with every value rounded to bf16 (nearest even), kept in f32.
inline deltatron::model::TensorMap rounded_to_bf16(deltatron::model::TensorMap w) {
  for (auto& [name, t] : w)
    for (float& v : t.data)
      v = deltatron::core::bf16_to_f32(deltatron::core::bf16_round_nearest_even(v));
  return w;
}

struct Bf16Worst {
  double ratio = 0;  // the largest error / bound
  std::string name;
};

// EXPECT_LT per tensor of f32: bf16's error against the conditioned bound, f32_rounded the fp32
// run on rounded_to_bf16 weights; prints the tensors `print` names; returns the worst.
inline Bf16Worst expect_bf16_within_conditioned_bound(
    const deltatron::model::TensorMap& f32, const deltatron::model::TensorMap& f32_rounded,
    const deltatron::model::TensorMap& bf16,
    const std::function<bool(const std::string&)>& print = {}) {
  Bf16Worst worst;
  for (const auto& [name, t] : f32) {
    const double sens = compare(f32_rounded.at(name).data, t.data).rel_rms;
    const double err = compare(bf16.at(name).data, t.data).rel_rms;
    const double bound = std::max(5e-2, 3 * sens);
    EXPECT_LT(err, bound) << name << " (fp32 sensitivity to bf16 weights " << sens << ")";
    if (print && print(name))
      std::printf("  bf16 %-48s rel RMS %.3e (bound %.3e)\n", name.c_str(), err, bound);
    if (err / bound > worst.ratio) worst = {err / bound, name};
  }
  return worst;
}

}  // namespace dt_test
