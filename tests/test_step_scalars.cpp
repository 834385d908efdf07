// A training step's scalars on the device (core/step_scalars.h, ops/step_scalars.h), on the
// device the test runs on (tests/test_device.h; tests/gpu/test_step_scalars_cuda.cpp compiles
// this file for CUDA): the per-pack loss sums, the norm, the clip factor and the skip are bitwise
// what the trainer computed on the host; AdamW reading its clip from device memory is bitwise the
// update with a host factor, and a gated skip writes nothing; the engine's device-side step is
// bitwise clip + step; and a trainer step reads the device exactly once.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/buffer.h"
#include "core/constants.h"
#include "core/step_scalars.h"
#include "model/model.h"
#include "model_fixture.h"
#include "ops/adamw.h"
#include "ops/device.h"
#include "ops/moe.h"
#include "ops/step_scalars.h"
#include "ops/tensor.h"
#include "short_run.h"
#include "test_device.h"
#include "test_util.h"
#include "train/engine.h"
#include "train/optimizer.h"
#include "train/trainer.h"

using namespace deltatron;

namespace {

// The test's device, made ready once (on CUDA: the GPU checked, its pool allocator installed).
core::Device dev() {
  static const core::Device d = [] {
    ops::check_device(dt_test::test_device());
    return dt_test::test_device();
  }();
  return d;
}

// A buffer on the test's device holding `host`.
template <typename T>
core::Buffer upload(const std::vector<T>& host, core::DType dt, const char* what) {
  core::Buffer b(dev(), dt, {int64_t(host.size())}, what);
  if (!host.empty()) ops::copy_from_host(b, host.data());
  return b;
}

template <typename T>
std::vector<T> download(const core::View& v) {
  std::vector<T> out(size_t(v.numel()));
  if (!out.empty()) ops::copy_to_host(v, out.data());
  return out;
}

// Bitwise equality of two doubles (NaN payloads included), both printed on failure.
void expect_same(double got, double want, const std::string& what) {
  EXPECT_EQ(std::memcmp(&got, &want, sizeof(double)), 0)
      << what << ": got " << got << " (" << std::hexfloat << got << "), want " << want << " ("
      << want << ")" << std::defaultfloat;
}

// One pack of per-token losses: samples of the given lengths (a sample's last slot and the
// padding are ignore targets), padded to N.
struct LossPack {
  std::vector<float> loss;
  std::vector<int32_t> targets, cu;
};

LossPack loss_pack(const std::vector<int>& lengths, int pad, uint64_t seed) {
  LossPack p;
  p.cu.push_back(0);
  for (int len : lengths) p.cu.push_back(p.cu.back() + len);
  const int N = p.cu.back() + pad;
  p.cu.back() = N;  // the last sample's padded bound covers the padding (cu_seqlens_padded)
  // Magnitudes spread over many binades, so any other summation order changes the bits.
  std::vector<float> mag = dt_test::uniform<float>(size_t(N), seed, -40.0, 10.0);
  std::vector<float> u = dt_test::uniform<float>(size_t(N), seed + 1, 0.0, 1.0);
  for (int t = 0; t < N; ++t) {
    p.loss.push_back(std::exp2(mag[size_t(t)]) * (1.0f + u[size_t(t)]));
    p.targets.push_back(u[size_t(t)] < 0.2f ? core::kIgnoreIndex : 7);
  }
  for (size_t s = 1; s < p.cu.size(); ++s)
    if (p.cu[s] > p.cu[s - 1]) p.targets[size_t(p.cu[s] - 1)] = core::kIgnoreIndex;
  for (int t = N - pad; t < N; ++t) p.targets[size_t(t)] = core::kIgnoreIndex;
  return p;
}

// What the trainer computed on the host: model::sum_per_sample's sums, added in order.
double host_sum(const std::vector<LossPack>& packs) {
  double ce = 0;
  for (const LossPack& p : packs)
    for (size_t s = 0; s + 1 < p.cu.size(); ++s) {
      double acc = 0;
      for (int32_t t = p.cu[s]; t < p.cu[s + 1]; ++t)
        if (p.targets[size_t(t)] != core::kIgnoreIndex) acc += double(p.loss[size_t(t)]);
      ce += acc;
    }
  return ce;
}

TEST(StepScalars, LossSumIsTheTrainersHostSum) {
  // Empty samples, one token, lengths across CUDA's 2048-token tiles, trailing padding.
  const std::vector<std::vector<int>> shapes = {{5, 0, 17, 1},        {2048}, {2047, 2, 0, 0},
                                                {1000, 3000, 1, 113}, {0},    {4224, 203}};
  std::vector<LossPack> packs;
  core::Buffer sum = upload(std::vector<double>{0.0}, core::DType::f64, "step sum");
  for (size_t k = 0; k < shapes.size(); ++k) {
    packs.push_back(loss_pack(shapes[k], int(k % 3) * 5, 100 + k));
    const LossPack& p = packs.back();
    const int64_t N = int64_t(p.loss.size()), S = int64_t(p.cu.size()) - 1;
    core::Buffer loss = upload(p.loss, core::DType::f32, "loss");
    core::Buffer targets = upload(p.targets, core::DType::i32, "targets");
    core::Buffer cu = upload(p.cu, core::DType::i32, "cu");
    ops::step_loss_sum_add(loss, targets, cu, S, N, sum);
    expect_same(download<double>(sum)[0], host_sum(packs), "after pack " + std::to_string(k));
  }
  // The order matters at these magnitudes: a plain token-order sum differs.
  double flat = 0;
  for (const LossPack& p : packs)
    for (size_t t = 0; t < p.loss.size(); ++t)
      if (p.targets[t] != core::kIgnoreIndex) flat += double(p.loss[t]);
  EXPECT_NE(flat, host_sum(packs)) << "the test data does not tell summation orders apart";
}

TEST(StepScalars, GateIsClipScaleAndTheSkipRule) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  struct Case {
    double squares, ce, router, max_norm, labels;
  };
  const std::vector<Case> cases = {
      {4.0, 10.0, 0.0, 1.0, 7},         {0.25, 3.0, 0.5, 1.0, 1},     {1e-14, 1.0, 0.0, 1.0, 3},
      {2.7182818, 5.0, 0.1, 0.0, 4},    {9.0, 1.0, 0.0, -1.0, 2},     {1.0, 1.0, 0.0, 1.0, 2},
      {nan, 1.0, 0.0, 1.0, 2},          {inf, 1.0, 0.0, 1.0, 2},      {4.0, nan, 0.0, 1.0, 2},
      {4.0, inf, 0.0, 1.0, 2},          {4.0, 1.0, nan, 1.0, 2},      {4.0, 1.0, -inf, 1.0, 2},
      {1e300, 1e308, 0.0, 0.3, 0.5e-3}, {123.456, 7.0, 2.0, 0.37, 11}};
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& cs = cases[k];
    core::StepScalars h;
    h.ce_sum = cs.ce, h.router_sum = cs.router, h.grad_squares = cs.squares;
    h.grad_scale = -5, h.skip = -5, h.grad_norm = -5;  // overwritten
    const double labels = std::max(1.0, cs.labels);
    core::Buffer b(dev(), core::DType::f64, {core::kStepScalars}, "step scalars");
    ops::copy_from_host(b, &h);
    ops::step_gate(b, cs.max_norm, labels);
    core::StepScalars got;
    ops::copy_to_host(b, &got);
    // The trainer's former host code (train_step, Engine::clip).
    const double norm = std::sqrt(cs.squares);
    const float scale = train::clip_scale(norm, cs.max_norm);
    const double loss = cs.ce / labels;
    const bool skip = !(std::isfinite(loss) && std::isfinite(norm) && std::isfinite(cs.router));
    const std::string what = "case " + std::to_string(k);
    expect_same(got.grad_norm, norm, what + " norm");
    expect_same(got.grad_scale, double(scale), what + " scale");
    EXPECT_EQ(got.skip, skip ? 1.0 : 0.0) << what;
    expect_same(got.ce_sum, cs.ce, what + " ce kept");
  }
}

