// GPU parity of the CUDA MoE ops (cuda::moe_*, cuda::grouped_linear_*) against the CPU reference
// (label gpu), determinism, and timings of the grouped expert GEMMs at Qwen3.5-35B-A3B size.
//
// Reference: cpu::moe_* / cpu::linear_* in double on the values the device holds (bf16-rounded
// for bf16 storage; router quantities are fp32 in both modes). Outputs are poisoned with NaN
// before each call so unwritten elements fail; accumulating outputs start from random values.
// Bounds (relative RMS): f32 storage 1e-5; bf16 storage 5e-3 forward, 1e-2 backward; fp32
// router / loss / slot-weight outputs 1e-5 in both modes; loss values 1e-12; routing decisions,
// permutations and counts exact. Tests named *Small* are the memcheck set.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "bf16_util.h"
#include "core/error.h"
#include "cpu/linear.h"
#include "cpu/moe.h"
#include "cuda/device.h"
#include "cuda/grouped_linear.h"
#include "cuda/memory.h"
#include "cuda/moe.h"
#include "gpu_timer.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::cuda::DType;
using Vec = std::vector<double>;
using VecF = std::vector<float>;
using VecI = std::vector<int32_t>;
using VecL = std::vector<int64_t>;

namespace {

// ---- host <-> device helpers ------------------------------------------------------------------

using dt_test::from_bf16;
using dt_test::to_bf16;
float round_bf16(float f) { return from_bf16(to_bf16(f)); }
VecF rounded(VecF v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

// Fast seeded uniform values with variance scale^2 (splitmix64), for the large tensors.
VecF urand(size_t n, uint64_t seed, double scale) {
  VecF v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  const double a = scale * std::sqrt(3.0) / double(1ull << 52);
  for (auto& x : v) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    x = float((double(z >> 12) * 2.0 - double(1ull << 52)) * a);
  }
  return v;
}

struct Dev {
  dt::cuda::DeviceBuffer buf;
  size_t offset = 0;  // bytes
  void* p() const { return static_cast<char*>(buf.get()) + offset; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p());
  }
};

