// CPU reference for the partial, interleaved-MRoPE rotary embedding of q and k (spec 2.5).
#pragma once

#include <cstdint>

namespace deltatron::cpu {

// In place on x_NHK: rotates the first R dims of every head (rotate-half convention inside the
// rotary slice) by angles pos_row(j)[n] * inv_freq_j, the row chosen per frequency j by the
// interleaved MRoPE rule. cos/sin are computed in float32 as HF does, then converted to T.
template <typename T>
void rope_fwd(T* x_NHK, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K, int64_t R,
              double theta, const int mrope_section[3]);

// In place on dx_NHK: the transpose of rope_fwd (rotation by the negated angles).
template <typename T>
void rope_bwd(T* dx_NHK, const int32_t* pos_3N, int64_t N, int64_t H, int64_t K, int64_t R,
              double theta, const int mrope_section[3]);

}  // namespace deltatron::cpu
