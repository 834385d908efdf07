// CPU reference for the varlen GQA softmax attention core: causal (the gated full attention) or
// bidirectional (the vision tower, one segment per image).
//
// Per segment [a, a + L) and query head h (kv head j = h / (H/J)), with rows local to the
// segment, S = scale Q K^T, causal mask c <= r (none when bidirectional), and
//   forward:  P = softmax_row(S),  O = P V,  lse_r = m_r + log sum_c exp(S_rc - m_r)
//   backward: P = exp(S - lse) (recomputed),  D_r = sum_k dO_rk O_rk,
//             dV = P^T dO,  dP = dO V^T,  dS = P .* (dP - D),  dQ = scale dS K,  dK = scale dS^T Q
// (dS is the softmax Jacobian applied to dP: dS_rc = P_rc (dP_rc - sum_c' P_rc' dP_rc'), and
// sum_c' P_rc' dP_rc' = dO_r . O_r = D_r.)
//
// Work is cut into blocks of kBlock rows so no L x L matrix is ever formed: the forward and dQ
// take a block of query rows against the keys it can see; dK/dV take a block of key rows
// against the queries that see it, summing over the query heads of the GQA group. Every block
// writes a disjoint slice of the output in a fixed order, so results are bitwise independent
// of the thread count. The backward recomputes S in both passes (7 GEMMs instead of 5) to stay
// free of atomics and of per-thread [L, K] gradient buffers.
#include "cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/error.h"
#include "cpu/gemm.h"

namespace deltatron::cpu {

namespace {

constexpr int64_t kBlock = 64;  // rows per work item (query rows, or key rows for dK/dV)

// One unit of parallel work: segment-local rows [r0, r1) of segment [a, a + L), one head.
struct Item {
  int64_t a, L;  // segment start and length
  int64_t head;  // query head (forward, dQ) or kv head (dK, dV)
  int64_t r0, r1;
  double cost;  // for largest-first scheduling
};

void check_args(const char* name, core::Segments seg, int64_t N, int64_t H, int64_t J, int64_t K) {
  DT_CHECK(N >= 0 && H > 0 && J > 0 && K > 0, name, ": bad sizes N=", N, " H=", H, " J=", J,
           " K=", K);
  DT_CHECK(H % J == 0, name, ": query heads H=", H, " not a multiple of kv heads J=", J);
  DT_CHECK(seg.n >= 0 && seg.cu != nullptr, name, ": missing segment boundaries");
  DT_CHECK(seg.cu[0] == 0 && seg.cu[seg.n] == N, name, ": segments cover [", seg.cu[0], ", ",
           seg.cu[seg.n], "), pack has N=", N);
  for (int s = 0; s < seg.n; ++s)
    DT_CHECK(seg.cu[s] <= seg.cu[s + 1], name, ": segment boundaries decrease at ", s);
  DT_CHECK(K <= std::numeric_limits<int>::max() / std::max<int64_t>(H, 1), name,
           ": H*K exceeds the BLAS int range");
}

int64_t max_segment(core::Segments seg) {
  int64_t m = 0;
  for (int s = 0; s < seg.n; ++s) m = std::max<int64_t>(m, seg.cu[s + 1] - seg.cu[s]);
  return m;
}

// Row blocks of every (segment, head), heaviest first. Query blocks (by_keys = false) cost
// ~ rows * visible keys; key blocks (by_keys = true) cost ~ rows * queries that see them.
std::vector<Item> row_items(core::Segments seg, int64_t heads, bool by_keys, bool causal) {
  std::vector<Item> items;
  for (int s = 0; s < seg.n; ++s) {
    const int64_t a = seg.cu[s], L = seg.cu[s + 1] - a;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t r0 = 0; r0 < L; r0 += kBlock) {
        const int64_t r1 = std::min(L, r0 + kBlock);
        const int64_t seen = !causal ? L : by_keys ? L - r0 : r1;
        items.push_back({a, L, h, r0, r1, double(r1 - r0) * double(seen)});
      }
  }
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& x, const Item& y) { return x.cost > y.cost; });
  return items;
}

