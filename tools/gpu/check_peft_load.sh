#!/usr/bin/env bash
# PEFT loads deltatron's LoRA adapter and computes what deltatron computes (issue 13): a tiny base
# (`init`), a short LoRA run of the bundled example on it (`train`, adapters in PEFT's files), then
# `score --adapter` against HF transformers + PEFT (PeftModel.from_pretrained on the same base and
# checkpoint), per-sample losses in fp32 on both sides; and `merge` against PEFT's
# merge_and_unload(). Needs python3 with torch, transformers and peft (the GPU machine has them).
#   tools/gpu/check_peft_load.sh DELTATRON [OUT_DIR]     (DEVICE=cpu: deltatron on the CPU)
set -uo pipefail
bin=${1:?usage: check_peft_load.sh DELTATRON [OUT_DIR]}
out=${2:-/tmp/dt-peft}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
device=${DEVICE:-cuda}
rm -rf "$out" && mkdir -p "$out"
for preset in tiny tiny-moe; do
  w="$out/$preset"
  "$bin" init --preset "$preset" --seed 3 --dtype BF16 --out "$w/base" \
    --tokenizer "$repo/examples/tokenizer/tokenizer.json" >"$w.log" 2>&1 || { tail -3 "$w.log"; exit 1; }
  "$bin" train "$repo/examples/addition/train.toml" --model.preset= --model.path="$w/base" \
    --training.out_dir="$w/lora" --training.steps=30 --training.warmup_steps=0 \
    --training.eval_every=0 --training.save_every=0 --training.device="$device" \
    --lora.r=8 --lora.alpha=16 --data.cache_dir="$w/cache" >>"$w.log" 2>&1 \
    || { tail -5 "$w.log"; exit 1; }
  ckpt=$(ls -d "$w"/lora/checkpoint-* | tail -1)
  python3 - "$w/base" "$w/samples.jsonl" <<'PY'
import json, random, sys
cfg = json.load(open(sys.argv[1] + "/config.json"))
vocab = cfg.get("vocab_size") or cfg["text_config"]["vocab_size"]
rng = random.Random(5)
with open(sys.argv[2], "w") as f:
    for n in [1, 7, 64, 65, 130, 300]:
        ids = [rng.randrange(vocab) for _ in range(n)]
        labels = [-100 if i < n // 4 else t for i, t in enumerate(ids)]
        f.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")
PY
  "$bin" score --model "$w/base" --adapter "$ckpt" --data "$w/samples.jsonl" \
    --output "$w/scores.jsonl" --device "$device" --precision fp32 --mtp-scale 0 --quiet \
    >>"$w.log" 2>&1 || { tail -3 "$w.log"; exit 1; }
  "$bin" merge --model "$w/base" --adapter "$ckpt" --out "$w/merged" >>"$w.log" 2>&1 \
    || { tail -3 "$w.log"; exit 1; }
  python3 "$repo/tools/gpu/check_peft_load.py" "$w/base" "$ckpt" "$w/samples.jsonl" \
    "$w/scores.jsonl" "$w/merged" || exit 1
done
