// Activation memory: selective recomputation gives bitwise the same losses and gradients as
// keeping every intermediate (dense, MoE + MTP, packed, with whole-layer recomputation), and the
// activation account (model/activations.h) equals what the model code allocates, tensor by
// tensor, counted by an allocator registered for the CPU (the same buffers the GPU allocates).
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "core/buffer.h"
#include "model/activations.h"
#include "model/context.h"
#include "model/layer.h"
#include "model/model.h"
#include "model_fixture.h"

using namespace deltatron;

namespace {

// Counts the live bytes of every allocation by label, and the peak since a reset.
class CountingAllocator final : public core::Allocator {
 public:
  void* allocate(size_t bytes, const char* what) override {
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    live_[p] = {what, bytes};
    now_ += int64_t(bytes);
    peak_ = std::max(peak_, now_);
    return p;
  }
  void deallocate(void* p, size_t bytes) noexcept override {
    live_.erase(p);
    now_ -= int64_t(bytes);
    std::free(p);
  }
  int64_t live_bytes() const override { return now_; }
  int64_t peak_live_bytes() const override { return peak_; }
  void reset_peak_live_bytes() override { peak_ = now_; }
  // Live bytes by label.
  std::map<std::string, int64_t> by_label() const {
    std::map<std::string, int64_t> m;
    for (const auto& [p, a] : live_) m[a.first] += int64_t(a.second);
    return m;
  }

 private:
  std::map<void*, std::pair<std::string, size_t>> live_;
  int64_t now_ = 0, peak_ = 0;
};

// Registers a CountingAllocator for the CPU while alive.
struct Counting {
  core::Allocator& host = core::allocator(core::Device::cpu);
  CountingAllocator a;
  Counting() { core::register_allocator(core::Device::cpu, &a); }
  ~Counting() { core::register_allocator(core::Device::cpu, &host); }
};

std::map<std::string, int64_t> minus(std::map<std::string, int64_t> a,
                                     const std::map<std::string, int64_t>& b) {
  for (const auto& [k, v] : b)
    if ((a[k] -= v) == 0) a.erase(k);
  for (auto it = a.begin(); it != a.end();) it = it->second == 0 ? a.erase(it) : std::next(it);
  return a;
}

std::string str(const std::map<std::string, int64_t>& m) {
  std::string s;
  for (const auto& [k, v] : m) s += "  " + k + ": " + std::to_string(v) + "\n";
  return s;
}

model::Config dense_config() { return model::parse_config(dt_test::tiny_config_json(), "tiny"); }

struct RunResult {
  model::PackLoss loss;
  model::TensorMap grads;
};

RunResult run(const model::Config& c, const model::TensorMap& p, const data::Pack& pack,
              const model::ModelOptions& opt, bool selective, bool recompute) {
  model::Model m(core::Device::cpu, core::DType::f32, c, p);
  m.set_recompute_selective(selective);
  m.set_recompute(recompute);
  RunResult r;
  r.loss = m.fwd_bwd(pack, true, opt);
  r.grads = model::zeros_like(p);
  m.params().download_grads(r.grads);
  return r;
}

// Bitwise equality of two runs' losses and every gradient; the first differing element is
// printed with both values.
void expect_bitwise(const RunResult& a, const RunResult& b, const std::string& what) {
  ASSERT_EQ(a.loss.loss_sum.size(), b.loss.loss_sum.size());
  for (size_t i = 0; i < a.loss.loss_sum.size(); ++i)
    EXPECT_EQ(a.loss.loss_sum[i], b.loss.loss_sum[i]) << what << ": loss of sample " << i;
  EXPECT_EQ(a.loss.mtp_loss_sum, b.loss.mtp_loss_sum) << what << ": MTP losses";
  EXPECT_EQ(a.loss.router_loss, b.loss.router_loss) << what << ": router loss";
  for (const auto& [name, t] : a.grads) {
    const std::vector<float>& y = b.grads.at(name).data;
    for (size_t i = 0; i < t.data.size(); ++i)
      if (std::memcmp(&t.data[i], &y[i], sizeof(float)) != 0) {
        ADD_FAILURE() << what << ": gradient " << name << "[" << i << "] " << t.data[i]
                      << " (selective) vs " << y[i] << " (everything kept)";
        break;
      }
  }
}

}  // namespace

