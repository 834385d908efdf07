// The LoRA adapter's share of an adapted projection y = x W^T (model/lora.h, docs/lora.md), on
// views of any device, through the linear op family (its alpha scales by s = lora scale):
//   forward   h = x A^T [N, r];  y += s h B^T
//   backward  h recomputed (r is small: nothing saved);  dB += s dy^T h;  dh = s dy B;
//             dA += dh^T x;  dx += dh A
// A [r, I] and B [O, r] are in x's dtype (on CUDA in bf16: the adapters' compute copies); dA and
// dB f32, accumulated; h and dh are [N, r] scratch in x's dtype, which the caller provides.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::model {

struct LoraShape {
  int64_t N = 0, I = 0, O = 0, r = 0;
  float scale = 1.0f;
};

void lora_fwd(const LoraShape& d, const core::View& x_NI, const core::View& A_RI,
              const core::View& B_OR, const core::View& h_NR, const core::View& y_NO);

// dx_NI accumulates (+=): the base projection's dx is written first.
void lora_bwd(const LoraShape& d, const core::View& x_NI, const core::View& dy_NO,
              const core::View& A_RI, const core::View& B_OR, const core::View& h_NR,
              const core::View& dh_NR, const core::View& dx_NI, const core::View& dA_RI,
              const core::View& dB_OR);

}  // namespace deltatron::model
