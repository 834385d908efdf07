// The Qwen3.5 vision tower: forward, hand-written backward and injection (see vision_tower.h).
//
// Per block (pre-norm, spec 3.5), on the f32 residual x_PD:
//   n1 = LN1(x); qkv = n1 Wqkv^T + b; q, k, v = columns [0,D), [D,2D), [2D,3D) as [P, H, K];
//   q, k = rope_vision(q, k); a = attention(q, k, v) bidirectional inside each image;
//   x += a Wproj^T + b;  n2 = LN2(x); x += gelu_tanh(n2 W1^T + b1) W2^T + b2
// Merger (spec 3.6): mn = LN(x) viewed [M, U D] (the U rows of a 2x2 group are contiguous in
// merge order, so the reshape is free); y = gelu_erf(mn Wfc1^T + b) Wfc2^T + b.
// The backward is that loop reversed; the residual gradient dx_PD accumulates the norms' input
// gradients (layernorm_bwd with accumulate_dx).
// Precision (as the text blocks): the residual stream x, its gradient, the norm statistics, the
// merger output and every parameter gradient are f32; the norm outputs, q/k/v, attention output,
// MLP activations and their gradients are in the compute dtype (bf16 on CUDA in bf16 mode, else
// f32), so every GEMM reads compute-dtype operands (pixels and the residual gradient are cast).
// The forward reads its weights through cx.w: under model.vision = frozen or merger the tensors it
// does not train are held apart in a frozen store (model/model.h); the backward runs only over
// trained tensors (cx.p).
#include "model/vision_tower.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/layernorm.h"
#include "ops/linear.h"
#include "ops/rope.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {

constexpr double kLnEps = 1e-6;  // every LayerNorm of the tower and the merger (spec 3.5, 3.6)
const std::string kV = "model.visual.";

Buffer upload_i32(core::Device dev, const std::vector<int32_t>& v, const char* what) {
  Buffer b(dev, core::DType::i32, {int64_t(v.size())}, what);
  if (!v.empty()) ops::copy_from_host(b, v.data());
  return b;
}
Buffer upload_f32(core::Device dev, const std::vector<float>& v, const char* what) {
  Buffer b(dev, core::DType::f32, {int64_t(v.size())}, what);
  if (!v.empty()) ops::copy_from_host(b, v.data());
  return b;
}

// v in the compute dtype: v itself when it already is, else a cast copy held in tmp.
View in_dt(const Ctx& cx, const View& v, int64_t n, Buffer& tmp, const char* what) {
  if (v.dtype == cx.dt()) return v;
  tmp = cx.act(n, what);
  ops::cast(v, tmp, n);
  return tmp;
}

struct Dims {
  int64_t P, M, C, D, H, K, I, U, UD, O, G;
  Dims(const Config& c, const VisionBatch& vb)
      : P(vb.P),
        M(vb.M),
        C(c.vision.patch_dim()),
        D(c.vision.hidden_size),
        H(c.vision.num_heads),
        K(c.vision.head_dim()),
        I(c.vision.intermediate_size),
        U(c.vision.merge_unit()),
        UD(c.vision.merge_unit() * c.vision.hidden_size),
        O(c.vision.out_hidden_size),
        G(c.vision.grid_side()) {}
};

// y_NO = x W^T + b (fresh) or y += x W^T + b (accumulate: a residual add).
void linear_bias_fwd(const Ctx& cx, const std::string& w, const View& x, int64_t N, int64_t I,
                     int64_t O, const View& y, bool accumulate) {
  ops::linear_fwd(x, cx.w(w + ".weight"), N, I, O, y, accumulate);
  ops::bias_add(y, cx.w(w + ".bias"), N, O);
}

