// Expert-parallel routed experts (see moe_ep.h, expert_parallel.h): counts, rows and slot
// weights to the owners; the owner's regrouping and grouped GEMMs; results back.
#include "model/moe_ep.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "model/expert_lora.h"
#include "ops/activation.h"
#include "ops/moe.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {

// The block's sizes, this rank's experts El and the group's ranks Q.
struct Dims : MoeDims {
  int64_t El, Q;
  explicit Dims(const Ctx& cx) : MoeDims(cx), El(cx.ep->num_local), Q(cx.ep->comm->size()) {}
};

// A buffer of max(n, 1) elements (the exchange's views may be empty).
Buffer buf(const Ctx& cx, core::DType dt, int64_t n, const char* what) {
  return Buffer(cx.dev(), dt, {std::max<int64_t>(n, 1)}, what);
}

Buffer upload_i32(const Ctx& cx, const std::vector<int32_t>& v, const char* what) {
  Buffer b = buf(cx, core::DType::i32, int64_t(v.size()), what);
  if (!v.empty())
    ops::copy_from_host(core::View(b.data(), core::DType::i32, cx.dev(), {int64_t(v.size())}),
                        v.data());
  return b;
}

std::vector<int64_t> times(const std::vector<int64_t>& rows, int64_t width) {
  std::vector<int64_t> out(rows);
  for (auto& r : out) r *= width;
  return out;
}

// Rows [rows of each rank] of width `width` from `in` to the owners / back (all_to_all_v).
void exchange(const Ctx& cx, const View& in, const std::vector<int64_t>& send_rows, const View& out,
              const std::vector<int64_t>& recv_rows, int64_t width) {
  cx.ep->comm->all_to_all_v(in, times(send_rows, width), out, times(recv_rows, width));
}

// Row gather out[r] = x[rows[r]] (ops::moe_gather with K = 1), R rows of width W.
void gather_rows(const View& x, const View& rows, int64_t R, int64_t W, const View& out) {
  if (R > 0) ops::moe_gather(x, rows, View{}, R, 1, W, out);
}

}  // namespace

