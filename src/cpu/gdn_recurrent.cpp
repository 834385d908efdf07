// CPU gated delta rule, per-token recurrence: the readable oracle for the chunked algorithm.
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "cpu/gdn.h"

// Legend: N tokens, H key heads, G value heads (R = G / H per key head), K key dim, V value dim,
// S segments. Per value head the state S is a row-major [K, V] matrix.

namespace deltatron::cpu {

void gdn_check_shapes(const char* what, core::Segments seg, int64_t N, int64_t H, int64_t G,
                      int64_t K, int64_t V) {
  DT_CHECK(H > 0 && G > 0 && K > 0 && V > 0 && N >= 0, what, ": bad sizes N=", N, " H=", H,
           " G=", G, " K=", K, " V=", V);
  DT_CHECK(G % H == 0, what, ": value heads G=", G, " not a multiple of key heads H=", H);
  DT_CHECK(seg.n >= 0 && (seg.n == 0 || seg.cu != nullptr), what, ": bad segments n=", seg.n);
  if (seg.n == 0) {
    DT_CHECK(N == 0, what, ": no segments for N=", N, " tokens");
    return;
  }
  DT_CHECK(seg.cu[0] == 0 && seg.cu[seg.n] == N, what, ": segments cover [", seg.cu[0], ", ",
           seg.cu[seg.n], ") but N=", N);
  for (int s = 0; s < seg.n; ++s)
    DT_CHECK(seg.cu[s] <= seg.cu[s + 1], what, ": cu_seqlens decreases at segment ", s);
}

namespace {

// Tokens between stored states in the backward oracle (memory (len / kCkpt + kCkpt) * K * V).
constexpr int64_t kCkpt = 64;

// One token of the recurrence on S [K, V]: S' = eg * S; u = S'^T k; d = beta (v - u);
// S = S' + k d^T. Leaves u and d for the caller.
template <typename T>
void step(T* S, const T* k, const T* v, T eg, T beta, int64_t K, int64_t V, T* u, T* d) {
  std::fill(u, u + V, T(0));
  for (int64_t a = 0; a < K; ++a) {
    T* Sa = S + a * V;
    for (int64_t b = 0; b < V; ++b) {
      Sa[b] *= eg;
      u[b] += k[a] * Sa[b];
    }
  }
  for (int64_t b = 0; b < V; ++b) d[b] = beta * (v[b] - u[b]);
  for (int64_t a = 0; a < K; ++a)
    for (int64_t b = 0; b < V; ++b) S[a * V + b] += k[a] * d[b];
}

}  // namespace

template <typename T>
void gdn_recurrent_fwd(const T* q_NHK, const T* k_NHK, const T* v_NGV, const T* g_NG,
                       const T* beta_NG, core::Segments seg, int64_t N, int64_t H, int64_t G,
                       int64_t K, int64_t V, T scale, T* o_NGV, T* state_SGKV) {
  gdn_check_shapes("gdn_recurrent_fwd", seg, N, H, G, K, V);
  const int64_t R = G / H, tasks = int64_t(seg.n) * G;
#pragma omp parallel
  {
    std::vector<T> S(K * V), u(V), d(V);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t s = task / G, j = task % G, h = j / R;
      std::fill(S.begin(), S.end(), T(0));
      for (int64_t t = seg.cu[s]; t < seg.cu[s + 1]; ++t) {
        const T* q = q_NHK + (t * H + h) * K;
        step(S.data(), k_NHK + (t * H + h) * K, v_NGV + (t * G + j) * V, std::exp(g_NG[t * G + j]),
             beta_NG[t * G + j], K, V, u.data(), d.data());
        T* o = o_NGV + (t * G + j) * V;  // o_t = S_t^T (scale q_t)
        std::fill(o, o + V, T(0));
        for (int64_t a = 0; a < K; ++a)
          for (int64_t b = 0; b < V; ++b) o[b] += scale * q[a] * S[a * V + b];
      }
      if (state_SGKV) std::copy(S.begin(), S.end(), state_SGKV + (s * G + j) * K * V);
    }
  }
}

