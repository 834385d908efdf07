#!/usr/bin/env python3
"""Checks that checkpoints written by `deltatron convert` load in Hugging Face transformers and
give the same parameters and logits as the checkpoints they came from.

Usage: python tools/golden/check_hf_load.py ORIG_DIR:CONVERTED_DIR [...]
Run on the GPU machine (torch 2.11, transformers 5.17). Exits non-zero on any mismatch.
"""
import json
import sys

import torch
import transformers


def model_class(cfg):
    mt = cfg["model_type"]
    return {
        "qwen3_5": transformers.Qwen3_5ForConditionalGeneration,
        "qwen3_5_moe": transformers.Qwen3_5MoeForConditionalGeneration,
        "qwen3_5_text": transformers.Qwen3_5ForCausalLM,
        "qwen3_5_moe_text": transformers.Qwen3_5MoeForCausalLM,
    }[mt]


def load(path):
    cfg = json.load(open(f"{path}/config.json"))
    cls = model_class(cfg)
    kwargs = dict(dtype=torch.float32)
    if "moe" in cfg["model_type"]:
        kwargs["experts_implementation"] = "eager"
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    return model.eval(), info


def main():
    ok = True
    for pair in sys.argv[1:]:
        orig, conv = pair.split(":")
        a, ia = load(orig)
        b, ib = load(conv)
        problems = {k: v for k, v in ib.items() if v and k != "unexpected_keys"}
        sa, sb = a.state_dict(), b.state_dict()
        diff_params = [k for k in sa if k not in sb or not torch.equal(sa[k], sb[k])]
        samples = [json.loads(l) for l in open(f"{orig}/samples.jsonl") if l.strip()]
        worst = 0.0
        with torch.no_grad():
            for s in samples[:6]:
                ids = torch.tensor([s["input_ids"]])
                la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
                worst = max(worst, (la - lb).abs().max().item())
        good = not problems and not diff_params and worst == 0.0
        ok &= good
        print(f"{'OK  ' if good else 'FAIL'} {conv}: loading problems {problems or 'none'}, "
              f"unexpected (ignored by HF) {len(ib.get('unexpected_keys', []))}, "
              f"differing params {diff_params[:5]}, max logit diff {worst:.3g}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