// Runs body(item, thread_scratch) over all items, in parallel when that helps.
template <typename T, typename Body>
void run_items(const std::vector<Item>& items, size_t scratch, const Body& body) {
  const bool parallel = items.size() > 1 && omp_get_max_threads() > 1;
#pragma omp parallel if (parallel)
  {
    std::vector<T> buf(scratch);
#pragma omp for schedule(dynamic, 1)
    for (size_t i = 0; i < items.size(); ++i) body(items[i], buf.data());
  }
}

}  // namespace

template <typename T>
void attention_fwd(const T* q_NHK, const T* k_NJK, const T* v_NJK, core::Segments seg, int64_t N,
                   int64_t H, int64_t J, int64_t K, T scale, T* o_NHK, T* lse_NH, bool causal) {
  check_args("attention_fwd", seg, N, H, J, K);
  const int64_t G = H / J, Lmax = max_segment(seg);
  const auto items = row_items(seg, H, false, causal);
  run_items<T>(items, size_t(kBlock * Lmax), [&](const Item& it, T* S) {
    const int64_t a = it.a, h = it.head, j = h / G, r0 = it.r0;
    // causal: rows r0..r1-1 see keys 0..r1-1; bidirectional: every key of the segment
    const int64_t nq = it.r1 - r0, nk = causal ? it.r1 : it.L;
    const T* q = q_NHK + ((a + r0) * H + h) * K;
    const T* k = k_NJK + (a * J + j) * K;
    const T* v = v_NJK + (a * J + j) * K;
    gemm(false, true, nq, nk, K, scale, q, H * K, k, J * K, T(0), S, nk);  // S = scale Q K^T
    for (int64_t i = 0; i < nq; ++i) {
      T* s = S + i * nk;
      const int64_t nv = causal ? r0 + i + 1 : nk;  // visible keys: 0..r0+i (causal)
      T m = s[0];
      for (int64_t c = 1; c < nv; ++c) m = std::max(m, s[c]);
      T sum = 0;
      for (int64_t c = 0; c < nv; ++c) {
        s[c] = std::exp(s[c] - m);
        sum += s[c];
      }
      const T inv = T(1) / sum;
      for (int64_t c = 0; c < nv; ++c) s[c] *= inv;
      std::fill(s + nv, s + nk, T(0));
      lse_NH[(a + r0 + i) * H + h] = m + std::log(sum);
    }
    gemm(false, false, nq, K, nk, T(1), S, nk, v, J * K, T(0), o_NHK + ((a + r0) * H + h) * K,
         H * K);  // O = P V
  });
}

