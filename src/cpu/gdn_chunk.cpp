// CPU gated delta rule, chunked WY / UT-transform form (spec 2.7) and its chunked backward.

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/gdn.h"
#include "cpu/gemm.h"

// Legend: N tokens, H key heads, G value heads (R = G / H), K key dim, V value dim, C chunk
// (c <= C rows in the current chunk). Inside a chunk every matrix is row-major and dense:
// [c, c] with leading dimension c, [c, K] with K, [c, V] with V, states [K, V] with V. The
// chunk's q/k/v/o rows are read in place from the packed tensors (leading dims H*K, G*V).
// The derivation of every line of the backward is in docs/ops/gdn.md.

namespace deltatron::cpu {
namespace {

constexpr int64_t C = kGdnChunk;

// e^x for x <= 0, flushed to 0 below e^-60 (float) / e^-600 (double). Strong decays (g of -20 and
// less) otherwise make subnormal chunk entries, and subnormal operands slow the GEMMs down
// several-fold. The flushed values are ~1e-26 (~1e-261) relative to the O(1) diagonal terms they
// are summed with (Gamma_ii = 1, e^{gamma_last - gamma_last} = 1).
template <typename T>
T exp_nonpos(double x) {
  constexpr double kCut = sizeof(T) == 4 ? -60.0 : -600.0;
  return x < kCut ? T(0) : T(std::exp(x));
}

// Small vector helpers; `omp simd` because -O2 alone leaves these loops scalar.
template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  double acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t e = 0; e < n; ++e) acc += double(a[e]) * double(b[e]);
  return acc;
}
template <typename T>
void axpy(int64_t n, T alpha, const T* x, T* y) {  // y += alpha x
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) y[e] += alpha * x[e];
}
template <typename T>
void scale_copy(int64_t n, T alpha, const T* x, T* y) {  // y = alpha x
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) y[e] = alpha * x[e];
}
template <typename T>
void scal(int64_t n, T alpha, T* x) {  // x *= alpha
#pragma omp simd
  for (int64_t e = 0; e < n; ++e) x[e] *= alpha;
}

// Where one (segment, value head) task reads its rows.
template <typename T>
struct Head {
  const T *q, *k, *v, *g, *beta;  // row t0 of the segment for this head
  int64_t ldq, ldv, ldg;          // row strides: H*K (q, k), G*V (v, o, do), G (g, beta)
};

template <typename T>
Head<T> head_at(const T* q_NHK, const T* k_NHK, const T* v_NGV, const T* g_NG, const T* beta_NG,
                int64_t t0, int64_t h, int64_t j, int64_t H, int64_t G, int64_t K, int64_t V) {
  return {q_NHK + (t0 * H + h) * K,
          k_NHK + (t0 * H + h) * K,
          v_NGV + (t0 * G + j) * V,
          g_NG + t0 * G + j,
          beta_NG + t0 * G + j,
          H * K,
          G * V,
          G};
}

// Per-thread workspace; the chunk quantities of spec 2.7 for the current chunk.
template <typename T>
struct Work {
  std::vector<double> gam, dgam;                   // [C] gamma (cumsum of g), dL/dgamma
  std::vector<T> eg, egl, bet;                     // [C] e^gamma, e^(gamma_last - gamma), beta
  std::vector<T> Gam, Mkk, A, Tm, Tb, P, dP, dA;   // [C, C]
  std::vector<T> U, Vp, dVp, dBu;                  // [C, V]
  std::vector<T> W, Qs, Kt, dQ, dK, dKt, dW, dBw;  // [C, K]
  std::vector<T> S, dS, Sin;                       // [K, V]; Sin: [chunks, K, V]
  Work(int64_t K, int64_t V) {
    for (auto* x : {&gam, &dgam}) x->resize(C);
    for (auto* x : {&eg, &egl, &bet}) x->resize(C);
    for (auto* x : {&Gam, &Mkk, &A, &Tm, &Tb, &P, &dP, &dA}) x->resize(C * C);
    for (auto* x : {&U, &Vp, &dVp, &dBu}) x->resize(C * V);
    for (auto* x : {&W, &Qs, &Kt, &dQ, &dK, &dKt, &dW, &dBw}) x->resize(C * K);
    for (auto* x : {&S, &dS}) x->resize(K * V);
  }
};

