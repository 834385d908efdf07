// CPU gated delta rule (Gated DeltaNet core): per-token recurrence (oracle) and chunked WY form.
#pragma once

#include <cstdint>

#include "core/segments.h"

// Shape suffixes: N tokens in the pack, H key heads, G value heads, K key dim, V value dim,
// S segments. Row-major; q_NHK[t, h, :] is at q_NHK + (t * H + h) * K.
// Full contracts are in src/ops/gdn.h; this header only declares the CPU implementations.

namespace deltatron::cpu {

// Chunk length of the chunked algorithm; the chunk grid restarts at every segment start.
constexpr int64_t kGdnChunk = 64;

// Throws core::Error unless G % H == 0, all sizes are positive and seg covers [0, N) with
// non-decreasing boundaries. `what` names the calling op in the message.
void gdn_check_shapes(const char* what, core::Segments seg, int64_t N, int64_t H, int64_t G,
                      int64_t K, int64_t V);

// Per-token recurrence, per segment s and value head j (key head h = j / (G / H)), S = 0 at the
// segment start:  S = e^{g_t} S;  d = beta_t (v_t - S^T k_t);  S += k_t d^T;  o_t = S^T (scale
// q_t). state_SGKV (may be nullptr) receives the final state of each segment.
template <typename T>
void gdn_recurrent_fwd(const T* q_NHK, const T* k_NHK, const T* v_NGV, const T* g_NG,
                       const T* beta_NG, core::Segments seg, int64_t N, int64_t H, int64_t G,
                       int64_t K, int64_t V, T scale, T* o_NGV, T* state_SGKV);

// Exact reverse recurrence (spec 2.8). All gradients overwrite; dq/dk are summed over the value
// heads sharing a key head; dq is w.r.t. the unscaled q (includes the factor scale).
template <typename T>
void gdn_recurrent_bwd(const T* q_NHK, const T* k_NHK, const T* v_NGV, const T* g_NG,
                       const T* beta_NG, core::Segments seg, int64_t N, int64_t H, int64_t G,
                       int64_t K, int64_t V, T scale, const T* do_NGV, T* dq_NHK, T* dk_NHK,
                       T* dv_NGV, T* dg_NG, T* dbeta_NG);

// Chunked (WY / UT-transform) forward of spec 2.7; same contract as gdn_recurrent_fwd.
template <typename T>
void gdn_chunk_fwd(const T* q_NHK, const T* k_NHK, const T* v_NGV, const T* g_NG, const T* beta_NG,
                   core::Segments seg, int64_t N, int64_t H, int64_t G, int64_t K, int64_t V,
                   T scale, T* o_NGV, T* state_SGKV);

// Chunked backward (docs/ops/gdn.md); same contract as gdn_recurrent_bwd.
template <typename T>
void gdn_chunk_bwd(const T* q_NHK, const T* k_NHK, const T* v_NGV, const T* g_NG, const T* beta_NG,
                   core::Segments seg, int64_t N, int64_t H, int64_t G, int64_t K, int64_t V,
                   T scale, const T* do_NGV, T* dq_NHK, T* dk_NHK, T* dv_NGV, T* dg_NG,
                   T* dbeta_NG);

}  // namespace deltatron::cpu
