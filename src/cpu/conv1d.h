// CPU reference for the GDN causal depthwise conv1d followed by SiLU, over packed segments.
#pragma once

#include <cstdint>

#include "core/segments.h"

namespace deltatron::cpu {

// y[t,c] = silu(sum_{i<W} w[c,i] x[t-(W-1)+i, c]); inputs before t's segment start count as 0.
template <typename T>
void conv1d_fwd(const T* x_NC, const T* w_CW, core::Segments seg, int64_t N, int64_t C, int64_t W,
                T* y_NC);

// dx overwritten, dw accumulated (+=); the pre-activation is recomputed from x and w.
template <typename T>
void conv1d_bwd(const T* x_NC, const T* w_CW, core::Segments seg, const T* dy_NC, int64_t N,
                int64_t C, int64_t W, T* dx_NC, T* dw_CW);

}  // namespace deltatron::cpu
