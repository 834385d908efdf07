#!/usr/bin/env python3
"""Checks a vision-language checkpoint that `deltatron train` wrote against Hugging Face.

Usage: python tools/golden/check_vl_train.py CHECKPOINT_DIR DATA.jsonl [--limit 8]
           [--deltatron build/deltatron] [--chat-template qwen3_5]

For the first --limit chat rows of DATA (images as in examples/vision):
  1. `deltatron render --jsonl` gives deltatron's tokens (template, <|image_pad|> expansion, the
     trained mask) and image grids;
  2. HF tokenizers encodes the rendered text with the checkpoint's tokenizer.json: the same ids;
  3. transformers' Qwen2VLImageProcessorPil with the checkpoint's preprocessor_config.json gives
     pixel_values and the same grids;
  4. Qwen3_5ForConditionalGeneration.from_pretrained(CHECKPOINT_DIR) loads with no missing or
     unexpected tensor, and gives each row's summed cross-entropy over its trained tokens;
  5. `deltatron score --vision frozen` on those tokens, pixels and get_rope_index positions gives
     the same losses as HF run in float64 (relative difference below 1e-5; HF's own float32 path
     is printed too: on a trained 248320-id model it is the farther of the two, ~5e-4).
Needs torch, transformers 5.17 and Pillow (the /tmp/golden-venv of the working notes). Exits
non-zero on any mismatch.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from tokenizers import Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--deltatron", default="build/deltatron")
    ap.add_argument("--chat-template", default="qwen3_5")
    a = ap.parse_args()
    ck = a.checkpoint
    cfg = json.load(open(os.path.join(ck, "config.json")))
    image_id = cfg["image_token_id"]

    rendered = subprocess.run(
        [a.deltatron, "render", "--model", ck, "--data", a.data, "--chat-template",
         a.chat_template, "--limit", str(a.limit), "--jsonl"],
        check=True, capture_output=True, text=True).stdout.splitlines()
    rows = [json.loads(l) for l in open(a.data)][:a.limit]
    samples = [json.loads(l) for l in rendered]
    assert len(samples) == len(rows), (len(samples), len(rows))

    tok = Tokenizer.from_file(os.path.join(ck, "tokenizer.json"))
    pre = json.load(open(os.path.join(ck, "preprocessor_config.json")))
    ip = Qwen2VLImageProcessorPil(**{k: v for k, v in pre.items()
                                     if k not in ("processor_class", "image_processor_type")})
    model, info = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(
        ck, dtype=torch.float32, output_loading_info=True)
    model.eval()
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"HF loading: {bad}"
    n_visual = sum(1 for n, _ in model.named_parameters() if n.startswith("model.visual."))

    tokens, hf, f64 = [], [], []
    for row, s in zip(rows, samples):
        ids = s["input_ids"]
        assert tok.encode(s["text"], add_special_tokens=False).ids == ids, f"line {s['line']}"
        paths = [p["image"] for m in row["messages"] if isinstance(m["content"], list)
                 for p in m["content"] if p.get("type") == "image"]
        images = [Image.open(os.path.join(os.path.dirname(a.data), p)).convert("RGB")
                  for p in paths]
        out = ip(images=images, return_tensors="pt")
        grid = out["image_grid_thw"]
        assert grid.flatten().tolist() == s["image_grid_thw"], (grid, s["image_grid_thw"])
        labels = [t if m else -100 for t, m in zip(ids, s["assistant_mask"])]
        x = torch.tensor([ids])
        mm = (x == image_id).to(torch.int32)
        with torch.no_grad():
            pos, _ = model.model.get_rope_index(x, mm, image_grid_thw=grid)
            logits = model(input_ids=x, pixel_values=out["pixel_values"], image_grid_thw=grid,
                           mm_token_type_ids=mm, use_cache=False).logits[0]
        lab = torch.tensor(labels)
        hf.append((F.cross_entropy(logits[:-1], lab[1:], ignore_index=-100,
                                   reduction="sum").item(), int((lab[1:] != -100).sum())))
        if True:  # the same in float64 (the reference; HF's float32 casts left in place)
            m64 = model.to(torch.float64)
            with torch.no_grad():
                l64 = m64(input_ids=x, pixel_values=out["pixel_values"].double(),
                          image_grid_thw=grid, mm_token_type_ids=mm, use_cache=False).logits[0]
            f64.append(F.cross_entropy(l64[:-1].double(), lab[1:], ignore_index=-100,
                                       reduction="sum").item())
            model.to(torch.float32)
        tokens.append({"input_ids": ids, "labels": labels,
                       "image_grid_thw": grid.flatten().tolist(),
                       "pixel_values": out["pixel_values"].flatten().tolist(),
                       "position_ids": pos[:, 0].flatten().tolist()})

    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "tokens.jsonl")
        with open(data, "w") as f:
            for t in tokens:
                f.write(json.dumps(t) + "\n")
        scores = os.path.join(tmp, "scores.jsonl")
        subprocess.run([a.deltatron, "score", "--model", ck, "--data", data, "--output", scores,
                        "--vision", "frozen", "--quiet"], check=True)
        ours = sorted((json.loads(l) for l in open(scores)), key=lambda r: r["index"])
    worst = worst32 = 0.0
    for i, ((loss, n), r) in enumerate(zip(hf, ours)):
        assert r["n_tokens"] == n, (r, n)
        print(f"  HF float64 {f64[i]:.6f}  deltatron {r['loss_sum']:.6f}  HF float32 {loss:.6f}"
              f"  ({n} tokens)")
        worst = max(worst, abs(r["loss_sum"] - f64[i]) / abs(f64[i]))
        worst32 = max(worst32, abs(loss - f64[i]) / abs(f64[i]))
    print(f"{ck}: HF loads it ({n_visual} model.visual.* parameters, no missing/unexpected "
          f"tensors); {len(hf)} rows: tokens and grids equal; HF loss per token "
          f"{sum(l for l, _ in hf) / sum(n for _, n in hf):.4f}; worst relative loss difference "
          f"to HF in float64: deltatron (float32) {worst:.2e}, HF's own float32 path {worst32:.2e}")
    if worst > 1e-5:
        sys.exit(1)


if __name__ == "__main__":
    main()
