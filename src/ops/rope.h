// Contract for the rotary embedding op: partial, interleaved-MRoPE RoPE on q/k heads (spec 2.5).
//
// Shape suffixes: N tokens in the pack, H heads (query heads, or kv heads when applied to k),
// K head dim. Views (docs/ops-views.md), one device per call: x / dx f32 or bf16 on CUDA, f32 on
// the CPU; positions i32 on the same device; mrope_section a host array.
#pragma once

#include <cstdint>

#include "core/view.h"

namespace deltatron::ops {

// Rotary embedding, IN PLACE on x_NHK:
//   x_NHK  [N, H, K]  inout  rotated in place
//   pos_3N [3, N]     in     position rows T, H, W (row r at element r*N); text-only tokens have
//                            three equal rows = the position inside their document
//   R                        rotary dim (even, <= K); dims [R, K) of every head are untouched
//   theta                    rope_theta;  mrope_section[3]: HF mrope_section, e.g. {11, 11, 10}
// Per token n and frequency j < R/2:
//   row(j)  = H if j % 3 == 1 && j < 3*mrope_section[1]; W if j % 3 == 2 && j < 3*mrope_section[2];
//             T otherwise                                              (interleaved MRoPE)
//   inv_freq_j = 1.0f / powf(float(theta), float(2j) / float(R))      all float32, as HF
//   angle  = float(pos_3N[row(j), n]) * inv_freq_j;  c = cosf(angle), s = sinf(angle)
//   x'[j]       = x[j] c - x[j + R/2] s
//   x'[j + R/2] = x[j + R/2] c + x[j] s                                (rotate-half convention)
// Nothing is saved: the backward recomputes the angles from the positions.
void rope_fwd(const core::View& x_NHK, const core::View& pos_3N, int64_t N, int64_t H, int64_t K,
              int64_t R, double theta, const int mrope_section[3]);

// Backward, IN PLACE on dx_NHK [N, H, K]: applies the transpose of rope_fwd's rotation (the
// rotation by -angle), turning d(rotated) into d(input). Same other arguments as rope_fwd.
//   dx'[j]       = dx[j] c + dx[j + R/2] s
//   dx'[j + R/2] = dx[j + R/2] c - dx[j] s
void rope_bwd(const core::View& dx_NHK, const core::View& pos_3N, int64_t N, int64_t H, int64_t K,
              int64_t R, double theta, const int mrope_section[3]);

// 2-D rotary embedding of the vision tower (spec 3.4), IN PLACE on x_NHK:
//   x_NHK  [N, H, K]  inout  patches' q or k heads; K % 4 == 0
//   pos_2N [2, N]     in     i32: row 0 the patch's row r, row 1 its column c in its image's
//                            patch grid (merge order, spec 2.6)
//   theta                    10000 for Qwen3.5
// With Q = K/4 frequencies inv_j = theta^(-4j/K) (HF: 1 / theta^(2j / (K/2)), dim = K/2) and the
// K/2 angles  a_j = r inv_j,  a_{Q+j} = c inv_j  (rows first, then columns), over the full head
// (rotate-half convention, no pass-through dims), for i < K/2:
//   x'[i]       = x[i] cos a_i - x[i + K/2] sin a_i
//   x'[i + K/2] = x[i + K/2] cos a_i + x[i] sin a_i
// Angles, cos and sin in double (CPU and CUDA), then float32. Nothing is saved. x: f32, or bf16
// on CUDA (K <= 256 there).
void rope_vision_fwd(const core::View& x_NHK, const core::View& pos_2N, int64_t N, int64_t H,
                     int64_t K, double theta);

// Backward, IN PLACE on dx_NHK: the transpose rotation (by -a_i). Arguments as the forward.
void rope_vision_bwd(const core::View& dx_NHK, const core::View& pos_2N, int64_t N, int64_t H,
                     int64_t K, double theta);

}  // namespace deltatron::ops
