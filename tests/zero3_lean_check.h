// The check of ZeRO 3's shard store with the lean training state (training.master = remainder)
// against the flat parameter store, on any device and compute dtype (test_zero3_lean on the CPU
// in f32, tests/gpu/test_zero3_lean_cuda in bf16: the routers' f32 weights and the joined reads).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "dist/comm.h"
#include "io/checkpoint.h"
#include "model/params.h"
#include "ops/adamw.h"
#include "ops/device.h"
#include "ops/tensor.h"
#include "train/zero3.h"

namespace dt_test {

namespace zero3_lean {
namespace core = deltatron::core;
namespace ops = deltatron::ops;

// The gradient of the test's step `salt` at element k.
inline float pattern(int64_t k, int salt) { return float((k * 7 + salt) % 13) * 0.01f - 0.06f; }

inline void fill_pattern(const core::View& g, int salt) {
  std::vector<float> h(size_t(g.numel()));
  for (int64_t k = 0; k < g.numel(); ++k) h[size_t(k)] = pattern(k, salt);
  ops::copy_from_host(g, h.data());
}

// The AdamW hyperparameters of the checks' step `step` (weight decay set per tensor).
inline ops::AdamWArgs step_args(int step) {
  ops::AdamWArgs args;
  args.lr = 1e-2;
  args.beta1 = 0.9;
  args.beta2 = 0.98;
  args.eps = 1e-8;
  args.step = step;
  return args;
}

// A view's bytes on the host (2 or 4 per element).
inline std::vector<uint8_t> bytes(const core::View& v) {
  std::vector<uint8_t> out(size_t(v.numel()) * core::dtype_size(v.dtype));
  ops::copy_to_host(v, out.data());
  return out;
}
}  // namespace zero3_lean

// The MoE fixture with the VL tower and an MTP layer (its routers are read in f32 by a bf16
// model) in a gathered lean store on one rank (dev, dt) against the flat lean store, both loaded
// from the checkpoint and stepped twice by AdamW with the same gradients. After each step: every
// gathered compute weight is the flat store's bit for bit, every f32 weight the model reads too
// (a bf16 model: the routers'), and reading a tensor's weight gives the flat store's master.
inline void expect_zero3_lean_store_like_flat(deltatron::core::Device dev,
                                              deltatron::core::DType dt) {
  using namespace deltatron;
  using zero3_lean::bytes;
  using zero3_lean::fill_pattern;
  ops::check_device(dev);  // the device's allocator (a test that builds no model first)
  const io::Checkpoint ck = io::load_checkpoint(
      (std::filesystem::path(DT_TEST_DATA) / "golden" / "moe_vlm_mtp").string(), io::LoadOptions{});
  model::StateOptions lean;
  lean.master_remainder = true;
  model::Params flat(dev, dt, ck.params, lean);
  model::StateOptions gathered = lean;
  gathered.gathered = true;
  model::Params p(dev, dt, ck.params, gathered);
  const auto comm = dist::self_comm(dev);
  train::Zero3Store store(p, ck.config, *comm);
  for (const auto& [name, t] : ck.params) store.load_weight(name, t.ptr());
  store.finish_load();
  store.alloc_moments(core::DType::f32);
  const train::Zero3Layout& l = store.layout();
  core::Buffer m(dev, core::DType::f32, {flat.total()}, "m");
  core::Buffer v(dev, core::DType::f32, {flat.total()}, "v");
  ops::zero(m);
  ops::zero(v);
  int f32_reads = 0;
  for (int step = 1; step <= 2; ++step) {
    store.zero_grads();
    for (int unit = -1; unit < ck.config.num_hidden_layers; ++unit) {
      store.gather(unit, true);
      for (size_t i : l.units[size_t(unit + 1)].tensors) fill_pattern(p.g(l.tensors[i].name), step);
      store.release(unit, true);
    }
    for (const auto& name : flat.names()) fill_pattern(flat.g(name), step);
    const ops::AdamWArgs args = zero3_lean::step_args(step);
    std::vector<ops::AdamWTensor> ts;
    for (const auto& name : flat.names()) {
      ops::AdamWTensor t = flat.adamw_tensor(name);
      const auto& e = flat.entry(name);
      t.m = m.view().slice(e.offset, e.numel);
      t.v = v.view().slice(e.offset, e.numel);
      t.weight_decay = 0.01;
      ts.push_back(t);
    }
    ops::adamw_step_multi(ts, args);
    ts.clear();
    for (train::Zero3Store::Piece& pc : store.pieces()) {
      pc.t.weight_decay = 0.01;
      ts.push_back(pc.t);
    }
    ops::adamw_step_multi(ts, args);

    for (int unit = -1; unit < ck.config.num_hidden_layers; ++unit) {
      store.gather(unit, false);
      for (size_t i : l.units[size_t(unit + 1)].tensors) {
        const std::string& name = l.tensors[i].name;
        ASSERT_EQ(bytes(p.w(name)), bytes(flat.w(name))) << name << " step " << step;
        if (dt == core::DType::f32 || !model::keeps_f32_weight(name)) continue;
        ++f32_reads;
        ASSERT_EQ(bytes(p.master(name)), bytes(flat.master(name)))
            << name << " f32 weights, step " << step;
      }
      store.release(unit, false);
    }
    model::TensorMap want = model::zeros_like(ck.params);
    flat.download(want);
    for (const auto& [name, t] : want) {
      std::vector<float> got(size_t(t.numel()));
      store.read(name, train::Zero3Store::Part::weight, got.data());
      for (int64_t k = 0; k < t.numel(); ++k)
        ASSERT_EQ(got[size_t(k)], t.ptr()[k]) << name << " element " << k << " step " << step;
    }
  }
  if (dt != core::DType::f32) EXPECT_GT(f32_reads, 0);  // the routers were read in f32
}

}  // namespace dt_test