TEST(StepScalars, SumSquaresToIsSumSquares) {
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(70001), int64_t(200003)}) {
    const std::vector<float> x = dt_test::randn<float>(size_t(n), 7 + uint64_t(n), 3.0);
    core::Buffer xb = upload(x, core::DType::f32, "x");
    core::Buffer out = upload(std::vector<double>{-1.0}, core::DType::f64, "out");
    ops::sum_squares_to(xb, n, out);
    expect_same(download<double>(out)[0], ops::sum_squares(xb, n), "n=" + std::to_string(n));
  }
}

// A pack's MoE error words (CUDA records them on the device; the CPU throws at once) go into the
// step's scalars, the first pack's winning; the gate then skips the update, and the step's end
// throws the error the forward would have.
TEST(StepScalars, MoeErrorWordsSkipTheStep) {
  const int32_t none = ops::kNoBadToken;
  core::Buffer sc(dev(), core::DType::f64, {core::kStepScalars}, "step scalars");
  ops::zero(sc);
  core::Buffer clean = upload(std::vector<int32_t>{none, none, none}, core::DType::i32, "clean");
  core::Buffer bad = upload(std::vector<int32_t>{none, 5, 9}, core::DType::i32, "bad expert");
  core::Buffer later = upload(std::vector<int32_t>{3, none, none}, core::DType::i32, "bad logit");
  ops::step_moe_errors(clean, sc);
  core::StepScalars h;
  ops::copy_to_host(sc, &h);
  EXPECT_EQ(h.moe_error, 0.0) << "a clean pack recorded an error";
  ops::step_moe_errors(bad, sc);
  ops::step_moe_errors(later, sc);  // a later pack's error does not replace the first
  ops::step_gate(sc, 1.0, 1.0);     // every loss and the norm finite (zeros)
  ops::copy_to_host(sc, &h);
  EXPECT_EQ(h.moe_error, 1.0);
  EXPECT_EQ(h.moe_bad[0], double(none));
  EXPECT_EQ(h.moe_bad[1], 5.0);
  EXPECT_EQ(h.moe_bad[2], 9.0);
  EXPECT_EQ(h.skip, 1.0) << "a step with a MoE error would update";
  const int32_t w[3] = {int32_t(h.moe_bad[0]), int32_t(h.moe_bad[1]), int32_t(h.moe_bad[2])};
  EXPECT_NE(dt_test::error_of([&] {
              ops::moe_fail_bad(w, 8);
            }).find("moe_permute: expert id 9 of token 5 is outside [0, 8)"),
            std::string::npos);
}

