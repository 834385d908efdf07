// A pack on the model's device (see context.h).
#include "core/constants.h"
#include "core/error.h"
#include "model/context.h"
#include "ops/moe.h"
#include "ops/tensor.h"

namespace deltatron::model {

namespace {

Buffer upload(core::Device dev, const std::vector<int32_t>& v, const char* what) {
  Buffer b(dev, core::DType::i32, {int64_t(v.size())}, what);
  if (!v.empty()) ops::copy_from_host(b, v.data());
  return b;
}

void check_ids(const Config& c, const std::vector<int32_t>& ids, const char* what, bool targets) {
  for (size_t n = 0; n < ids.size(); ++n) {
    const int32_t id = ids[n];
    if (targets && id == core::kIgnoreIndex) continue;
    DT_CHECK(id >= 0 && id < c.vocab_size, what, " ", id, " at pack position ", n,
             " is outside the vocabulary [0, ", c.vocab_size, ")");
  }
}

// Embedding-gradient ids: padding_idx rows (HF's pad_token_id) get no gradient through the
// lookup, so those positions are marked -1 (skipped by ops::embedding_bwd).
// With images, the image-pad rows are replaced by the vision tower's output (vision spec 4), so
// the <|image_pad|> embedding row gets no gradient from them either.
std::vector<int32_t> grad_ids(const Config& c, std::vector<int32_t> ids, bool images) {
  if (c.pad_token_id)
    for (auto& id : ids)
      if (id == *c.pad_token_id) id = -1;
  if (images)
    for (auto& id : ids)
      if (id == c.image_token_id) id = -1;
  return ids;
}

// Router-loss group of every token: -1 for padding, else 0 (one group) or the token's sample.
std::vector<int32_t> token_groups(const data::Pack& pack, bool per_sample) {
  std::vector<int32_t> g(pack.N, -1);
  for (int s = 0; s < pack.num_samples(); ++s)
    for (int32_t t = pack.cu_seqlens_padded[s]; t < pack.cu_seqlens_padded[s + 1]; ++t)
      if (!pack.is_pad[t]) g[t] = per_sample ? s : 0;
  return g;
}

}  // namespace

Batch::Batch(const Config& c, const data::Pack& p, core::Device dev)
    : host(p), N(p.N), nseg(p.num_samples()), seg(p.segments()) {
  DT_CHECK(int64_t(p.input_ids.size()) == N && int64_t(p.targets.size()) == N &&
               int64_t(p.position_ids.size()) == 3 * N &&
               int64_t(p.cu_seqlens_padded.size()) == nseg + 1 && int64_t(p.is_pad.size()) == N,
           "malformed pack of ", N, " tokens");
  check_ids(c, p.input_ids, "token id", false);
  check_ids(c, p.targets, "target", true);
  ids = upload(dev, p.input_ids, "pack input_ids");
  targets = upload(dev, p.targets, "pack targets");
  pos3 = upload(dev, p.position_ids, "pack position_ids");
  cu = upload(dev, p.cu_seqlens_padded, "pack cu_seqlens");
  const bool images = c.vision_mode != VisionMode::off && !p.image_grid_thw.empty();
  grad_ids = upload(dev, model::grad_ids(c, p.input_ids, images), "embedding gradient ids");
  if (c.mtp_enabled) {
    DT_CHECK(int64_t(p.mtp_input_ids.size()) == N && int64_t(p.mtp_targets.size()) == N,
             "the pack has no MTP inputs (build it with data::make_pack)");
    mtp_ids = upload(dev, p.mtp_input_ids, "MTP input ids");
    mtp_targets = upload(dev, p.mtp_targets, "MTP targets");
    mtp_grad_ids =
        upload(dev, model::grad_ids(c, p.mtp_input_ids, false), "MTP embedding grad ids");
  }
  if (c.is_moe()) {
    group_all = upload(dev, token_groups(p, false), "router-loss groups");
    group_seq = upload(dev, token_groups(p, true), "router-loss groups per sample");
    moe_bad =
        upload(dev, std::vector<int32_t>(ops::kMoeBadWords, ops::kNoBadToken), "MoE error words");
  }
}

}  // namespace deltatron::model