void moe_routed_fwd_ep(const Ctx& cx, const std::string& pf, const View& x, const View& resid,
                       MoeSaved& s) {
  const Dims d(cx);
  DT_CHECK(!s.offsets_host.empty(), "expert parallelism needs the host expert offsets");
  MoeSaved::Ep& ep = s.ep;
  const std::vector<int64_t>& off = s.offsets_host;

  // 1. Per-expert row counts to the owners: rank q gets the counts of experts [q El, (q+1) El).
  std::vector<int64_t> counts(d.E), recv_counts(d.Q * d.El);
  for (int64_t e = 0; e < d.E; ++e) counts[e] = off[e + 1] - off[e];
  {
    Buffer c = buf(cx, core::DType::i64, d.E, "expert row counts");
    Buffer rc = buf(cx, core::DType::i64, d.Q * d.El, "received expert row counts");
    ops::copy_from_host(core::View(c.data(), core::DType::i64, cx.dev(), {d.E}), counts.data());
    cx.ep->comm->all_to_all_v(c, std::vector<int64_t>(d.Q, d.El), rc,
                              std::vector<int64_t>(d.Q, d.El));
    ops::copy_to_host(core::View(rc.data(), core::DType::i64, cx.dev(), {d.Q * d.El}),
                      recv_counts.data());
  }
  ep.send_rows.assign(d.Q, 0);
  ep.recv_rows.assign(d.Q, 0);
  for (int64_t q = 0; q < d.Q; ++q) {
    ep.send_rows[q] = off[(q + 1) * d.El] - off[q * d.El];
    for (int64_t e = 0; e < d.El; ++e) ep.recv_rows[q] += recv_counts[q * d.El + e];
  }
  int64_t R = 0;
  for (int64_t r : ep.recv_rows) R += r;
  ep.R = R;

  // 2. Rows and slot weights to the owners.
  Buffer xr = buf(cx, cx.dt(), R * d.D, "expert rows received");
  Buffer wr = buf(cx, core::DType::f32, R, "slot weights received");
  {
    Buffer xg = buf(cx, cx.dt(), d.P * d.D, "gathered expert inputs");
    Buffer wg = buf(cx, core::DType::f32, d.P, "gathered slot weights");
    if (d.P > 0) {
      ops::moe_gather(x, s.rows_P, View{}, d.P, d.K, d.D, xg);
      ops::moe_gather(s.topk_w, s.rows_P, View{}, d.P, 1, 1, wg);
    }
    exchange(cx, xg, ep.send_rows, xr, ep.recv_rows, d.D);
    exchange(cx, wg, ep.send_rows, wr, ep.recv_rows, 1);
  }

  // 3. Regroup [source][local expert] -> [local expert][source]; the owner's experts.
  ep.loff_host.assign(d.El + 1, 0);
  std::vector<int32_t> perm(R), inv(R), iota(R);
  {
    std::vector<int64_t> src_start(d.Q, 0);  // first received row of each source
    for (int64_t q = 1; q < d.Q; ++q) src_start[q] = src_start[q - 1] + ep.recv_rows[q - 1];
    int64_t j = 0;
    for (int64_t e = 0; e < d.El; ++e) {
      for (int64_t q = 0; q < d.Q; ++q) {
        int64_t first = src_start[q];
        for (int64_t e2 = 0; e2 < e; ++e2) first += recv_counts[q * d.El + e2];
        for (int64_t r = 0; r < recv_counts[q * d.El + e]; ++r) perm[j++] = int32_t(first + r);
      }
      ep.loff_host[e + 1] = j;
    }
    for (int64_t r = 0; r < R; ++r) inv[perm[r]] = int32_t(r), iota[r] = int32_t(r);
  }
  ep.perm = upload_i32(cx, perm, "expert-parallel regrouping");
  ep.inv = upload_i32(cx, inv, "expert-parallel regrouping (inverse)");
  ep.iota = upload_i32(cx, iota, "row indices");
  ep.loff = Buffer(cx.dev(), core::DType::i64, {d.El + 1}, "local expert row offsets");
  ops::copy_from_host(ep.loff, ep.loff_host.data());
  ep.xe = buf(cx, cx.dt(), R * d.D, "expert rows, expert-major");
  ep.we = buf(cx, core::DType::f32, R, "slot weights, expert-major");
  gather_rows(xr, ep.perm, R, d.D, ep.xe);
  gather_rows(wr, ep.perm, R, 1, ep.we);

  const Params& p = cx.p;
  const int64_t* loff = ep.loff_host.data();
  // The owner's rows of its experts (the adapters of its experts, lora.experts: this rank's slice
  // of A [El, r, in] and B [El, out, r], model/expert_lora.h).
  const ExpertRows rows{ep.loff, loff, d.El, R};
  s.gate = buf(cx, cx.dt(), R * d.F, "expert gate");
  s.up = buf(cx, cx.dt(), R * d.F, "expert up");
  Buffer h = buf(cx, cx.dt(), R * d.F, "expert hidden");
  Buffer oe = buf(cx, cx.dt(), R * d.D, "expert outputs, expert-major");
  if (R > 0) {
    Buffer gu = cx.act(R * 2 * d.F, "expert gate/up");
    ops::grouped_linear_fwd(ep.xe, p.w(pf + "experts.gate_up_proj"), ep.loff, loff, d.El, d.D,
                            2 * d.F, gu);
    expert_lora_fwd(cx, pf + "experts.gate_up_proj", rows, ep.xe, d.D, 2 * d.F, gu);
    ops::copy_cols(gu, 2 * d.F, 0, s.gate, d.F, 0, R, d.F);
    ops::copy_cols(gu, 2 * d.F, d.F, s.up, d.F, 0, R, d.F);
    ops::swiglu_fwd(s.gate, s.up, R * d.F, h);
    ops::grouped_linear_fwd(h, p.w(pf + "experts.down_proj"), ep.loff, loff, d.El, d.F, d.D, oe);
    expert_lora_fwd(cx, pf + "experts.down_proj", rows, h, d.F, d.D, oe);
  }

  // 4. Outputs back in the received order, to the tokens' ranks; combined as on one rank.
  Buffer orr = buf(cx, cx.dt(), R * d.D, "expert outputs, received order");
  gather_rows(oe, ep.inv, R, d.D, orr);
  Buffer out = buf(cx, cx.dt(), d.P * d.D, "expert outputs");
  exchange(cx, orr, ep.recv_rows, out, ep.send_rows, d.D);
  if (d.P > 0) ops::moe_scatter_add(out, s.pos, s.topk_w, d.N, d.K, d.D, resid, true);
}