// One tensor's AdamW state in a storage form, on the test's device.
struct State {
  core::Buffer master, m, v, grad, copy, rem;
  ops::AdamWTensor tensor(double decay) const {
    ops::AdamWTensor t;
    t.master = master.view();
    t.m = m.view();
    t.v = v.view();
    t.grad = grad.view();
    t.compute_copy = copy.view();
    t.remainder = rem.view();
    t.weight_decay = decay;
    return t;
  }
  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    for (const core::Buffer* b : {&master, &m, &v, &copy, &rem}) {
      if (b->data() == nullptr) continue;
      std::vector<uint8_t> x(b->view().bytes());
      ops::copy_to_host(*b, x.data());
      out.insert(out.end(), x.begin(), x.end());
    }
    return out;
  }
};

State make_state(int64_t n, bool lean) {
  State s;
  const std::vector<float> p = dt_test::randn<float>(size_t(n), 11, 0.05);
  const std::vector<float> g = dt_test::randn<float>(size_t(n), 12, 0.3);
  const std::vector<float> m = dt_test::randn<float>(size_t(n), 13, 0.01);
  std::vector<float> v = dt_test::randn<float>(size_t(n), 14, 0.01);
  for (float& x : v) x = x * x;
  s.grad = upload(g, core::DType::f32, "grad");
  if (!lean) {
    s.master = upload(p, core::DType::f32, "master");
    s.m = upload(m, core::DType::f32, "m");
    s.v = upload(v, core::DType::f32, "v");
    s.copy = upload(std::vector<float>(size_t(n), 0.f), core::DType::f32, "copy");
    return s;
  }
  // The lean pair and bf16 moments (stored state: allowed on the CPU too).
  const size_t un = static_cast<size_t>(n);
  std::vector<uint16_t> w(un), r(un), mb(un), vb(un);
  for (int64_t i = 0; i < n; ++i) {
    core::master_split(p[size_t(i)], w[size_t(i)], r[size_t(i)]);
    mb[size_t(i)] = core::bf16_round_ties_away(m[size_t(i)]);
    vb[size_t(i)] = core::bf16_round_ties_away(v[size_t(i)]);
  }
  s.copy = core::Buffer(dev(), core::DType::bf16, {n}, "weight");
  s.rem = core::Buffer(dev(), core::DType::u16, {n}, "remainder");
  s.m = core::Buffer(dev(), core::DType::bf16, {n}, "m");
  s.v = core::Buffer(dev(), core::DType::bf16, {n}, "v");
  ops::copy_from_host(s.copy, w.data());
  ops::copy_from_host(s.rem, r.data());
  ops::copy_from_host(s.m, mb.data());
  ops::copy_from_host(s.v, vb.data());
  return s;
}