template <typename T>
void attention_bwd(const T* q_NHK, const T* k_NJK, const T* v_NJK, const T* o_NHK, const T* lse_NH,
                   const T* do_NHK, core::Segments seg, int64_t N, int64_t H, int64_t J, int64_t K,
                   T scale, T* dq_NHK, T* dk_NJK, T* dv_NJK, bool causal) {
  check_args("attention_bwd", seg, N, H, J, K);
  const int64_t G = H / J, Lmax = max_segment(seg);

  // D[n, h] = dO . O (= sum_c P dP of the row).
  std::vector<T> D_NH(size_t(N * H));
#pragma omp parallel for schedule(static) if (N * H * K > 32768)
  for (int64_t nh = 0; nh < N * H; ++nh) {
    const T* o = o_NHK + nh * K;
    const T* d = do_NHK + nh * K;
    T acc = 0;
    for (int64_t x = 0; x < K; ++x) acc += o[x] * d[x];
    D_NH[nh] = acc;
  }

  // Pass 1, dQ: a block of query rows against the keys it sees.
  const auto qitems = row_items(seg, H, false, causal);
  run_items<T>(qitems, size_t(2 * kBlock * Lmax), [&](const Item& it, T* buf) {
    const int64_t a = it.a, h = it.head, j = h / G, r0 = it.r0;
    const int64_t nq = it.r1 - r0, nk = causal ? it.r1 : it.L;
    T* S = buf;             // [nq, nk]: scores, then P, then dS
    T* dP = buf + nq * nk;  // [nq, nk]
    const int64_t qoff = ((a + r0) * H + h) * K;
    const T* k = k_NJK + (a * J + j) * K;
    const T* v = v_NJK + (a * J + j) * K;
    gemm(false, true, nq, nk, K, scale, q_NHK + qoff, H * K, k, J * K, T(0), S, nk);
    gemm(false, true, nq, nk, K, T(1), do_NHK + qoff, H * K, v, J * K, T(0), dP, nk);
    for (int64_t i = 0; i < nq; ++i) {
      const int64_t n = a + r0 + i, nv = causal ? r0 + i + 1 : nk;
      const T lse = lse_NH[n * H + h], Dr = D_NH[n * H + h];
      T* s = S + i * nk;
      const T* dp = dP + i * nk;
      for (int64_t c = 0; c < nv; ++c) s[c] = std::exp(s[c] - lse) * (dp[c] - Dr);
      std::fill(s + nv, s + nk, T(0));
    }
    gemm(false, false, nq, K, nk, scale, S, nk, k, J * K, T(0), dq_NHK + qoff, H * K);
  });

  // Pass 2, dK and dV: a block of key rows against the queries (of all G heads) that see it.
  const auto kitems = row_items(seg, J, true, causal);
  run_items<T>(kitems, size_t(2 * kBlock * Lmax + 2 * Lmax), [&](const Item& it, T* buf) {
    const int64_t a = it.a, j = it.head, c0 = it.r0;
    // causal: queries c0..L-1 can see keys c0..r1-1; bidirectional: queries 0..L-1 (q0 = 0)
    const int64_t q0 = causal ? c0 : 0;
    const int64_t nk = it.r1 - c0, nq = it.L - q0;
    T* St = buf;             // [nk, nq]: scores^T, then P^T, then dS^T
    T* dPt = buf + nk * nq;  // [nk, nq]
    T* lse = dPt + nk * nq;  // [nq]
    T* Dq = lse + nq;        // [nq]
    const int64_t koff = ((a + c0) * J + j) * K;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t h = j * G + g;
      const int64_t qoff = ((a + q0) * H + h) * K;
      for (int64_t x = 0; x < nq; ++x) {
        lse[x] = lse_NH[(a + q0 + x) * H + h];
        Dq[x] = D_NH[(a + q0 + x) * H + h];
      }
      gemm(false, true, nk, nq, K, scale, k_NJK + koff, J * K, q_NHK + qoff, H * K, T(0), St, nq);
      gemm(false, true, nk, nq, K, T(1), v_NJK + koff, J * K, do_NHK + qoff, H * K, T(0), dPt, nq);
      for (int64_t r = 0; r < nk; ++r) {  // key c0 + r is seen by queries c0 + r .. L - 1
        T* st = St + r * nq;
        T* dpt = dPt + r * nq;
        const int64_t x0 = causal ? r : 0;  // bidirectional: by every query
        std::fill(st, st + x0, T(0));
        std::fill(dpt, dpt + x0, T(0));
        for (int64_t x = x0; x < nq; ++x) {
          const T p = std::exp(st[x] - lse[x]);
          st[x] = p;
          dpt[x] = p * (dpt[x] - Dq[x]);
        }
      }
      const T beta = g == 0 ? T(0) : T(1);  // first head of the group overwrites
      gemm(false, false, nk, K, nq, T(1), St, nq, do_NHK + qoff, H * K, beta, dv_NJK + koff,
           J * K);  // dV += P^T dO
      gemm(false, false, nk, K, nq, scale, dPt, nq, q_NHK + qoff, H * K, beta, dk_NJK + koff,
           J * K);  // dK += scale dS^T Q
    }
  });
}

#define DT_INSTANTIATE(T)                                                                        \
  template void attention_fwd<T>(const T*, const T*, const T*, core::Segments, int64_t, int64_t, \
                                 int64_t, int64_t, T, T*, T*, bool);                             \
  template void attention_bwd<T>(const T*, const T*, const T*, const T*, const T*, const T*,     \
                                 core::Segments, int64_t, int64_t, int64_t, int64_t, T, T*, T*,  \
                                 T*, bool);
DT_INSTANTIATE(float)
DT_INSTANTIATE(double)
#undef DT_INSTANTIATE

}  // namespace deltatron::cpu