// dx (= or +=) dy W, dW += dy^T x, db += sum dy; dx empty: no input gradient.
void linear_bias_bwd(const Ctx& cx, const std::string& w, const View& x, const View& dy, int64_t N,
                     int64_t I, int64_t O, const View& dx, bool accumulate) {
  if (!dx.empty()) ops::linear_bwd_dx(dy, cx.p.w(w + ".weight"), N, I, O, dx, accumulate);
  ops::linear_bwd_dw(x, dy, N, I, O, cx.p.g(w + ".weight"));
  ops::bias_bwd(dy, N, O, cx.p.g(w + ".bias"));
}

std::string block(int64_t i) { return kV + "blocks." + std::to_string(i) + "."; }

void block_fwd(const Ctx& cx, const VisionBatch& vb, const Dims& d, const std::string& b,
               const View& x, VisionBlockSaved& s, bool keep) {
  const int64_t P = d.P, D = d.D, H = d.H, K = d.K, I = d.I;
  const float scale = static_cast<float>(1.0 / std::sqrt(double(K)));
  if (keep) {
    s.x_in = cx.f32(P * D, "vision block input (saved)");
    ops::cast(x, s.x_in, P * D);
  }
  s.n1 = cx.act(P * D, "vision norm1 output");
  s.mean1 = cx.f32(P, "vision norm1 mean");
  s.rstd1 = cx.f32(P, "vision norm1 rstd");
  ops::layernorm_fwd(x, cx.w(b + "norm1.weight"), cx.w(b + "norm1.bias"), P, D, kLnEps, s.n1,
                     s.mean1, s.rstd1);
  {
    Buffer qkv = cx.act(P * 3 * D, "vision qkv");
    linear_bias_fwd(cx, b + "attn.qkv", s.n1, P, D, 3 * D, qkv, false);
    s.q = cx.act(P * D, "vision q");
    s.k = cx.act(P * D, "vision k");
    s.v = cx.act(P * D, "vision v");
    ops::copy_cols(qkv, 3 * D, 0, s.q, D, 0, P, D);
    ops::copy_cols(qkv, 3 * D, D, s.k, D, 0, P, D);
    ops::copy_cols(qkv, 3 * D, 2 * D, s.v, D, 0, P, D);
  }
  ops::rope_vision_fwd(s.q, vb.pos_rc, P, H, K, cx.c.vision.rope_theta);
  ops::rope_vision_fwd(s.k, vb.pos_rc, P, H, K, cx.c.vision.rope_theta);
  s.a = cx.act(P * D, "vision attention output");
  s.lse = cx.f32(P * H, "vision attention lse");
  ops::attention_fwd(s.q, s.k, s.v, vb.cu, vb.seg, P, H, H, K, scale, s.a, s.lse, false);
  linear_bias_fwd(cx, b + "attn.proj", s.a, P, D, D, x, true);
  if (keep) {
    s.h = cx.f32(P * D, "vision residual after attention (saved)");
    ops::cast(x, s.h, P * D);
  }
  s.n2 = cx.act(P * D, "vision norm2 output");
  s.mean2 = cx.f32(P, "vision norm2 mean");
  s.rstd2 = cx.f32(P, "vision norm2 rstd");
  ops::layernorm_fwd(x, cx.w(b + "norm2.weight"), cx.w(b + "norm2.bias"), P, D, kLnEps, s.n2,
                     s.mean2, s.rstd2);
  s.f1 = cx.act(P * I, "vision MLP fc1 output");
  s.g1 = cx.act(P * I, "vision MLP activation");
  linear_bias_fwd(cx, b + "mlp.linear_fc1", s.n2, P, D, I, s.f1, false);
  ops::gelu_fwd(s.f1, P * I, s.g1, ops::Gelu::tanh);
  linear_bias_fwd(cx, b + "mlp.linear_fc2", s.g1, P, I, D, x, true);
  if (!keep) s = VisionBlockSaved();
}

