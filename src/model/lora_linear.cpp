// The LoRA adapter's forward and backward (lora_linear.h).
#include "model/lora_linear.h"

#include "ops/linear.h"

namespace deltatron::model {

void lora_fwd(const LoraShape& d, const core::View& x, const core::View& A, const core::View& B,
              const core::View& h, const core::View& y) {
  ops::linear_fwd(x, A, d.N, d.I, d.r, h, false);
  ops::linear_fwd(h, B, d.N, d.r, d.O, y, true, d.scale);
}

void lora_bwd(const LoraShape& d, const core::View& x, const core::View& dy, const core::View& A,
              const core::View& B, const core::View& h, const core::View& dh, const core::View& dx,
              const core::View& dA, const core::View& dB) {
  ops::linear_fwd(x, A, d.N, d.I, d.r, h, false);                // h = x A^T, recomputed
  ops::linear_bwd_dw(h, dy, d.N, d.r, d.O, dB, d.scale);         // dB += s dy^T h
  ops::linear_bwd_dx(dy, B, d.N, d.r, d.O, dh, false, d.scale);  // dh = s dy B
  ops::linear_bwd_dw(x, dh, d.N, d.I, d.r, dA);                  // dA += dh^T x
  ops::linear_bwd_dx(dh, A, d.N, d.I, d.r, dx, true);            // dx += dh A
}

}  // namespace deltatron::model