// Chunk rows [r0, r0 + c) of head x with entry state w.S: gamma, Gamma, A = strict_lower(
// diag(beta) K K^T .* Gamma), Tm = (I + A)^-1, U = Tm diag(beta) V, W = Tm diag(beta e^gamma) K,
// V' = U - W S_in. Every exponent is <= 0: Gamma only for j <= i, e^(gamma_last - gamma_i).
template <typename T>
void chunk_prepare(Work<T>& w, const Head<T>& x, int64_t r0, int64_t c, int64_t K, int64_t V) {
  const T* Kc = x.k + r0 * x.ldq;
  double acc = 0;
  for (int64_t i = 0; i < c; ++i) {
    acc += double(x.g[(r0 + i) * x.ldg]);
    w.gam[i] = acc;
    w.bet[i] = x.beta[(r0 + i) * x.ldg];
  }
  for (int64_t i = 0; i < c; ++i) {
    w.eg[i] = exp_nonpos<T>(w.gam[i]);
    w.egl[i] = exp_nonpos<T>(w.gam[c - 1] - w.gam[i]);
    for (int64_t j = 0; j < c; ++j)
      w.Gam[i * c + j] = j <= i ? exp_nonpos<T>(w.gam[i] - w.gam[j]) : T(0);
  }
  gemm(false, true, c, c, K, T(1), Kc, x.ldq, Kc, x.ldq, T(0), w.Mkk.data(), c);
  for (int64_t i = 0; i < c; ++i) {
    T* Ai = w.A.data() + i * c;
    const T* Mi = w.Mkk.data() + i * c;
    const T* Gi = w.Gam.data() + i * c;
#pragma omp simd
    for (int64_t j = 0; j < i; ++j) Ai[j] = w.bet[i] * Mi[j] * Gi[j];
    std::fill(Ai + i, Ai + c, T(0));
  }
  // Forward substitution, row by row: Tm_i = e_i - sum_{m<i} A_im Tm_m.
  for (int64_t i = 0; i < c; ++i) {
    T* Ti = w.Tm.data() + i * c;
    std::fill(Ti, Ti + c, T(0));
    Ti[i] = 1;
    for (int64_t m = 0; m < i; ++m) {
      const T a = w.A[i * c + m];
      const T* Tmm = w.Tm.data() + m * c;
      axpy(m + 1, -a, Tmm, Ti);
    }
  }
  for (int64_t i = 0; i < c; ++i) {
#pragma omp simd
    for (int64_t j = 0; j <= i; ++j) w.Tb[i * c + j] = w.Tm[i * c + j] * w.bet[j];
    std::fill(w.Tb.data() + i * c + i + 1, w.Tb.data() + (i + 1) * c, T(0));
  }
  gemm(false, false, c, V, c, T(1), w.Tb.data(), c, x.v + r0 * x.ldv, x.ldv, T(0), w.U.data(), V);
  for (int64_t i = 0; i < c; ++i) {
#pragma omp simd
    for (int64_t j = 0; j <= i; ++j) w.Tb[i * c + j] *= w.eg[j];
  }
  gemm(false, false, c, K, c, T(1), w.Tb.data(), c, Kc, x.ldq, T(0), w.W.data(), K);
  std::copy(w.U.begin(), w.U.begin() + c * V, w.Vp.begin());
  gemm(false, false, c, V, K, T(-1), w.W.data(), K, w.S.data(), V, T(1), w.Vp.data(), V);
}

// S_out = e^{gamma_last} S_in + (diag(e^{gamma_last - gamma}) K)^T V', in place on w.S.
// Leaves Kt = diag(e^{gamma_last - gamma}) K.
template <typename T>
void chunk_state_update(Work<T>& w, const Head<T>& x, int64_t r0, int64_t c, int64_t K, int64_t V) {
  const T* Kc = x.k + r0 * x.ldq;
  for (int64_t i = 0; i < c; ++i) scale_copy(K, w.egl[i], Kc + i * x.ldq, w.Kt.data() + i * K);
  scal(K * V, w.eg[c - 1], w.S.data());
  gemm(true, false, K, V, c, T(1), w.Kt.data(), K, w.Vp.data(), V, T(1), w.S.data(), V);
}

// Qs = diag(scale e^gamma) Q and P = scale (Q K^T) .* Gamma (Gamma includes the diagonal).
template <typename T>
void chunk_qk(Work<T>& w, const Head<T>& x, int64_t r0, int64_t c, int64_t K, T scale) {
  const T* Qc = x.q + r0 * x.ldq;
  for (int64_t i = 0; i < c; ++i)
    scale_copy(K, scale * w.eg[i], Qc + i * x.ldq, w.Qs.data() + i * K);
  gemm(false, true, c, c, K, scale, Qc, x.ldq, x.k + r0 * x.ldq, x.ldq, T(0), w.P.data(), c);
#pragma omp simd
  for (int64_t e = 0; e < c * c; ++e) w.P[e] *= w.Gam[e];
}