// dx (f32 [P, D]): in = gradient of the block output, out = of its input.
void block_bwd(const Ctx& cx, const VisionBatch& vb, const Dims& d, const std::string& b,
               VisionBlockSaved& s, const View& dx) {
  const int64_t P = d.P, D = d.D, H = d.H, K = d.K, I = d.I;
  const Params& p = cx.p;
  const float scale = static_cast<float>(1.0 / std::sqrt(double(K)));
  {  // MLP
    Buffer dx_tmp;
    const View dy = in_dt(cx, dx, P * D, dx_tmp, "vision residual gradient (compute dtype)");
    Buffer dg = cx.act(P * I, "vision MLP d(activation)");
    linear_bias_bwd(cx, b + "mlp.linear_fc2", s.g1, dy, P, I, D, dg, false);
    ops::gelu_bwd(s.f1, dg, P * I, dg, ops::Gelu::tanh);
    Buffer dn2 = cx.act(P * D, "vision d(norm2 output)");
    linear_bias_bwd(cx, b + "mlp.linear_fc1", s.n2, dg, P, D, I, dn2, false);
    ops::layernorm_bwd(s.h, p.w(b + "norm2.weight"), s.mean2, s.rstd2, dn2, P, D, dx, true,
                       p.g(b + "norm2.weight"), p.g(b + "norm2.bias"));
  }
  Buffer dqkv = cx.act(P * 3 * D, "vision d(qkv)");
  {  // attention
    Buffer dx_tmp;
    const View dy = in_dt(cx, dx, P * D, dx_tmp, "vision residual gradient (compute dtype)");
    Buffer da = cx.act(P * D, "vision d(attention output)");
    linear_bias_bwd(cx, b + "attn.proj", s.a, dy, P, D, D, da, false);
    Buffer dq = cx.act(P * D, "vision dq"), dk = cx.act(P * D, "vision dk"),
           dv = cx.act(P * D, "vision dv");
    ops::attention_bwd(s.q, s.k, s.v, s.a, s.lse, da, vb.cu, vb.seg, P, H, H, K, scale, dq, dk, dv,
                       false);
    ops::rope_vision_bwd(dq, vb.pos_rc, P, H, K, cx.c.vision.rope_theta);
    ops::rope_vision_bwd(dk, vb.pos_rc, P, H, K, cx.c.vision.rope_theta);
    ops::copy_cols(dq, D, 0, dqkv, 3 * D, 0, P, D);
    ops::copy_cols(dk, D, 0, dqkv, 3 * D, D, P, D);
    ops::copy_cols(dv, D, 0, dqkv, 3 * D, 2 * D, P, D);
  }
  Buffer dn1 = cx.act(P * D, "vision d(norm1 output)");
  linear_bias_bwd(cx, b + "attn.qkv", s.n1, dqkv, P, D, 3 * D, dn1, false);
  ops::layernorm_bwd(s.x_in, p.w(b + "norm1.weight"), s.mean1, s.rstd1, dn1, P, D, dx, true,
                     p.g(b + "norm1.weight"), p.g(b + "norm1.bias"));
  s = VisionBlockSaved();
}

}  // namespace

