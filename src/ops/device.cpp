// Device availability (see device.h).
#include "ops/device.h"

#include "core/error.h"
#ifdef DT_HAVE_CUDA
#include "cuda/allocator.h"
#include "cuda/device.h"
#endif

namespace deltatron::ops {

bool has_backend(core::Device dev) {
#ifdef DT_HAVE_CUDA
  return true;
#else
  return dev == core::Device::cpu;
#endif
}

void check_device(core::Device dev) {
  switch (dev) {
    case core::Device::cpu:
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      cuda::require_hopper();
      cuda::install_allocator();
      return;
#else
      core::fail(
          "--device cuda: this build has no CUDA backend (configure with nvcc available and "
          "-DDT_CUDA=ON); use --device cpu");
#endif
  }
  core::fail("unknown device");
}

void select_device(core::Device dev, int index) {
  if (dev == core::Device::cpu) return;
#ifdef DT_HAVE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  DT_CHECK(index >= 0 && index < count, "GPU ", index, " (LOCAL_RANK) does not exist: ", count,
           " CUDA device(s) visible; start at most one rank per GPU on each machine");
  DT_CUDA_CHECK(cudaSetDevice(index));
#else
  check_device(dev);  // the error of a build without CUDA
  (void)index;
#endif
}

MemoryInfo memory_info(core::Device dev) {
  MemoryInfo m;
#ifdef DT_HAVE_CUDA
  if (dev == core::Device::cuda) {
    DT_CUDA_CHECK(cudaFree(nullptr));
    DT_CUDA_CHECK(cudaMemGetInfo(&m.free, &m.total));
  }
#else
  (void)dev;
#endif
  return m;
}

std::string device_name(core::Device dev) {
#ifdef DT_HAVE_CUDA
  if (dev == core::Device::cuda) {
    int id = 0;
    cudaDeviceProp prop{};
    DT_CUDA_CHECK(cudaGetDevice(&id));
    DT_CUDA_CHECK(cudaGetDeviceProperties(&prop, id));
    return prop.name;
  }
#else
  (void)dev;
#endif
  return "cpu";
}

}  // namespace deltatron::ops