TEST(StepScalars, GatedAdamWIsTheHostScaledUpdate) {
  const int64_t n = 5003;
  for (bool lean : {false, true})
    for (float scale : {1.0f, 0.37f, 1e-3f}) {
      const std::string what = std::string(lean ? "lean pair + bf16 moments" : "fp32") +
                               ", scale " + std::to_string(scale);
      State host = make_state(n, lean), gated = make_state(n, lean), skipped = make_state(n, lean);
      ops::AdamWArgs a;
      a.lr = 3e-3;
      a.beta2 = 0.95;
      a.step = 3;
      a.seed = 99;
      a.grad_scale = scale;
      const ops::AdamWTensor th = host.tensor(0.1);
      ops::adamw_step_multi({&th, 1}, a);
      // The same update with the scale in device memory, and a skipped one.
      core::Buffer gate = upload(std::vector<double>{double(scale), 0.0}, core::DType::f64, "gate");
      core::Buffer skip = upload(std::vector<double>{double(scale), 1.0}, core::DType::f64, "skip");
      a.grad_scale = 0.5f;  // ignored with a gate
      a.gate = gate.view().f64();
      const ops::AdamWTensor tg = gated.tensor(0.1);
      ops::adamw_step_multi({&tg, 1}, a);
      const std::vector<uint8_t> before = skipped.bytes();
      a.gate = skip.view().f64();
      const ops::AdamWTensor ts = skipped.tensor(0.1);
      ops::adamw_step_multi({&ts, 1}, a);
      EXPECT_TRUE(gated.bytes() == host.bytes()) << what << ": the gated update differs";
      EXPECT_FALSE(gated.bytes() == before) << what << ": the update changed nothing";
      EXPECT_TRUE(skipped.bytes() == before) << what << ": a skipped update wrote";
    }
}

