#!/usr/bin/env python3
"""Trains the tiny-vl model of the vision example in Hugging Face transformers (PyTorch, CPU), as
an engine-independent reference for `deltatron train examples/vision/train.toml`.

    build-nocuda/deltatron init --preset tiny-vl --dtype F32 --seed 0 --out /tmp/tvl \\
        --tokenizer examples/vision/tokenizer.json
    /tmp/golden-venv/bin/python tools/vision/train_hf_tiny.py --init /tmp/tvl \\
        --deltatron build-nocuda/deltatron [--steps 600 --lr 3e-3 --vision full ...]

The same model (Qwen3_5ForConditionalGeneration loaded from the checkpoint `deltatron init`
writes, so both engines start from the same weights), the same rows (`deltatron render --jsonl`
gives the tokens and trained mask, which check_vl_train.py holds equal to HF tokenizers; HF's
Qwen2VLImageProcessorPil the pixels; HF's get_rope_index the positions) and the same objective
and optimizer as deltatron's defaults: per step, micro-batches of whole rows up to
--batch-tokens tokens, the summed cross-entropy of the trained tokens divided by their number,
gradient-norm clipping, AdamW (torch.optim.AdamW, decoupled decay on tensors with 2+ dimensions,
never on the embedding) with linear warm-up and cosine decay to --min-lr. Every --eval-every
steps: the held-out loss per trained token and the exact match (every trained token the argmax).
Variations: --vision frozen|merger|full, --tower-lr-scale (the tower's lr relative to the rest).
"""
import argparse
import json
import math
import os
import random
import subprocess
import time

import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


def load_rows(a, path, ip, model, image_id):
    """Each row's ids, labels (targets aligned with the next token), pixels, grid, positions."""
    out = subprocess.run(
        [a.deltatron, "render", "--model", a.init, "--data", path, "--chat-template",
         "qwen3_5", "--enable-thinking", "false", "--jsonl"],
        check=True, capture_output=True, text=True).stdout.splitlines()
    rows = [json.loads(l) for l in open(path)]
    samples = [json.loads(l) for l in out]
    assert len(rows) == len(samples)
    data = []
    for row, s in zip(rows, samples):
        ids = s["input_ids"]
        paths = [p["image"] for m in row["messages"] if isinstance(m["content"], list)
                 for p in m["content"] if p.get("type") == "image"]
        images = [Image.open(os.path.join(os.path.dirname(path), p)).convert("RGB")
                  for p in paths]
        px = ip(images=images, return_tensors="pt")
        grid = px["image_grid_thw"]
        assert grid.flatten().tolist() == s["image_grid_thw"]
        x = torch.tensor([ids])
        mm = (x == image_id).to(torch.int32)
        with torch.no_grad():
            pos, _ = model.model.get_rope_index(x, mm, image_grid_thw=grid)
        tgt = [t if m else -100 for t, m in zip(ids[1:], s["assistant_mask"][1:])] + [-100]
        data.append({"ids": ids, "tgt": tgt, "pixels": px["pixel_values"], "grid": grid,
                     "pos": pos[:, 0], "answer": row["messages"][-1]["content"]})
    return data


def restrict_vocab(model, rows, image_id):
    """Keeps the embedding rows of the ids in `rows` (renumbered in place, in id order) and ties
    the head to them: the same model with the softmax over those ids only. The new image id."""
    used = sorted({t for r in rows for t in r["ids"]})
    new = {t: i for i, t in enumerate(used)}
    for r in rows:
        r["ids"] = [new[t] for t in r["ids"]]
        r["tgt"] = [new[t] if t != -100 else -100 for t in r["tgt"]]
    old = model.model.language_model.embed_tokens.weight.data
    emb = torch.nn.Embedding(len(used), old.shape[1])
    emb.weight.data.copy_(old[torch.tensor(used)])
    model.model.language_model.embed_tokens = emb
    model.lm_head = torch.nn.Linear(old.shape[1], len(used), bias=False)
    model.lm_head.weight = emb.weight
    for c in {id(model.config): model.config, id(model.model.config): model.model.config}.values():
        c.image_token_id = new[image_id]
    print(f"vocabulary restricted to the {len(used)} ids the rows use")
    return new[image_id]


def batches(data, budget, rng):
    """An epoch's micro-batches: shuffled rows, filled in order up to `budget` tokens."""
    order = list(range(len(data)))
    rng.shuffle(order)
    out, cur, n = [], [], 0
    for i in order:
        L = len(data[i]["ids"])
        if cur and n + L > budget:
            out.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += L
    if cur:
        out.append(cur)
    return out


def forward(model, data, idx, image_id):
    """Summed CE over the trained tokens of rows idx (right-padded batch), their count, and per
    row (loss sum, tokens, exact)."""
    T = max(len(data[i]["ids"]) for i in idx)
    ids = torch.zeros(len(idx), T, dtype=torch.long)
    tgt = torch.full((len(idx), T), -100, dtype=torch.long)
    att = torch.zeros(len(idx), T, dtype=torch.long)
    pos = torch.zeros(3, len(idx), T, dtype=torch.long)
    for r, i in enumerate(idx):
        L = len(data[i]["ids"])
        ids[r, :L] = torch.tensor(data[i]["ids"])
        tgt[r, :L] = torch.tensor(data[i]["tgt"])
        att[r, :L] = 1
        pos[:, r, :L] = data[i]["pos"]
        pos[:, r, L:] = data[i]["pos"].max() + 1 + torch.arange(T - L)
    mm = (ids == image_id).to(torch.int32)
    pixels = torch.cat([data[i]["pixels"] for i in idx])
    grid = torch.cat([data[i]["grid"] for i in idx])
    h = model.model(input_ids=ids, attention_mask=att, position_ids=pos, pixel_values=pixels,
                    image_grid_thw=grid, mm_token_type_ids=mm, use_cache=False).last_hidden_state
    sel = tgt != -100
    logits = model.lm_head(h[sel])  # only the trained positions (the vocabulary is 248320)
    t = tgt[sel]
    ce = F.cross_entropy(logits, t, reduction="none")
    row = sel.nonzero()[:, 0]
    per = []
    ok = logits.argmax(-1) == t
    for r in range(len(idx)):
        m = row == r
        per.append((ce[m].sum().item(), int(m.sum()), bool(ok[m].all())))
    return ce.sum(), int(sel.sum()), per