struct SelCase {
  std::string name;
  bool moe, mtp, recompute;
  std::vector<int64_t> idx;
  int64_t align;
};

class SelectiveRecompute : public ::testing::TestWithParam<SelCase> {};

TEST_P(SelectiveRecompute, BitwiseLossesAndGradients) {
  const SelCase& k = GetParam();
  model::Config c = k.moe ? dt_test::tiny_moe_mtp_config() : dense_config();
  c.mtp_enabled = k.mtp;
  const model::TensorMap p = dt_test::random_params(c, 7);
  const auto samples = dt_test::make_samples({37, 5, 70, 1, 19}, c.vocab_size, 3, 4);
  const data::Pack pack = dt_test::pack_of(samples, k.idx, k.align);
  model::ModelOptions opt;
  opt.mtp_ce_scale = 0.3f;
  if (k.moe) {
    opt.router.aux_coef = 0.05;
    opt.router.aux_type = model::AuxLossType::seq;
    opt.router.z_coef = 0.01;
  }
  const RunResult sel = run(c, p, pack, opt, true, k.recompute);
  const RunResult all = run(c, p, pack, opt, false, false);
  expect_bitwise(sel, all, k.name);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, SelectiveRecompute,
    ::testing::Values(SelCase{"dense", false, false, false, {2}, 1},
                      SelCase{"dense_packed", false, false, false, {0, 1, 2, 3, 4}, 8},
                      SelCase{"dense_packed_whole_layer", false, false, true, {4, 2, 0}, 1},
                      SelCase{"moe_mtp", true, true, false, {2}, 1},
                      SelCase{"moe_mtp_packed", true, true, false, {3, 0, 4, 1, 2}, 8}),
    [](const auto& info) { return info.param.name; });

// Layer by layer: the buffers a layer's forward leaves alive are the account's kept tensors
// (label by label, byte for byte), and the largest live set of its backward is the account's.
struct LayerCase {
  std::string name;
  bool moe, selective;
  bool wide = false;  // FFN widths that make the FFN's backward the layer's peak
};

class ActivationAccount : public ::testing::TestWithParam<LayerCase> {};

TEST_P(ActivationAccount, MatchesTheLayersAllocations) {
  const LayerCase& k = GetParam();
  model::Config c = k.moe ? dt_test::tiny_moe_mtp_config() : dense_config();
  c.mtp_enabled = false;
  if (k.wide) {
    c.intermediate_size = k.moe ? 0 : 300;
    c.moe_intermediate_size = k.moe ? 64 : 0;
    c.shared_expert_intermediate_size = k.moe ? 48 : 0;
  }
  const model::TensorMap p = dt_test::random_params(c, 5);
  const auto samples = dt_test::make_samples({29, 17, 46}, c.vocab_size, 9, 4);
  const data::Pack pack = dt_test::pack_of(samples, {0, 1, 2}, 8);
  const int64_t N = pack.N, D = c.hidden_size;
  model::Model m(core::Device::cpu, core::DType::f32, c, p);
  Counting count;
  const model::Batch b(c, pack, core::Device::cpu);
  model::Ctx cx{c, m.params(), b};
  cx.selective = k.selective;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t i = 0; i < 2; ++i) {  // layer 0: gated deltanet, layer 1: attention
    const model::Layer layer{c.name("layers." + std::to_string(i) + "."), c.layer_types[i]};
    core::Buffer x(core::Device::cpu, core::DType::f32, {N * D}, "test residual");
    core::Buffer dx(core::Device::cpu, core::DType::f32, {N * D}, "test gradient");
    for (int64_t j = 0; j < N * D; ++j) {
      static_cast<float*>(x.data())[j] = nd(rng);
      static_cast<float*>(dx.data())[j] = nd(rng);
    }
    const std::map<std::string, int64_t> before = count.a.by_label();
    const int64_t live0 = count.a.live_bytes();
    count.a.reset_peak_live_bytes();
    model::LayerSaved s;
    layer.fwd(cx, x, s);
    const double fwd_peak = double(count.a.peak_live_bytes() - live0);
    const std::map<std::string, int64_t> kept = minus(count.a.by_label(), before);
    std::map<std::string, int64_t> want;
    for (const model::SavedTensor& t : model::layer_tensors(c, layer.type, N, core::DType::f32))
      if (!(k.selective && t.recomputed)) want[t.what] += int64_t(t.bytes());
    EXPECT_EQ(kept, want) << "layer " << i << ": allocated\n"
                          << str(kept) << "account\n"
                          << str(want);
    const model::LayerActivation acc =
        model::layer_activation(c, layer.type, N, core::DType::f32, k.selective);
    EXPECT_EQ(double(count.a.live_bytes() - live0), acc.kept) << "layer " << i;
    EXPECT_LE(fwd_peak, acc.fwd) << "layer " << i << ": forward peak";
    const int64_t live1 = count.a.live_bytes();
    count.a.reset_peak_live_bytes();
    layer.bwd(cx, s, dx);
    const double bwd_peak = double(count.a.peak_live_bytes() - live1);
    EXPECT_EQ(bwd_peak, acc.bwd) << "layer " << i << ": backward peak (measured vs account)";
    std::printf(
        "%s layer %lld: kept %.0f B (account %.0f), forward peak %.0f B (account %.0f), "
        "backward peak %.0f B (account %.0f)\n",
        k.name.c_str(), static_cast<long long>(i), double(live1 - live0), acc.kept, fwd_peak,
        acc.fwd, bwd_peak, acc.bwd);
  }
}

