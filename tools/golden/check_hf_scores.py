#!/usr/bin/env python3
"""Checks that a checkpoint written by `deltatron train` loads in Hugging Face transformers as-is
and that HF's per-sample losses match deltatron's `score` output on the same samples.

Usage: python tools/golden/check_hf_scores.py CKPT_DIR SAMPLES.jsonl DELTATRON_SCORES.jsonl
HF runs in float64 (weights upcast from the file), one sample at a time; deltatron's numbers are
float32. Exits non-zero if a relative difference exceeds 1e-4.
"""
import json
import sys

import torch
import transformers


def main(ckpt, samples_path, scores_path):
    cfg = json.load(open(f"{ckpt}/config.json"))
    moe = "moe" in cfg["model_type"]
    cls = transformers.Qwen3_5MoeForCausalLM if moe else transformers.Qwen3_5ForCausalLM
    kw = {"experts_implementation": "eager"} if moe else {}
    model, info = cls.from_pretrained(ckpt, dtype=torch.float64, output_loading_info=True, **kw)
    problems = {k: v for k, v in info.items() if v and k != "unexpected_keys"}
    assert not problems, f"HF loading problems: {problems}"
    samples = [json.loads(l) for l in open(samples_path) if l.strip()]
    scores = [json.loads(l) for l in open(scores_path) if l.strip()]
    worst = 0.0
    with torch.no_grad():
        for s, d in zip(samples, scores):
            ids = torch.tensor([s["input_ids"]])
            labels = s.get("labels", s["input_ids"])
            logits = model(input_ids=ids).logits[0].double()
            tgt = torch.tensor(labels[1:])
            mask = tgt != -100
            ce = torch.nn.functional.cross_entropy(logits[:-1][mask], tgt[mask], reduction="sum")
            hf = ce.item() if mask.any() else 0.0
            rel = abs(hf - d["loss_sum"]) / max(abs(hf), 1e-12)
            worst = max(worst, rel if hf else abs(d["loss_sum"]))
    ok = worst <= 1e-4
    print(f"{'OK  ' if ok else 'FAIL'} {ckpt}: HF loads it (unexpected keys ignored by HF: "
          f"{len(info.get('unexpected_keys', []))}); {len(samples)} samples, worst relative "
          f"loss difference HF float64 vs deltatron float32 = {worst:.3g}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main(*sys.argv[1:4]) else 1)