template <typename T>
Dev dev_copy(const std::vector<T>& v) {
  Dev d{dt::cuda::DeviceBuffer(std::max<size_t>(v.size(), 1) * sizeof(T), "test"), 0};
  if (!v.empty())
    DT_CUDA_CHECK(cudaMemcpy(d.p(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

// v stored as t at an element offset; v is rounded to what the device holds.
Dev dev_dt(VecF& v, DType t, size_t offset_elems = 0) {
  const size_t es = dt::cuda::dtype_size(t);
  Dev d{dt::cuda::DeviceBuffer((v.size() + offset_elems + 1) * es, "test"), offset_elems * es};
  if (t == DType::bf16) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) h[i] = to_bf16(v[i]), v[i] = from_bf16(h[i]);
    if (!h.empty())
      DT_CUDA_CHECK(cudaMemcpy(d.p(), h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  } else if (!v.empty()) {
    DT_CUDA_CHECK(cudaMemcpy(d.p(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  }
  return d;
}

Dev dev_poison(size_t bytes, size_t offset_bytes = 0) {
  Dev d{dt::cuda::DeviceBuffer(bytes + offset_bytes + 16, "test output"), offset_bytes};
  DT_CUDA_CHECK(cudaMemset(d.buf.get(), 0xFF, bytes + offset_bytes + 16));  // NaN / -1
  return d;
}

// The MoE error words (cuda/moe.h bad_3), each kNoBadToken: what a pack starts from.
Dev dev_no_bad() { return dev_copy(VecI(3, dt::cuda::kNoBadToken)); }

template <typename T>
std::vector<T> get(const void* p, size_t n) {
  std::vector<T> h(n);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  if (n) DT_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

VecF get_dt(const void* p, size_t n, DType t) {
  if (t == DType::f32) return get<float>(p, n);
  auto h = get<uint16_t>(p, n);
  VecF v(n);
  for (size_t i = 0; i < n; ++i) v[i] = from_bf16(h[i]);
  return v;
}

Vec to_d(const VecF& v) { return {v.begin(), v.end()}; }

const char* name(DType t) { return dt::cuda::dtype_name(t); }

// got vs want: no NaN/inf, rel RMS <= tol; prints the measured error either way.
void check(const VecF& got, const Vec& want, double tol, const std::string& what) {
  size_t bad = 0;
  for (float g : got) bad += !std::isfinite(g);
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " non-finite elements (unwritten or overflow)";
  auto r = dt_test::compare(got, want);
  EXPECT_LE(r.rel_rms, tol) << what << ": " << r.str();
  std::printf("  %-58s rel_rms=%.3e max_abs=%.3e (tol %.0e)\n", what.c_str(), r.rel_rms, r.max_abs,
              tol);
}

double tol_fwd(DType t) { return t == DType::bf16 ? 5e-3 : 1e-5; }
double tol_bwd(DType t) { return t == DType::bf16 ? 1e-2 : 1e-5; }
constexpr double kTolF32 = 1e-5;  // fp32 router / loss / slot-weight outputs in both modes

// ---- router ---------------------------------------------------------------------------------

struct Routing {
  VecF logits, probs, lse, w;
  VecI idx;
  Dev d_logits, d_probs, d_lse, d_idx, d_w, d_bad;
};

// Router forward on the device, checked against the CPU in double on the same fp32 logits.
Routing route(VecF logits, int64_t N, int64_t E, int64_t K, const std::string& what) {
  Routing r;
  r.logits = std::move(logits);
  r.d_logits = dev_copy(r.logits);
  r.d_probs = dev_poison(N * E * 4);
  r.d_lse = dev_poison(N * 4);
  r.d_idx = dev_poison(N * K * 4);
  r.d_w = dev_poison(N * K * 4);
  r.d_bad = dev_no_bad();
  dt::cuda::moe_router_fwd(r.d_logits.as<float>(), N, E, K, r.d_probs.as<float>(),
                           r.d_lse.as<float>(), r.d_idx.as<int32_t>(), r.d_w.as<float>(),
                           r.d_bad.as<int32_t>());
  r.probs = get<float>(r.d_probs.p(), N * E);
  r.lse = get<float>(r.d_lse.p(), N);
  r.w = get<float>(r.d_w.p(), N * K);
  r.idx = get<int32_t>(r.d_idx.p(), N * K);
  EXPECT_EQ(get<int32_t>(r.d_bad.p(), 1)[0], dt::cuda::kNoBadToken);
  Vec l = to_d(r.logits), p(N * E), lse(N), w(N * K);
  VecI idx(N * K);
  dt::cpu::moe_router_fwd<double>(l.data(), N, E, K, p.data(), lse.data(), idx.data(), w.data());
  int64_t mismatch = 0;
  for (int64_t i = 0; i < N * K; ++i) mismatch += r.idx[i] != idx[i];
  EXPECT_EQ(mismatch, 0) << what << ": top-k choices differ from the CPU";
  check(r.probs, p, kTolF32, what + " probs");
  check(r.lse, lse, kTolF32, what + " lse");
  check(r.w, w, kTolF32, what + " top-k weights");
  return r;
}

void router_bwd_cases(const Routing& r, int64_t N, int64_t E, int64_t K, uint64_t seed,
                      const std::string& what) {
  VecF dw = dt_test::randn<float>(N * K, seed), dp = dt_test::randn<float>(N * E, seed + 1),
       dl = dt_test::randn<float>(N, seed + 2);
  Dev d_dw = dev_copy(dw), d_dp = dev_copy(dp), d_dl = dev_copy(dl);
  Vec p = to_d(r.probs), w = to_d(r.w), dwd = to_d(dw), dpd = to_d(dp), dld = to_d(dl);
  for (int mask = 1; mask < 8; ++mask) {
    const bool uw = mask & 1, up = mask & 2, ul = mask & 4;
    Dev out = dev_poison(N * E * 4);
    dt::cuda::moe_router_bwd(r.d_probs.as<float>(), r.d_idx.as<int32_t>(), r.d_w.as<float>(),
                             uw ? d_dw.as<float>() : nullptr, up ? d_dp.as<float>() : nullptr,
                             ul ? d_dl.as<float>() : nullptr, N, E, K, out.as<float>());
    Vec want(N * E);
    dt::cpu::moe_router_bwd<double>(p.data(), r.idx.data(), w.data(), uw ? dwd.data() : nullptr,
                                    up ? dpd.data() : nullptr, ul ? dld.data() : nullptr, N, E, K,
                                    want.data());
    check(get<float>(out.p(), N * E), want, kTolF32,
          what + " dlogits from" + (uw ? " dw" : "") + (up ? " dprobs" : "") + (ul ? " dlse" : ""));
  }
}

class CudaMoe : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

}  // namespace

TEST_F(CudaMoe, RouterSmall) {
  struct Shape {
    int64_t N, E, K;
  };
  for (Shape s : {Shape{7, 5, 2}, Shape{7, 13, 3}, Shape{6, 4, 4}, Shape{3, 1, 1}, Shape{5, 40, 33},
                  Shape{0, 5, 2}}) {
    const std::string what =
        "N=" + std::to_string(s.N) + " E=" + std::to_string(s.E) + " K=" + std::to_string(s.K);
    // bf16-rounded logits: distinct values are well separated, equal ones tie exactly.
    Routing r =
        route(rounded(dt_test::randn<float>(s.N * s.E, 11 + s.E, 1.5)), s.N, s.E, s.K, what);
    if (s.N > 0) router_bwd_cases(r, s.N, s.E, s.K, 20 + s.E, what);
  }
}

TEST_F(CudaMoe, RouterTiesSmall) {
  // Row 0: experts 1, 2, 4 tie for the top; row 1: all equal; row 2: a tie at the k-th place;
  // row 3: coarse values with many ties.
  VecF l = {0.5, 2, 2, 1, 2, /**/ 0, 0, 0, 0, 0, /**/ 3, 1, -1, 1, 1, /**/ 1, 0.5, 1, 0.5, 1};
  for (int64_t K : {2, 3}) {
    Routing r = route(l, 4, 5, K, "ties K=" + std::to_string(K));
    VecI want = K == 2 ? VecI{1, 2, 0, 1, 0, 1, 0, 2} : VecI{1, 2, 4, 0, 1, 2, 0, 1, 3, 0, 2, 4};
    EXPECT_EQ(r.idx, want) << "K=" << K;
    router_bwd_cases(r, 4, 5, K, 30, "ties K=" + std::to_string(K));
  }
  // Real-size rows drawn from 9 levels only: ties everywhere, including at the k-th place.
  const int64_t N = 300, E = 256, K = 8;
  VecF coarse = dt_test::randn<float>(N * E, 31);
  for (float& x : coarse) x = std::round(x * 2.f) / 2.f;
  route(coarse, N, E, K, "coarse ties E=256 K=8");
}

TEST_F(CudaMoe, RouterReal) {
  const int64_t N = 8192, E = 256, K = 8;
  Routing r =
      route(rounded(dt_test::randn<float>(N * E, 40, 2.0)), N, E, K, "real N=8192 E=256 K=8");
  router_bwd_cases(r, N, E, K, 41, "real");
}

// Non-finite logits: the row gets the CPU's fallback values and moe_permute raises the error.
TEST_F(CudaMoe, RouterNonFiniteSmall) {
  const int64_t N = 7, E = 5, K = 2;
  VecF l = dt_test::randn<float>(N * E, 50);
  l[3 * E + 2] = NAN;
  l[5 * E + 0] = INFINITY;
  Dev d_l = dev_copy(l), p = dev_poison(N * E * 4), lse = dev_poison(N * 4),
      idx = dev_poison(N * K * 4), w = dev_poison(N * K * 4), bad = dev_no_bad();
  dt::cuda::moe_router_fwd(d_l.as<float>(), N, E, K, p.as<float>(), lse.as<float>(),
                           idx.as<int32_t>(), w.as<float>(), bad.as<int32_t>());
  EXPECT_EQ(get<int32_t>(bad.p(), 1)[0], 3);
  auto hp = get<float>(p.p(), N * E);
  auto hi = get<int32_t>(idx.p(), N * K);
  auto hw = get<float>(w.p(), N * K);
  for (int64_t e = 0; e < E; ++e) EXPECT_EQ(hp[3 * E + e], 0.f);
  EXPECT_EQ(hi[3 * K], 0);
  EXPECT_EQ(hi[3 * K + 1], 1);
  EXPECT_EQ(hw[3 * K], 0.f);
  VecL off(E + 1);
  Dev d_off = dev_poison((E + 1) * 8), rows = dev_poison(N * K * 4), pos = dev_poison(N * K * 4);
  dt_test::expect_error(
      [&] {
        dt::cuda::moe_permute(idx.as<int32_t>(), N, K, E, bad.as<int32_t>(), d_off.as<int64_t>(),
                              off.data(), rows.as<int32_t>(), pos.as<int32_t>());
      },
      {"moe_router_fwd", "token 3", "not finite"});
  // An out-of-range expert id is refused as on the CPU.
  VecI ids = {0, 1, 2, 7, 1, 0};
  Dev d_ids = dev_copy(ids);
  dt_test::expect_error(
      [&] {
        dt::cuda::moe_permute(d_ids.as<int32_t>(), 3, 2, 5, nullptr, nullptr, off.data(),
                              rows.as<int32_t>(), pos.as<int32_t>());
      },
      {"moe_permute", "expert id 7", "token 1"});
}

// ---- router losses and counts -------------------------------------------------------------------

namespace {

void losses_case(const Routing& r, const VecI& group, int64_t N, int64_t E, int64_t K, int64_t G,
                 uint64_t seed, const std::string& what) {
  Dev d_group = dev_copy(group);
  const int32_t* g_dev = group.empty() ? nullptr : d_group.as<int32_t>();
  const int32_t* g_host = group.empty() ? nullptr : group.data();
  Vec F = dt_test::uniform<double>(G * E, seed, 0, 40),
      c = dt_test::uniform<double>(G, seed + 1, 0.1, 2);
  const double z_coef = 1e-3, scale = 0.7;
  Vec p = to_d(r.probs), lse = to_d(r.lse);

  const double aux =
      dt::cuda::moe_aux_loss_fwd(r.d_probs.as<float>(), g_dev, N, E, G, F.data(), c.data());
  const double aux_ref =
      dt::cpu::moe_aux_loss_fwd<double>(p.data(), g_host, N, E, G, F.data(), c.data());
  const double aux_err = std::abs(aux - aux_ref) / std::max(std::abs(aux_ref), 1e-300);
  EXPECT_LE(aux_err, 1e-12) << what << ": aux " << aux << " vs " << aux_ref;
  const double z = dt::cuda::moe_z_loss_fwd(r.d_lse.as<float>(), g_dev, N, z_coef);
  const double z_ref = dt::cpu::moe_z_loss_fwd<double>(lse.data(), g_host, N, z_coef);
  const double z_err = std::abs(z - z_ref) / std::max(std::abs(z_ref), 1e-300);
  EXPECT_LE(z_err, 1e-12) << what << ": z " << z << " vs " << z_ref;
  std::printf("  %-58s aux rel err %.1e, z rel err %.1e\n", what.c_str(), aux_err, z_err);

  // Backward: the same double expressions rounded once to fp32, so bitwise equal to cpu<float>.
  Dev dp = dev_poison(N * E * 4), dl = dev_poison(N * 4);
  dt::cuda::moe_aux_loss_bwd(g_dev, N, E, G, F.data(), c.data(), scale, dp.as<float>());
  dt::cuda::moe_z_loss_bwd(r.d_lse.as<float>(), g_dev, N, z_coef, scale, dl.as<float>());
  VecF dp_ref(N * E), dl_ref(N);
  dt::cpu::moe_aux_loss_bwd<float>(g_host, N, E, G, F.data(), c.data(), scale, dp_ref.data());
  dt::cpu::moe_z_loss_bwd<float>(r.lse.data(), g_host, N, z_coef, scale, dl_ref.data());
  EXPECT_EQ(get<float>(dp.p(), N * E), dp_ref) << what << ": dprobs";
  EXPECT_EQ(get<float>(dl.p(), N), dl_ref) << what << ": dlse";

  // Route counts accumulate onto the existing values, exactly.
  if (G > 0) {
    Vec counts = dt_test::uniform<double>(G * E, seed + 2, 0, 5), tokens(G, 3.0);
    for (double& x : counts) x = std::round(x);
    Vec counts_ref = counts, tokens_ref = tokens;
    dt::cuda::moe_count_routes_to_host(r.d_idx.as<int32_t>(), g_dev, N, K, E, G, counts.data(),
                                       tokens.data());
    dt::cpu::moe_count_routes(r.idx.data(), g_host, N, K, E, G, counts_ref.data(),
                              tokens_ref.data());
    EXPECT_EQ(counts, counts_ref) << what << ": counts";
    EXPECT_EQ(tokens, tokens_ref) << what << ": tokens";
  }
}

}  // namespace

TEST_F(CudaMoe, RouterLossesSmall) {
  const int64_t N = 9, E = 5, K = 2;
  Routing r = route(rounded(dt_test::randn<float>(N * E, 60, 1.5)), N, E, K, "losses N=9 E=5");
  struct Layout {
    const char* name;
    VecI group;
    int64_t G;
  };
  const std::vector<Layout> layouts = {
      {"all in group 0 (no group ids)", {}, 1},
      {"one group", VecI(9, 0), 1},
      {"padding and an empty group", {-1, 0, 0, -1, 2, 2, 0, 2, -1}, 3},
      {"no aux groups (z only), padding", {0, -1, 0, 0, 0, -1, 0, 0, 0}, 0},
      {"all padding", VecI(9, -1), 2},
  };
  uint64_t seed = 61;
  for (const auto& l : layouts) losses_case(r, l.group, N, E, K, l.G, seed += 3, l.name);

  // Bad group ids: the syncing functions throw as the CPU does.
  VecI bad = {0, 0, 3, 0, 0, 0, 0, 0, 0};
  Dev d_bad = dev_copy(bad);
  Vec F(3 * E, 1.0), c(3, 1.0), counts(3 * E), tokens(3);
  dt_test::expect_error(
      [&] {
        dt::cuda::moe_aux_loss_fwd(r.d_probs.as<float>(), d_bad.as<int32_t>(), N, E, 3, F.data(),
                                   c.data());
      },
      {"moe_aux_loss_fwd", "group id 3", "token 2"});
  dt_test::expect_error(
      [&] {
        dt::cuda::moe_count_routes_to_host(r.d_idx.as<int32_t>(), d_bad.as<int32_t>(), N, K, E, 3,
                                           counts.data(), tokens.data());
      },
      {"moe_count_routes", "group id 3", "token 2"});
  EXPECT_EQ(tokens, Vec(3, 0.0)) << "nothing accumulated on error";
  VecI neg = {0, 0, 0, 0, -2, 0, 0, 0, 0};
  Dev d_neg = dev_copy(neg);
  dt_test::expect_error(
      [&] { dt::cuda::moe_z_loss_fwd(r.d_lse.as<float>(), d_neg.as<int32_t>(), N, 1.0); },
      {"moe_z_loss_fwd", "group id -2", "token 4"});
  VecI ids = {0, 1, 2, 9};
  Dev d_ids = dev_copy(ids);
  dt_test::expect_error(
      [&] {
        dt::cuda::moe_count_routes_to_host(d_ids.as<int32_t>(), nullptr, 2, 2, 5, 1, counts.data(),
                                           tokens.data());
      },
      {"moe_count_routes", "expert id 9", "token 1"});
}

TEST_F(CudaMoe, RouterLossesReal) {
  const int64_t N = 8192, E = 256, K = 8, G = 4;
  Routing r = route(rounded(dt_test::randn<float>(N * E, 70, 2.0)), N, E, K, "losses real");
  VecI group(N);
  for (int64_t t = 0; t < N; ++t) group[t] = t % 7 == 3 ? -1 : int32_t(t * G / N);
  losses_case(r, group, N, E, K, G, 71, "real, 4 groups, 1/7 padding");
  losses_case(r, {}, N, E, K, 1, 75, "real, one group");
}

// ---- permutation ----------------------------------------------------------------------------

namespace {

struct Perm {
  VecL off;
  VecI rows, pos;
  Dev d_off, d_rows, d_pos;
};

Perm permute(const Dev& d_idx, const VecI& idx, int64_t N, int64_t K, int64_t E,
             const std::string& what) {
  Perm p;
  p.off.assign(E + 1, -7);
  p.d_off = dev_poison((E + 1) * 8);
  p.d_rows = dev_poison(N * K * 4);
  p.d_pos = dev_poison(N * K * 4);
  dt::cuda::moe_permute(d_idx.as<int32_t>(), N, K, E, nullptr, p.d_off.as<int64_t>(), p.off.data(),
                        p.d_rows.as<int32_t>(), p.d_pos.as<int32_t>());
  p.rows = get<int32_t>(p.d_rows.p(), N * K);
  p.pos = get<int32_t>(p.d_pos.p(), N * K);
  VecL off_ref(E + 1);
  VecI rows_ref(N * K);
  dt::cpu::moe_permute(idx.data(), N, K, E, off_ref.data(), rows_ref.data());
  EXPECT_EQ(p.off, off_ref) << what << ": offsets";
  EXPECT_EQ(get<int64_t>(p.d_off.p(), E + 1), off_ref) << what << ": device offsets";
  EXPECT_EQ(p.rows, rows_ref) << what << ": rows";
  bool inverse = true;
  for (int64_t r = 0; r < N * K; ++r) inverse = inverse && p.pos[p.rows[r]] == r;
  EXPECT_TRUE(inverse) << what << ": pos is not the inverse of rows";
  std::printf("  %-58s exact (%lld slots)\n", (what + " permutation").c_str(),
              static_cast<long long>(N * K));
  return p;
}

// K distinct random experts per token.
VecI random_routing(int64_t N, int64_t K, int64_t E, uint64_t seed) {
  VecI idx(N * K), all(E);
  std::iota(all.begin(), all.end(), 0);
  std::mt19937_64 rng(seed);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < K; ++j) std::swap(all[j], all[j + rng() % (E - j)]);
    std::copy(all.begin(), all.begin() + K, idx.begin() + n * K);
  }
  return idx;
}

}  // namespace

TEST_F(CudaMoe, PermuteSmall) {
  // Experts 1 and 3 stay empty.
  VecI idx = {0, 2, 4, 0, 2, 4, 0, 2, 4, 2, 2, 0, 4, 0};
  Dev d_idx = dev_copy(idx);
  permute(d_idx, idx, 7, 2, 5, "N=7 E=5 K=2 empty experts");
  permute(d_idx, {}, 0, 2, 5, "N=0");
  for (auto [N, K, E] :
       {std::tuple<int64_t, int64_t, int64_t>{50, 7, 300}, {300, 1, 3}, {1, 4, 4}}) {
    VecI r = random_routing(N, K, E, N + K);
    permute(dev_copy(r), r, N, K, E,
            "N=" + std::to_string(N) + " K=" + std::to_string(K) + " E=" + std::to_string(E));
  }
}

TEST_F(CudaMoe, PermuteLarge) {
  // Skewed: every token picks experts 3 and 0 (two experts of 5000 rows, 40 chunks each).
  VecI skew(5000 * 2);
  for (int64_t n = 0; n < 5000; ++n) skew[2 * n] = 3, skew[2 * n + 1] = 0;
  permute(dev_copy(skew), skew, 5000, 2, 6, "skewed N=5000 K=2 E=6");
  VecI big = random_routing(20000, 8, 256, 81);  // 625 chunks: the chunk scan carries over
  permute(dev_copy(big), big, 20000, 8, 256, "N=20000 K=8 E=256");
  VecI real = random_routing(8192, 8, 256, 82);
  permute(dev_copy(real), real, 8192, 8, 256, "real N=8192 K=8 E=256");
}

// ---- gather / combine / slot weights / shared gate ------------------------------------------

namespace {

void token_ops_case(DType t, int64_t N, int64_t K, int64_t E, int64_t D, int64_t F, size_t off,
                    uint64_t seed) {
  const std::string tag = std::string(name(t)) + " N=" + std::to_string(N) +
                          " K=" + std::to_string(K) + " D=" + std::to_string(D) +
                          (off ? " misaligned" : "");
  const int64_t P = N * K;
  const size_t es = dt::cuda::dtype_size(t);
  VecI idx = random_routing(N, K, E, seed);
  Dev d_idx = dev_copy(idx);
  Perm pm = permute(d_idx, idx, N, K, E, tag);
  VecF w = dt_test::uniform<float>(P, seed + 1, 0.05, 1.0);
  Dev d_w = dev_copy(w);
  Vec wd = to_d(w);

  // gather, with and without slot weights
  VecF x = dt_test::randn<float>(N * D, seed + 2);
  Dev d_x = dev_dt(x, t, off);
  for (bool weighted : {false, true}) {
    Dev out = dev_poison(P * D * es, off * es);
    dt::cuda::moe_gather(t, d_x.p(), pm.d_rows.as<int32_t>(), weighted ? d_w.as<float>() : nullptr,
                         P, K, D, out.p());
    Vec xd = to_d(x), ref(P * D);
    dt::cpu::moe_gather<double>(xd.data(), pm.rows.data(), weighted ? wd.data() : nullptr, P, K, D,
                                ref.data());
    check(get_dt(out.p(), P * D, t), ref, tol_fwd(t),
          tag + (weighted ? " gather weighted" : " gather"));
  }

  // combine (scatter_add of all experts), into y of either type, = and +=
  VecF src = dt_test::randn<float>(P * D, seed + 3);
  Dev d_src = dev_dt(src, t, off);
  Vec srcd = to_d(src);
  for (DType ty : {DType::f32, t})
    for (bool acc : {false, true}) {
      VecF y0 = dt_test::randn<float>(N * D, seed + 4);
      Dev y = acc ? dev_dt(y0, ty, off) : dev_poison(N * D * dt::cuda::dtype_size(ty), off * 4);
      dt::cuda::moe_scatter_add(t, d_src.p(), pm.d_pos.as<int32_t>(), d_w.as<float>(), N, K, D, ty,
                                y.p(), acc);
      Vec ref = acc ? to_d(y0) : Vec(N * D, 0.0);
      for (int64_t e = 0; e < E; ++e)
        dt::cpu::moe_scatter_add<double>(srcd.data() + pm.off[e] * D, pm.rows.data() + pm.off[e],
                                         wd.data(), pm.off[e + 1] - pm.off[e], K, D, ref.data());
      check(get_dt(y.p(), N * D, ty), ref, ty == DType::bf16 ? tol_fwd(ty) : tol_fwd(t),
            tag + " combine into " + name(ty) + (acc ? " (+=)" : " (=)"));
    }

  // slot-weight backward, separate and aliased dh = g
  VecF h = dt_test::randn<float>(P * F, seed + 5), g = dt_test::randn<float>(P * F, seed + 6);
  Dev d_h = dev_dt(h, t, off), d_g = dev_dt(g, t, off);
  Vec hd = to_d(h), gd = to_d(g), dw_ref(P, 0.0), dh_ref(P * F);
  dt::cpu::moe_expert_weight_bwd<double>(hd.data(), gd.data(), pm.rows.data(), wd.data(), P, K, F,
                                         dw_ref.data(), dh_ref.data());
  Dev dw = dev_poison(P * 4), dh = dev_poison(P * F * es, off * es);
  dt::cuda::moe_expert_weight_bwd(t, d_h.p(), d_g.p(), pm.d_rows.as<int32_t>(), d_w.as<float>(), P,
                                  K, F, dw.as<float>(), dh.p());
  check(get<float>(dw.p(), P), dw_ref, kTolF32, tag + " expert weight bwd dw");
  check(get_dt(dh.p(), P * F, t), dh_ref, tol_fwd(t), tag + " expert weight bwd dh");
  dt::cuda::moe_expert_weight_bwd(t, d_h.p(), d_g.p(), pm.d_rows.as<int32_t>(), d_w.as<float>(), P,
                                  K, F, dw.as<float>(), d_g.p());
  check(get_dt(d_g.p(), P * F, t), dh_ref, tol_fwd(t), tag + " expert weight bwd dh aliasing g");

  // shared gate
  VecF o = dt_test::randn<float>(N * D, seed + 7), gl = dt_test::randn<float>(N, seed + 8, 2.0);
  Dev d_o = dev_dt(o, t, off), d_gl = dev_copy(gl);
  Vec od = to_d(o), gld = to_d(gl);
  for (DType ty : {DType::f32, t}) {
    VecF y0 = dt_test::randn<float>(N * D, seed + 9);
    Dev y = dev_dt(y0, ty, off);
    dt::cuda::moe_shared_gate_fwd(t, d_o.p(), d_gl.as<float>(), N, D, ty, y.p());
    Vec ref = to_d(y0);
    dt::cpu::moe_shared_gate_fwd<double>(od.data(), gld.data(), N, D, ref.data());
    check(get_dt(y.p(), N * D, ty), ref, ty == DType::bf16 ? tol_fwd(ty) : tol_fwd(t),
          tag + " shared gate fwd into " + name(ty));
  }
  VecF dy = dt_test::randn<float>(N * D, seed + 10);
  Dev d_dy = dev_dt(dy, t, off);
  Vec dyd = to_d(dy), do_ref(N * D), dg_ref(N);
  dt::cpu::moe_shared_gate_bwd<double>(od.data(), gld.data(), dyd.data(), N, D, do_ref.data(),
                                       dg_ref.data());
  Dev d_do = dev_poison(N * D * es, off * es), d_dg = dev_poison(N * 4);
  dt::cuda::moe_shared_gate_bwd(t, d_o.p(), d_gl.as<float>(), d_dy.p(), N, D, d_do.p(),
                                d_dg.as<float>());
  check(get_dt(d_do.p(), N * D, t), do_ref, tol_bwd(t), tag + " shared gate bwd do");
  check(get<float>(d_dg.p(), N), dg_ref, kTolF32, tag + " shared gate bwd dg");
  dt::cuda::moe_shared_gate_bwd(t, d_o.p(), d_gl.as<float>(), d_dy.p(), N, D, d_dy.p(),
                                d_dg.as<float>());
  check(get_dt(d_dy.p(), N * D, t), do_ref, tol_bwd(t), tag + " shared gate bwd do aliasing dy");
}

}  // namespace

TEST_F(CudaMoe, TokenOpsSmall) {
  for (DType t : {DType::f32, DType::bf16}) {
    token_ops_case(t, 7, 2, 5, 13, 11, 0, 90);
    token_ops_case(t, 7, 2, 5, 32, 16, 1, 91);  // misaligned pointers: scalar paths
    token_ops_case(t, 9, 4, 4, 64, 24, 0, 92);  // K == E
  }
}

TEST_F(CudaMoe, TokenOpsReal) {
  for (DType t : {DType::f32, DType::bf16}) token_ops_case(t, 8192, 8, 256, 2048, 512, 0, 93);
}

// ---- grouped expert GEMMs ---------------------------------------------------------------------

namespace {

// y, dx, dW (+=) of the grouped product vs the CPU in double, on the experts in `check_e`
// (all when empty); the bf16 grouped kernel is also compared with the per-expert cuBLASLt loop.
void grouped_case(DType t, const VecL& off, int64_t E, int64_t I, int64_t O, size_t misalign,
                  uint64_t seed, const std::vector<int64_t>& check_e, const std::string& what) {
  const int64_t R = off[E];
  const size_t es = dt::cuda::dtype_size(t);
  VecF x = urand(R * I, seed, 1.0), W = urand(E * O * I, seed + 1, 1.0 / std::sqrt(double(I))),
       dy = urand(R * O, seed + 2, 1.0), dW0 = urand(E * O * I, seed + 3, 1.0);
  Dev d_x = dev_dt(x, t, misalign), d_W = dev_dt(W, t), d_dy = dev_dt(dy, t);
  std::vector<int64_t> experts = check_e;
  if (experts.empty())
    for (int64_t e = 0; e < E; ++e) experts.push_back(e);

  Dev y = dev_poison(R * O * es), dx = dev_poison(R * I * es), dW = dev_dt(dW0, DType::f32);
  dt::cuda::grouped_linear_fwd(t, d_x.p(), d_W.p(), off.data(), E, I, O, y.p());
  dt::cuda::grouped_linear_bwd(t, d_x.p(), d_W.p(), d_dy.p(), off.data(), E, I, O, dx.p(),
                               dW.as<float>());
  const VecF hy = get_dt(y.p(), R * O, t), hdx = get_dt(dx.p(), R * I, t);

  VecF gy, gdx, gdW;
  Vec ry, rdx, rdW;
  for (int64_t e : experts) {
    const int64_t r0 = off[e], n = off[e + 1] - r0;
    Vec xe(x.begin() + r0 * I, x.begin() + (r0 + n) * I),
        We(W.begin() + e * O * I, W.begin() + (e + 1) * O * I),
        dye(dy.begin() + r0 * O, dy.begin() + (r0 + n) * O),
        dWe(dW0.begin() + e * O * I, dW0.begin() + (e + 1) * O * I), ye(n * O), dxe(n * I);
    dt::cpu::linear_fwd<double>(xe.data(), We.data(), n, I, O, ye.data());
    dt::cpu::linear_bwd<double>(xe.data(), We.data(), dye.data(), n, I, O, dxe.data(), false,
                                dWe.data());
    ry.insert(ry.end(), ye.begin(), ye.end());
    rdx.insert(rdx.end(), dxe.begin(), dxe.end());
    rdW.insert(rdW.end(), dWe.begin(), dWe.end());
    gy.insert(gy.end(), hy.begin() + r0 * O, hy.begin() + (r0 + n) * O);
    gdx.insert(gdx.end(), hdx.begin() + r0 * I, hdx.begin() + (r0 + n) * I);
    auto dWg = get<float>(dW.as<float>() + e * O * I, O * I);
    gdW.insert(gdW.end(), dWg.begin(), dWg.end());
  }
  check(gy, ry, tol_fwd(t), what + " y");
  check(gdx, rdx, tol_bwd(t), what + " dx (=)");
  check(gdW, rdW, kTolF32, what + " dW (+=)");

  // Device row offsets (no host copy): bitwise the host-offset kernel (same kernel, same tiles),
  // also with a looser row bound (more CTAs that exit at once), and no device -> host copy.
  if (misalign == 0 && dt::cuda::grouped_linear_device_offsets_ok(t, I, O)) {
    Dev d_off = dev_copy(off);
    const bool small = E * O * I <= (int64_t(1) << 24);  // the real sizes: one bound only
    for (int64_t rows_max : small ? std::vector<int64_t>{R, R + 300} : std::vector<int64_t>{R}) {
      const std::string how = what + " device offsets rows_max=" + std::to_string(rows_max);
      Dev y3 = dev_poison(R * O * es), dx3 = dev_poison(R * I * es), dW3 = dev_dt(dW0, DType::f32);
      const int64_t copies = dt::cuda::device_to_host_copies();
      const dt::cuda::DeviceOffsets doff{d_off.as<int64_t>(), rows_max};
      dt::cuda::grouped_linear_fwd(t, d_x.p(), d_W.p(), doff, E, I, O, y3.p());
      dt::cuda::grouped_linear_bwd(t, d_x.p(), d_W.p(), d_dy.p(), doff, E, I, O, dx3.p(),
                                   dW3.as<float>());
      EXPECT_EQ(dt::cuda::device_to_host_copies(), copies) << how;
      EXPECT_EQ(get<uint16_t>(y3.p(), R * O), get<uint16_t>(y.p(), R * O)) << how << " y";
      EXPECT_EQ(get<uint16_t>(dx3.p(), R * I), get<uint16_t>(dx.p(), R * I)) << how << " dx";
      EXPECT_EQ(get<uint32_t>(dW3.p(), E * O * I), get<uint32_t>(dW.p(), E * O * I))
          << how << " dW";
      // dx and dW alone.
      Dev dx4 = dev_poison(R * I * es), dW4 = dev_dt(dW0, DType::f32);
      dt::cuda::grouped_linear_bwd(t, d_x.p(), d_W.p(), d_dy.p(), doff, E, I, O, dx4.p(), nullptr);
      dt::cuda::grouped_linear_bwd(t, d_x.p(), d_W.p(), d_dy.p(), doff, E, I, O, nullptr,
                                   dW4.as<float>());
      EXPECT_EQ(get<uint16_t>(dx4.p(), R * I), get<uint16_t>(dx.p(), R * I)) << how << " dx only";
      EXPECT_EQ(get<uint32_t>(dW4.p(), E * O * I), get<uint32_t>(dW.p(), E * O * I))
          << how << " dW only";
    }
    std::printf("  %-58s bitwise\n", (what + " device offsets").c_str());
  } else if (E > 0) {
    Dev d_off = dev_copy(off), y3 = dev_poison(R * O * es);
    dt_test::expect_error(
        [&] {
          dt::cuda::grouped_linear_fwd(t, d_x.p(), d_W.p(),
                                       dt::cuda::DeviceOffsets{d_off.as<int64_t>(), R}, E, I, O,
                                       y3.p());
        },
        {"cuda::grouped_linear_fwd", "pass host offsets"});
  }

  // Overwriting (accumulate_dw false: a step's first write of the gradient): dW starts
  // NaN-poisoned; every checked expert's slice is its product alone, every empty expert's zeros;
  // the device-offset form bitwise the host-offset one.
  {
    Dev dW5 = dev_poison(E * O * I * 4);
    dt::cuda::grouped_linear_bwd(t, d_x.p(), d_W.p(), d_dy.p(), off.data(), E, I, O, nullptr,
                                 dW5.as<float>(), false);
    VecF got;
    Vec want;
    for (int64_t e : experts) {
      const int64_t r0 = off[e], n = off[e + 1] - r0;
      Vec xe(x.begin() + r0 * I, x.begin() + (r0 + n) * I),
          dye(dy.begin() + r0 * O, dy.begin() + (r0 + n) * O), dWe(O * I, 0.0);
      dt::cpu::linear_bwd<double>(xe.data(), nullptr, dye.data(), n, I, O, nullptr, false,
                                  dWe.data());
      want.insert(want.end(), dWe.begin(), dWe.end());
      auto g = get<float>(dW5.as<float>() + e * O * I, O * I);
      got.insert(got.end(), g.begin(), g.end());
    }
    check(got, want, kTolF32, what + " dW (=)");
    for (int64_t e = 0; e < E; ++e)
      if (off[e + 1] == off[e])
        EXPECT_EQ(get<float>(dW5.as<float>() + e * O * I, O * I), VecF(size_t(O * I), 0.f))
            << what << ": empty expert " << e << " overwritten with zeros";
    if (misalign == 0 && dt::cuda::grouped_linear_device_offsets_ok(t, I, O)) {
      Dev d_off = dev_copy(off), dW6 = dev_poison(E * O * I * 4);
      dt::cuda::grouped_linear_bwd(t, d_x.p(), d_W.p(), d_dy.p(),
                                   dt::cuda::DeviceOffsets{d_off.as<int64_t>(), R}, E, I, O,
                                   nullptr, dW6.as<float>(), false);
      EXPECT_EQ(get<uint32_t>(dW6.p(), E * O * I), get<uint32_t>(dW5.p(), E * O * I))
          << what << " dW (=) device offsets";
    }
  }

  // The grouped kernel against the cuBLASLt loop on every row.
  if (t == DType::bf16) {
    Dev y2 = dev_poison(R * O * es), dx2 = dev_poison(R * I * es);
    dt::cuda::grouped_linear_fwd_loop(t, d_x.p(), d_W.p(), off.data(), E, I, O, y2.p());
    dt::cuda::grouped_linear_bwd_loop(t, d_x.p(), d_W.p(), d_dy.p(), off.data(), E, I, O, dx2.p(),
                                      nullptr);
    check(hy, to_d(get_dt(y2.p(), R * O, t)), tol_fwd(t), what + " y kernel vs loop");
    check(hdx, to_d(get_dt(dx2.p(), R * I, t)), tol_bwd(t), what + " dx kernel vs loop");
  }
}

VecL offsets_of(const VecI& idx, int64_t N, int64_t K, int64_t E) {
  VecL off(E + 1);
  VecI rows(N * K);
  dt::cpu::moe_permute(idx.data(), N, K, E, off.data(), rows.data());
  return off;
}

}  // namespace

TEST_F(CudaMoe, GroupedLinearSmall) {
  for (DType t : {DType::f32, DType::bf16}) {
    const std::string tn = name(t);
    // Odd sizes (the per-expert loop), empty experts first, in the middle and last.
    grouped_case(t, {0, 0, 3, 3, 10, 14, 14}, 6, 13, 11, 0, 100, {}, tn + " E=6 I=13 O=11");
    // The grouped kernel: partial row, column and K tiles; one expert of 1 row.
    grouped_case(t, {0, 0, 130, 131, 131, 300}, 5, 40, 24, 0, 101, {}, tn + " E=5 I=40 O=24");
    grouped_case(t, {0, 129, 129, 257}, 3, 136, 264, 0, 102, {}, tn + " E=3 I=136 O=264");
    // A misaligned pointer falls back to the loop.
    grouped_case(t, {0, 5, 9}, 2, 16, 8, 1, 103, {}, tn + " E=2 I=16 O=8 misaligned");
    // No rows at all.
    grouped_case(t, {0, 0, 0}, 2, 16, 8, 0, 104, {}, tn + " no rows");
  }
}

TEST_F(CudaMoe, GroupedLinearReal) {
  const int64_t N = 8192, K = 8, E = 256;
  // Routing of random logits (mildly unbalanced, like a trained router is not).
  const VecI idx = random_routing(N, K, E, 110);
  const VecL off = offsets_of(idx, N, K, E);
  int64_t largest = 0;
  for (int64_t e = 0; e < E; ++e)
    if (off[e + 1] - off[e] > off[largest + 1] - off[largest]) largest = e;
  const std::vector<int64_t> subset = {0, 1, 37, 128, 200, 255, largest};
  grouped_case(DType::bf16, off, E, 2048, 1024, 0, 111, subset, "bf16 real gate_up I=2048 O=1024");
  grouped_case(DType::bf16, off, E, 512, 2048, 0, 112, subset, "bf16 real down I=512 O=2048");
  // f32 debug mode (per-expert cuBLASLt loop) at real widths on 16 experts.
  const VecI idx16 = random_routing(1024, 8, 16, 113);
  const VecL off16 = offsets_of(idx16, 1024, 8, 16);
  grouped_case(DType::f32, off16, 16, 2048, 1024, 0, 114, {0, 7, 15}, "f32 E=16 I=2048 O=1024");
}

// Many experts, ragged sizes, many empty experts: the device-offset kernel (inside
// grouped_case) against the host-offset one, bitwise.
TEST_F(CudaMoe, GroupedLinearDeviceOffsetsRagged) {
  const int64_t E = 300;
  VecL off(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = e % 7 == 0 ? 0 : e % 11 == 3 ? 129 : (e * 37) % 23;
    off[e + 1] = off[e] + n;
  }
  grouped_case(DType::bf16, off, E, 64, 40, 0, 140, {0, 1, 3, 7, 14, 146, 299},
               "bf16 E=300 ragged I=64 O=40");
  grouped_case(DType::bf16, {0, 0, 0, 0}, 3, 16, 8, 0, 141, {}, "bf16 E=3 no rows");
  grouped_case(DType::bf16, {0, 0, 0, 200}, 3, 24, 136, 0, 142, {}, "bf16 E=3 last expert only");
}

// moe_permute without host offsets: the same permutation as the host path, no device -> host
// copy, the error words untouched.
TEST_F(CudaMoe, PermuteWithoutHostCopy) {
  for (auto [N, K, E] :
       {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {37, 3, 5}, {700, 8, 64}, {8192, 8, 256}}) {
    const std::string what =
        "N=" + std::to_string(N) + " K=" + std::to_string(K) + " E=" + std::to_string(E);
    const VecI idx = random_routing(N, K, E, 150 + N);
    Dev d_idx = dev_copy(idx);
    Perm ref = permute(d_idx, idx, N, K, E, what);
    Dev bad = dev_no_bad(), d_off = dev_poison((E + 1) * 8), rows = dev_poison(N * K * 4),
        pos = dev_poison(N * K * 4);
    const int64_t copies = dt::cuda::device_to_host_copies();
    dt::cuda::moe_permute(d_idx.as<int32_t>(), N, K, E, bad.as<int32_t>(), d_off.as<int64_t>(),
                          nullptr, rows.as<int32_t>(), pos.as<int32_t>());
    EXPECT_EQ(dt::cuda::device_to_host_copies(), copies) << what;
    EXPECT_EQ(get<int64_t>(d_off.p(), E + 1), ref.off) << what << ": offsets";
    EXPECT_EQ(get<int32_t>(rows.p(), N * K), ref.rows) << what << ": rows";
    EXPECT_EQ(get<int32_t>(pos.p(), N * K), ref.pos) << what << ": pos";
    EXPECT_EQ(get<int32_t>(bad.p(), 3), VecI(3, dt::cuda::kNoBadToken)) << what;
  }
}

// The error words collect the smallest bad token over calls, whatever their order: non-finite
// router rows in [0], out-of-range expert ids in [1] with the id in [2]; no host copy.
TEST_F(CudaMoe, BadTokenWordsKeepTheSmallest) {
  const int64_t N = 9, E = 5, K = 2;
  Dev bad = dev_no_bad();
  const int64_t copies = dt::cuda::device_to_host_copies();
  auto router = [&](std::vector<int64_t> nan_tokens) {
    VecF l = dt_test::randn<float>(N * E, 160);
    for (int64_t n : nan_tokens) l[n * E + 1] = NAN;
    Dev d_l = dev_copy(l), p = dev_poison(N * E * 4), lse = dev_poison(N * 4),
        idx = dev_poison(N * K * 4), w = dev_poison(N * K * 4);
    dt::cuda::moe_router_fwd(d_l.as<float>(), N, E, K, p.as<float>(), lse.as<float>(),
                             idx.as<int32_t>(), w.as<float>(), bad.as<int32_t>());
  };
  router({});
  router({7, 5});
  router({6, 8});
  EXPECT_EQ(get<int32_t>(bad.p(), 3), (VecI{5, dt::cuda::kNoBadToken, dt::cuda::kNoBadToken}));
  router({2});
  auto permute_bad = [&](std::vector<std::pair<int64_t, int32_t>> bad_slots) {
    VecI ids(N * K);
    for (int64_t i = 0; i < N * K; ++i) ids[i] = int32_t(i % K);
    for (auto [slot, e] : bad_slots) ids[slot] = e;
    Dev d_ids = dev_copy(ids), off = dev_poison((E + 1) * 8), rows = dev_poison(N * K * 4),
        pos = dev_poison(N * K * 4);
    dt::cuda::moe_permute(d_ids.as<int32_t>(), N, K, E, bad.as<int32_t>(), off.as<int64_t>(),
                          nullptr, rows.as<int32_t>(), pos.as<int32_t>());
    // The bad slots are left out; every row and position stays in range.
    for (int32_t r : get<int32_t>(rows.p(), N * K)) EXPECT_TRUE(r >= 0 && r < N * K) << r;
    for (int32_t q : get<int32_t>(pos.p(), N * K)) EXPECT_TRUE(q >= 0 && q < N * K) << q;
    EXPECT_EQ(get<int64_t>(off.p(), E + 1)[E], N * K - int64_t(bad_slots.size()));
  };
  permute_bad({});
  permute_bad({{2 * 8 + 1, 9}, {2 * 6, -3}});  // tokens 8 and 6: token 6 (id -3) is kept
  EXPECT_EQ(get<int32_t>(bad.p(), 3), (VecI{2, 6, -3}));
  permute_bad({{2 * 7, 11}});                       // token 7: not smaller
  permute_bad({{2 * 4 + 1, 12}, {2 * 3 + 1, 13}});  // tokens 4 and 3: token 3 (id 13)
  EXPECT_EQ(get<int32_t>(bad.p(), 3), (VecI{2, 3, 13}));
  EXPECT_EQ(dt::cuda::device_to_host_copies(), copies);
  // With host offsets the same words make moe_permute throw (the router's token first).
  VecI ids(N * K);
  for (int64_t i = 0; i < N * K; ++i) ids[i] = int32_t(i % K);
  Dev d_ids = dev_copy(ids), off = dev_poison((E + 1) * 8), rows = dev_poison(N * K * 4),
      pos = dev_poison(N * K * 4);
  VecL off_h(E + 1);
  dt_test::expect_error(
      [&] {
        dt::cuda::moe_permute(d_ids.as<int32_t>(), N, K, E, bad.as<int32_t>(), off.as<int64_t>(),
                              off_h.data(), rows.as<int32_t>(), pos.as<int32_t>());
      },
      {"moe_router_fwd", "token 2", "not finite"});
  EXPECT_GT(dt::cuda::device_to_host_copies(), copies);
}

// Timings of the grouped GEMMs at Qwen3.5-35B-A3B size (printed, not checked).
TEST_F(CudaMoe, GroupedLinearTimingReal) {
  const int64_t N = 8192, K = 8, E = 256, R = N * K;
  const VecL off = offsets_of(random_routing(N, K, E, 120), N, K, E);
  struct Shape {
    const char* name;
    int64_t I, O;
  };
  for (Shape s : {Shape{"gate_up", 2048, 1024}, Shape{"down", 512, 2048}}) {
    const int64_t I = s.I, O = s.O;
    Dev x = dev_poison(R * I * 2), W = dev_poison(E * O * I * 2), dy = dev_poison(R * O * 2),
        y = dev_poison(R * O * 2), dx = dev_poison(R * I * 2), dW = dev_poison(E * O * I * 4);
    DT_CUDA_CHECK(cudaMemset(x.p(), 0x3c, R * I * 2));  // bf16 0x3c3c ~ 0.0115
    DT_CUDA_CHECK(cudaMemset(W.p(), 0x3c, E * O * I * 2));
    DT_CUDA_CHECK(cudaMemset(dy.p(), 0x3c, R * O * 2));
    DT_CUDA_CHECK(cudaMemset(dW.p(), 0, E * O * I * 4));
    const double flops = 2.0 * double(R) * double(I) * double(O);
    auto time = [&](const char* what, double fl, auto&& fn) {
      const double ms = dt_test::gpu_time_ms(fn, 1, 5);  // warm-up: plans, tables
      std::printf("  TIMING %-8s %-28s %8.3f ms  %6.1f TFLOP/s\n", s.name, what, ms,
                  fl / (ms * 1e-3) / 1e12);
    };
    const DType bf = DType::bf16;
    time("fwd grouped kernel", flops,
         [&] { dt::cuda::grouped_linear_fwd(bf, x.p(), W.p(), off.data(), E, I, O, y.p()); });
    time("fwd cuBLASLt loop", flops,
         [&] { dt::cuda::grouped_linear_fwd_loop(bf, x.p(), W.p(), off.data(), E, I, O, y.p()); });
    time("bwd dx+dW grouped kernel", 2 * flops, [&] {
      dt::cuda::grouped_linear_bwd(bf, x.p(), W.p(), dy.p(), off.data(), E, I, O, dx.p(),
                                   dW.as<float>());
    });
    time("bwd dx+dW cuBLASLt loop", 2 * flops, [&] {
      dt::cuda::grouped_linear_bwd_loop(bf, x.p(), W.p(), dy.p(), off.data(), E, I, O, dx.p(),
                                        dW.as<float>());
    });
    time("bwd dx grouped kernel", flops, [&] {
      dt::cuda::grouped_linear_bwd(bf, x.p(), W.p(), dy.p(), off.data(), E, I, O, dx.p(), nullptr);
    });
    time("bwd dx cuBLASLt loop", flops, [&] {
      dt::cuda::grouped_linear_bwd_loop(bf, x.p(), W.p(), dy.p(), off.data(), E, I, O, dx.p(),
                                        nullptr);
    });
    time("bwd dW grouped kernel", flops, [&] {
      dt::cuda::grouped_linear_bwd(bf, x.p(), W.p(), dy.p(), off.data(), E, I, O, nullptr,
                                   dW.as<float>());
    });
    time("bwd dW cuBLASLt loop", flops, [&] {
      dt::cuda::grouped_linear_bwd_loop(bf, x.p(), W.p(), dy.p(), off.data(), E, I, O, nullptr,
                                        dW.as<float>());
    });
  }
}

// ---- determinism: the whole routed path twice, bitwise ----------------------------------------

namespace {

// FNV-1a over 64-bit words (bytes is a multiple of 4; a trailing half word is zero-padded).
uint64_t fnv(const void* dev, size_t bytes) {
  std::vector<uint64_t> h((bytes + 7) / 8, 0);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  if (bytes) DT_CUDA_CHECK(cudaMemcpy(h.data(), dev, bytes, cudaMemcpyDeviceToHost));
  uint64_t s = 1469598103934665603ull;
  for (uint64_t c : h) s = (s ^ c) * 1099511628211ull;
  return s;
}

// Router -> permute -> gather -> up -> down -> combine, then the backward of each, with the
// router losses; returns hashes of every output.
std::vector<uint64_t> routed_pass(DType t, int64_t N, int64_t E, int64_t K, int64_t D, int64_t F) {
  const int64_t P = N * K;
  const size_t es = dt::cuda::dtype_size(t);
  VecF logits = rounded(dt_test::randn<float>(N * E, 130, 2.0)), x = urand(N * D, 131, 1.0),
       Wu = urand(E * F * D, 132, 0.02), Wd = urand(E * D * F, 133, 0.04),
       dy = urand(N * D, 134, 1.0);
  Dev d_l = dev_copy(logits), d_x = dev_dt(x, t), d_Wu = dev_dt(Wu, t), d_Wd = dev_dt(Wd, t),
      d_dy = dev_dt(dy, t);
  Dev probs = dev_poison(N * E * 4), lse = dev_poison(N * 4), idx = dev_poison(P * 4),
      w = dev_poison(P * 4), bad = dev_no_bad(), off = dev_poison((E + 1) * 8),
      rows = dev_poison(P * 4), pos = dev_poison(P * 4), xe = dev_poison(P * D * es),
      h = dev_poison(P * F * es), ye = dev_poison(P * D * es), y = dev_poison(N * D * 4);
  VecL off_h(E + 1);
  dt::cuda::moe_router_fwd(d_l.as<float>(), N, E, K, probs.as<float>(), lse.as<float>(),
                           idx.as<int32_t>(), w.as<float>(), bad.as<int32_t>());
  dt::cuda::moe_permute(idx.as<int32_t>(), N, K, E, bad.as<int32_t>(), off.as<int64_t>(),
                        off_h.data(), rows.as<int32_t>(), pos.as<int32_t>());
  dt::cuda::moe_gather(t, d_x.p(), rows.as<int32_t>(), nullptr, P, K, D, xe.p());
  dt::cuda::grouped_linear_fwd(t, xe.p(), d_Wu.p(), off_h.data(), E, D, F, h.p());
  dt::cuda::grouped_linear_fwd(t, h.p(), d_Wd.p(), off_h.data(), E, F, D, ye.p());
  dt::cuda::moe_scatter_add(t, ye.p(), pos.as<int32_t>(), w.as<float>(), N, K, D, DType::f32, y.p(),
                            false);
  // backward
  Dev dye = dev_poison(P * D * es), g = dev_poison(P * F * es), dw = dev_poison(P * 4),
      dxe = dev_poison(P * D * es), dx = dev_poison(N * D * es), dWu = dev_poison(E * F * D * 4),
      dWd = dev_poison(E * D * F * 4), dprobs = dev_poison(N * E * 4), dlse = dev_poison(N * 4),
      dlogits = dev_poison(N * E * 4);
  DT_CUDA_CHECK(cudaMemset(dWu.p(), 0, E * F * D * 4));
  DT_CUDA_CHECK(cudaMemset(dWd.p(), 0, E * D * F * 4));
  dt::cuda::moe_gather(t, d_dy.p(), rows.as<int32_t>(), nullptr, P, K, D, dye.p());
  dt::cuda::grouped_linear_bwd(t, h.p(), d_Wd.p(), dye.p(), off_h.data(), E, F, D, g.p(),
                               dWd.as<float>());
  dt::cuda::moe_expert_weight_bwd(t, h.p(), g.p(), rows.as<int32_t>(), w.as<float>(), P, K, F,
                                  dw.as<float>(), g.p());
  dt::cuda::grouped_linear_bwd(t, xe.p(), d_Wu.p(), g.p(), off_h.data(), E, D, F, dxe.p(),
                               dWu.as<float>());
  dt::cuda::moe_scatter_add(t, dxe.p(), pos.as<int32_t>(), nullptr, N, K, D, t, dx.p(), false);
  std::vector<double> counts(E), tokens(1);
  dt::cuda::moe_count_routes_to_host(idx.as<int32_t>(), nullptr, N, K, E, 1, counts.data(),
                                     tokens.data());
  Vec c = {1e-3 * double(E) / (double(K) * double(N) * double(N))};
  const double aux =
      dt::cuda::moe_aux_loss_fwd(probs.as<float>(), nullptr, N, E, 1, counts.data(), c.data());
  const double z = dt::cuda::moe_z_loss_fwd(lse.as<float>(), nullptr, N, 1e-3 / double(N));
  dt::cuda::moe_aux_loss_bwd(nullptr, N, E, 1, counts.data(), c.data(), 1.0, dprobs.as<float>());
  dt::cuda::moe_z_loss_bwd(lse.as<float>(), nullptr, N, 1e-3 / double(N), 1.0, dlse.as<float>());
  dt::cuda::moe_router_bwd(probs.as<float>(), idx.as<int32_t>(), w.as<float>(), dw.as<float>(),
                           dprobs.as<float>(), dlse.as<float>(), N, E, K, dlogits.as<float>());
  uint64_t aux_bits, z_bits;
  std::memcpy(&aux_bits, &aux, 8);
  std::memcpy(&z_bits, &z, 8);
  return {fnv(probs.p(), N * E * 4),
          fnv(w.p(), P * 4),
          fnv(rows.p(), P * 4),
          fnv(y.p(), N * D * 4),
          fnv(dx.p(), N * D * es),
          fnv(dWu.p(), E * F * D * 4),
          fnv(dWd.p(), E * D * F * 4),
          fnv(dlogits.p(), N * E * 4),
          aux_bits,
          z_bits};
}

}  // namespace

TEST_F(CudaMoe, DeterministicReal) {
  for (DType t : {DType::bf16, DType::f32}) {
    const auto a = routed_pass(t, 8192, 256, 8, 2048, 512);
    const auto b = routed_pass(t, 8192, 256, 8, 2048, 512);
    EXPECT_EQ(a, b) << name(t) << ": two identical passes differ";
    std::printf("  %s routed pass: %s\n", name(t), a == b ? "bitwise identical" : "DIFFERENT");
  }
}
