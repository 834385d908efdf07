#!/usr/bin/env bash
# `deltatron score --device cuda` through the CLI on every golden fixture (tests/data/golden:
# HF checkpoints — text and multimodal layouts, F32/BF16/F16 weights, sharded, fused experts,
# MTP — with Hugging Face's float64 per-sample losses and gradients). fp32 mode must meet the CPU
# bounds (loss 1e-5 relative, gradients 1e-4 relative RMS per tensor; docs/tolerances.md), the
# same with every sample in its own pack (--pack-tokens 1) and padded to multiples of 8; bf16
# mode is reported (its bounds depend on each fixture's conditioning; see test_gpu_model).
#   tools/gpu/check_score.sh DELTATRON [OUT_DIR]     (DEVICE=cpu: the same fp32 checks on the CPU)
set -uo pipefail
bin=${1:?usage: check_score.sh DELTATRON [OUT_DIR]}
out=${2:-/tmp/dt-score}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$out"
device=${DEVICE:-cuda}
runs=("fp32 packed" "fp32 alone --pack-tokens 1" "fp32 pad8 --pad-multiple 8")
[[ $device == cuda ]] && runs+=("bf16 packed")
status=0
for dir in "$repo"/tests/data/golden/*/; do
  case=$(basename "$dir")
  extra=()
  if [[ -f $dir/golden.json ]]; then
    s=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("mtp_scale", 0))' \
      "$dir/golden.json")
    extra=(--mtp-scale "$s")
  fi
  for run in "${runs[@]}"; do
    read -r prec name flags <<<"$run"
    o="$out/$case.$prec.$name"
    if ! "$bin" score --model "$dir" --data "$dir/samples.jsonl" --output "$o.jsonl" \
         --grad-out "$o.safetensors" --device "$device" --precision "$prec" ${flags:-} "${extra[@]}" \
         >"$o.log" 2>&1; then
      echo "   $case $prec $name: deltatron score FAILED"; tail -3 "$o.log" | sed 's/^/      /'
      status=1; continue
    fi
    python3 - "$dir" "$o" "$prec" "$case $prec $name" "$repo/tools/gpu" <<'PY' || status=1
import json, sys
sys.path.insert(0, sys.argv[5])
from compare_runs import tensors, worst_rel_rms
d, o, prec, label = sys.argv[1:5]

def lines(path):
    return [json.loads(l) for l in open(path) if l.strip()]

want, got = lines(d + "/expected.jsonl"), lines(o + ".jsonl")
assert len(want) == len(got), f"{label}: {len(got)} output lines, want {len(want)}"
loss = 0.0
for w, g in zip(want, got):
    assert w["n_tokens"] == g["n_tokens"], f"{label}: sample {w['index']} token count"
    for key in ("loss_sum", "mtp_loss_sum"):
        if key in w:
            loss = max(loss, abs(g[key] - w[key]) / max(abs(w[key]), 1.0))
gw = tensors(d + "/grads.safetensors", only_f32=True)
gg = tensors(o + ".safetensors", only_f32=True)
missing = sorted(set(gw) - set(gg))
assert not missing, f"{label}: gradients missing for {missing[:3]}"
grad, worst = worst_rel_rms(gw, gg)
ok = prec != "fp32" or (loss <= 1e-5 and grad <= 1e-4)
print(f"   {label}: worst loss rel err {loss:.2e}, worst grad rel RMS {grad:.2e} ({worst})"
      + ("" if prec == "fp32" else " [reported]") + ("" if ok else "  FAIL"))
sys.exit(0 if ok else 1)
PY
  done
done
echo "== check_score: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