VisionBatch make_vision_batch(const Config& c, const data::Pack& pack, core::Device dev) {
  VisionBatch vb;
  if (pack.image_grid_thw.empty() && pack.pixel_values.empty()) return vb;
  DT_CHECK(c.vision_mode != VisionMode::off, "the pack has ", pack.image_grid_thw.size() / 3,
           " images but the vision tower is off (a multimodal checkpoint loaded with the vision "
           "tower: model.vision = frozen, merger or full)");
  const VisionConfig& v = c.vision;
  const int64_t m = v.spatial_merge_size, U = v.merge_unit(), G = v.grid_side();
  DT_CHECK(pack.image_grid_thw.size() % 3 == 0, "image_grid_thw has ", pack.image_grid_thw.size(),
           " values, not 3 per image");
  const int64_t nimg = int64_t(pack.image_grid_thw.size() / 3);
  std::vector<int32_t> rc_r, rc_c, idx;
  std::vector<float> w;
  vb.cu_host.push_back(0);
  for (int64_t i = 0; i < nimg; ++i) {
    const int64_t t = pack.image_grid_thw[3 * i], h = pack.image_grid_thw[3 * i + 1],
                  wd = pack.image_grid_thw[3 * i + 2];
    DT_CHECK(t >= 1 && h >= 1 && wd >= 1 && h % m == 0 && wd % m == 0, "image ", i,
             " of the pack: grid (t, h, w) = (", t, ", ", h, ", ", wd,
             ") must be positive with h and w divisible by spatial_merge_size ", m);
    const int64_t bw = wd / m;
    for (int64_t ft = 0; ft < t; ++ft) {
      for (int64_t n = 0; n < h * wd; ++n) {
        const int64_t mw = n % m, mh = (n / m) % m, bc = (n / U) % bw, br = n / (U * bw);
        const int64_t r = br * m + mh, col = bc * m + mw;
        rc_r.push_back(int32_t(r));
        rc_c.push_back(int32_t(col));
        // Bilinear taps, align_corners = True (spec 3.3), in double.
        const double sr = double(r) * double(G - 1) / double(std::max<int64_t>(h - 1, 1));
        const double sc = double(col) * double(G - 1) / double(std::max<int64_t>(wd - 1, 1));
        const int64_t r0 = int64_t(std::floor(sr)), c0 = int64_t(std::floor(sc));
        const int64_t r1 = std::min(r0 + 1, G - 1), c1 = std::min(c0 + 1, G - 1);
        const double dr = sr - double(r0), dc = sc - double(c0);
        for (int32_t k : {int32_t(r0 * G + c0), int32_t(r0 * G + c1), int32_t(r1 * G + c0),
                          int32_t(r1 * G + c1)})
          idx.push_back(k);
        for (double x : {(1 - dr) * (1 - dc), (1 - dr) * dc, dr * (1 - dc), dr * dc})
          w.push_back(float(x));
      }
      vb.cu_host.push_back(int32_t(vb.cu_host.back() + h * wd));
    }
  }
  vb.P = vb.cu_host.back();
  vb.M = vb.P / U;
  DT_CHECK(int64_t(pack.pixel_values.size()) == vb.P * v.patch_dim(), "pixel_values has ",
           pack.pixel_values.size(), " values; the pack's ", nimg, " images have ", vb.P,
           " patches of ", v.patch_dim(), " (", v.in_channels, " x ", v.temporal_patch_size, " x ",
           v.patch_size, " x ", v.patch_size, ")");
  std::vector<int32_t> tok;
  for (int64_t n = 0; n < pack.N; ++n)
    if (pack.input_ids[n] == c.image_token_id && !pack.is_pad[n]) tok.push_back(int32_t(n));
  DT_CHECK(int64_t(tok.size()) == vb.M, "the pack has ", tok.size(), " image-pad tokens (id ",
           c.image_token_id, ") but its ", nimg, " images give ", vb.M, " merged tokens (t h w / ",
           U, " each)");
  std::vector<int32_t> rc = rc_r;
  rc.insert(rc.end(), rc_c.begin(), rc_c.end());
  vb.seg = core::Segments{vb.cu_host.data(), int(vb.cu_host.size()) - 1};
  vb.cu = upload_i32(dev, vb.cu_host, "vision cu_seqlens");
  vb.pixels = upload_f32(dev, pack.pixel_values, "pixel_values");
  vb.pos_rc = upload_i32(dev, rc, "vision rotary positions");
  vb.pos_idx = upload_i32(dev, idx, "vision position-embedding taps");
  vb.pos_w = upload_f32(dev, w, "vision position-embedding weights");
  vb.token_idx = upload_i32(dev, tok, "image-pad positions");
  vb.token_host = std::move(tok);
  return vb;
}

