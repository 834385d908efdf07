// The check of ZeRO 3's shard store with offloaded training state (training.offload: the pieces'
// moments, and with master+moments their masters, in pinned host memory) against the same store
// with the state on the device, on any device and compute dtype (test_zero_offload on the CPU in
// f32, tests/gpu/test_zero3_offload_cuda in bf16: the fp32 masters offloaded, the routers' f32
// masters kept on the device).
#pragma once

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
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
#include "zero3_lean_check.h"

namespace dt_test {

// The MoE fixture with the VL tower and an MTP layer (its routers are read in f32 by a bf16
// model; its weights moved off the bf16 grid) in two gathered stores on one rank (dev, dt, state
// options `so`): one with nothing offloaded, stepped by adamw_step_multi, one with `so`'s
// offload, stepped by adamw_step_offloaded in chunks of 4096 elements (many chunks, both slots
// reused); both loaded with those weights and stepped three times with the same gradients. The
// offloaded store's moments (and masters, except the routers' f32 masters of a bf16 model) are host
// views. After each step: every gathered weight (and f32 weight the model reads) and every tensor's
// weight, exp_avg and exp_avg_sq read back are the device store's bit for bit.
inline void expect_zero3_offload_store_like_device(deltatron::core::Device dev,
                                                   deltatron::core::DType dt,
                                                   const deltatron::model::StateOptions& so) {
  using namespace deltatron;
  using zero3_lean::bytes;
  using zero3_lean::fill_pattern;
  ops::check_device(dev);
  const io::Checkpoint ck = io::load_checkpoint(
      (std::filesystem::path(DT_TEST_DATA) / "golden" / "moe_vlm_mtp").string(), io::LoadOptions{});
  // The fixture's weights are bf16 values (zero remainders): moved off the bf16 grid, so that a
  // lost or misplaced remainder (or fp32 master) shows.
  model::TensorMap weights = model::zeros_like(ck.params);
  for (auto& [name, t] : weights) {
    const float* x = ck.params.at(name).ptr();
    for (int64_t k = 0; k < t.numel(); ++k)
      t.ptr()[k] = x[k] + 1e-3f * zero3_lean::pattern(k, 7) * (1.0f + std::abs(x[k]));
  }
  model::StateOptions gathered = so;
  gathered.gathered = true;
  gathered.offload_moments = gathered.offload_master = false;
  model::Params pd(dev, dt, weights, gathered), ph(dev, dt, weights, gathered);
  const auto comm = dist::self_comm(dev);
  ops::AdamWOffload off;
  off.moments = so.offload_moments;
  off.master = so.offload_master;
  off.chunk = 4096;
  train::Zero3Store device(pd, ck.config, *comm), host(ph, ck.config, *comm, nullptr, off);
  EXPECT_TRUE(host.offloaded());
  EXPECT_FALSE(device.offloaded());
  for (train::Zero3Store* s : {&device, &host}) {
    for (const auto& [name, t] : weights) s->load_weight(name, t.ptr());
    s->finish_load();
    s->alloc_moments(so.moments);
  }
  const train::Zero3Layout& l = host.layout();
  int host_masters = 0, device_masters = 0;
  for (const train::Zero3Store::Piece& pc : host.pieces()) {
    ASSERT_EQ(pc.t.m.device, core::Device::cpu) << l.tensors[pc.tensor].name;
    ASSERT_EQ(pc.t.v.device, core::Device::cpu) << l.tensors[pc.tensor].name;
    if (!so.offload_master) continue;
    const core::View& master = so.master_remainder ? pc.t.remainder : pc.t.master;
    const bool router =
        dt != core::DType::f32 && model::keeps_f32_weight(l.tensors[pc.tensor].name);
    // A bf16 model's routers keep their f32 masters on the device (the model reads them).
    ASSERT_EQ(master.device, router && !so.master_remainder ? dev : core::Device::cpu)
        << l.tensors[pc.tensor].name;
    ++(master.device == core::Device::cpu ? host_masters : device_masters);
  }
  if (so.offload_master) EXPECT_GT(host_masters, 0);
  if (so.offload_master && !so.master_remainder && dt != core::DType::f32 &&
      dev != core::Device::cpu)
    EXPECT_GT(device_masters, 0);
  for (int step = 1; step <= 3; ++step) {
    for (auto [s, p] : {std::pair{&device, &pd}, std::pair{&host, &ph}}) {
      s->zero_grads();
      for (int unit = -1; unit < ck.config.num_hidden_layers; ++unit) {
        s->gather(unit, true);
        for (size_t i : l.units[size_t(unit + 1)].tensors)
          fill_pattern(p->g(l.tensors[i].name), step);
        s->release(unit, true);
      }
      const ops::AdamWArgs args = zero3_lean::step_args(step);
      std::vector<ops::AdamWTensor> ts;
      for (train::Zero3Store::Piece& pc : s->pieces()) {
        pc.t.weight_decay = 0.01;
        ts.push_back(pc.t);
      }
      if (s->offloaded())
        ops::adamw_step_offloaded(ts, args, s->offload());
      else
        ops::adamw_step_multi(ts, args);
    }
    for (int unit = -1; unit < ck.config.num_hidden_layers; ++unit) {
      device.gather(unit, false);
      host.gather(unit, false);
      for (size_t i : l.units[size_t(unit + 1)].tensors) {
        const std::string& name = l.tensors[i].name;
        ASSERT_EQ(bytes(ph.w(name)), bytes(pd.w(name))) << name << " step " << step;
        if (dt == core::DType::f32 || !model::keeps_f32_weight(name)) continue;
        ASSERT_EQ(bytes(ph.master(name)), bytes(pd.master(name)))
            << name << " f32 weights, step " << step;
      }
      device.release(unit, false);
      host.release(unit, false);
    }
    for (const auto& [name, t] : ck.params) {
      for (const auto part : {train::Zero3Store::Part::weight, train::Zero3Store::Part::exp_avg,
                              train::Zero3Store::Part::exp_avg_sq}) {
        std::vector<float> want(size_t(t.numel())), got(size_t(t.numel()));
        device.read(name, part, want.data());
        host.read(name, part, got.data());
        for (int64_t k = 0; k < t.numel(); ++k)  // bit for bit
          ASSERT_EQ(std::bit_cast<uint32_t>(got[size_t(k)]),
                    std::bit_cast<uint32_t>(want[size_t(k)]))
              << name << " part " << int(part) << " element " << k << " step " << step << ": "
              << got[size_t(k)] << " vs " << want[size_t(k)];
      }
    }
  }
}

}  // namespace dt_test
