// Device dispatch for the elementwise activation op family.
#include "ops/activation.h"

#include <initializer_list>
#include <utility>

#include "core/error.h"
#include "cpu/activation.h"
#include "ops/check.h"
#ifdef DT_HAVE_CUDA
#include "cuda/pointwise.h"
#endif

namespace deltatron::ops {

namespace {

// Every tensor of an elementwise op: [n] in the dtype of the first one.
void check_elementwise(Args& a, int64_t n,
                       std::initializer_list<std::pair<const View*, const char*>> vs) {
  a.nonneg(n, "n");
  const std::pair<const View*, const char*>* first = nullptr;
  for (const auto& v : vs) {
    a.need(*v.first, v.second, dtypes::act, n);
    if (first)
      a.same_dtype(*first->first, first->second, *v.first, v.second);
    else
      first = &v;
  }
}

}  // namespace

void swiglu_fwd(const View& gate, const View& up, int64_t n, const View& h) {
  Args a("swiglu_fwd");
  check_elementwise(a, n, {{&gate, "gate"}, {&up, "up"}, {&h, "h"}});
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::swiglu_fwd<float>(gate.f32(), up.f32(), n, h.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::swiglu_fwd(gate.dtype, gate.data, up.data, n, h.data);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void swiglu_bwd(const View& gate, const View& up, const View& dh, int64_t n, const View& dgate,
                const View& dup, const View& h) {
  Args a("swiglu_bwd");
  check_elementwise(a, n,
                    {{&gate, "gate"}, {&up, "up"}, {&dh, "dh"}, {&dgate, "dgate"}, {&dup, "dup"}});
  if (!h.empty()) {
    check_elementwise(a, n, {{&gate, "gate"}, {&h, "h"}});
    DT_CHECK(h.data != dh.data, "swiglu_bwd: h must not alias dh");
  }
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::swiglu_bwd<float>(gate.f32(), up.f32(), dh.f32(), n, dgate.f32(), dup.f32(),
                                    h.empty() ? nullptr : h.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::swiglu_bwd(gate.dtype, gate.data, up.data, dh.data, n, dgate.data, dup.data,
                              h.empty() ? nullptr : h.data);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void sigmoid_mul_fwd(const View& a_, const View& g, int64_t n, const View& out) {
  Args a("sigmoid_mul_fwd");
  check_elementwise(a, n, {{&a_, "a"}, {&g, "g"}, {&out, "out"}});
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::sigmoid_mul_fwd<float>(a_.f32(), g.f32(), n, out.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::sigmoid_mul_fwd(a_.dtype, a_.data, g.data, n, out.data);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void sigmoid_mul_bwd(const View& a_, const View& g, const View& dout, int64_t n, const View& da,
                     const View& dg) {
  Args a("sigmoid_mul_bwd");
  check_elementwise(a, n, {{&a_, "a"}, {&g, "g"}, {&dout, "dout"}, {&da, "da"}, {&dg, "dg"}});
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::sigmoid_mul_bwd<float>(a_.f32(), g.f32(), dout.f32(), n, da.f32(), dg.f32());
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::sigmoid_mul_bwd(a_.dtype, a_.data, g.data, dout.data, n, da.data, dg.data);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void gelu_fwd(const View& x, int64_t n, const View& y, Gelu kind) {
  Args a("gelu_fwd");
  check_elementwise(a, n, {{&x, "x"}, {&y, "y"}});
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::gelu_fwd<float>(x.f32(), n, y.f32(), kind == Gelu::tanh);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::gelu_fwd(x.dtype, x.data, n, y.data, kind == Gelu::tanh);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

void gelu_bwd(const View& x, const View& dy, int64_t n, const View& dx, Gelu kind) {
  Args a("gelu_bwd");
  check_elementwise(a, n, {{&x, "x"}, {&dy, "dy"}, {&dx, "dx"}});
  switch (a.device()) {
    case core::Device::cpu:
      return cpu::gelu_bwd<float>(x.f32(), dy.f32(), n, dx.f32(), kind == Gelu::tanh);
    case core::Device::cuda:
#ifdef DT_HAVE_CUDA
      return cuda::gelu_bwd(x.dtype, x.data, dy.data, n, dx.data, kind == Gelu::tanh);
#else
      a.no_cuda();
#endif
  }
  a.bad_device();
}

}  // namespace deltatron::ops