Buffer vision_fwd(const Ctx& cx, const VisionBatch& vb, bool with_grads, VisionSaved& s) {
  const Dims d(cx.c, vb);
  const Params& p = cx.p;
  const VisionMode mode = cx.c.vision_mode;
  const bool train = with_grads && !p.frozen();
  s.tower = train && mode == VisionMode::full;
  s.merger = train && (mode == VisionMode::full || mode == VisionMode::merger);

  Buffer x = cx.f32(d.P * d.D, "vision residual stream");
  {
    Buffer pix_tmp;
    const View pix = in_dt(cx, vb.pixels, d.P * d.C, pix_tmp, "pixel_values (compute dtype)");
    ops::linear_fwd(pix, cx.w(kV + "patch_embed.proj.weight"), d.P, d.C, d.D, x, false);
  }
  ops::bias_add(x, cx.w(kV + "patch_embed.proj.bias"), d.P, d.D);
  ops::embedding_bag_fwd(vb.pos_idx, vb.pos_w, cx.w(kV + "pos_embed.weight"), d.P, 4, d.G * d.G,
                         d.D, x, true);
  const int64_t depth = cx.c.vision.depth;
  s.blocks.clear();
  s.blocks.resize(size_t(s.tower ? depth : 0));
  for (int64_t i = 0; i < depth; ++i) {
    VisionBlockSaved tmp;
    block_fwd(cx, vb, d, block(i), x, s.tower ? s.blocks[size_t(i)] : tmp, s.tower);
  }
  const std::string mg = kV + "merger.";
  Buffer mn = cx.act(d.P * d.D, "merger norm output");
  Buffer mean = cx.f32(d.P, "merger norm mean"), rstd = cx.f32(d.P, "merger norm rstd");
  ops::layernorm_fwd(x, cx.w(mg + "norm.weight"), cx.w(mg + "norm.bias"), d.P, d.D, kLnEps, mn,
                     mean, rstd);
  Buffer m1 = cx.act(d.M * d.UD, "merger fc1 output");
  linear_bias_fwd(cx, mg + "linear_fc1", mn, d.M, d.UD, d.UD, m1, false);
  Buffer g = cx.act(d.M * d.UD, "merger activation");
  ops::gelu_fwd(m1, d.M * d.UD, g, ops::Gelu::erf);
  Buffer y = cx.f32(d.M * d.O, "merger output");
  linear_bias_fwd(cx, mg + "linear_fc2", g, d.M, d.UD, d.O, y, false);
  if (s.merger) {
    s.x_last = std::move(x);
    s.mn = std::move(mn);
    s.mean_m = std::move(mean);
    s.rstd_m = std::move(rstd);
    s.m1 = std::move(m1);
    s.mg = std::move(g);
  }
  return y;
}

