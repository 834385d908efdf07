// The Qwen3.5 vision tower (patch embedding, learned position embedding, ViT blocks, 2x2 patch
// merger) over a pack's images, its hand-written backward, and the injection of its output into
// the text embedding at the image-pad positions (qwen35-vl spec 3, 4, 6). CPU and CUDA (fp32, and
// bf16 compute with an f32 residual stream, as the text blocks).
//
// Shape suffixes: P patches of the pack (pixel_values rows), C patch_dim columns, D vision
// hidden, H heads, K = D / H head dim, I MLP width, U = spatial_merge_size^2, M = P / U merged
// tokens (= image-pad tokens of the pack), O out_hidden_size (= the text hidden size), N pack
// tokens.
#pragma once

#include <vector>

#include "model/context.h"

namespace deltatron::model {

// A pack's images on the model's device, built once per pack from Pack::pixel_values and
// Pack::image_grid_thw (validated: a core::Error names the image and the problem).
struct VisionBatch {
  int64_t P = 0, M = 0;
  std::vector<int32_t> cu_host;  // attention segments: one per image and temporal group
  core::Segments seg;
  Buffer cu;                        // [seg.n + 1] i32
  Buffer pixels;                    // [P, C] f32
  Buffer pos_rc;                    // [2, P] i32: each patch's row and column in its grid (rotary)
  Buffer pos_idx, pos_w;            // [P, 4] i32 / f32: bilinear taps into pos_embed (spec 3.3)
  Buffer token_idx;                 // [M] i32: the pack positions of the image-pad tokens, in order
  std::vector<int32_t> token_host;  // the same on the host
  bool empty() const { return P == 0; }
};
// Empty (P = 0) for a pack without images. Errors: images with config.vision_mode off, a grid
// not divisible by spatial_merge_size, pixel_values of the wrong size, or a number of image-pad
// tokens (input_ids == image_token_id) that differs from the merged tokens of the images.
VisionBatch make_vision_batch(const Config& c, const data::Pack& pack, core::Device dev);

// One ViT block's saved activations (full mode only).
struct VisionBlockSaved {
  Buffer x_in, n1, mean1, rstd1, q, k, v, a, lse, h, n2, mean2, rstd2, f1, g1;
};
// What the backward needs; with_tower / with_merger say what was kept.
struct VisionSaved {
  std::vector<VisionBlockSaved> blocks;
  Buffer x_last, mn, mean_m, rstd_m, m1, mg;  // merger input, LN output/stats, fc1 out, GELU out
  bool tower = false, merger = false;
};

// Forward over the pack's images: y_MO = merger(blocks(patch_embed(pixels) + pos_embed)). Keeps
// the activations the backward of `mode` needs when with_grads (merger: the merger's; full:
// every block's too); frozen or !with_grads keeps nothing.
Buffer vision_fwd(const Ctx& cx, const VisionBatch& vb, bool with_grads, VisionSaved& s);

// Backward from dy_MO (the gradient of the merged rows): merger parameters, and in full mode
// every block, the position embedding and the patch embedding. Parameter gradients accumulate.
void vision_bwd(const Ctx& cx, const VisionBatch& vb, VisionSaved& s, const View& dy_MO);

// The text embedding x_ND (f32) with the image-pad rows replaced by y_MO (spec 4). Tensor
// parallel: every rank of the group runs the tower whole (its weights replicated) and holds all of
// y_MO; with sequence parallelism x holds this rank's rows [r Nl, (r+1) Nl) ([Nl, O]) and only the
// image-pad tokens among them are replaced.
void vision_inject(const Ctx& cx, const VisionBatch& vb, const View& y_MO, const View& x_ND);
// The gradient of the injected rows: dy_MO = dx_ND[image-pad positions]. Sequence parallel: dx is
// this rank's rows; each rank fills the merged rows of its image-pad tokens (zeros elsewhere) and
// the group sums them (disjoint rows: exact), so dy_MO is whole on every rank, the tower's backward
// runs whole on each and its gradients are complete and identical on the group's ranks (never
// summed over it: model/tensor_parallel.h). Without sp, dx_ND is already whole on every rank.
Buffer vision_gather_grad(const Ctx& cx, const VisionBatch& vb, const View& dx_ND);

}  // namespace deltatron::model
