// training.offload: ops::adamw_step_offloaded (chunks of host state staged, stepped, copied back)
// is bit for bit adamw_step_multi for every storage, chunk size and tensor size, including
// tensors cut across chunks and MoE-router masters left on the device; the CPU engine with
// offloaded moments or masters trains bitwise as without; option errors; the memory plan.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "engine_run.h"
#include "model/params.h"
#include "model_fixture.h"
#include "ops/adamw.h"
#include "test_util.h"
#include "train/engine.h"
#include "train/optimizer.h"

using namespace deltatron;

namespace {

core::View host_view(void* p, core::DType dt, int64_t n) {
  return core::View(p, dt, core::Device::cpu, {n});
}

// One storage of every tensor's state, as raw bytes (so any dtype compares bitwise).
struct Store {
  std::vector<std::vector<float>> master, out;
  std::vector<std::vector<uint16_t>> weight, rem;
  std::vector<std::vector<uint32_t>> m, v;  // f32 bits, or bf16 in the low half
  bool operator==(const Store&) const = default;
};

struct Case {
  bool remainder = false, bf16_moments = false;
};

Store make_store(const std::vector<int64_t>& sizes, const Case& cs) {
  Store s;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 0.05f);
  for (int64_t n : sizes) {
    std::vector<float> p(static_cast<size_t>(n));
    for (float& x : p) x = nd(rng);
    s.master.push_back(p);
    s.out.push_back(std::vector<float>(size_t(n), 0.f));
    std::vector<uint16_t> w(static_cast<size_t>(n)), r(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) core::master_split(p[size_t(i)], w[size_t(i)], r[size_t(i)]);
    s.weight.push_back(w);
    s.rem.push_back(r);
    s.m.push_back(std::vector<uint32_t>(size_t(n), 0));
    s.v.push_back(std::vector<uint32_t>(size_t(n), 0));
  }
  (void)cs;
  return s;
}

// The views of tensor k of `s`. bf16 moments use the first n halves of the u32 vectors.
ops::AdamWTensor views(Store& s, size_t k, const Case& cs, std::vector<float>& grad,
                       int64_t index) {
  const int64_t n = int64_t(grad.size());
  ops::AdamWTensor t;
  t.grad = host_view(grad.data(), core::DType::f32, n);
  if (cs.remainder) {
    t.compute_copy = host_view(s.weight[k].data(), core::DType::bf16, n);
    t.remainder = host_view(s.rem[k].data(), core::DType::u16, n);
    if (k % 2) t.master = host_view(s.out[k].data(), core::DType::f32, n);
  } else {
    t.master = host_view(s.master[k].data(), core::DType::f32, n);
    if (k % 2) t.compute_copy = host_view(s.out[k].data(), core::DType::f32, n);
  }
  const core::DType md = cs.bf16_moments ? core::DType::bf16 : core::DType::f32;
  t.m = host_view(s.m[k].data(), md, n);
  t.v = host_view(s.v[k].data(), md, n);
  t.weight_decay = k % 3 ? 0.1 : 0.0;
  t.index = index;
  return t;
}

}  // namespace

TEST(OffloadOp, ChunkedStepIsBitwiseTheDirectStep) {
  const std::vector<int64_t> sizes = {5, 0, 64, 65, 1, 300, 1000, 63, 2049};
  std::vector<int64_t> index;
  for (int64_t i = 0, at = 0; i < int64_t(sizes.size()); at += sizes[size_t(i)] + 64, ++i)
    index.push_back(at);
  for (bool remainder : {false, true})
    for (bool bf16_moments : {false, true})
      for (int flags : {1, 2, 3})
        for (int64_t chunk : {64, 100, 128, 1000, 1 << 20}) {
          const Case cs{remainder, bf16_moments};
          ops::AdamWOffload off;
          off.moments = flags & 1;
          off.master = flags & 2;
          off.chunk = chunk;
          SCOPED_TRACE(std::string(remainder ? "remainder" : "fp32") + " master, " +
                       (bf16_moments ? "bf16" : "fp32") + " moments, offload " +
                       (off.moments ? "moments " : "") + (off.master ? "master " : "") + "chunk " +
                       std::to_string(chunk));
          Store a = make_store(sizes, cs), b = make_store(sizes, cs);
          for (int step = 1; step <= 4; ++step) {
            ops::AdamWArgs args;
            args.lr = 1e-3 * step;
            args.step = step;
            args.seed = 9;
            args.grad_scale = step == 3 ? 0.5f : 1.0f;
            std::vector<std::vector<float>> grads;
            for (size_t k = 0; k < sizes.size(); ++k)
              grads.push_back(dt_test::randn<float>(size_t(sizes[k]), 100 * step + k, 0.1));
            std::vector<ops::AdamWTensor> ta, tb;
            for (size_t k = 0; k < sizes.size(); ++k) {
              ta.push_back(views(a, k, cs, grads[k], index[k]));
              tb.push_back(views(b, k, cs, grads[k], index[k]));
            }
            ops::adamw_step_multi(ta, args);
            ops::adamw_step_offloaded(tb, args, off);
            ASSERT_TRUE(a == b) << "step " << step;
          }
          // It trained: the weights moved.
          Store init = make_store(sizes, cs);
          EXPECT_FALSE(init.master == a.master && init.rem == a.rem);
        }
}

