// Device dispatch for the token embedding op family.
#include "ops/embedding.h"

#include "core/error.h"
#include "cpu/embedding.h"

namespace deltatron::ops {

void embedding_fwd(core::Device dev, const int32_t* ids_N, const float* table_VD, int64_t N,
                   int64_t V, int64_t D, float* x_ND) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::embedding_fwd<float>(ids_N, table_VD, N, V, D, x_ND);
    case core::Device::cuda:
      core::fail("embedding_fwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("embedding_fwd: unknown device");
}

void embedding_bwd(core::Device dev, const int32_t* ids_N, const float* dx_ND, int64_t N, int64_t D,
                   float* dtable_VD) {
  switch (dev) {
    case core::Device::cpu:
      return cpu::embedding_bwd<float>(ids_N, dx_ND, N, D, dtable_VD);
    case core::Device::cuda:
      core::fail("embedding_bwd: host-pointer op, no CUDA path (the GPU model is src/gpu)");
  }
  core::fail("embedding_bwd: unknown device");
}

}  // namespace deltatron::ops
