// LM head + cross-entropy of one head (see lm_head.h).
#include "model/lm_head.h"

#include "ops/lm_head_ce.h"
#include "ops/profile.h"
#include "ops/step_scalars.h"
#include "ops/tensor.h"

namespace deltatron::model {

std::string lm_head_name(const Config& c) {
  return c.tie_word_embeddings ? c.name("embed_tokens.weight") : std::string("lm_head.weight");
}

std::vector<double> head_loss(const Ctx& cx, const View& h, const View& targets, float scale,
                              bool with_grads, const View& dh, std::vector<uint8_t>* correct,
                              const View& sum_1) {
  const int64_t N = cx.N(), D = cx.c.hidden_size;
  const std::string head = lm_head_name(cx.c);
  ops::Stage st(cx.dev(), "lm head + cross-entropy fwd+bwd");
  Buffer loss = cx.f32(N, "per-token loss");
  Buffer dloss, corr;
  if (with_grads) {
    dloss = cx.f32(N, "per-token loss weight");
    ops::fill(dloss, scale, N);
  }
  if (correct) corr = cx.i32(N, "argmax-correct flags");
  // The head's gradient: the step's first write overwrites it (tied: the embedding's backward
  // adds to it later)
  const Params::GradTarget dW = with_grads ? cx.p.g_target(head) : Params::GradTarget{};
  ops::linear_cross_entropy(h, cx.p.w(head), targets, dloss, N, D, cx.c.vocab_size, loss, corr,
                            with_grads ? dh : View{}, false, dW.g, dW.accumulate);
  if (!sum_1.empty()) {  // the step's sum on the device: no host read (ops/step_scalars.h)
    DT_CHECK(!correct, "head_loss: argmax flags are read on the host, not with a device sum");
    ops::step_loss_sum_add(loss, targets, cx.b.cu, cx.b.nseg, N, sum_1);
    return {};
  }
  std::vector<float> loss_h(N);
  if (N > 0) ops::copy_to_host(loss, loss_h.data());
  if (correct) {
    std::vector<int32_t> cc(N);
    if (N > 0) ops::copy_to_host(corr, cc.data());
    correct->assign(N, 0);
    for (int64_t n = 0; n < N; ++n) (*correct)[n] = cc[n] != 0;
  }
  return std::vector<double>(loss_h.begin(), loss_h.end());
}

}  // namespace deltatron::model