void moe_routed_bwd_ep(const Ctx& cx, const std::string& pf, const MoeSaved& s, const View& dy,
                       const View& dx32, const View& dw) {
  const Dims d(cx);
  const MoeSaved::Ep& ep = s.ep;
  const int64_t R = ep.R;
  const Params& p = cx.p;
  const int64_t* loff = ep.loff_host.data();
  const ExpertRows rows{ep.loff, loff, d.El, R};

  // Output gradients (unweighted) to the owners, expert-major there.
  Buffer dye = buf(cx, cx.dt(), R * d.D, "output gradients, expert-major");
  {
    Buffer dyg = buf(cx, cx.dt(), d.P * d.D, "gathered output gradients");
    if (d.P > 0) ops::moe_gather(dy, s.rows_P, View{}, d.P, d.K, d.D, dyg);
    Buffer dyr = buf(cx, cx.dt(), R * d.D, "output gradients received");
    exchange(cx, dyg, ep.send_rows, dyr, ep.recv_rows, d.D);
    gather_rows(dyr, ep.perm, R, d.D, dye);
  }
  Buffer dwe = buf(cx, core::DType::f32, R, "slot weight gradients, expert-major");
  Buffer dxe = buf(cx, cx.dt(), R * d.D, "input row gradients, expert-major");
  if (R > 0) {
    Buffer h = cx.act(R * d.F, "expert hidden");
    ops::swiglu_fwd(s.gate, s.up, R * d.F, h);
    Buffer g = cx.act(R * d.F, "expert hidden gradient (unweighted)");
    ops::grouped_linear_bwd(h, p.w(pf + "experts.down_proj"), dye, ep.loff, loff, d.El, d.F, d.D, g,
                            View{});
    // The adapter's share of the unweighted hidden gradient (before the slot weights' split).
    expert_lora_bwd(cx, pf + "experts.down_proj", rows, h, d.F, d.D, dye, g, View{});
    const bool adapted = expert_lora_rank(cx, pf + "experts.down_proj") > 0;
    if (!p.frozen() || adapted) {
      Buffer dyw = cx.act(R * d.D, "output gradients, slot-weighted");
      ops::moe_gather(dye, ep.iota, ep.we, R, 1, d.D, dyw);
      if (!p.frozen())
        ops::grouped_linear_bwd(h, p.w(pf + "experts.down_proj"), dyw, ep.loff, loff, d.El, d.F,
                                d.D, View{}, p.g(pf + "experts.down_proj"));
      expert_lora_bwd(cx, pf + "experts.down_proj", rows, h, d.F, d.D, View{}, View{}, dyw);
    }
    ops::moe_expert_weight_bwd(h, g, ep.iota, ep.we, R, 1, d.F, dwe, g);
    Buffer dgu = cx.act(R * 2 * d.F, "expert gate/up gradient");
    {
      Buffer dgate = cx.act(R * d.F, "expert gate gradient");
      Buffer dup = cx.act(R * d.F, "expert up gradient");
      ops::swiglu_bwd(s.gate, s.up, g, R * d.F, dgate, dup);
      ops::copy_cols(dgate, d.F, 0, dgu, 2 * d.F, 0, R, d.F);
      ops::copy_cols(dup, d.F, 0, dgu, 2 * d.F, d.F, R, d.F);
    }
    ops::grouped_linear_bwd(ep.xe, p.w(pf + "experts.gate_up_proj"), dgu, ep.loff, loff, d.El, d.D,
                            2 * d.F, dxe, p.g(pf + "experts.gate_up_proj"));
    expert_lora_bwd(cx, pf + "experts.gate_up_proj", rows, ep.xe, d.D, 2 * d.F, dgu, dxe, dgu);
  }

  // Slot-weight and input-row gradients back to the tokens' ranks.
  Buffer dwr = buf(cx, core::DType::f32, R, "slot weight gradients, received order");
  gather_rows(dwe, ep.inv, R, 1, dwr);
  Buffer dwg = buf(cx, core::DType::f32, d.P, "slot weight gradients");
  exchange(cx, dwr, ep.recv_rows, dwg, ep.send_rows, 1);
  Buffer dxr = buf(cx, cx.dt(), R * d.D, "input row gradients, received order");
  gather_rows(dxe, ep.inv, R, d.D, dxr);
  Buffer dxg = buf(cx, cx.dt(), d.P * d.D, "gathered input gradients");
  exchange(cx, dxr, ep.recv_rows, dxg, ep.send_rows, d.D);
  if (d.P > 0) {
    ops::moe_scatter_add(dwg, s.pos, View{}, d.P, 1, 1, dw, false);
    ops::moe_scatter_add(dxg, s.pos, View{}, d.N, d.K, d.D, dx32, false);
  } else {
    ops::zero(dx32);
  }
}

bool is_routed_expert_tensor(const std::string& name) {
  const auto ends = [&](const std::string& s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  for (const char* t : {".mlp.experts.gate_up_proj", ".mlp.experts.down_proj"})
    for (const char* a : {"", ".lora_A.weight", ".lora_B.weight"})
      if (ends(std::string(t) + a)) return true;
  return false;
}

}  // namespace deltatron::model
