// Random PEFT adapters for tests (B non-zero, unlike a fresh PEFT adapter): lora_A [r, in] and
// lora_B [out, r] of every module, N(0, std^2) from consecutive seeds starting at `seed`.
#pragma once

#include <cstdint>
#include <vector>

#include "io/peft_adapter.h"
#include "model/lora.h"
#include "test_util.h"

namespace dt_test {

inline deltatron::io::PeftAdapter random_peft_adapter(
    const std::vector<deltatron::model::LoraModule>& mods, int64_t r, double alpha, double std,
    uint64_t seed) {
  deltatron::io::PeftAdapter ad;
  ad.options.r = r;
  ad.options.alpha = alpha;
  for (const auto& m : mods) {
    deltatron::core::Tensor a({r, m.in}), b({m.out, r});
    a.data = randn<float>(size_t(r * m.in), seed++, std);
    b.data = randn<float>(size_t(m.out * r), seed++, std);
    ad.a.emplace(m.name, std::move(a));
    ad.b.emplace(m.name, std::move(b));
  }
  return ad;
}

}  // namespace dt_test
