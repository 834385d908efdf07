#!/usr/bin/env bash
# Training checks on the GPU machine (issue 5), with the bundled example data:
#  1. 200 steps of the tiny preset on the GPU (bf16 and fp32 modes) against the same 200 steps on
#     the CPU (same data, init, schedule): per-step losses must track the CPU curve.
#  2. Resume on the GPU is bitwise: 10 steps straight vs 5 steps + --resume to 10 (constant lr),
#     same GPU: identical losses for steps 6-10 and identical fp32 master weights.
# The lean state's checks (issue 12: remainder = fp32 bitwise, offload bitwise, bf16 moments' loss
# curve) are tools/gpu/check_lean.sh.
# Usage: tools/gpu/check_train.sh DELTATRON_BINARY OUT_DIR
# CPU_REF=DIR: use DIR/metrics.jsonl (a CPU run of the same command made beforehand, e.g. on the
# build machine: `deltatron train examples/addition/train.toml --training.steps=200
# --training.eval_every=0 --training.save_every=0 --training.log_every=50 --training.device=cpu`)
# instead of running the CPU reference here; it costs GPU-machine time and does not need a GPU.
set -uo pipefail
bin=$1
out=$2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cfg=$repo/examples/addition/train.toml
mkdir -p "$out"
status=0
common=(--training.steps=200 --training.eval_every=0 --training.save_every=0 --training.log_every=50)

run() {  # name, extra args...
  local name=$1; shift
  echo "== train $name"
  local t0=$SECONDS
  "$bin" train "$cfg" "${common[@]}" --training.out_dir="$out/$name" "$@" 2>&1 | tail -4 ||
    status=1
  echo "   ($((SECONDS - t0)) s)"
}
if [[ -n ${CPU_REF:-} ]]; then
  echo "== train cpu: the reference run in $CPU_REF"
  mkdir -p "$out/cpu" && cp "$CPU_REF/metrics.jsonl" "$out/cpu/" || status=1
else
  run cpu --training.device=cpu
fi
run gpu_bf16 --training.device=cuda --training.precision=bf16
run gpu_fp32 --training.device=cuda --training.precision=fp32

python3 - "$out" <<'PY' || status=1
import json, sys
out = sys.argv[1]
def losses(name):
    return [json.loads(l)["loss"] for l in open(f"{out}/{name}/metrics.jsonl") if '"loss"' in l]
cpu = losses("cpu")
ok = True
# Bounds: the first 20 steps must agree closely (fp32: float rounding only; bf16: its storage
# noise); over 200 steps the tiny model at lr 3e-3 amplifies any difference (the fp32 GPU run,
# equal to the CPU to ~1e-7 at step 20, ends 3.4% away), so the mean of the last 20 losses is
# bounded by 5% (fp32) and 10% (bf16, measured 6.9% on an H200).
for name, first_tol, tail_tol in (("gpu_fp32", 1e-3, 0.05), ("gpu_bf16", 5e-2, 0.10)):
    g = losses(name)
    assert len(g) == len(cpu) == 200, (name, len(g), len(cpu))
    d = [abs(a - b) for a, b in zip(g, cpu)]
    first = max(d[:20])                       # before divergence can compound
    tail = abs(sum(g[-20:]) - sum(cpu[-20:])) / 20 / (sum(cpu[-20:]) / 20)
    print(f"   {name}: max |loss - cpu| steps 1-20 {first:.2e} (bound {first_tol:g}); "
          f"max over 200 steps {max(d):.3f}; mean of the last 20 steps {sum(g[-20:]) / 20:.4f} "
          f"vs cpu {sum(cpu[-20:]) / 20:.4f} (rel. diff {tail:.3f}, bound {tail_tol:g})")
    ok &= first <= first_tol and tail <= tail_tol
print("== loss tracking:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
PY

echo "== resume on the GPU (bitwise)"
rc=(--training.device=cuda --training.schedule=constant --training.warmup_steps=0
    --training.eval_every=0 --training.log_every=5)
"$bin" train "$cfg" "${rc[@]}" --training.steps=10 --training.out_dir="$out/straight" \
  2>/dev/null || status=1
"$bin" train "$cfg" "${rc[@]}" --training.steps=5 --training.out_dir="$out/resumed" \
  2>/dev/null || status=1
"$bin" train "$cfg" "${rc[@]}" --training.steps=10 --training.out_dir="$out/resumed" --resume \
  2>/dev/null || status=1
a=$(ls -d "$out"/straight/checkpoint-* | tail -1)/training_state/master_weights.safetensors
b=$(ls -d "$out"/resumed/checkpoint-* | tail -1)/training_state/master_weights.safetensors
if cmp -s "$a" "$b"; then echo "   master weights after 10 steps: bitwise identical"
else echo "   master weights differ: $a vs $b"; status=1; fi
python3 - "$out" <<'PY' || status=1
import json, sys
out = sys.argv[1]
def by_step(name):
    return {j["step"]: j["loss"] for j in map(json.loads, open(f"{out}/{name}/metrics.jsonl")) if "loss" in j}
a, b = by_step("straight"), by_step("resumed")
same = all(a[s] == b[s] for s in range(6, 11))
print("   losses of steps 6-10:", "identical" if same else f"differ {a} {b}")
sys.exit(0 if same else 1)
PY
echo "== check_train: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
