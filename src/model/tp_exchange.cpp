// Tensor- and sequence-parallel collectives of the model (tp_exchange.h).
#include "model/tp_exchange.h"

#include <algorithm>

#include "core/constants.h"
#include "model/proj.h"
#include "ops/embedding.h"
#include "ops/tensor.h"

namespace deltatron::model {

View tp_gather_tokens(const Ctx& cx, const View& x_local, int64_t D, Buffer& storage,
                      const char* what) {
  if (!cx.sp()) return x_local;
  const int64_t nl = cx.Nl() * D;
  if (storage.numel() == 0) storage = Buffer(cx.dev(), x_local.dtype, {cx.N() * D}, what);
  cx.tp->comm->all_gather(x_local.slice(0, nl), storage.view());
  return storage.view();
}

void tp_reduce_tokens(const Ctx& cx, const View& dx_full, const View& dx_local, int64_t D) {
  if (!cx.tp) return;
  if (!cx.sp()) {
    cx.tp->comm->all_reduce(dx_full.slice(0, cx.N() * D), dist::ReduceOp::sum);
    return;
  }
  cx.tp->comm->reduce_scatter(dx_full.slice(0, cx.N() * D), dx_local.slice(0, cx.Nl() * D));
}

void tp_sum_into(const Ctx& cx, const View& y, int64_t O, const View& resid) {
  const int64_t N = cx.N(), Nl = cx.Nl();
  if (!cx.sp()) {
    cx.tp->comm->all_reduce(y.slice(0, N * O), dist::ReduceOp::sum);
    ops::add_inplace(resid, y, N * O);
    return;
  }
  const Buffer yl = cx.f32(Nl * O, "row-parallel output (this rank's tokens)");
  cx.tp->comm->reduce_scatter(y.slice(0, N * O), yl);
  ops::add_inplace(resid, yl, Nl * O);
}

void tp_proj_fwd_sum(const Ctx& cx, const std::string& weight, const View& x, int64_t I, int64_t O,
                     const View& resid) {
  if (!cx.tp) return proj_fwd(cx, weight, x, I, O, resid, true);
  const Buffer y = cx.f32(cx.N() * O, "row-parallel partial output");
  proj_fwd(cx, weight, x, I, O, y, false);
  tp_sum_into(cx, y, O, resid);
}

View tp_local_rows(const Ctx& cx, const View& full, int64_t D) {
  if (!cx.sp()) return full;
  return full.slice(cx.tp->rank() * cx.Nl() * D, cx.Nl() * D);
}

void tp_embed(const Ctx& cx, const View& ids, const View& out) {
  const int64_t Nl = cx.Nl(), D = cx.c.hidden_size;
  const View mine = cx.sp() ? ids.slice(cx.tp->rank() * Nl, Nl) : ids;
  ops::embedding_fwd(mine, cx.p.w(cx.c.name("embed_tokens.weight")), Nl, cx.c.vocab_size, D, out);
}

void tp_embed_bwd(const Ctx& cx, const View& grad_ids, const View& dx) {
  const int64_t D = cx.c.hidden_size;
  Buffer full;
  const View g = tp_gather_tokens(cx, dx, D, full, "embedding gradient (all ranks' tokens)");
  ops::embedding_bwd(grad_ids, g, cx.N(), D, cx.c.vocab_size,
                     cx.p.g(cx.c.name("embed_tokens.weight")));
}

data::Pack tp_pad_pack(const data::Pack& pack, int64_t P) {
  data::Pack p = pack;
  const int64_t N = pack.N, Np = (N + P - 1) / P * P, extra = Np - N;
  if (extra == 0) return p;
  p.N = Np;
  p.input_ids.resize(Np, 0);
  p.labels.resize(Np, core::kIgnoreIndex);
  p.targets.resize(Np, core::kIgnoreIndex);
  p.is_pad.resize(Np, 1);
  p.position_ids.assign(3 * Np, 0);
  for (int64_t r = 0; r < 3; ++r) {
    int32_t next = 0;
    for (int64_t t = 0; t < N; ++t) {
      const int32_t v = pack.position_ids[r * N + t];
      p.position_ids[r * Np + t] = v;
      next = std::max(next, v + 1);
    }
    for (int64_t t = N; t < Np; ++t) p.position_ids[r * Np + t] = next++;
  }
  if (!p.mtp_input_ids.empty()) {  // the last slot of the old span now rolls in a padding slot
    p.mtp_input_ids.resize(Np, 0);
    p.mtp_targets.resize(Np, core::kIgnoreIndex);
  }
  p.cu_seqlens_padded.back() = int32_t(Np);
  return p;
}

}  // namespace deltatron::model
