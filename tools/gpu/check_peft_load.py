#!/usr/bin/env python3
"""PEFT loads a deltatron LoRA checkpoint: no missing or unexpected adapter keys, every module of
the adapter file wrapped, per-sample losses equal to deltatron's `score --adapter` (fp32 both,
relative 1e-4), and PEFT's merge_and_unload() equal to `deltatron merge` (one rounding of the base
dtype). Used by tools/gpu/check_peft_load.sh.
Usage: check_peft_load.py BASE ADAPTER SAMPLES.jsonl DELTATRON_SCORES.jsonl DELTATRON_MERGED"""
import glob
import json
import sys

import peft
import torch
import transformers
from safetensors.torch import load_file


def main(base, adapter, samples_path, scores_path, merged_dir):
    cfg = json.load(open(f"{base}/config.json"))
    moe = "moe" in cfg["model_type"]
    cls = transformers.Qwen3_5MoeForCausalLM if moe else transformers.Qwen3_5ForCausalLM
    kw = {"experts_implementation": "eager"} if moe else {}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = cls.from_pretrained(base, dtype=torch.float32, **kw).to(dev)
    model = peft.PeftModel.from_pretrained(model, adapter)
    file_keys = set(load_file(f"{adapter}/adapter_model.safetensors"))
    state = {k for k in model.state_dict() if "lora_" in k}
    wrapped = {k.replace(".default", "") for k in state}
    assert wrapped == file_keys, (
        f"PEFT's adapter keys differ from the file: missing {sorted(file_keys - wrapped)[:5]}, "
        f"extra {sorted(wrapped - file_keys)[:5]}")
    samples = [json.loads(l) for l in open(samples_path) if l.strip()]
    scores = [json.loads(l) for l in open(scores_path) if l.strip()]
    torch.backends.cuda.matmul.allow_tf32 = False
    worst = 0.0
    with torch.no_grad():
        for s, d in zip(samples, scores):
            ids = torch.tensor([s["input_ids"]], device=dev)
            logits = model(input_ids=ids).logits[0].double()
            tgt = torch.tensor(s["labels"][1:], device=dev)
            mask = tgt != -100
            hf = (torch.nn.functional.cross_entropy(logits[:-1][mask], tgt[mask], reduction="sum")
                  .item() if mask.any() else 0.0)
            worst = max(worst, abs(hf - d["loss_sum"]) / max(abs(hf), 1e-12) if hf else 0.0)
    merged = model.merge_and_unload()
    ours = {}
    for f in glob.glob(f"{merged_dir}/*.safetensors"):
        ours.update(load_file(f))
    base_sd = {}
    for f in glob.glob(f"{base}/*.safetensors"):
        base_sd.update(load_file(f))
    merge_worst, n_merged = 0.0, 0
    for name, w in merged.state_dict().items():
        if name not in ours or name not in base_sd:
            continue
        b = base_sd[name]
        mine = ours[name].double()
        theirs = w.detach().double().cpu()
        if torch.equal(b.double(), mine):
            continue
        n_merged += 1
        # PEFT merges in f32; deltatron rounds the float64 sum once to the base dtype: allow one
        # unit of that dtype.
        bits = 7 if b.dtype == torch.bfloat16 else 10 if b.dtype == torch.float16 else 23
        # At the larger of the base and merged magnitudes: PEFT's f32 sum W + s B A carries an
        # absolute error of W's f32 rounding, large relative to a merged value that cancels.
        _, exp = torch.frexp(torch.maximum(theirs.abs(), b.double().abs()))
        ulp = torch.ldexp(torch.ones_like(theirs), exp - 1 - bits).clamp_min(2.0 ** -133)
        rel = (mine - theirs.to(b.dtype).double()).abs() / ulp
        merge_worst = max(merge_worst, rel.max().item())
    ok = worst <= 1e-4 and merge_worst <= 1.0 and n_merged == len(file_keys) // 2
    print(f"{'OK  ' if ok else 'FAIL'} PEFT {peft.__version__} loads {adapter}: "
          f"{len(file_keys) // 2} modules, {len(samples)} samples, worst loss rel diff vs "
          f"deltatron score --adapter {worst:.2e} (bound 1e-4); merge: {n_merged} tensors, worst "
          f"{merge_worst:.2f} ulp of the base dtype vs PEFT merge_and_unload")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
