// Device dispatch for the optimizer's AdamW step over many tensors.
#include "ops/adamw.h"

#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "cpu/adamw.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/adamw.h"
#endif

namespace deltatron::ops {

using core::DType;

void adamw_step_multi(std::span<const AdamWTensor> tensors, const AdamWArgs& args) {
  Args c("adamw_step_multi");
  if (tensors.empty()) return;
  DT_CHECK(args.step >= 1, "ops::", c.op(), ": step must be >= 1 (1-based), got ", args.step);
  // Every view of every tensor on one device; names are "tensor k m", ... The state may be
  // stored in bf16 / u16 on the CPU too (its arithmetic is f32).
  for (size_t k = 0; k < tensors.size(); ++k) {
    const AdamWTensor& t = tensors[k];
    const std::string tag = "tensor " + std::to_string(k) + " ";
    const bool pair = !t.remainder.empty();
    const int64_t n = pair ? t.remainder.numel() : t.master.numel();
    if (pair) {
      c.need_stored(t.remainder, (tag + "remainder").c_str(), dtypes::u16, n);
      c.maybe(t.master, (tag + "master").c_str(), dtypes::f32, n);
    } else {
      c.need(t.master, (tag + "master").c_str(), dtypes::f32, n);
    }
    c.need_stored(t.m, (tag + "m").c_str(), dtypes::act, n);
    c.need_stored(t.v, (tag + "v").c_str(), {t.m.dtype}, n);
    c.need(t.grad, (tag + "grad").c_str(), dtypes::f32, n);
    if (pair) {
      DT_CHECK(!t.compute_copy.empty(), "ops::", c.op(), ": ", tag,
               "has a remainder but no compute_copy (the pair's bf16 weight)");
      c.need_stored(t.compute_copy, (tag + "compute_copy").c_str(), {DType::bf16}, n);
    } else {
      c.maybe(t.compute_copy, (tag + "compute_copy").c_str(), dtypes::act, n);
    }
  }
  switch (c.device()) {
    case core::Device::cpu: {
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
        cpu::adamw_step(s, args);
      }
      return;
    }
    case core::Device::cuda: {
#ifdef DT_HAVE_CUDA
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
        cuda::adamw_step_multi(ts, args, std::get<0>(st), std::get<2>(st));
      }
      return;
#else
      c.no_cuda();
#endif
    }
  }
  c.bad_device();
}

void adamw_compute_copy(const core::View& master, const core::View& copy, int64_t n) {
  Args c("adamw_compute_copy");
  c.nonneg(n, "n");
  c.need(master, "master", dtypes::f32, n);
  c.need_stored(copy, "copy", dtypes::act, n);
  switch (c.device()) {
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
      c.no_cuda();
#endif
  }
  c.bad_device();
}

}  // namespace deltatron::ops
