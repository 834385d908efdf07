// Block projections with LoRA adapters and frozen bases (proj.h).
#include "model/proj.h"

#include "core/bf16.h"
#include "model/adapters.h"
#include "model/lora_linear.h"
#include "model/tensor_parallel.h"
#include "ops/linear.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {

struct Adapter {
  const LoraModule* m = nullptr;
  LoraShape d;
  View A, B;
  double p = 0;            // dropout probability on the adapter's input (0: none)
  uint64_t key = 0;        // the module's mask key for this pack
  ops::MaskWindow window;  // where this rank's input lies in the whole input's masks
};

// The adapter of `weight` for an input of x's dtype, or nothing.
bool adapter_of(const Ctx& cx, const std::string& weight, const View& x, int64_t I, int64_t O,
                Adapter& a) {
  if (!cx.lora) return false;
  const LoraModule* m = cx.lora->find(weight);
  if (!m) return false;
  a.m = m;
  const Params& p = cx.lora->params();
  const bool f32_in = x.dtype == core::DType::f32 && p.dt() != core::DType::f32;
  const std::string ka = lora_a_key(m->name), kb = lora_b_key(m->name);
  a.A = f32_in ? p.master(ka) : p.w(ka);
  a.B = f32_in ? p.master(kb) : p.w(kb);
  a.d = LoraShape{cx.N(), I, O, cx.lora->r(), cx.lora->scale()};
  if (cx.dropout_key != 0 && cx.lora->options().dropout > 0) {
    a.p = cx.lora->options().dropout;
    a.key = core::hash64(cx.dropout_key + uint64_t(cx.lora->index(m) + 1) * 0xD1B54A32D192ED03ull);
    // Tensor parallelism: a row-parallel base's input is this rank's contiguous piece of the
    // whole input's columns (o_proj, out_proj, down_proj: one segment each), so it takes those
    // columns of the whole input's masks, one rank's; any other adapter's input is whole.
    if (cx.tp && cx.tp->on()) {
      const TpSplit split = tp_split(cx.c, weight);
      if (split.dim == 1) {
        DT_CHECK(split.segments.size() == 1, weight,
                 ": LoRA dropout under tensor parallelism needs one contiguous input piece per "
                 "rank, the split has ",
                 split.segments.size(), " segments");
        a.window = ops::MaskWindow{I, I * cx.tp->size(), I * cx.tp->rank()};
      }
    }
  }
  return true;
}

// The base weight's gradient dW (+)= dy^T x: the step's first write overwrites; a replicated
// weight's partial store under tensor parallelism adds; a frozen base has none.
void base_dw(const Ctx& cx, const std::string& weight, const View& x, const View& dy, int64_t I,
             int64_t O) {
  const Params::GradTarget gw = cx.g_target(weight);
  if (!gw.g.empty()) ops::linear_bwd_dw(x, dy, cx.N(), I, O, gw.g, 1.0f, gw.accumulate);
}

}  // namespace

View Ctx::lora_g(const std::string& key) const {
  if (lora_tpg) {
    const View v = lora_tpg->at(key);
    if (!v.empty()) return v;
  }
  return lora->params().g(key);
}

void proj_fwd(const Ctx& cx, const std::string& weight, const View& x, int64_t I, int64_t O,
              const View& y, bool accumulate) {
  proj_fwd(cx, weight, cx.p.w(weight), x, I, O, y, accumulate);
}

void proj_fwd(const Ctx& cx, const std::string& weight, const View& W, const View& x, int64_t I,
              int64_t O, const View& y, bool accumulate) {
  ops::linear_fwd(x, W, cx.N(), I, O, y, accumulate);
  Adapter a;
  if (!adapter_of(cx, weight, x, I, O, a)) return;
  const Buffer h(cx.dev(), x.dtype, {cx.N() * a.d.r}, "LoRA hidden");
  if (a.p == 0) return lora_fwd(a.d, x, a.A, a.B, h, y);
  // PEFT's lora_dropout: the adapter sees dropout(x); the base sees x.
  const Buffer xd(cx.dev(), x.dtype, {cx.N() * I}, "LoRA input (dropout)");
  ops::dropout(x, xd, a.p, a.key, cx.N() * I, a.window);
  lora_fwd(a.d, xd, a.A, a.B, h, y);
}

void proj_bwd(const Ctx& cx, const std::string& weight, const View& x, const View& dy, int64_t I,
              int64_t O, const View& dx, bool accumulate) {
  proj_bwd(cx, weight, cx.p.w(weight), x, dy, I, O, dx, accumulate);
}

void proj_bwd(const Ctx& cx, const std::string& weight, const View& W, const View& x,
              const View& dy, int64_t I, int64_t O, const View& dx, bool accumulate) {
  ops::linear_bwd_dx(dy, W, cx.N(), I, O, dx, accumulate);
  base_dw(cx, weight, x, dy, I, O);
  Adapter a;
  if (!adapter_of(cx, weight, x, I, O, a)) return;
  const Buffer h(cx.dev(), x.dtype, {cx.N() * a.d.r}, "LoRA hidden");
  const Buffer dh(cx.dev(), x.dtype, {cx.N() * a.d.r}, "LoRA hidden gradient");
  const View gA = cx.lora_g(lora_a_key(a.m->name)), gB = cx.lora_g(lora_b_key(a.m->name));
  if (a.p == 0) return lora_bwd(a.d, x, dy, a.A, a.B, h, dh, dx, gA, gB);
  // Dropout: the same mask regenerated from its key, on the input and on the input gradient.
  const int64_t n = cx.N() * I;
  const Buffer xd(cx.dev(), x.dtype, {n}, "LoRA input (dropout)");
  ops::dropout(x, xd, a.p, a.key, n, a.window);
  const Buffer dxd(cx.dev(), x.dtype, {n}, "LoRA input gradient (dropout)");
  ops::zero(dxd);
  lora_bwd(a.d, xd, dy, a.A, a.B, h, dh, dxd, gA, gB);
  ops::dropout(dxd, dxd, a.p, a.key, n, a.window);
  if (dx.dtype == core::DType::f32)
    ops::add_inplace(dx, dxd, n);
  else
    ops::axpy(dx, dxd, 1.0f, n);
}

bool proj_adapted(const Ctx& cx, const std::string& weight) {
  return cx.lora && cx.lora->find(weight) != nullptr;
}

void proj_bwd_dx(const Ctx& cx, const std::string& weight, const View& dy, int64_t I, int64_t O,
                 const View& dx, bool accumulate) {
  DT_CHECK(!proj_adapted(cx, weight), "proj_bwd_dx: ", weight, " has a LoRA adapter");
  ops::linear_bwd_dx(dy, cx.p.w(weight), cx.N(), I, O, dx, accumulate);
}

void proj_bwd_dw(const Ctx& cx, const std::string& weight, const View& x, const View& dy, int64_t I,
                 int64_t O) {
  DT_CHECK(!proj_adapted(cx, weight), "proj_bwd_dw: ", weight, " has a LoRA adapter");
  base_dw(cx, weight, x, dy, I, O);
}

View grad_or_scratch(const Ctx& cx, const std::string& name, Buffer& scratch) {
  const View g = cx.p.g(name);
  if (!g.empty()) return g;
  scratch = cx.f32(cx.p.entry(name).numel, "frozen weight gradient (discarded)");
  ops::zero(scratch);
  return scratch.view().reshaped(cx.p.entry(name).shape);
}

}  // namespace deltatron::model
