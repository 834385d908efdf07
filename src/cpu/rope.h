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

// In place on x_NHK: the vision tower's 2-D rotary embedding over the whole head (K % 4 == 0):
// angle i < K/4 is row * inv_i, angle K/4 + i is col * inv_i, inv_i = theta^(-4i/K); sign = +1
// rotates forward, -1 applies the transpose (backward). Angles in double.
template <typename T>
void rope_vision(T* x_NHK, const int32_t* pos_2N, int64_t N, int64_t H, int64_t K, double theta,
                 int sign);

}  // namespace deltatron::cpu