// Segments ordered longest first, so dynamic scheduling balances packs of uneven documents.
std::vector<int> segments_longest_first(core::Segments seg) {
  std::vector<int> order(seg.n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return seg.cu[a + 1] - seg.cu[a] > seg.cu[b + 1] - seg.cu[b];
  });
  return order;
}

}  // namespace

template <typename T>
void gdn_chunk_fwd(const T* q_NHK, const T* k_NHK, const T* v_NGV, const T* g_NG, const T* beta_NG,
                   core::Segments seg, int64_t N, int64_t H, int64_t G, int64_t K, int64_t V,
                   T scale, T* o_NGV, T* state_SGKV) {
  gdn_check_shapes("gdn_chunk_fwd", seg, N, H, G, K, V);
  const int64_t R = G / H, tasks = int64_t(seg.n) * G;
  const std::vector<int> order = segments_longest_first(seg);
#pragma omp parallel
  {
    Work<T> w(K, V);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t s = order[task / G], j = task % G, h = j / R;
      const int64_t t0 = seg.cu[s], len = seg.cu[s + 1] - t0;
      const Head<T> x = head_at(q_NHK, k_NHK, v_NGV, g_NG, beta_NG, t0, h, j, H, G, K, V);
      T* o = o_NGV + (t0 * G + j) * V;
      std::fill(w.S.begin(), w.S.end(), T(0));
      for (int64_t r0 = 0; r0 < len; r0 += C) {
        const int64_t c = std::min(C, len - r0);
        chunk_prepare(w, x, r0, c, K, V);
        chunk_qk(w, x, r0, c, K, scale);
        // O = P V' + Qs S_in
        T* Oc = o + r0 * x.ldv;
        gemm(false, false, c, V, c, T(1), w.P.data(), c, w.Vp.data(), V, T(0), Oc, x.ldv);
        gemm(false, false, c, V, K, T(1), w.Qs.data(), K, w.S.data(), V, T(1), Oc, x.ldv);
        chunk_state_update(w, x, r0, c, K, V);
      }
      if (state_SGKV) std::copy(w.S.begin(), w.S.end(), state_SGKV + (s * G + j) * K * V);
    }
  }
}