// Reverse recurrence of spec 2.8. States are checkpointed every kCkpt tokens in a forward sweep
// and recomputed block by block in the reverse sweep. One task owns (segment, key head) and
// loops over its R value heads, so dq/dk accumulate without races in a fixed order.
template <typename T>
void gdn_recurrent_bwd(const T* q_NHK, const T* k_NHK, const T* v_NGV, const T* g_NG,
                       const T* beta_NG, core::Segments seg, int64_t N, int64_t H, int64_t G,
                       int64_t K, int64_t V, T scale, const T* do_NGV, T* dq_NHK, T* dk_NHK,
                       T* dv_NGV, T* dg_NG, T* dbeta_NG) {
  gdn_check_shapes("gdn_recurrent_bwd", seg, N, H, G, K, V);
  const int64_t R = G / H, tasks = int64_t(seg.n) * H, KV = K * V;
#pragma omp parallel
  {
    std::vector<T> ckpt, Sblk(kCkpt * KV), S(KV), Sp(KV), St(KV), dS(KV);
    std::vector<T> u(V), d(V), dd(V), du(V);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t s = task / H, h = task % H, t0 = seg.cu[s], t1 = seg.cu[s + 1];
      for (int64_t t = t0; t < t1; ++t) {
        std::fill_n(dq_NHK + (t * H + h) * K, K, T(0));
        std::fill_n(dk_NHK + (t * H + h) * K, K, T(0));
      }
      const int64_t nblk = (t1 - t0 + kCkpt - 1) / kCkpt;
      ckpt.resize(nblk * KV);
      for (int64_t j = h * R; j < (h + 1) * R; ++j) {
        // Forward sweep: ckpt[b] = state before token t0 + b * kCkpt.
        std::fill(S.begin(), S.end(), T(0));
        for (int64_t t = t0; t < t1; ++t) {
          if ((t - t0) % kCkpt == 0)
            std::copy(S.begin(), S.end(), ckpt.begin() + (t - t0) / kCkpt * KV);
          step(S.data(), k_NHK + (t * H + h) * K, v_NGV + (t * G + j) * V,
               std::exp(g_NG[t * G + j]), beta_NG[t * G + j], K, V, u.data(), d.data());
        }
        std::fill(dS.begin(), dS.end(), T(0));  // dL/dS_t, zero after the segment end
        for (int64_t b = nblk - 1; b >= 0; --b) {
          const int64_t tb = t0 + b * kCkpt, te = std::min(t1, tb + kCkpt);
          // Sblk[i] = S_{tb + i - 1}, the state entering token tb + i.
          std::copy(ckpt.begin() + b * KV, ckpt.begin() + (b + 1) * KV, S.begin());
          for (int64_t t = tb; t < te; ++t) {
            std::copy(S.begin(), S.end(), Sblk.begin() + (t - tb) * KV);
            step(S.data(), k_NHK + (t * H + h) * K, v_NGV + (t * G + j) * V,
                 std::exp(g_NG[t * G + j]), beta_NG[t * G + j], K, V, u.data(), d.data());
          }
          for (int64_t t = te - 1; t >= tb; --t) {
            const T* q = q_NHK + (t * H + h) * K;
            const T* k = k_NHK + (t * H + h) * K;
            const T* v = v_NGV + (t * G + j) * V;
            const T* dO = do_NGV + (t * G + j) * V;
            const T eg = std::exp(g_NG[t * G + j]), beta = beta_NG[t * G + j];
            T* dq = dq_NHK + (t * H + h) * K;
            T* dk = dk_NHK + (t * H + h) * K;
            // Recompute S' = e^g S_{t-1}, u, delta and S_t.
            std::copy(Sblk.begin() + (t - tb) * KV, Sblk.begin() + (t - tb + 1) * KV, Sp.begin());
            std::copy(Sp.begin(), Sp.end(), St.begin());
            step(St.data(), k, v, eg, beta, K, V, u.data(), d.data());
            for (int64_t x = 0; x < KV; ++x) Sp[x] *= eg;
            // o_t = S_t^T (scale q): dS += scale q do^T; dq += scale S_t do.
            for (int64_t a = 0; a < K; ++a) {
              T acc = 0;
              for (int64_t c = 0; c < V; ++c) {
                dS[a * V + c] += scale * q[a] * dO[c];
                acc += St[a * V + c] * dO[c];
              }
              dq[a] += scale * acc;
            }
            // S_t = S' + k delta^T: d delta = dS^T k; dk += dS delta.
            std::fill(dd.begin(), dd.end(), T(0));
            for (int64_t a = 0; a < K; ++a) {
              T acc = 0;
              for (int64_t c = 0; c < V; ++c) {
                dd[c] += dS[a * V + c] * k[a];
                acc += dS[a * V + c] * d[c];
              }
              dk[a] += acc;
            }
            // delta = beta (v - u), u = S'^T k.
            T dbeta = 0;
            for (int64_t c = 0; c < V; ++c) {
              dv_NGV[(t * G + j) * V + c] = beta * dd[c];
              dbeta += dd[c] * (v[c] - u[c]);
              du[c] = -beta * dd[c];
            }
            dbeta_NG[t * G + j] = dbeta;
            // dS' = dS + k du^T; dk += S' du; dg = <dS', S'>; dS_{t-1} = e^g dS'.
            T dg = 0;
            for (int64_t a = 0; a < K; ++a) {
              T acc = 0;
              for (int64_t c = 0; c < V; ++c) {
                T& x = dS[a * V + c];
                x += k[a] * du[c];
                acc += Sp[a * V + c] * du[c];
                dg += x * Sp[a * V + c];
                x *= eg;
              }
              dk[a] += acc;
            }
            dg_NG[t * G + j] = dg;
          }
        }
      }
    }
  }
}

#define DT_INSTANTIATE(T)                                                                         \
  template void gdn_recurrent_fwd<T>(const T*, const T*, const T*, const T*, const T*,            \
                                     core::Segments, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                     T, T*, T*);                                                  \
  template void gdn_recurrent_bwd<T>(const T*, const T*, const T*, const T*, const T*,            \
                                     core::Segments, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                     T, const T*, T*, T*, T*, T*, T*);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