TEST(OffloadOp, Errors) {
  std::vector<float> p(8, 0.f), g(8, 0.f), m(8, 0.f), v(8, 0.f);
  ops::AdamWTensor t;
  t.master = host_view(p.data(), core::DType::f32, 8);
  t.grad = host_view(g.data(), core::DType::f32, 8);
  t.m = host_view(m.data(), core::DType::f32, 8);
  t.v = host_view(v.data(), core::DType::f32, 8);
  std::vector<ops::AdamWTensor> ts = {t};
  ops::AdamWOffload off;
  off.moments = true;
  off.chunk = 8;
  dt_test::expect_error([&] { ops::adamw_step_offloaded(ts, {}, off); },
                        {"ops::adamw_step_offloaded", "chunk = 8"});
  off.chunk = 64;
  ts[0].v = core::View();
  dt_test::expect_error([&] { ops::adamw_step_offloaded(ts, {}, off); },
                        {"ops::adamw_step_offloaded", "tensor 0", "m and v must be host views"});
}

// The CPU engine with offloaded state trains bit for bit as without (a tiny MoE + MTP model,
// whose router masters are read in f32), and resumes from the state it hands back.
TEST(OffloadEngine, OffloadedRunsAreBitwise) {
  const model::Config c = dt_test::tiny_moe_mtp_config();
  const model::TensorMap init = dt_test::random_params(c, 5);
  const auto samples = dt_test::make_samples({9, 23, 5, 17, 30, 12}, c.vocab_size, 4, 3);
  const std::vector<data::Pack> packs = {dt_test::pack_of(samples, {0, 1}, 1),
                                         dt_test::pack_of(samples, {2, 3, 4}, 1),
                                         dt_test::pack_of(samples, {5}, 1)};
  const auto same = [](const model::TensorMap& x, const model::TensorMap& y) {
    for (const auto& [name, t] : x)
      if (std::memcmp(t.ptr(), y.at(name).ptr(), size_t(t.numel()) * 4) != 0) return false;
    return x.size() == y.size();
  };
  for (const char* master : {"fp32", "remainder"})
    for (const char* moments : {"fp32", "bf16"}) {
      const model::StateOptions base = model::parse_state_options(master, moments, "none", "t");
      const dt_test::EngineRun ref = dt_test::run_engine(c, init, packs, 30, base);
      EXPECT_LT(ref.losses.back(), ref.losses.front());
      for (const char* offload : {"moments", "master+moments"}) {
        // The CPU computes in f32: fp32 masters are the weights it reads and cannot move.
        if (std::string(offload) == "master+moments" && std::string(master) == "fp32") continue;
        SCOPED_TRACE(std::string(master) + " / " + moments + " / " + offload);
        const model::StateOptions so = model::parse_state_options(master, moments, offload, "t");
        const dt_test::EngineRun r = dt_test::run_engine(c, init, packs, 30, so, 13);
        EXPECT_EQ(r.losses, ref.losses);
        EXPECT_TRUE(same(r.params, ref.params));
        EXPECT_TRUE(same(r.m, ref.m));
        EXPECT_TRUE(same(r.v, ref.v));
      }
    }
  // Offloaded fp32 masters with f32 compute: refused with the reason.
  model::TensorMap params = init;
  dt_test::expect_error(
      [&] {
        train::make_engine("cpu", "fp32", c, params, nullptr, false,
                           model::parse_state_options("fp32", "fp32", "master+moments", "t"));
      },
      {"master+moments", "needs bf16 compute"});
}

TEST(OffloadOptions, SpellingsAndBytes) {
  dt_test::expect_error(
      [] { model::parse_state_options("fp32", "fp32", "all", "x.toml"); },
      {"x.toml", "training.offload must be none, moments or master+moments", "'all'"});
  const auto o = model::parse_state_options("remainder", "bf16", "master+moments", "x");
  EXPECT_TRUE(o.offload_master && o.offload_moments && o.master_remainder);
  EXPECT_EQ(model::offload_name(o), "master+moments");
  // bf16 compute: 12 -> 8 (moments offloaded) -> 6 bytes per parameter on the device.
  EXPECT_EQ(model::state_bytes(core::DType::bf16, o).train, 6);
  EXPECT_EQ(model::state_bytes(core::DType::bf16, o).host, 6);
  auto m = model::parse_state_options("remainder", "bf16", "moments", "x");
  EXPECT_EQ(model::state_bytes(core::DType::bf16, m).train, 8);
  EXPECT_EQ(model::state_bytes(core::DType::bf16, m).host, 4);
  auto f = model::parse_state_options("fp32", "fp32", "master+moments", "x");
  EXPECT_EQ(model::state_bytes(core::DType::bf16, f).train, 6);  // bf16 copy + f32 gradient
  EXPECT_EQ(model::state_bytes(core::DType::bf16, f).host, 12);
}
