// GPU parity of the embedding lookup and its deterministic backward (cuda::embedding_*).
//
// Forward is a copy: the fp32 output must equal the (bf16-rounded) table rows bitwise.
// Backward is checked against cpu::embedding_bwd<double> (relative RMS 1e-5: fp32 sums of up to
// a few thousand rows), plus exact checks that rows never looked up are untouched, that
// out-of-range ids are skipped, and that two runs are bitwise equal. Id sets repeat tokens heavily
// (one id thousands of times in a pack of 8192) as padding and frequent tokens do.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "bf16_util.h"
#include "core/error.h"
#include "cpu/embedding.h"
#include "cuda/device.h"
#include "cuda/embedding.h"
#include "test_util.h"

namespace dt = deltatron;
using dt::cuda::DType;

namespace {

using dt_test::from_bf16;
using dt_test::to_bf16;

// Uploads v in dtype t; v is replaced by the values the device sees.
dt::cuda::DeviceBuffer upload(std::vector<float>& v, DType t) {
  dt::cuda::DeviceBuffer b(std::max<size_t>(v.size(), 1) * dt::cuda::dtype_size(t), "input");
  if (t == DType::bf16) {
    std::vector<uint16_t> h(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      h[i] = to_bf16(v[i]);
      v[i] = from_bf16(h[i]);
    }
    DT_CUDA_CHECK(cudaMemcpy(b.get(), h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  } else {
    DT_CUDA_CHECK(cudaMemcpy(b.get(), v.data(), v.size() * 4, cudaMemcpyHostToDevice));
  }
  return b;
}

dt::cuda::DeviceBuffer upload_ids(const std::vector<int32_t>& ids) {
  dt::cuda::DeviceBuffer b(std::max<size_t>(ids.size(), 1) * 4, "ids");
  DT_CUDA_CHECK(cudaMemcpy(b.get(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  return b;
}

std::vector<float> download(const dt::cuda::DeviceBuffer& b, size_t n) {
  std::vector<float> h(n);
  DT_CUDA_CHECK(cudaDeviceSynchronize());
  DT_CUDA_CHECK(cudaMemcpy(h.data(), b.get(), n * 4, cudaMemcpyDeviceToHost));
  return h;
}

// Ids with heavy repetition: `hot` copies of one id, a burst over a small id range, random ids
// over [0, V), both ends of the vocabulary, then shuffled; `bad` out-of-range ids appended at
// random places when requested.
std::vector<int32_t> make_ids(int64_t N, int64_t V, int64_t hot, bool bad, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> ids;
  const int32_t hot_id = int32_t(V / 2 + 1 < V ? V / 2 + 1 : 0);
  for (int64_t i = 0; i < hot && int64_t(ids.size()) < N; ++i) ids.push_back(hot_id);
  if (int64_t(ids.size()) < N) ids.push_back(0);
  if (int64_t(ids.size()) < N) ids.push_back(int32_t(V - 1));
  std::uniform_int_distribution<int32_t> small(0, int32_t(std::min<int64_t>(V, 40) - 1));
  std::uniform_int_distribution<int32_t> any(0, int32_t(V - 1));
  while (int64_t(ids.size()) < N) ids.push_back(ids.size() % 2 ? small(rng) : any(rng));
  std::shuffle(ids.begin(), ids.end(), rng);
  if (bad && N >= 3) {
    ids[N / 3] = -1;
    ids[N / 2] = int32_t(V);
    ids[N - 1] = 2147483647;
  }
  return ids;
}

// Reference dtable rows: dtable0 + cpu::embedding_bwd<double> over the valid ids, computed on a
// compact table of the distinct ids (same arithmetic, without a [V, D] double table).
std::map<int32_t, std::vector<double>> reference_rows(const std::vector<int32_t>& ids,
                                                      const std::vector<float>& dx, int64_t D,
                                                      int64_t V,
                                                      const std::vector<float>* dtable0) {
  std::map<int32_t, int32_t> compact;
  std::vector<int32_t> cids;
  std::vector<double> cdx;
  for (size_t n = 0; n < ids.size(); ++n) {
    if (ids[n] < 0 || ids[n] >= V) continue;
    auto it = compact.emplace(ids[n], int32_t(compact.size())).first;
    cids.push_back(it->second);
    cdx.insert(cdx.end(), dx.begin() + n * D, dx.begin() + (n + 1) * D);
  }
  std::vector<double> table(compact.size() * D, 0.0);
  for (const auto& [id, c] : compact)
    if (dtable0)
      for (int64_t d = 0; d < D; ++d) table[c * D + d] = (*dtable0)[id * D + d];
  dt::cpu::embedding_bwd<double>(cids.data(), cdx.data(), int64_t(cids.size()), D, table.data());
  std::map<int32_t, std::vector<double>> rows;
  for (const auto& [id, c] : compact)
    rows[id] = std::vector<double>(table.begin() + c * D, table.begin() + (c + 1) * D);
  return rows;
}

// Checks dtable (downloaded) against the reference rows; every other row must equal init_row(v).
template <typename Init>
void check_dtable(const std::vector<float>& got, const std::map<int32_t, std::vector<double>>& ref,
                  int64_t V, int64_t D, Init init_row, const std::string& what) {
  std::vector<float> g;
  std::vector<double> w;
  for (const auto& [id, row] : ref) {
    g.insert(g.end(), got.begin() + id * D, got.begin() + (id + 1) * D);
    w.insert(w.end(), row.begin(), row.end());
  }
  auto r = dt_test::compare(g, w);
  EXPECT_LE(r.rel_rms, 1e-5) << what << ": " << r.str();
  std::printf("  %-48s rel_rms=%.3e max_abs=%.3e over %zu rows (tol 1e-5)\n", what.c_str(),
              r.rel_rms, r.max_abs, ref.size());
  int64_t changed = 0;
  for (int64_t v = 0; v < V; ++v) {
    if (ref.count(int32_t(v))) continue;
    for (int64_t d = 0; d < D; ++d) changed += got[v * D + d] != init_row(v, d);
  }
  EXPECT_EQ(changed, 0) << what << ": elements of rows never looked up were written";
}

class CudaEmbedding : public ::testing::Test {
 protected:
  void SetUp() override { dt::cuda::require_hopper(); }
};

}  // namespace

TEST_F(CudaEmbedding, ForwardCopiesRowsExactly) {
  const int64_t N = 1000, V = 5003, D = 13;
  for (DType t : {DType::f32, DType::bf16}) {
    std::vector<float> table = dt_test::randn<float>(V * D, 1);
    auto table_d = upload(table, t);
    const std::vector<int32_t> ids = make_ids(N, V, 300, true, 2);
    auto ids_d = upload_ids(ids);
    dt::cuda::DeviceBuffer x(N * D * 4, "x");
    DT_CUDA_CHECK(cudaMemset(x.get(), 0xFF, N * D * 4));
    dt::cuda::embedding_fwd(t, static_cast<const int32_t*>(ids_d.get()), table_d.get(), N, V, D,
                            static_cast<float*>(x.get()));
    const std::vector<float> xh = download(x, N * D);
    int64_t wrong = 0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t d = 0; d < D; ++d) {
        const bool valid = ids[n] >= 0 && ids[n] < V;
        const float want = valid ? table[int64_t(ids[n]) * D + d] : 0.f;
        wrong += std::memcmp(&xh[n * D + d], &want, 4) != 0;
      }
    EXPECT_EQ(wrong, 0) << dt::cuda::dtype_name(t) << ": rows differ from the table";
  }
}

TEST_F(CudaEmbedding, BackwardRepeatedIdsAccumulate) {
  struct Case {
    int64_t N, V, D, hot;
  };
  for (const Case& c : {Case{1000, 5003, 13, 300}, Case{777, 50, 300, 0}, Case{1, 7, 1, 0},
                        Case{2048, 3, 129, 2000}}) {
    const auto [N, V, D, hot] = c;
    const std::vector<int32_t> ids = make_ids(N, V, hot, N >= 3, 10 + N);
    std::vector<float> dx = dt_test::randn<float>(N * D, 11 + N);
    std::vector<float> dtable0 = dt_test::randn<float>(V * D, 12 + N);
    auto ids_d = upload_ids(ids);
    auto dx_d = upload(dx, DType::f32);
    auto dtable = upload(dtable0, DType::f32);
    dt::cuda::embedding_bwd(static_cast<const int32_t*>(ids_d.get()),
                            static_cast<const float*>(dx_d.get()), N, D, V,
                            static_cast<float*>(dtable.get()));
    const auto ref = reference_rows(ids, dx, D, V, &dtable0);
    check_dtable(
        download(dtable, V * D), ref, V, D,
        [&](int64_t v, int64_t d) { return dtable0[v * D + d]; },
        "N=" + std::to_string(N) + " V=" + std::to_string(V) + " D=" + std::to_string(D) +
            " dtable (+=)");
  }
}

TEST_F(CudaEmbedding, EmptyInputsAreNoOps) {
  std::vector<float> t0 = {1.f, 2.f, 3.f};
  auto dtable = upload(t0, DType::f32);
  dt::cuda::embedding_fwd(DType::bf16, nullptr, nullptr, 0, 3, 1, nullptr);
  dt::cuda::embedding_bwd(nullptr, nullptr, 0, 1, 3, static_cast<float*>(dtable.get()));
  EXPECT_EQ(download(dtable, 3), t0);
}

// Real shapes: V = 248,320, D = 2048, N = 8192 with one id repeated 3000 times; bf16 table.
// Backward checked against the CPU on the touched rows, untouched rows stay zero, two runs are
// bitwise equal; kernel times are printed.
TEST_F(CudaEmbedding, RealShapeParityAndDeterminism) {
  const int64_t N = 8192, V = 248320, D = 2048;
  const std::vector<int32_t> ids = make_ids(N, V, 3000, false, 20);
  auto ids_d = upload_ids(ids);
  const auto* ids_p = static_cast<const int32_t*>(ids_d.get());

  // forward (a cheap hashed table instead of 508M normal samples)
  std::vector<float> table(size_t(V * D));
  for (size_t i = 0; i < table.size(); ++i)
    table[i] = float(int32_t((uint32_t(i) * 2654435761u) >> 12) - (1 << 19)) / float(1 << 19);
  auto table_d = upload(table, DType::bf16);
  dt::cuda::DeviceBuffer x(N * D * 4, "x");
  DT_CUDA_CHECK(cudaMemset(x.get(), 0xFF, N * D * 4));
  dt::cuda::embedding_fwd(DType::bf16, ids_p, table_d.get(), N, V, D, static_cast<float*>(x.get()));
  const std::vector<float> xh = download(x, N * D);
  int64_t wrong = 0;
  for (int64_t n = 0; n < N; ++n)
    wrong += std::memcmp(&xh[n * D], &table[int64_t(ids[n]) * D], D * 4) != 0;
  EXPECT_EQ(wrong, 0) << "forward rows differ from the bf16 table";
  table.clear();
  table.shrink_to_fit();

  // backward onto zeros, twice
  std::vector<float> dx = dt_test::randn<float>(N * D, 21);
  auto dx_d = upload(dx, DType::f32);
  const auto* dx_p = static_cast<const float*>(dx_d.get());
  dt::cuda::DeviceBuffer dt1(V * D * 4, "dtable"), dt2(V * D * 4, "dtable");
  DT_CUDA_CHECK(cudaMemset(dt1.get(), 0, V * D * 4));
  DT_CUDA_CHECK(cudaMemset(dt2.get(), 0, V * D * 4));
  dt::cuda::embedding_bwd(ids_p, dx_p, N, D, V, static_cast<float*>(dt1.get()));
  dt::cuda::embedding_bwd(ids_p, dx_p, N, D, V, static_cast<float*>(dt2.get()));
  const std::vector<float> h1 = download(dt1, V * D);
  const auto ref = reference_rows(ids, dx, D, V, nullptr);
  check_dtable(
      h1, ref, V, D, [](int64_t, int64_t) { return 0.f; }, "V=248320 D=2048 N=8192 dtable (+=)");
  const std::vector<float> h2 = download(dt2, V * D);
  EXPECT_EQ(std::memcmp(h1.data(), h2.data(), h1.size() * 4), 0) << "two runs differ";

  auto time_us = [](auto&& f) {
    f();
    DT_CUDA_CHECK(cudaDeviceSynchronize());
    const int reps = 20;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) f();
    DT_CUDA_CHECK(cudaDeviceSynchronize());
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
               .count() /
           reps;
  };
  const double fwd = time_us([&] {
    dt::cuda::embedding_fwd(DType::bf16, ids_p, table_d.get(), N, V, D,
                            static_cast<float*>(x.get()));
  });
  const double bwd = time_us(
      [&] { dt::cuda::embedding_bwd(ids_p, dx_p, N, D, V, static_cast<float*>(dt1.get())); });
  const std::vector<int32_t> spread = make_ids(N, V, 0, false, 22);  // no hot id
  auto spread_d = upload_ids(spread);
  const double bwd_spread = time_us([&] {
    dt::cuda::embedding_bwd(static_cast<const int32_t*>(spread_d.get()), dx_p, N, D, V,
                            static_cast<float*>(dt1.get()));
  });
  std::printf(
      "  embedding bf16 N=8192 D=2048: fwd %.1f us, bwd %.1f us (one id 3000 times), "
      "%.1f us (no hot id)\n",
      fwd, bwd, bwd_spread);
}
