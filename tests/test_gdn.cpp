// Tests of the gated delta rule: recurrent oracle vs finite differences, chunked == recurrent,
// chunked backward vs finite differences, segment isolation, empty segments, strong decay.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "cpu/gdn.h"
#include "ops/gdn.h"
#include "test_util.h"

namespace {

using deltatron::core::Segments;
namespace cpu = deltatron::cpu;

// One packed problem: inputs and the loss gradient dL/do.
template <typename T>
struct Problem {
  int64_t N = 0, H = 0, G = 0, K = 0, V = 0;
  std::vector<int32_t> cu;
  T scale = 0;
  std::vector<T> q, k, v, g, beta, dout;
  Segments seg() const { return {cu.data(), int(cu.size()) - 1}; }
};

// Gates: "mixed" g = -exp(U(log 1e-3, log 5)) (both near-1 and strong decays), "mild"
// g = U(-0.05, -0.001) so that the state carries across several chunks.
enum class Gates { mixed, mild };

void l2_rows(std::vector<double>& x, int64_t D) {
  for (size_t r = 0; r * D < x.size(); ++r) {
    double n = 0;
    for (int64_t a = 0; a < D; ++a) n += x[r * D + a] * x[r * D + a];
    n = 1.0 / std::sqrt(n + 1e-6);
    for (int64_t a = 0; a < D; ++a) x[r * D + a] *= n;
  }
}

Problem<double> make_problem(const std::vector<int>& lens, int64_t H, int64_t G, int64_t K,
                             int64_t V, uint64_t seed, Gates gates = Gates::mixed) {
  Problem<double> p;
  p.H = H, p.G = G, p.K = K, p.V = V;
  p.cu = {0};
  for (int len : lens) p.cu.push_back(p.cu.back() + len);
  p.N = p.cu.back();
  p.scale = 1.0 / std::sqrt(double(K));
  p.q = dt_test::randn<double>(p.N * H * K, seed + 1);
  p.k = dt_test::randn<double>(p.N * H * K, seed + 2);
  l2_rows(p.q, K);
  l2_rows(p.k, K);
  p.v = dt_test::randn<double>(p.N * G * V, seed + 3);
  if (gates == Gates::mixed) {
    p.g = dt_test::uniform<double>(p.N * G, seed + 4, std::log(1e-3), std::log(5.0));
    for (auto& x : p.g) x = -std::exp(x);
  } else {
    p.g = dt_test::uniform<double>(p.N * G, seed + 4, -0.05, -0.001);
  }
  p.beta = dt_test::uniform<double>(p.N * G, seed + 5, 0.01, 0.99);
  p.dout = dt_test::randn<double>(p.N * G * V, seed + 6);
  return p;
}

template <typename T>
Problem<T> cast(const Problem<double>& p) {
  auto c = [](const std::vector<double>& x) { return std::vector<T>(x.begin(), x.end()); };
  Problem<T> r;
  r.N = p.N, r.H = p.H, r.G = p.G, r.K = p.K, r.V = p.V, r.cu = p.cu, r.scale = T(p.scale);
  r.q = c(p.q), r.k = c(p.k), r.v = c(p.v), r.g = c(p.g), r.beta = c(p.beta), r.dout = c(p.dout);
  return r;
}

template <typename T>
struct Result {
  std::vector<T> o, state, dq, dk, dv, dg, dbeta;
};

enum class Algo { recurrent, chunk };

template <typename T>
Result<T> forward(const Problem<T>& p, Algo algo) {
  Result<T> r;
  r.o.assign(p.N * p.G * p.V, T(-7));  // garbage: the op must overwrite
  r.state.assign((p.cu.size() - 1) * p.G * p.K * p.V, T(-7));
  auto f = algo == Algo::chunk ? cpu::gdn_chunk_fwd<T> : cpu::gdn_recurrent_fwd<T>;
  f(p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.beta.data(), p.seg(), p.N, p.H, p.G, p.K, p.V,
    p.scale, r.o.data(), r.state.data());
  return r;
}

template <typename T>
Result<T> run(const Problem<T>& p, Algo algo) {
  Result<T> r = forward(p, algo);
  r.dq.assign(p.q.size(), T(-7));
  r.dk.assign(p.k.size(), T(-7));
  r.dv.assign(p.v.size(), T(-7));
  r.dg.assign(p.g.size(), T(-7));
  r.dbeta.assign(p.beta.size(), T(-7));
  auto b = algo == Algo::chunk ? cpu::gdn_chunk_bwd<T> : cpu::gdn_recurrent_bwd<T>;
  b(p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.beta.data(), p.seg(), p.N, p.H, p.G, p.K, p.V,
    p.scale, p.dout.data(), r.dq.data(), r.dk.data(), r.dv.data(), r.dg.data(), r.dbeta.data());
  return r;
}

// rel_rms(got, want) <= tol with the worst element on failure; returns rel_rms for the log.
template <typename A, typename B>
double expect_close(const std::vector<A>& got, const std::vector<B>& want, double tol,
                    const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  const dt_test::ErrReport r = dt_test::compare(got, want);
  EXPECT_LE(r.rel_rms, tol) << what << ": " << r.str();
  return r.rel_rms;
}

// Every output and gradient; prints the worst rel_rms of the group.
template <typename A, typename B>
void expect_all_close(const Result<A>& got, const Result<B>& want, double tol,
                      const std::string& what) {
  double worst = 0;
  worst = std::max(worst, expect_close(got.o, want.o, tol, what + " o"));
  worst = std::max(worst, expect_close(got.state, want.state, tol, what + " state"));
  worst = std::max(worst, expect_close(got.dq, want.dq, tol, what + " dq"));
  worst = std::max(worst, expect_close(got.dk, want.dk, tol, what + " dk"));
  worst = std::max(worst, expect_close(got.dv, want.dv, tol, what + " dv"));
  worst = std::max(worst, expect_close(got.dg, want.dg, tol, what + " dg"));
  worst = std::max(worst, expect_close(got.dbeta, want.dbeta, tol, what + " dbeta"));
  std::printf("  %-52s worst rel_rms %.2e (tol %.0e)\n", what.c_str(), worst, tol);
}

// Finite differences of L = <dout, o> for every input, against the algorithm's backward.
void check_grad_fd(Problem<double> p, Algo algo, double tol) {
  const Result<double> r = run(p, algo);
  auto loss = [&] { return dt_test::dot(p.dout, forward(p, algo).o); };
  const std::string name = algo == Algo::chunk ? "chunk" : "recurrent";
  double worst = 0;
  worst = std::max(worst, expect_close(r.dq, dt_test::finite_diff(p.q, loss), tol, name + " dq"));
  worst = std::max(worst, expect_close(r.dk, dt_test::finite_diff(p.k, loss), tol, name + " dk"));
  worst = std::max(worst, expect_close(r.dv, dt_test::finite_diff(p.v, loss), tol, name + " dv"));
  worst = std::max(worst, expect_close(r.dg, dt_test::finite_diff(p.g, loss), tol, name + " dg"));
  worst = std::max(worst,
                   expect_close(r.dbeta, dt_test::finite_diff(p.beta, loss), tol, name + " dbeta"));
  std::printf("  %-52s worst rel_rms %.2e (tol %.0e)\n", (name + " bwd vs finite diff").c_str(),
              worst, tol);
}

template <typename T>
bool all_finite(const Result<T>& r) {
  for (const auto* x : {&r.o, &r.state, &r.dq, &r.dk, &r.dv, &r.dg, &r.dbeta})
    for (T e : *x)
      if (!std::isfinite(e)) return false;
  return true;
}

const std::vector<int> kLens = {1, 2, 3, 5, 63, 64, 65, 130};

// (1) The oracle's reverse recurrence against central differences, two segments, GVA.
TEST(Gdn, RecurrentBwdFiniteDiff) {
  check_grad_fd(make_problem({3, 4}, 1, 2, 5, 3, 100), Algo::recurrent, 1e-7);
  check_grad_fd(make_problem({3, 4}, 1, 2, 5, 3, 110, Gates::mild), Algo::recurrent, 1e-7);
}

// (2) Chunked == recurrent on a pack of awkward lengths, in double and float.
TEST(Gdn, ChunkMatchesRecurrentPack) {
  for (Gates gates : {Gates::mixed, Gates::mild}) {
    const std::string tag = gates == Gates::mixed ? "mixed gates" : "mild gates";
    const Problem<double> pd = make_problem(kLens, 2, 4, 8, 5, 200, gates);
    const Result<double> ref = run(pd, Algo::recurrent);
    expect_all_close(run(pd, Algo::chunk), ref, 1e-10, "double chunk vs recurrent, " + tag);
    const Problem<float> pf = cast<float>(pd);
    const Result<float> rf = run(pf, Algo::recurrent), cf = run(pf, Algo::chunk);
    expect_all_close(cf, rf, 1e-5, "float chunk vs float recurrent, " + tag);
    expect_all_close(cf, ref, 1e-5, "float chunk vs double recurrent, " + tag);
    expect_all_close(rf, ref, 1e-5, "float recurrent vs double recurrent, " + tag);
  }
}

TEST(Gdn, ChunkMatchesRecurrentLoneSegments) {
  for (int len : kLens)
    for (Gates gates : {Gates::mixed, Gates::mild}) {
      const Problem<double> pd = make_problem({len}, 2, 4, 8, 5, 300 + len, gates);
      const std::string tag = "lone segment len " + std::to_string(len) +
                              (gates == Gates::mixed ? ", mixed gates" : ", mild gates");
      expect_all_close(run(pd, Algo::chunk), run(pd, Algo::recurrent), 1e-10, "double " + tag);
      const Problem<float> pf = cast<float>(pd);
      expect_all_close(run(pf, Algo::chunk), run(pf, Algo::recurrent), 1e-5, "float " + tag);
    }
}

// Head groupings R = G / H of 1 and 3 (the dq/dk reduction over value heads).
TEST(Gdn, ChunkMatchesRecurrentHeadGroups) {
  for (auto [H, G] : {std::pair<int64_t, int64_t>{2, 2}, {1, 3}, {2, 6}}) {
    const Problem<double> pd = make_problem({150, 9}, H, G, 6, 7, 400 + G, Gates::mild);
    expect_all_close(run(pd, Algo::chunk), run(pd, Algo::recurrent), 1e-10,
                     "H=" + std::to_string(H) + " G=" + std::to_string(G));
  }
}

// (3) The chunked backward against central differences across a chunk boundary (70), and
// across a middle chunk (140: nonzero entry state and nonzero exit gradient in one chunk).
TEST(Gdn, ChunkBwdFiniteDiff) {
  check_grad_fd(make_problem({70}, 1, 2, 4, 3, 500, Gates::mixed), Algo::chunk, 1e-7);
  check_grad_fd(make_problem({140}, 1, 2, 4, 3, 510, Gates::mild), Algo::chunk, 1e-7);
}

// (4) Changing every input of segment 0 leaves segment 1 bit-identical.
template <typename T>
void check_isolation(Algo algo) {
  Problem<T> a = cast<T>(make_problem({70, 67}, 2, 4, 8, 5, 600, Gates::mild));
  const Problem<T> other = cast<T>(make_problem({70, 67}, 2, 4, 8, 5, 601, Gates::mild));
  const int64_t n0 = a.cu[1];
  const Result<T> ra = run(a, algo);
  auto replace_rows = [&](std::vector<T>& x, const std::vector<T>& y) {
    const size_t per_token = x.size() / a.N;
    std::copy(y.begin(), y.begin() + n0 * per_token, x.begin());
  };
  replace_rows(a.q, other.q), replace_rows(a.k, other.k), replace_rows(a.v, other.v);
  replace_rows(a.g, other.g), replace_rows(a.beta, other.beta), replace_rows(a.dout, other.dout);
  const Result<T> rb = run(a, algo);
  auto same_tail = [&](const std::vector<T>& x, const std::vector<T>& y, size_t from,
                       const char* what) {
    ASSERT_EQ(x.size(), y.size());
    EXPECT_EQ(0, std::memcmp(x.data() + from, y.data() + from, (x.size() - from) * sizeof(T)))
        << what << " of segment 1 changed";
    EXPECT_NE(0, std::memcmp(x.data(), y.data(), from * sizeof(T))) << what << " of segment 0";
  };
  const size_t nGV = n0 * a.G * a.V, nHK = n0 * a.H * a.K, nG = n0 * a.G;
  same_tail(ra.o, rb.o, nGV, "o");
  same_tail(ra.state, rb.state, a.G * a.K * a.V, "state");
  same_tail(ra.dq, rb.dq, nHK, "dq");
  same_tail(ra.dk, rb.dk, nHK, "dk");
  same_tail(ra.dv, rb.dv, nGV, "dv");
  same_tail(ra.dg, rb.dg, nG, "dg");
  same_tail(ra.dbeta, rb.dbeta, nG, "dbeta");
}

TEST(Gdn, SegmentIsolation) {
  check_isolation<float>(Algo::chunk);
  check_isolation<double>(Algo::chunk);
  check_isolation<float>(Algo::recurrent);
}

// (5) Empty segments (equal consecutive cu entries) and a padding-only segment (zero q, k, v).
TEST(Gdn, EmptyAndPaddingSegments) {
  Problem<double> p = make_problem({0, 5, 0, 0, 65, 0, 7}, 2, 4, 6, 5, 700, Gates::mild);
  // Segment 6 (the last 7 tokens) is padding: q = k = v = 0.
  for (int64_t t = p.cu[6]; t < p.N; ++t) {
    std::fill_n(p.q.begin() + t * p.H * p.K, p.H * p.K, 0.0);
    std::fill_n(p.k.begin() + t * p.H * p.K, p.H * p.K, 0.0);
    std::fill_n(p.v.begin() + t * p.G * p.V, p.G * p.V, 0.0);
  }
  const Result<double> rc = run(p, Algo::chunk), rr = run(p, Algo::recurrent);
  expect_all_close(rc, rr, 1e-10, "empty segments, chunk vs recurrent");
  EXPECT_TRUE(all_finite(rc));
  const size_t per_state = p.G * p.K * p.V;
  for (int s : {0, 2, 3, 5, 6})
    for (size_t e = 0; e < per_state; ++e)
      ASSERT_EQ(rc.state[s * per_state + e], 0.0) << "state of empty/padding segment " << s;
  for (int64_t t = p.cu[6]; t < p.N; ++t)
    for (int64_t e = 0; e < p.G * p.V; ++e) ASSERT_EQ(rc.o[t * p.G * p.V + e], 0.0);
  // The same pack without the empty segments gives bit-identical results.
  Problem<double> compact = p;
  compact.cu = {0, 5, 70, 77};
  const Result<double> rk = run(compact, Algo::chunk);
  EXPECT_EQ(rk.o, rc.o);
  EXPECT_EQ(rk.dq, rc.dq);
  EXPECT_EQ(rk.dk, rc.dk);
  EXPECT_EQ(rk.dv, rc.dv);
  EXPECT_EQ(rk.dg, rc.dg);
  EXPECT_EQ(rk.dbeta, rc.dbeta);
  // An empty pack.
  Problem<float> empty = cast<float>(make_problem({0}, 1, 2, 4, 3, 710));
  const Result<float> re = run(empty, Algo::chunk);
  EXPECT_EQ(re.state, std::vector<float>(2 * 4 * 3, 0.f));
}

// Strong decay (g down to -50) must stay finite and agree; all exponents are <= 0.
TEST(Gdn, StrongDecayIsFinite) {
  Problem<double> p = make_problem({130, 20}, 1, 2, 8, 5, 800);
  for (size_t i = 0; i < p.g.size(); ++i)
    p.g[i] = i % 3 == 0 ? -20.0 : (i % 3 == 1 ? -50.0 : -1e-3);
  const Result<double> rc = run(p, Algo::chunk);
  EXPECT_TRUE(all_finite(rc));
  expect_all_close(rc, run(p, Algo::recurrent), 1e-10, "strong decay double");
  const Problem<float> pf = cast<float>(p);
  const Result<float> cf = run(pf, Algo::chunk);
  EXPECT_TRUE(all_finite(cf));
  expect_all_close(cf, run(pf, Algo::recurrent), 1e-5, "strong decay float");
}

TEST(Gdn, BadShapesThrow) {
  Problem<float> p = cast<float>(make_problem({4}, 2, 3, 4, 3, 900));
  std::vector<float> o(p.N * p.G * p.V);
  EXPECT_THROW(
      cpu::gdn_chunk_fwd<float>(p.q.data(), p.k.data(), p.v.data(), p.g.data(), p.beta.data(),
                                p.seg(), p.N, p.H, p.G, p.K, p.V, p.scale, o.data(), nullptr),
      deltatron::core::Error);
}

// The ops:: dispatch (host views) reaches the CPU chunked kernel, bitwise; a cuda view is refused
// by a build without CUDA.
TEST(Gdn, OpsDispatch) {
  using dt_test::host_view;
  const Problem<float> p = cast<float>(make_problem({9, 66}, 1, 2, 4, 3, 950));
  const Result<float> want = forward(p, Algo::chunk);
  std::vector<float> o(want.o.size()), state(want.state.size());
  deltatron::ops::gdn_chunk_fwd(host_view(p.q), host_view(p.k), host_view(p.v), host_view(p.g),
                                host_view(p.beta), host_view(p.cu), p.seg(), p.N, p.H, p.G, p.K,
                                p.V, p.scale, host_view(o), host_view(state));
  EXPECT_EQ(o, want.o);
  EXPECT_EQ(state, want.state);
#ifndef DT_HAVE_CUDA
  auto on_cuda = [](const std::vector<float>& x) {
    deltatron::core::View v = host_view(x);
    v.device = deltatron::core::Device::cuda;
    return v;
  };
  deltatron::core::View cu_cuda = host_view(p.cu);
  cu_cuda.device = deltatron::core::Device::cuda;
  EXPECT_THROW(deltatron::ops::gdn_chunk_fwd(on_cuda(p.q), on_cuda(p.k), on_cuda(p.v), on_cuda(p.g),
                                             on_cuda(p.beta), cu_cuda, p.seg(), p.N, p.H, p.G, p.K,
                                             p.V, p.scale, on_cuda(o), deltatron::core::View{}),
               deltatron::core::Error);
#endif
}

// The chunked backward is bitwise reproducible and independent of the thread count.
TEST(Gdn, ChunkDeterministicAcrossThreads) {
  const Problem<float> p = cast<float>(make_problem({150, 70, 9}, 2, 4, 16, 12, 1100));
  const Result<float> a = run(p, Algo::chunk);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const Result<float> b = run(p, Algo::chunk);
  omp_set_num_threads(threads);
  const Result<float> c = run(p, Algo::chunk);
  for (const Result<float>* r : {&b, &c}) {
    EXPECT_EQ(a.o, r->o);
    EXPECT_EQ(a.state, r->state);
    EXPECT_EQ(a.dq, r->dq);
    EXPECT_EQ(a.dk, r->dk);
    EXPECT_EQ(a.dv, r->dv);
    EXPECT_EQ(a.dg, r->dg);
    EXPECT_EQ(a.dbeta, r->dbeta);
  }
}

}  // namespace
