// Device dispatch for the optimizer's AdamW step over many tensors.
#include "ops/adamw.h"

#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/adamw.h"
#include "ops/check_views.h"
#ifdef DT_HAVE_CUDA
#include "cuda/adamw.h"
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
                                                 {"compute_copy", ts[0].compute_copy}});
  for (size_t k = 0; k < ts.size(); ++k) {
    const AdamWTensor& t = ts[k];
    for (const core::View* v : {&t.master, &t.m, &t.v, &t.grad, &t.compute_copy})
      DT_CHECK(v->empty() || v->device == dev, "ops::", op, ": tensor ", k, " is on ",
               core::device_name(v->device), " but tensor 0 is on ", core::device_name(dev),
               " (all tensors of one call must be on one device)");
  }
  return dev;
}

}  // namespace

void adamw_step_multi(std::span<const AdamWTensor> tensors, const AdamWArgs& args) {
  constexpr const char* op = "adamw_step_multi";
  if (tensors.empty()) return;
  DT_CHECK(args.step >= 1, "ops::", op, ": step must be >= 1 (1-based), got ", args.step);
  const core::Device dev = device_of_tensors(op, tensors);
  const check::Types copy_types =
      dev == core::Device::cpu ? check::Types(DType::f32) : check::Types(DType::f32, DType::bf16);
  for (size_t k = 0; k < tensors.size(); ++k) {
    const AdamWTensor& t = tensors[k];
    const std::string tag = "tensor " + std::to_string(k) + " ";
    const int64_t n = t.master.numel();
    check::view(op, (tag + "master").c_str(), t.master, dev, n, DType::f32);
    check::view(op, (tag + "m").c_str(), t.m, dev, n, DType::f32);
    check::view(op, (tag + "v").c_str(), t.v, dev, n, DType::f32);
    check::view(op, (tag + "grad").c_str(), t.grad, dev, n, DType::f32);
    check::optional(op, (tag + "compute_copy").c_str(), t.compute_copy, dev, n, copy_types);
  }
  switch (dev) {
    case core::Device::cpu: {
      const cpu::AdamWStepArgs a{args.lr,  args.beta1, args.beta2,
                                 args.eps, args.step,  args.grad_scale};
      for (const AdamWTensor& t : tensors)
        cpu::adamw_step(t.master.f32(), t.m.f32(), t.v.f32(), t.grad.f32(), t.master.numel(), a,
                        t.weight_decay, t.compute_copy.empty() ? nullptr : t.compute_copy.f32());
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
      // cuda::adamw_step_multi takes one compute-copy dtype per call: one call per dtype present
      // (tensors without a copy go with the first group).
      for (DType dt : {DType::bf16, DType::f32}) {
        std::vector<cuda::AdamWTensor> ts;
        for (const AdamWTensor& t : tensors) {
          const DType t_dt = t.compute_copy.empty() ? DType::bf16 : t.compute_copy.dtype;
          if (t_dt != dt) continue;
          ts.push_back({t.master.f32(), t.m.f32(), t.v.f32(), t.grad.f32(), t.compute_copy.data,
                        t.master.numel(), t.weight_decay});
        }
        if (!ts.empty()) cuda::adamw_step_multi(ts, a, dt);
      }
      return;
#else
      core::fail("ops::", op, ": this build has no CUDA backend");
#endif
    }
  }
  core::fail("ops::", op, ": unknown device");
}

}  // namespace deltatron::ops