// The engine's device-side step (grad_squares, step_gate, step_gated, one read, end_step)
// against the host one (host loss sums, clip, step), on a MoE + MTP model with router losses:
// the same losses, norms, weights and moments, bit for bit, over 4 steps, the third skipped
// (a non-finite loss: no update and no step count).
TEST(StepScalars, EngineDeviceStepIsClipAndStep) {
  model::Config c = dt_test::tiny_moe_mtp_config();
  const model::TensorMap init = dt_test::random_params(c, 5);
  const auto samples = dt_test::make_samples({9, 30, 1, 17, 45, 6, 22, 3}, c.vocab_size, 4, 3);
  model::ModelOptions mo;
  mo.ce_scale = 1.f / 50;
  mo.mtp_ce_scale = 0.3f / 50;
  mo.router.aux_coef = 0.02;
  mo.router.aux_type = model::AuxLossType::seq;
  mo.router.z_coef = 0.001;
  const double max_norm = 0.05;  // clips every step
  struct Run {
    std::vector<double> ce, mtp, router, norm;
    model::TensorMap params;
    std::unique_ptr<train::AdamW> opt;
  };
  const auto run = [&](bool device) {
    Run r;
    r.params = init;
    train::AdamWOptions ao;
    ao.weight_decay = 0.1;
    r.opt = std::make_unique<train::AdamW>(r.params, ao);
    auto e =
        train::make_engine(dt_test::kOnCuda ? "cuda" : "cpu", "fp32", c, r.params, r.opt.get());
    for (int s = 0; s < 4; ++s) {
      const data::Pack pack = dt_test::pack_of(samples, {2 * s, 2 * s + 1}, 8);
      const bool bad = s == 2;
      const double lr = 2e-3 * (1 + s);
      e->zero_grads();
      if (!device) {
        const model::PackLoss l = e->fwd_bwd(pack, true, mo);
        double ce = 0, mtp = 0;
        for (double x : l.loss_sum) ce += x;
        for (double x : l.mtp_loss_sum) mtp += x;
        r.ce.push_back(ce), r.mtp.push_back(mtp), r.router.push_back(l.router_loss);
        r.norm.push_back(e->clip(max_norm));
        if (!bad) e->step(*r.opt, lr);
        continue;
      }
      core::Buffer sc(dev(), core::DType::f64, {core::kStepScalars}, "step scalars");
      ops::zero(sc);
      model::ModelOptions dmo = mo;
      dmo.step_scalars = sc.view();
      e->fwd_bwd(pack, true, dmo);
      core::StepScalars h;
      ops::copy_to_host(sc, &h);
      r.ce.push_back(h.ce_sum), r.mtp.push_back(h.mtp_sum), r.router.push_back(h.router_sum);
      if (bad) {  // a non-finite loss: the gate skips the update
        const double nan = std::nan("");
        ops::copy_from_host(sc.view().slice(core::kStepCeSum, 1), &nan);
      }
      e->grad_squares(sc.view().slice(core::kStepGradSquares, 1));
      ops::step_gate(sc, max_norm, 50);
      e->step_gated(*r.opt, lr, sc.view().slice(core::kStepGate, 2));
      ops::copy_to_host(sc, &h);
      EXPECT_EQ(h.skip, bad ? 1.0 : 0.0) << "step " << s;
      EXPECT_LT(h.grad_scale, 1.0) << "step " << s << ": not clipped";
      e->end_step(h.skip == 0);
      r.norm.push_back(h.grad_norm);
    }
    e->sync_to_host(r.params, *r.opt);
    return r;
  };
  const Run host = run(false), dev = run(true);
  for (size_t s = 0; s < host.ce.size(); ++s) {
    const std::string at = "step " + std::to_string(s);
    expect_same(dev.ce[s], host.ce[s], at + " CE sum");
    expect_same(dev.mtp[s], host.mtp[s], at + " MTP sum");
    expect_same(dev.router[s], host.router[s], at + " router loss");
    expect_same(dev.norm[s], host.norm[s], at + " grad norm");
  }
  EXPECT_GT(host.router[0], 0.0);
  EXPECT_EQ(dev.opt->step_count(), 3) << "the skipped step advanced the step count";
  EXPECT_EQ(dev.opt->step_count(), host.opt->step_count());
  for (const auto& [name, t] : host.params) {
    EXPECT_EQ(dev.params.at(name).data, t.data) << "weights differ: " << name;
    EXPECT_EQ(dev.opt->exp_avg().at(name).data, host.opt->exp_avg().at(name).data)
        << "exp_avg differs: " << name;
    EXPECT_EQ(dev.opt->exp_avg_sq().at(name).data, host.opt->exp_avg_sq().at(name).data)
        << "exp_avg_sq differs: " << name;
  }
}

// The trainer's step reads the device once (its scalars, after the update is queued), however
// many micro-batches it has: the bundled example, dense and MoE + MTP, 2 micro-batches a step.
TEST(StepScalars, TrainStepReadsTheDeviceOnce) {
  const dt_test::TempDir tmp("step_reads");
  for (const char* example : {"train.toml", "train_moe.toml"}) {
    std::vector<std::string> ov =
        dt_test::short_run_overrides(tmp.path, std::string("out_") + example);
    ov.push_back("training.steps=3");
    ov.push_back("training.save_every=0");
    if (dt_test::kOnCuda) ov.push_back("training.device=\"cuda\"");
    const train::TrainResult r = train::run_train(
        train::load_train_config((dt_test::examples_dir() / "addition" / example).string(), ov),
        false);
    ASSERT_EQ(r.step_host_reads.size(), 3u) << example;
    for (size_t s = 0; s < r.step_host_reads.size(); ++s)
      EXPECT_EQ(r.step_host_reads[s], 1) << example << ", step " << s + 1 << ": "
                                         << r.step_host_reads[s] << " reads of the device";
  }
}

}  // namespace
