#!/usr/bin/env python3
"""Generates the HF-transformers parity fixture for deltatron's vision-language golden test
(tests/test_golden_vl.cpp; see README_vl.md).

A tiny random Qwen3_5ForConditionalGeneration (text: GDN and gated-attention layers with MRoPE;
vision: 2 ViT blocks, patch 2, spatial merge 2) built with transformers' own classes. Three samples
with one or two images of different grids and random pixel_values; positions from HF's
get_rope_index (also checked against the spec's formula). For every sample alone the script
computes, in float64, the summed next-token cross entropy and (summed over the samples) the
gradient of every parameter, model.visual.* included (the "full" training mode; the merger and
frozen modes' gradients are subsets of these, zero elsewhere).

HF's float32 casts (RMSNorm, rotary tables of both towers, apply_rotary_pos_emb_vision, eager
softmax, the pos-embed interpolation weights, GDN) are turned into float64 by make_golden's
Float64Everywhere; OnlyFloat64 checks every ATen op produced float64. The unmodified HF path runs
too and must agree to float32 accuracy.
"""

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration, Qwen3_5TextConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_golden as mg  # noqa: E402

CASE = "vl_tiny"
SEED = 4321
VOCAB = 160
IMAGE, VIDEO, VSTART, VEND = 150, 151, 148, 149
HIDDEN = 32
VISION = dict(
    depth=2,
    hidden_size=16,
    intermediate_size=24,
    num_heads=2,  # head dim 8
    in_channels=3,
    patch_size=2,
    temporal_patch_size=2,
    spatial_merge_size=2,
    out_hidden_size=HIDDEN,
    num_position_embeddings=16,  # a 4 x 4 learned grid
    hidden_act="gelu_pytorch_tanh",
)
PATCH_DIM = 3 * 2 * 2 * 2
# Per sample: a list of ("text", n) / ("image", (t, h, w)) pieces; an image renders as
# <|vision_start|> + t*h*w/4 <|image_pad|> + <|vision_end|> (spec 4).
SAMPLES = [
    [("text", 3), ("image", (1, 4, 6)), ("text", 2), ("image", (1, 2, 2)), ("text", 4)],
    [("text", 5), ("image", (1, 6, 4)), ("text", 6)],
    [("image", (1, 4, 4)), ("text", 7)],
]


def text_config():
    return Qwen3_5TextConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=48,
        num_hidden_layers=3,
        layer_types=["full_attention", "linear_attention", "full_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_conv_kernel_dim=4,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        # 8 of 16 dims rotate: 4 frequencies, streams T H W T (interleaved MRoPE)
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5,
                         "mrope_section": [2, 1, 1], "mrope_interleaved": True},
    )


def build():
    cfg = Qwen3_5Config(text_config=text_config().to_dict(), vision_config=dict(VISION),
                        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART,
                        vision_end_token_id=VEND, tie_word_embeddings=False)
    cfg.architectures = ["Qwen3_5ForConditionalGeneration"]
    torch.manual_seed(SEED)
    model = Qwen3_5ForConditionalGeneration._from_config(cfg, attn_implementation="eager")
    model = model.to(torch.float64).eval()
    gen = torch.Generator().manual_seed(SEED)
    named = list(model.named_parameters())
    mg.redraw([(n, p) for n, p in named if not n.startswith("model.visual.")], mg.PARAM_RULES, gen,
              torch.float32)
    mg.redraw([(n, p) for n, p in named if n.startswith("model.visual.")], mg.VISION_RULES, gen,
              torch.float32)
    return cfg, model


def use_float64_rotary(model):
    """Both rotary tables in float64, with HF's own functions (HF builds them in float32)."""
    text = model.model.language_model.rotary_emb
    vis = model.model.visual.rotary_pos_emb
    with mg.Float64Everywhere():
        inv_t, _ = text.compute_default_rope_parameters(text.config)
        inv_v, _ = vis.compute_axial_rope_parameters(vis.config)
    assert inv_t.dtype == torch.float64 and inv_v.dtype == torch.float64
    text.inv_freq, text.original_inv_freq = inv_t, inv_t.clone()
    vis.inv_freq, vis.original_inv_freq = inv_v, inv_v.clone()


