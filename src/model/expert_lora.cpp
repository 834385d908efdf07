// LoRA on the routed experts (expert_lora.h).
#include "model/expert_lora.h"

#include "model/adapters.h"
#include "ops/moe.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {

const LoraModule* module_of(const Ctx& cx, const std::string& param) {
  if (!cx.lora) return nullptr;
  const LoraModule* m = cx.lora->find(param);
  return m && m->experts > 0 ? m : nullptr;
}

// dst = alpha * src (a fresh buffer of src's dtype).
Buffer scaled(const Ctx& cx, const View& src, int64_t n, float alpha, const char* what) {
  Buffer b(cx.dev(), src.dtype, {n}, what);
  ops::zero(b);
  ops::axpy(b, src, alpha, n);
  return b;
}

}  // namespace

int64_t expert_lora_rank(const Ctx& cx, const std::string& param) {
  return module_of(cx, param) ? cx.lora->r() : 0;
}

void expert_lora_fwd(const Ctx& cx, const std::string& param, const ExpertRows& rows, const View& x,
                     int64_t I, int64_t O, const View& y) {
  const LoraModule* m = module_of(cx, param);
  if (!m) return;
  const Params& p = cx.lora->params();
  const int64_t r = cx.lora->r(), P = rows.P;
  Buffer h(cx.dev(), x.dtype, {P * r}, "expert LoRA hidden");
  ops::grouped_linear_fwd(x, p.w(lora_a_key(m->name)), rows.offsets, rows.host, rows.E, I, r, h);
  Buffer t(cx.dev(), x.dtype, {P * O}, "expert LoRA output");
  ops::grouped_linear_fwd(h, p.w(lora_b_key(m->name)), rows.offsets, rows.host, rows.E, r, O, t);
  ops::axpy(y, t, cx.lora->scale(), P * O);
}

void expert_lora_bwd(const Ctx& cx, const std::string& param, const ExpertRows& rows, const View& x,
                     int64_t I, int64_t O, const View& dy_dx, const View& dx,
                     const View& dy_params) {
  const LoraModule* m = module_of(cx, param);
  if (!m) return;
  const Params& p = cx.lora->params();
  const int64_t r = cx.lora->r(), P = rows.P;
  const float s = cx.lora->scale();
  const View A = p.w(lora_a_key(m->name)), B = p.w(lora_b_key(m->name));
  const View gA = cx.lora_g(lora_a_key(m->name)), gB = cx.lora_g(lora_b_key(m->name));
  Buffer h(cx.dev(), x.dtype, {P * r}, "expert LoRA hidden");
  ops::grouped_linear_fwd(x, A, rows.offsets, rows.host, rows.E, I, r, h);  // recomputed
  const Buffer hs = scaled(cx, h, P * r, s, "expert LoRA hidden (scaled)");
  h = Buffer();
  const bool one = !dy_dx.empty() && dy_dx.data == dy_params.data;
  Buffer dh(cx.dev(), x.dtype, {P * r}, "expert LoRA hidden gradient");
  if (!dy_dx.empty()) {
    // dh = dy B (and, when dy_params is the same gradient, dB += dy^T (s h) with it).
    ops::grouped_linear_bwd(hs, B, dy_dx, rows.offsets, rows.host, rows.E, r, O, dh,
                            one ? gB : View{});
    const Buffer dhs = scaled(cx, dh, P * r, s, "expert LoRA hidden gradient (scaled)");
    Buffer t(cx.dev(), x.dtype, {P * I}, "expert LoRA input gradient");
    ops::grouped_linear_bwd(x, A, dhs, rows.offsets, rows.host, rows.E, I, r, t, one ? gA : View{});
    ops::axpy(dx, t, 1.0f, P * I);
  }
  if (!dy_params.empty() && !one) {
    ops::grouped_linear_bwd(hs, B, dy_params, rows.offsets, rows.host, rows.E, r, O, dh, gB);
    const Buffer dhs = scaled(cx, dh, P * r, s, "expert LoRA hidden gradient (scaled)");
    ops::grouped_linear_bwd(x, A, dhs, rows.offsets, rows.host, rows.E, I, r, View{}, gA);
  }
}

}  // namespace deltatron::model
