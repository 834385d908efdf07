// Device -> host copies of the CUDA model (label gpu): in the production path (bf16, widths
// multiples of 8) a MoE model's forward and backward copy a per-pack constant number of times to
// the host (the losses, the MoE error words once), however many layers it has; the fp32 debug
// mode, whose grouped GEMMs loop over experts from host offsets, copies once per MoE layer more.
// The count is cuda::device_to_host_copies (cuda/memory.h). With a training step's scalars on the
// device (ModelOptions::step_scalars) the forward and backward copy nothing at all.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/dtype.h"
#include "core/step_scalars.h"
#include "cuda/memory.h"
#include "data/pack.h"
#include "gpu_model_fixture.h"
#include "model/model.h"
#include "model_fixture.h"
#include "ops/tensor.h"

namespace dt = deltatron;

namespace {

// A tiny MoE model with `layers` layers (alternating GDN and attention), every expert width a
// multiple of 8, and one pack of three samples.
int64_t copies_of_fwd_bwd(int64_t layers, dt::core::DType dtype, bool step_scalars = false) {
  nlohmann::json o = dt_gpu_test::moe_mtp_overrides();
  o["hidden_size"] = 32;
  o["moe_intermediate_size"] = 16;
  o["shared_expert_intermediate_size"] = 16;
  o["num_hidden_layers"] = layers;
  std::vector<std::string> types;
  for (int64_t i = 0; i < layers; ++i)
    types.push_back(i % 2 == 0 ? "linear_attention" : "full_attention");
  o["layer_types"] = types;
  dt::model::Config c = dt::model::parse_config(dt_test::tiny_config_json(o), "tiny");
  c.mtp_enabled = false;
  const dt::model::TensorMap p = dt_test::random_params(c, 31);
  const auto samples = dt_test::make_samples({5, 64, 17}, c.vocab_size, 32, 3);
  const dt::data::Pack pack = dt_test::pack_of(samples, {0, 1, 2}, 8);
  dt::model::ModelOptions opt;
  opt.router.aux_coef = 0.01;
  opt.router.aux_type = dt::model::AuxLossType::seq;
  opt.router.z_coef = 0.001;
  dt::model::Model m(dt::core::Device::cuda, dtype, c, p);  // installs the CUDA allocator
  dt::core::Buffer scalars(dt::core::Device::cuda, dt::core::DType::f64, {dt::core::kStepScalars},
                           "step scalars");
  dt::ops::zero(scalars);
  if (step_scalars) opt.step_scalars = scalars.view();
  m.fwd_bwd(pack, true, opt);  // warm-up: plans, scratch buffers
  const int64_t before = dt::cuda::device_to_host_copies();
  m.fwd_bwd(pack, true, opt);
  const int64_t n = dt::cuda::device_to_host_copies() - before;
  std::printf("  %s, %lld layers%s: %lld device -> host copies per fwd_bwd\n",
              dt::core::dtype_name(dtype), static_cast<long long>(layers),
              step_scalars ? ", step scalars on the device" : "", static_cast<long long>(n));
  return n;
}

}  // namespace

TEST(HostCopies, MoeModelBf16IsConstantPerPack) {
  const int64_t two = copies_of_fwd_bwd(2, dt::core::DType::bf16);
  const int64_t four = copies_of_fwd_bwd(4, dt::core::DType::bf16);
  EXPECT_EQ(four, two) << "a bf16 MoE layer copies to the host";
  EXPECT_GT(two, 0) << "the losses are read on the host";
}

// A training step's pack (train_step): losses, router loss and MoE error words stay on the device.
TEST(HostCopies, MoeModelWithStepScalarsCopiesNothing) {
  EXPECT_EQ(copies_of_fwd_bwd(2, dt::core::DType::bf16, true), 0);
  EXPECT_EQ(copies_of_fwd_bwd(4, dt::core::DType::bf16, true), 0);
}

// The counter sees per-layer copies where they remain (fp32 debug mode: host expert offsets).
TEST(HostCopies, MoeModelF32CopiesPerLayer) {
  const int64_t two = copies_of_fwd_bwd(2, dt::core::DType::f32);
  const int64_t four = copies_of_fwd_bwd(4, dt::core::DType::f32);
  EXPECT_GT(four, two) << "the fp32 debug mode copies the expert offsets of every MoE layer";
}