def evaluate(model, data, image_id, budget):
    model.eval()
    loss = n = exact = 0
    by = {}
    with torch.no_grad():
        for idx in batches(data, budget, random.Random(0)):
            _, _, per = forward(model, data, idx, image_id)
            for i, (l, k, e) in zip(idx, per):
                loss += l
                n += k
                exact += e
    model.train()
    return loss / n, exact / len(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", required=True, help="checkpoint from `deltatron init`")
    ap.add_argument("--deltatron", default="build-nocuda/deltatron")
    ap.add_argument("--train", default="examples/vision/train.jsonl")
    ap.add_argument("--eval", default="examples/vision/eval.jsonl")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-tokens", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--beta2", type=float, default=0.98)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--vision", default="full", choices=["frozen", "merger", "full"])
    ap.add_argument("--tower-lr-scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stop-at", type=int, default=0, help="stop after this step (the schedule "
                    "still spans --steps)")
    ap.add_argument("--vocab", default="full", choices=["full", "used"],
                    help="used: keep only the embedding rows (and output logits) of the ids the "
                         "rows use, renumbered (fast: the 248320-way softmax dominates a step)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    cfg = json.load(open(os.path.join(a.init, "config.json")))
    image_id = cfg["image_token_id"]
    pre = json.load(open(os.path.join(a.init, "preprocessor_config.json")))
    ip = Qwen2VLImageProcessorPil(**{k: v for k, v in pre.items()
                                     if k not in ("processor_class", "image_processor_type")})
    model = transformers.Qwen3_5ForConditionalGeneration.from_pretrained(
        a.init, dtype=torch.float32)
    model.train()
    train = load_rows(a, a.train, ip, model, image_id)
    held = load_rows(a, a.eval, ip, model, image_id)
    if a.vocab == "used":
        image_id = restrict_vocab(model, train + held, image_id)
    print(f"{len(train)} training rows, {len(held)} held-out rows, "
          f"{sum(len(r['ids']) for r in train) / len(train):.1f} tokens a row, "
          f"{sum(sum(t != -100 for t in r['tgt']) for r in train) / len(train):.1f} trained")

    groups = {"decay": [], "no_decay": [], "tower_decay": [], "tower_no_decay": []}
    for name, p in model.named_parameters():
        tower = name.startswith("model.visual.")
        if tower and a.vision == "frozen" or tower and a.vision == "merger" and ".merger." not in name:
            p.requires_grad_(False)
            continue
        decay = p.dim() >= 2 and not name.endswith("embed_tokens.weight") \
            and not name.endswith("A_log") and not name.endswith("dt_bias")
        groups[("tower_" if tower else "") + ("decay" if decay else "no_decay")].append(p)
    scale = {"decay": 1.0, "no_decay": 1.0, "tower_decay": a.tower_lr_scale,
             "tower_no_decay": a.tower_lr_scale}
    opt = torch.optim.AdamW(
        [{"params": ps, "weight_decay": a.weight_decay if k.endswith("_decay") and
          not k.endswith("no_decay") else 0.0, "scale": scale[k]}
         for k, ps in groups.items() if ps],
        lr=a.lr, betas=(0.9, a.beta2), eps=1e-8, foreach=True)
    params = [p for g in opt.param_groups for p in g["params"]]

    def lr_at(step):  # deltatron's train/schedule.cpp
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        if a.schedule == "constant":
            return a.lr
        r = min(1.0, (step - a.warmup) / max(1, a.steps - a.warmup))
        return a.min_lr + (a.lr - a.min_lr) * 0.5 * (1 + math.cos(math.pi * r))

    rng = random.Random(a.seed)
    queue = []
    t0 = time.time()
    l0, e0 = evaluate(model, held, image_id, a.batch_tokens)
    print(f"step 0: held-out loss {l0:.4f}, exact {e0:.3f}", flush=True)
    run = run_n = 0
    for step in range(a.steps):
        if not queue:
            queue = batches(train, a.batch_tokens, rng)
        idx = queue.pop(0)
        loss, n, _ = forward(model, train, idx, image_id)
        opt.zero_grad(set_to_none=True)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(params, a.clip)
        for g in opt.param_groups:
            g["lr"] = lr_at(step) * g["scale"]
        opt.step()
        run += loss.item()
        run_n += n
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}: train loss {run / run_n:.4f} ({time.time() - t0:.0f} s)",
                  flush=True)
            run = run_n = 0
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            l, e = evaluate(model, held, image_id, a.batch_tokens)
            print(f"step {step + 1}: held-out loss {l:.4f}, exact {e:.3f}", flush=True)
        if step + 1 == a.stop_at:
            break


if __name__ == "__main__":
    main()
