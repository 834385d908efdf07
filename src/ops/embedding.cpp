// Device dispatch for the token embedding op family.
#include "ops/embedding.h"

#include <vector>

#include "core/error.h"
#include "cpu/embedding.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/embedding.h"
#endif

namespace deltatron::ops {

void embedding_fwd(const View& ids_N, const View& table_VD, int64_t N, int64_t V, int64_t D,
                   const View& x_ND) {
  Args a("embedding_fwd");
  a.nonneg(N, "N"), a.nonneg(V, "V"), a.nonneg(D, "D");
  a.need(ids_N, "ids_N", dtypes::i32, N);
  a.need(table_VD, "table_VD", dtypes::act, V * D);
  a.need(x_ND, "x_ND", dtypes::f32, N * D);
  switch (a.device()) {
    case core::Device::cpu: {
      const int32_t* ids = ids_N.i32();
      for (int64_t n = 0; n < N; ++n)
        if (ids[n] < 0 || ids[n] >= V)
          core::fail("ops::embedding_fwd: ids_N[", n, "] = ", ids[n],
                     " is outside the vocabulary [0, ", V, ")");
      return cpu::embedding_fwd<float>(ids, table_VD.f32(), N, V, D, x_ND.f32());
    }
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::embedding_fwd(table_VD.dtype, ids_N.i32(), table_VD.data, N, V, D, x_ND.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void embedding_bwd(const View& ids_N, const View& dx_ND, int64_t N, int64_t D, int64_t V,
                   const View& dtable_VD) {
  Args a("embedding_bwd");
  a.nonneg(N, "N"), a.nonneg(D, "D"), a.nonneg(V, "V");
  a.need(ids_N, "ids_N", dtypes::i32, N);
  a.need(dx_ND, "dx_ND", dtypes::f32, N * D);
  a.need(dtable_VD, "dtable_VD", dtypes::f32, V * D);
  switch (a.device()) {
    case core::Device::cpu: {
      const int32_t* ids = ids_N.i32();
      int64_t kept = 0;
      for (int64_t n = 0; n < N; ++n) kept += ids[n] >= 0 && ids[n] < V;
      if (kept == N) return cpu::embedding_bwd<float>(ids, dx_ND.f32(), N, D, dtable_VD.f32());
      // Skip the ids outside [0, V): the kept tokens in order, so every row sums as before.
      std::vector<int32_t> kept_ids;
      std::vector<float> kept_dx;
      kept_ids.reserve(size_t(kept));
      kept_dx.reserve(size_t(kept * D));
      for (int64_t n = 0; n < N; ++n) {
        if (ids[n] < 0 || ids[n] >= V) continue;
        kept_ids.push_back(ids[n]);
        kept_dx.insert(kept_dx.end(), dx_ND.f32() + n * D, dx_ND.f32() + (n + 1) * D);
      }
      return cpu::embedding_bwd<float>(kept_ids.data(), kept_dx.data(), kept, D, dtable_VD.f32());
    }
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::embedding_bwd(ids_N.i32(), dx_ND.f32(), N, D, V, dtable_VD.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void embedding_bag_fwd(const View& idx_NB, const View& w_NB, const View& table_VD, int64_t N,
                       int64_t B, int64_t V, int64_t D, const View& x_ND, bool accumulate) {
  Args a("embedding_bag_fwd");
  a.nonneg(N, "N"), a.nonneg(B, "B"), a.nonneg(V, "V"), a.nonneg(D, "D");
  a.need(idx_NB, "idx_NB", dtypes::i32, N * B);
  a.need(w_NB, "w_NB", dtypes::f32, N * B);
  a.need(table_VD, "table_VD", dtypes::act, V * D);
  a.need(x_ND, "x_ND", dtypes::f32, N * D);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::embedding_bag_fwd<float>(idx_NB.i32(), w_NB.f32(), table_VD.f32(), N, B, V, D,
                                           x_ND.f32(), accumulate);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::embedding_bag_fwd(table_VD.dtype, idx_NB.i32(), w_NB.f32(), table_VD.data, N, B,
                                     V, D, x_ND.f32(), accumulate);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void embedding_bag_bwd(const View& idx_NB, const View& w_NB, const View& dx_ND, int64_t N,
                       int64_t B, int64_t V, int64_t D, const View& dtable_VD) {
  Args a("embedding_bag_bwd");
  a.nonneg(N, "N"), a.nonneg(B, "B"), a.nonneg(V, "V"), a.nonneg(D, "D");
  a.need(idx_NB, "idx_NB", dtypes::i32, N * B);
  a.need(w_NB, "w_NB", dtypes::f32, N * B);
  a.need(dx_ND, "dx_ND", dtypes::f32, N * D);
  a.need(dtable_VD, "dtable_VD", dtypes::f32, V * D);
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::embedding_bag_bwd<float>(idx_NB.i32(), w_NB.f32(), dx_ND.f32(), N, B, V, D,
                                           dtable_VD.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::embedding_bag_bwd(idx_NB.i32(), w_NB.f32(), dx_ND.f32(), N, B, V, D,
                                     dtable_VD.f32());
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