INSTANTIATE_TEST_SUITE_P(Layers, ActivationAccount,
                         ::testing::Values(LayerCase{"dense_selective", false, true},
                                           LayerCase{"dense_all", false, false},
                                           LayerCase{"moe_selective", true, true},
                                           LayerCase{"moe_all", true, false},
                                           LayerCase{"dense_wide_selective", false, true, true},
                                           LayerCase{"dense_wide_all", false, false, true},
                                           LayerCase{"moe_wide_selective", true, true, true},
                                           LayerCase{"moe_wide_all", true, false, true}),
                         [](const auto& info) { return info.param.name; });

// The whole pack: the largest live set of the model's buffers in fwd_bwd (the parameters and
// gradients excluded) against the account's peak, which must not be below it.
TEST(ActivationAccountModel, PeakOfAPack) {
  for (const bool moe : {false, true})
    for (const bool selective : {true, false})
      for (const bool recompute : {false, true}) {
        model::Config c = moe ? dt_test::tiny_moe_mtp_config() : dense_config();
        const model::TensorMap p = dt_test::random_params(c, 5);
        const auto samples = dt_test::make_samples({29, 17, 46, 80}, c.vocab_size, 9, 4);
        const data::Pack pack = dt_test::pack_of(samples, {0, 1, 2, 3}, 8);
        Counting count;
        model::Model m(core::Device::cpu, core::DType::f32, c, p);
        m.set_recompute_selective(selective);
        m.set_recompute(recompute);
        model::ModelOptions opt;
        if (moe) opt.router.z_coef = 0.01;
        const int64_t live0 = count.a.live_bytes();
        count.a.reset_peak_live_bytes();
        m.fwd_bwd(pack, true, opt);
        const double measured = double(count.a.peak_live_bytes() - live0);
        const model::ActivationAccount acc =
            model::activation_account(c, pack.N, core::DType::f32, {recompute, selective});
        const std::string what = std::string(moe ? "moe+mtp" : "dense") +
                                 (selective ? ", selective" : ", everything kept") +
                                 (recompute ? ", whole-layer recomputation" : "");
        std::printf("%s: measured peak %.0f B, account %.0f B (%s)\n", what.c_str(), measured,
                    acc.peak, acc.peak_phase.c_str());
        EXPECT_GE(acc.peak, measured) << what;
        EXPECT_LE(acc.peak, 1.03 * measured) << what;
      }
}
