// training.offload on CUDA: ops::adamw_step_offloaded with the state in pinned host memory (the
// copy pipeline of cuda/offload.h, many chunks, both staging slots reused) leaves every stored bit
// as adamw_step_multi with the state on the device, for every storage; a router-like tensor whose
// fp32 master stays on the device is stepped in place.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/buffer.h"
#include "ops/adamw.h"
#include "ops/device.h"
#include "ops/tensor.h"
#include "test_util.h"

using namespace deltatron;
using core::Buffer;
using core::DType;

namespace {

// The state of every tensor, one buffer per field, on the device or in pinned host memory.
struct State {
  std::vector<Buffer> master, copy, rem, m, v;
};

Buffer make(bool host, DType t, int64_t n, const char* what) {
  return host ? Buffer::pinned_host(t, {n}, what) : Buffer(core::Device::cuda, t, {n}, what);
}

void put(const Buffer& b, const void* src) {
  if (b.bytes() == 0) return;
  if (b.device() == core::Device::cpu)
    std::memcpy(b.data(), src, b.bytes());
  else
    ops::copy_from_host(b, src);
}

std::vector<uint8_t> get(const Buffer& b) {
  std::vector<uint8_t> out(b.bytes());
  if (b.bytes() == 0) return out;
  if (b.device() == core::Device::cpu)
    std::memcpy(out.data(), b.data(), b.bytes());
  else
    ops::copy_to_host(b.view(), out.data());
  return out;
}

}  // namespace

TEST(OffloadCuda, StreamedStepIsBitwiseTheDeviceStep) {
  ops::check_device(core::Device::cuda);
  const std::vector<int64_t> sizes = {5, 0, 64, 65, 1, 3000, 100000, 63, 2049, 70000};
  std::vector<int64_t> index;
  for (size_t i = 0, at = 0; i < sizes.size(); at += size_t(sizes[i]) + 64, ++i)
    index.push_back(int64_t(at));
  for (bool remainder : {false, true})
    for (bool bf16_moments : {false, true})
      for (const char* offload : {"moments", "master+moments"})
        for (int64_t chunk : {int64_t(4096), int64_t(1) << 24}) {
          SCOPED_TRACE(std::string(remainder ? "remainder" : "fp32") + " master, " +
                       (bf16_moments ? "bf16" : "fp32") + " moments, offload " + offload +
                       ", chunk " + std::to_string(chunk));
          ops::AdamWOffload off;
          off.moments = true;
          off.master = std::string(offload) == "master+moments";
          off.chunk = chunk;
          const DType md = bf16_moments ? DType::bf16 : DType::f32;
          State dev, host;
          std::vector<std::vector<float>> grads_h;
          std::vector<Buffer> grads;
          for (size_t k = 0; k < sizes.size(); ++k) {
            const int64_t n = sizes[k];
            const std::vector<float> p = dt_test::randn<float>(size_t(n), 7 + k, 0.05);
            std::vector<uint16_t> w(static_cast<size_t>(n)), r(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i)
              core::master_split(p[size_t(i)], w[size_t(i)], r[size_t(i)]);
            std::vector<uint16_t> zero16(static_cast<size_t>(n), 0);
            std::vector<float> zero32(static_cast<size_t>(n), 0.f);
            for (State* s : {&dev, &host}) {
              const bool h = s == &host;
              // tensor 3 plays a MoE router: its fp32 master stays on the device
              const bool host_master = h && off.master && !(k == 3 && !remainder);
              if (remainder) {
                s->copy.push_back(make(false, DType::bf16, n, "weight"));
                put(s->copy.back(), w.data());
                s->rem.push_back(make(host_master, DType::u16, n, "remainder"));
                put(s->rem.back(), r.data());
                s->master.push_back(make(false, DType::f32, k % 2 ? n : 0, "f32 out"));
              } else {
                s->master.push_back(make(host_master, DType::f32, n, "master"));
                put(s->master.back(), p.data());
                s->copy.push_back(make(false, DType::bf16, n, "copy"));
                s->rem.push_back(Buffer());
              }
              s->m.push_back(make(h, md, n, "m"));
              s->v.push_back(make(h, md, n, "v"));
              put(s->m.back(), bf16_moments ? (const void*)zero16.data() : zero32.data());
              put(s->v.back(), bf16_moments ? (const void*)zero16.data() : zero32.data());
            }
            grads.push_back(Buffer(core::Device::cuda, DType::f32, {n}, "grad"));
          }
          for (int step = 1; step <= 3; ++step) {
            ops::AdamWArgs a;
            a.lr = 1e-3 * step;
            a.step = step;
            a.seed = 5;
            a.grad_scale = step == 2 ? 0.5f : 1.0f;
            for (size_t k = 0; k < sizes.size(); ++k)
              put(grads[k], dt_test::randn<float>(size_t(sizes[k]), 50 * step + k, 0.1).data());
            std::vector<ops::AdamWTensor> td, th;
            for (size_t k = 0; k < sizes.size(); ++k)
              for (State* s : {&dev, &host}) {
                ops::AdamWTensor t;
                t.grad = grads[k];
                t.master = s->master[k];
                t.compute_copy = s->copy[k];
                t.remainder = remainder ? s->rem[k].view() : core::View();
                t.m = s->m[k];
                t.v = s->v[k];
                t.weight_decay = k % 3 ? 0.1 : 0.0;
                t.index = index[k];
                (s == &dev ? td : th).push_back(t);
              }
            ops::adamw_step_multi(td, a);
            ops::adamw_step_offloaded(th, a, off);
            ops::synchronize(core::Device::cuda);
            for (size_t k = 0; k < sizes.size(); ++k) {
              ASSERT_EQ(get(dev.m[k]), get(host.m[k])) << "m, tensor " << k << " step " << step;
              ASSERT_EQ(get(dev.v[k]), get(host.v[k])) << "v, tensor " << k << " step " << step;
              ASSERT_EQ(get(dev.master[k]), get(host.master[k])) << "master " << k;
              ASSERT_EQ(get(dev.copy[k]), get(host.copy[k])) << "copy " << k;
              ASSERT_EQ(get(dev.rem[k]), get(host.rem[k])) << "remainder " << k;
            }
          }
        }
}