void vision_bwd(const Ctx& cx, const VisionBatch& vb, VisionSaved& s, const View& dy) {
  if (!s.merger) return;  // frozen: nothing to train
  const Dims d(cx.c, vb);
  const Params& p = cx.p;
  const std::string mg = kV + "merger.";
  Buffer dg = cx.act(d.M * d.UD, "merger d(activation)");
  {
    Buffer dy_tmp;
    const View dyc = in_dt(cx, dy, d.M * d.O, dy_tmp, "merged-token gradient (compute dtype)");
    linear_bias_bwd(cx, mg + "linear_fc2", s.mg, dyc, d.M, d.UD, d.O, dg, false);
  }
  ops::gelu_bwd(s.m1, dg, d.M * d.UD, dg, ops::Gelu::erf);
  Buffer dmn = cx.act(d.P * d.D, "merger d(norm output)");
  linear_bias_bwd(cx, mg + "linear_fc1", s.mn, dg, d.M, d.UD, d.UD, dmn, false);
  dg = Buffer();
  Buffer dx = s.tower ? cx.f32(d.P * d.D, "vision residual gradient") : Buffer();
  ops::layernorm_bwd(s.x_last, p.w(mg + "norm.weight"), s.mean_m, s.rstd_m, dmn, d.P, d.D, dx,
                     false, p.g(mg + "norm.weight"), p.g(mg + "norm.bias"));
  s.x_last = Buffer();
  s.mn = Buffer();
  s.m1 = Buffer();
  s.mg = Buffer();
  if (!s.tower) return;
  for (int64_t i = cx.c.vision.depth - 1; i >= 0; --i)
    block_bwd(cx, vb, d, block(i), s.blocks[size_t(i)], dx);
  ops::embedding_bag_bwd(vb.pos_idx, vb.pos_w, dx, d.P, 4, d.G * d.G, d.D,
                         p.g(kV + "pos_embed.weight"));
  {
    Buffer pix_tmp, dx_tmp;
    const View pix = in_dt(cx, vb.pixels, d.P * d.C, pix_tmp, "pixel_values (compute dtype)");
    const View dxc = in_dt(cx, dx, d.P * d.D, dx_tmp, "vision residual gradient (compute dtype)");
    ops::linear_bwd_dw(pix, dxc, d.P, d.C, d.D, p.g(kV + "patch_embed.proj.weight"));
  }
  ops::bias_bwd(dx, d.P, d.D, p.g(kV + "patch_embed.proj.bias"));
}

namespace {

// Sequence parallel: the merged rows [m0, m1) whose image-pad tokens lie in this rank's rows
// [r Nl, (r+1) Nl) (token_host ascends), and those tokens' positions among the rank's rows.
struct LocalTokens {
  int64_t m0 = 0, m1 = 0;
  Buffer idx;  // [m1 - m0] i32
};
LocalTokens local_tokens(const Ctx& cx, const VisionBatch& vb) {
  const int64_t Nl = cx.Nl(), lo = cx.tp->rank() * Nl;
  const std::vector<int32_t>& t = vb.token_host;
  LocalTokens l;
  l.m0 = std::lower_bound(t.begin(), t.end(), lo) - t.begin();
  l.m1 = std::lower_bound(t.begin(), t.end(), lo + Nl) - t.begin();
  std::vector<int32_t> idx(t.begin() + l.m0, t.begin() + l.m1);
  for (int32_t& i : idx) i -= int32_t(lo);
  if (!idx.empty()) l.idx = upload_i32(cx.dev(), idx, "image-pad positions (this rank's rows)");
  return l;
}

}  // namespace

void vision_inject(const Ctx& cx, const VisionBatch& vb, const View& y, const View& x) {
  const int64_t O = cx.c.hidden_size;
  if (!cx.sp()) return ops::scatter_rows(y, vb.token_idx, cx.N(), vb.M, O, x);
  const LocalTokens l = local_tokens(cx, vb);
  if (l.m1 > l.m0)
    ops::scatter_rows(y.slice(l.m0 * O, (l.m1 - l.m0) * O), l.idx, cx.Nl(), l.m1 - l.m0, O, x);
}

Buffer vision_gather_grad(const Ctx& cx, const VisionBatch& vb, const View& dx) {
  const int64_t O = cx.c.hidden_size;
  Buffer dy = cx.f32(vb.M * O, "merged-token gradient");
  if (!cx.sp()) {
    ops::gather_rows(dx, vb.token_idx, cx.N(), vb.M, O, dy);
    return dy;
  }
  const LocalTokens l = local_tokens(cx, vb);
  ops::zero(dy);
  if (l.m1 > l.m0)
    ops::gather_rows(dx, l.idx, cx.Nl(), l.m1 - l.m0, O,
                     dy.view().slice(l.m0 * O, (l.m1 - l.m0) * O));
  cx.tp->comm->all_reduce(dy.view(), dist::ReduceOp::sum);
  return dy;
}

}  // namespace deltatron::model
