// Device dispatch for the optimizer's AdamW step over many tensors.
#include "ops/adamw.h"

#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "cpu/adamw.h"
#include "ops/check_views.h"
#ifdef DT_HAVE_CUDA
#include "cuda/adamw.h"
#include "cuda/memory.h"
#endif

namespace deltatron::ops {

using core::DType;

namespace {

// The one device of every view of every tensor.
core::Device device_of_tensors(const char* op, std::span<const AdamWTensor> ts) {
  const core::Device dev = check::device_of(op, {{"master", ts[0].master},
                                                 {"m", ts[0].m},
                                                 {"v", ts[0].v},
                                                 {"grad", ts[0].grad},
                                                 {"compute_copy", ts[0].compute_copy},
                                                 {"remainder", ts[0].remainder}});
  for (size_t k = 0; k < ts.size(); ++k) {
    const AdamWTensor& t = ts[k];
    for (const core::View* v : {&t.master, &t.m, &t.v, &t.grad, &t.compute_copy, &t.remainder})
      DT_CHECK(v->empty() || v->device == dev, "ops::", op, ": tensor ", k, " is on ",
               core::device_name(v->device), " but tensor 0 is on ", core::device_name(dev),
               " (all tensors of one call must be on one device)");
  }
  return dev;
}

// One tensor's views: n elements each (the master's, or the remainder's for the lean pair).
void check_tensor(const char* op, size_t k, const AdamWTensor& t, core::Device dev) {
  const std::string tag = "tensor " + std::to_string(k) + " ";
  const bool pair = !t.remainder.empty();
  const int64_t n = pair ? t.remainder.numel() : t.master.numel();
  const check::Types moment_types(DType::f32, DType::bf16);
  if (pair) {
    check::view(op, (tag + "remainder").c_str(), t.remainder, dev, n, DType::u16);
    check::optional(op, (tag + "master").c_str(), t.master, dev, n, DType::f32);
  } else {
    check::view(op, (tag + "master").c_str(), t.master, dev, n, DType::f32);
  }
  check::view(op, (tag + "m").c_str(), t.m, dev, n, moment_types);
  check::view(op, (tag + "v").c_str(), t.v, dev, n, t.m.dtype);
  check::view(op, (tag + "grad").c_str(), t.grad, dev, n, DType::f32);
  if (pair) {
    DT_CHECK(!t.compute_copy.empty(), "ops::", op, ": ", tag,
             "has a remainder but no compute_copy (the pair's bf16 weight)");
    check::view(op, (tag + "compute_copy").c_str(), t.compute_copy, dev, n, DType::bf16);
  } else {
    const check::Types copy_types =
        dev == core::Device::cpu ? check::Types(DType::f32) : check::Types(DType::f32, DType::bf16);
    check::optional(op, (tag + "compute_copy").c_str(), t.compute_copy, dev, n, copy_types);
  }
}

}  // namespace

void adamw_step_multi(std::span<const AdamWTensor> tensors, const AdamWArgs& args) {
  constexpr const char* op = "adamw_step_multi";
  if (tensors.empty()) return;
  DT_CHECK(args.step >= 1, "ops::", op, ": step must be >= 1 (1-based), got ", args.step);
  const core::Device dev = device_of_tensors(op, tensors);
  for (size_t k = 0; k < tensors.size(); ++k) check_tensor(op, k, tensors[k], dev);
  switch (dev) {
    case core::Device::cpu: {
      const cpu::AdamWStepArgs a{args.lr,   args.beta1,      args.beta2, args.eps,
                                 args.step, args.grad_scale, args.seed};
      for (const AdamWTensor& t : tensors) {
        cpu::AdamWStorage s;
        s.n = t.grad.numel();
        s.grad = t.grad.f32();
        if (t.remainder.empty()) {
          s.master = t.master.f32();
          if (!t.compute_copy.empty()) s.copy_f32 = t.compute_copy.f32();
        } else {
          s.weight = t.compute_copy.bf16();
          s.remainder = t.remainder.u16();
          if (!t.master.empty()) s.master = t.master.f32();
        }
        if (t.m.dtype == DType::bf16) {
          s.m_bf16 = t.m.bf16();
          s.v_bf16 = t.v.bf16();
        } else {
          s.m_f32 = t.m.f32();
          s.v_f32 = t.v.f32();
        }
        s.counter = t.index;
        s.weight_decay = t.weight_decay;
        cpu::adamw_step(s, a);
      }
      return;
    }
    case core::Device::cuda: {
#ifdef DT_HAVE_CUDA
      cuda::AdamWStepArgs a;
      a.lr = args.lr;
      a.beta1 = args.beta1;
      a.beta2 = args.beta2;
      a.eps = args.eps;
      a.step = args.step;
      a.grad_scale = args.grad_scale;
      a.seed = args.seed;
      // cuda::adamw_step_multi takes one storage per call (compute-copy dtype, master form,
      // moment dtype): one call per storage present (tensors without a copy go with bf16).
      using Storage = std::tuple<DType, bool, DType>;
      std::vector<Storage> done;
      for (const AdamWTensor& first : tensors) {
        const auto storage_of = [](const AdamWTensor& t) {
          return Storage{t.compute_copy.empty() ? DType::bf16 : t.compute_copy.dtype,
                         !t.remainder.empty(), t.m.dtype};
        };
        const Storage st = storage_of(first);
        bool seen = false;
        for (const Storage& d : done) seen = seen || d == st;
        if (seen) continue;
        done.push_back(st);
        std::vector<cuda::AdamWTensor> ts;
        for (const AdamWTensor& t : tensors) {
          if (storage_of(t) != st) continue;
          cuda::AdamWTensor c;
          c.master = t.master.empty() ? nullptr : t.master.f32();
          c.m = t.m.data;
          c.v = t.v.data;
          c.grad = t.grad.f32();
          c.compute_copy = t.compute_copy.data;
          c.n = t.grad.numel();
          c.weight_decay = t.weight_decay;
          c.remainder = t.remainder.empty() ? nullptr : t.remainder.u16();
          c.index = t.index;
          ts.push_back(c);
        }
        cuda::adamw_step_multi(ts, a, std::get<0>(st), std::get<2>(st));
      }
      return;
#else
      core::fail("ops::", op, ": this build has no CUDA backend");
#endif
    }
  }
  core::fail("ops::", op, ": unknown device");
}

void adamw_compute_copy(const core::View& master, const core::View& copy, int64_t n) {
  constexpr const char* op = "adamw_compute_copy";
  DT_CHECK(n >= 0, "ops::", op, ": n must be >= 0, got ", n);
  const core::Device dev = check::device_of(op, {{"master", master}, {"copy", copy}});
  check::view(op, "master", master, dev, n, DType::f32);
  check::view(op, "copy", copy, dev, n, check::Types(DType::f32, DType::bf16));
  switch (dev) {
    case core::Device::cpu:
      if (copy.dtype == DType::f32) {
        for (int64_t i = 0; i < n; ++i) copy.f32()[i] = master.f32()[i];
        return;
      }
      return cpu::adamw_compute_copy(master.f32(), copy.bf16(), n);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::adamw_compute_copy(master.f32(), copy.dtype, copy.data, n);
#else
      core::fail("ops::", op, ": this build has no CUDA backend");
#endif
  }
  core::fail("ops::", op, ": unknown device");
}

void adamw_state_zero(const core::View& x) {
  if (x.empty() || x.bytes() == 0) return;
  switch (x.device) {
    case core::Device::cpu:
      std::memset(x.data, 0, x.bytes());
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::zero(x.data, x.bytes());
#else
      core::fail("ops::adamw_state_zero: this build has no CUDA backend");
#endif
  }
  core::fail("ops::adamw_state_zero: unknown device");
}

void adamw_state_from_host(const core::View& dst, const void* src_host) {
  if (dst.bytes() == 0) return;
  DT_CHECK(!dst.empty() && src_host, "ops::adamw_state_from_host: null pointer (", dst.describe(),
           ")");
  switch (dst.device) {
    case core::Device::cpu:
      if (dst.data != src_host) std::memcpy(dst.data, src_host, dst.bytes());
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::copy_from_host(dst.data, src_host, dst.bytes());
#else
      core::fail("ops::adamw_state_from_host: this build has no CUDA backend");
#endif
  }
  core::fail("ops::adamw_state_from_host: unknown device");
}

void adamw_state_to_host(const core::View& src, void* dst_host) {
  if (src.bytes() == 0) return;
  DT_CHECK(!src.empty() && dst_host, "ops::adamw_state_to_host: null pointer (", src.describe(),
           ")");
  switch (src.device) {
    case core::Device::cpu:
      if (src.data != dst_host) std::memcpy(dst_host, src.data, src.bytes());
      return;
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::copy_to_host(dst_host, src.data, src.bytes());
#else
      core::fail("ops::adamw_state_to_host: this build has no CUDA backend");
#endif
  }
  core::fail("ops::adamw_state_to_host: unknown device");
}

}  // namespace deltatron::ops