// Backward, per (segment, value head): a forward sweep stores each chunk's entry state, then a
// reverse sweep recomputes the chunk quantities and back-propagates dS (the gradient w.r.t. the
// chunk's exit state) through it. dq/dk of value head r = j % R > 0 go to a scratch buffer and
// are added to the r = 0 head's (which overwrites dq/dk) in a fixed order: deterministic.
template <typename T>
void gdn_chunk_bwd(const T* q_NHK, const T* k_NHK, const T* v_NGV, const T* g_NG, const T* beta_NG,
                   core::Segments seg, int64_t N, int64_t H, int64_t G, int64_t K, int64_t V,
                   T scale, const T* do_NGV, T* dq_NHK, T* dk_NHK, T* dv_NGV, T* dg_NG,
                   T* dbeta_NG) {
  gdn_check_shapes("gdn_chunk_bwd", seg, N, H, G, K, V);
  const int64_t R = G / H, X = H * (R - 1), tasks = int64_t(seg.n) * G, KV = K * V;
  const std::vector<int> order = segments_longest_first(seg);
  std::vector<T> dq_NXK(N * X * K), dk_NXK(N * X * K);  // value heads r >= 1
#pragma omp parallel
  {
    Work<T> w(K, V);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t s = order[task / G], j = task % G, h = j / R, r = j % R;
      const int64_t t0 = seg.cu[s], len = seg.cu[s + 1] - t0;
      const Head<T> x = head_at(q_NHK, k_NHK, v_NGV, g_NG, beta_NG, t0, h, j, H, G, K, V);
      const T* dO_all = do_NGV + (t0 * G + j) * V;
      const int64_t own = (t0 * H + h) * K, scratch = (t0 * X + h * (R - 1) + r - 1) * K;
      T* dq = r == 0 ? dq_NHK + own : dq_NXK.data() + scratch;
      T* dk = r == 0 ? dk_NHK + own : dk_NXK.data() + scratch;
      const int64_t ldk = r == 0 ? H * K : X * K;
      const int64_t nch = (len + C - 1) / C;
      // Forward sweep: Sin[ch] = state entering chunk ch.
      w.Sin.resize(nch * KV);
      std::fill(w.S.begin(), w.S.end(), T(0));
      for (int64_t ch = 0; ch < nch; ++ch) {
        const int64_t r0 = ch * C, c = std::min(C, len - r0);
        std::copy(w.S.begin(), w.S.end(), w.Sin.begin() + ch * KV);
        if (ch + 1 == nch) break;
        chunk_prepare(w, x, r0, c, K, V);
        chunk_state_update(w, x, r0, c, K, V);
      }
      // Reverse sweep; w.dS = dL/dS_out of the current chunk (0 after the segment end).
      std::fill(w.dS.begin(), w.dS.end(), T(0));
      for (int64_t ch = nch - 1; ch >= 0; --ch) {
        const int64_t r0 = ch * C, c = std::min(C, len - r0);
        const T* Qc = x.q + r0 * x.ldq;
        const T* Kc = x.k + r0 * x.ldq;
        const T* Vc = x.v + r0 * x.ldv;
        const T* dO = dO_all + r0 * x.ldv;
        std::copy(w.Sin.begin() + ch * KV, w.Sin.begin() + (ch + 1) * KV, w.S.begin());
        chunk_prepare(w, x, r0, c, K, V);
        chunk_qk(w, x, r0, c, K, scale);
        for (int64_t i = 0; i < c; ++i)
          scale_copy(K, w.egl[i], Kc + i * x.ldq, w.Kt.data() + i * K);
        std::fill(w.dgam.begin(), w.dgam.end(), 0.0);
        // dV' = P^T dO + Kt dS  (O = P V' + ...;  S_out = ... + Kt^T V')
        gemm(true, false, c, V, c, T(1), w.P.data(), c, dO, x.ldv, T(0), w.dVp.data(), V);
        gemm(false, false, c, V, K, T(1), w.Kt.data(), K, w.dS.data(), V, T(1), w.dVp.data(), V);
        // dP = dO V'^T on j <= i; P_ij = scale q_i.k_j e^{gamma_i - gamma_j}.
        gemm(false, true, c, c, V, T(1), dO, x.ldv, w.Vp.data(), V, T(0), w.dP.data(), c);
        for (int64_t i = 0; i < c; ++i)
          for (int64_t j2 = 0; j2 < c; ++j2) {
            T& d = w.dP[i * c + j2];
            if (j2 > i) {
              d = 0;
              continue;
            }
            const double e = double(d) * double(w.P[i * c + j2]);
            w.dgam[i] += e;
            w.dgam[j2] -= e;
            d *= scale * w.Gam[i * c + j2];  // now dL/d(Q K^T)_ij
          }
        // dQ = dQK K + diag(scale e^gamma) dO S^T;  the Qs = diag(scale e^gamma) Q term of O.
        gemm(false, true, c, K, V, T(1), dO, x.ldv, w.S.data(), V, T(0), w.dQ.data(), K);
        for (int64_t i = 0; i < c; ++i) {
          w.dgam[i] += dot(w.Qs.data() + i * K, w.dQ.data() + i * K, K);
          scal(K, scale * w.eg[i], w.dQ.data() + i * K);
        }
        gemm(false, false, c, K, c, T(1), w.dP.data(), c, Kc, x.ldq, T(1), w.dQ.data(), K);
        // dK = dQK^T Q + diag(e^{gamma_last - gamma}) V' dS^T
        gemm(true, false, c, K, c, T(1), w.dP.data(), c, Qc, x.ldq, T(0), w.dK.data(), K);
        gemm(false, true, c, K, V, T(1), w.Vp.data(), V, w.dS.data(), V, T(0), w.dKt.data(), K);
        double rsum = 0;
        for (int64_t i = 0; i < c; ++i) {
          const double e = dot(w.Kt.data() + i * K, w.dKt.data() + i * K, K);
          axpy(K, w.egl[i], w.dKt.data() + i * K, w.dK.data() + i * K);
          w.dgam[i] -= e;
          rsum += e;
        }
        w.dgam[c - 1] += rsum + double(w.eg[c - 1]) * dot(w.S.data(), w.dS.data(), KV);
        // V' = U - W S_in: dU = dV', dW = -dV' S_in^T.
        gemm(false, true, c, K, V, T(-1), w.dVp.data(), V, w.S.data(), V, T(0), w.dW.data(), K);
        // X = Tm B: dB = Tm^T dX; dA = -strict_lower(dB_u U^T + dB_w W^T).
        gemm(true, false, c, V, c, T(1), w.Tm.data(), c, w.dVp.data(), V, T(0), w.dBu.data(), V);
        gemm(true, false, c, K, c, T(1), w.Tm.data(), c, w.dW.data(), K, T(0), w.dBw.data(), K);
        gemm(false, true, c, c, V, T(-1), w.dBu.data(), V, w.U.data(), V, T(0), w.dA.data(), c);
        gemm(false, true, c, c, K, T(-1), w.dBw.data(), K, w.W.data(), K, T(1), w.dA.data(), c);
        // B_u = diag(beta) V, B_w = diag(beta e^gamma) K.
        for (int64_t i = 0; i < c; ++i) {
          const T* vi = Vc + i * x.ldv;
          const T* ki = Kc + i * x.ldq;
          T* dvi = dv_NGV + (t0 + r0 + i) * G * V + j * V;
          double db = dot(vi, w.dBu.data() + i * V, V);
          scale_copy(V, w.bet[i], w.dBu.data() + i * V, dvi);
          const double dbw = dot(ki, w.dBw.data() + i * K, K);
          axpy(K, w.bet[i] * w.eg[i], w.dBw.data() + i * K, w.dK.data() + i * K);
          db += double(w.eg[i]) * dbw;
          w.dgam[i] += double(w.bet[i]) * double(w.eg[i]) * dbw;
          // A_ij = beta_i (K K^T)_ij Gamma_ij, j < i. Reuse dP as D + D^T, D = dL/d(K K^T).
          for (int64_t j2 = 0; j2 < i; ++j2) {
            const T da = w.dA[i * c + j2];
            db += double(da) * double(w.Mkk[i * c + j2]) * double(w.Gam[i * c + j2]);
            const double e = double(da) * double(w.A[i * c + j2]);
            w.dgam[i] += e;
            w.dgam[j2] -= e;
          }
          dbeta_NG[(t0 + r0 + i) * G + j] = T(db);
        }
        for (int64_t i = 0; i < c; ++i)
          for (int64_t j2 = 0; j2 < c; ++j2) {
            const T di = j2 < i ? w.dA[i * c + j2] * w.bet[i] * w.Gam[i * c + j2] : T(0);
            const T dj = i < j2 ? w.dA[j2 * c + i] * w.bet[j2] * w.Gam[j2 * c + i] : T(0);
            w.dP[i * c + j2] = di + dj;
          }
        gemm(false, false, c, K, c, T(1), w.dP.data(), c, Kc, x.ldq, T(1), w.dK.data(), K);
        // gamma_i = sum_{s <= i} g_s: dg_s = sum_{i >= s} dgamma_i.
        double acc = 0;
        for (int64_t i = c - 1; i >= 0; --i) {
          acc += w.dgam[i];
          dg_NG[(t0 + r0 + i) * G + j] = T(acc);
        }
        for (int64_t i = 0; i < c; ++i) {
          std::copy_n(w.dQ.data() + i * K, K, dq + (r0 + i) * ldk);
          std::copy_n(w.dK.data() + i * K, K, dk + (r0 + i) * ldk);
        }
        // dS_in = e^{gamma_last} dS_out + Qs^T dO - W^T dV'.
        scal(KV, w.eg[c - 1], w.dS.data());
        gemm(true, false, K, V, c, T(1), w.Qs.data(), K, dO, x.ldv, T(1), w.dS.data(), V);
        gemm(true, false, K, V, c, T(-1), w.W.data(), K, w.dVp.data(), V, T(1), w.dS.data(), V);
      }
    }
  }
  // Sum the value heads sharing a key head, r = 1 .. R-1 in order.
  if (R > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t r = 1; r < R; ++r) {
          const int64_t src = (t * X + h * (R - 1) + r - 1) * K, dst = (t * H + h) * K;
          axpy(K, T(1), dq_NXK.data() + src, dq_NHK + dst);
          axpy(K, T(1), dk_NXK.data() + src, dk_NHK + dst);
        }
  }
}

#define DT_INSTANTIATE(T)                                                                          \
  template void gdn_chunk_fwd<T>(const T*, const T*, const T*, const T*, const T*, core::Segments, \
                                 int64_t, int64_t, int64_t, int64_t, int64_t, T, T*, T*);          \
  template void gdn_chunk_bwd<T>(const T*, const T*, const T*, const T*, const T*, core::Segments, \
                                 int64_t, int64_t, int64_t, int64_t, int64_t, T, const T*, T*, T*, \
                                 T*, T*, T*);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
