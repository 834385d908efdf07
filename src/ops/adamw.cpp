// Device dispatch for the optimizer's AdamW step over many tensors.
#include "ops/adamw.h"

#include <string>
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
  // Every view of every tensor on the device of tensor 0's master; names are "tensor k m", ...
  for (size_t k = 0; k < tensors.size(); ++k) {
    const AdamWTensor& t = tensors[k];
    const std::string tag = "tensor " + std::to_string(k) + " ";
    const int64_t n = t.master.numel();
    c.need(t.master, (tag + "master").c_str(), dtypes::f32, n);
    c.need(t.m, (tag + "m").c_str(), dtypes::f32, n);
    c.need(t.v, (tag + "v").c_str(), dtypes::f32, n);
    c.need(t.grad, (tag + "grad").c_str(), dtypes::f32, n);
    c.maybe(t.compute_copy, (tag + "compute_copy").c_str(), dtypes::act, n);
  }
  switch (c.device()) {
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
      c.no_cuda();
#endif
    }
  }
  c.bad_device();
}

}  // namespace deltatron::ops