def make_samples():
    gen = torch.Generator().manual_seed(SEED + 1)
    out = []
    for pieces in SAMPLES:
        ids, grids = [], []
        for kind, arg in pieces:
            if kind == "text":
                ids += torch.randint(0, VSTART, (arg,), generator=gen).tolist()
            else:
                t, h, w = arg
                ids += [VSTART] + [IMAGE] * (t * h * w // 4) + [VEND]
                grids.append([t, h, w])
        patches = sum(t * h * w for t, h, w in grids)
        # float32-representable pixels, so the C++ side reads them exactly
        pix = torch.randn((patches, PATCH_DIM), generator=gen, dtype=torch.float64)
        pix = pix.to(torch.float32).to(torch.float64)
        labels = [-100 if t == IMAGE else t for t in ids]  # the image pads are not targets
        out.append({"input_ids": ids, "labels": labels, "image_grid_thw": grids,
                    "pixel_values": pix})
    return out


def spec_positions(ids, grids):
    """qwen35-vl spec 5.1, written out: text advances by 1, an image block by max(h, w)/2."""
    rows = [[], [], []]
    cur, g, n = 0, iter(grids), 0
    while n < len(ids):
        if ids[n] != IMAGE:
            for r in rows:
                r.append(cur)
            cur, n = cur + 1, n + 1
            continue
        t, h, w = next(g)
        lh, lw = h // 2, w // 2
        for row in range(lh):
            for col in range(lw):
                rows[0].append(cur)
                rows[1].append(cur + row)
                rows[2].append(cur + col)
        cur, n = cur + max(lh, lw), n + lh * lw
    return rows


def forward(model, s, position_ids=None):
    ids = torch.tensor([s["input_ids"]])
    kw = dict(input_ids=ids, pixel_values=s["pixel_values"],
              image_grid_thw=torch.tensor(s["image_grid_thw"]),
              mm_token_type_ids=(ids == IMAGE).to(torch.int32), use_cache=False)
    if position_ids is not None:
        kw["position_ids"] = position_ids
    return model(**kw).logits[0]


def run(model, samples, float64):
    model.zero_grad(set_to_none=True)
    f64, check = mg.Float64Everywhere(), mg.OnlyFloat64()
    results = []
    ctx = [f64, check] if float64 else []
    for c in ctx:
        c.__enter__()
    try:
        for s in samples:
            logits = forward(model, s)
            labels = torch.tensor(s["labels"])
            n = int((labels[1:] != -100).sum())
            loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
            loss.backward()
            results.append((loss.item(), n))
    finally:
        for c in reversed(ctx):
            c.__exit__(None, None, None)
    if float64:
        assert check.ops > 0 and sum(f64.rewrites.values()) > 0
    grads = {}
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
        grads[name] = p.grad.detach().clone()
    model.zero_grad(set_to_none=True)
    return results, grads, (f64.rewrites if float64 else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="fixture root, e.g. tests/data")
    ap.add_argument("--allow-other-versions", action="store_true")
    args = ap.parse_args()
    mg.check_environment(args.allow_other_versions)
    mg.prepare_run(args.out)
    out_dir = args.out / "golden_vl"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)

    cfg, model = build()
    samples = make_samples()
    # Positions: HF's get_rope_index, checked against the spec's formula.
    for s in samples:
        ids = torch.tensor([s["input_ids"]])
        pos, _ = model.model.get_rope_index(ids, (ids == IMAGE).to(torch.int32),
                                            image_grid_thw=torch.tensor(s["image_grid_thw"]))
        s["position_ids"] = pos[:, 0].tolist()
        assert s["position_ids"] == spec_positions(s["input_ids"], s["image_grid_thw"])

    tensors = {n: p.detach().to(torch.float32).contiguous() for n, p in model.named_parameters()}
    save_file(tensors, out_dir / "model.safetensors", metadata={"format": "pt"})
    cfg.save_pretrained(out_dir)
    (out_dir / "generation_config.json").unlink(missing_ok=True)

    native, native_grads = run(model, samples, float64=False)[:2]
    use_float64_rotary(model)
    results, grads, rewrites = run(model, samples, float64=True)
    loss_rel = max(abs(a - b) / abs(b) for (a, _), (b, _) in zip(native, results))
    grad_rel = max(mg.rel_err(native_grads[n], g) for n, g in grads.items())
    assert loss_rel < 1e-5 and grad_rel < 1e-4, (loss_rel, grad_rel)
    assert all(n > 0 for _, n in results)

    save_file({n: g.to(torch.float32).contiguous() for n, g in grads.items()},
              out_dir / "grads.safetensors", metadata={"format": "pt"})
    with open(out_dir / "samples.jsonl", "w") as f:
        for s in samples:
            row = dict(s)
            row["pixel_values"] = [float(x) for x in s["pixel_values"].flatten().tolist()]
            row["image_grid_thw"] = [v for g in s["image_grid_thw"] for v in g]
            row["position_ids"] = [v for r in s["position_ids"] for v in r]
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    with open(out_dir / "expected.jsonl", "w") as f:
        for i, (loss, n) in enumerate(results):
            f.write(json.dumps({"index": i, "loss_sum": loss, "n_tokens": n}) + "\n")
    print(json.dumps({
        "params": sum(p.numel() for p in model.parameters()),
        "visual_params": sum(p.numel() for n, p in model.named_parameters()
                             if n.startswith("model.visual.")),
        "tensors": len(grads),
        "losses": results,
        "loss_per_token": [l / n for l, n in results],
        "log_vocab": math.log(VOCAB),
        "native_hf_max_rel_loss_diff": loss_rel,
        "native_hf_max_rel_grad_diff": grad_rel,
        "float32_casts_rewritten": dict(sorted(rewrites.items())),
        "bytes": sum(p.stat().st_size for p in out_dir.iterdir()),
    }, indent=1))


if __name__ == "__main__":
    main()
