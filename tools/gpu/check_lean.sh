#!/usr/bin/env bash
# The lean training state on the GPU (issue 12), with the bundled example data:
#  bitwise  training.master = remainder trains bitwise as fp32 masters (200 steps of the dense
#           and the MoE example, fp32 and bf16 moments), and training.offload = moments /
#           master+moments trains bitwise as no offload (the MoE example, 200 steps, remainder and
#           fp32 masters): identical per-step losses and gradient norms, identical checkpoints;
#           a resume with remainder masters, bf16 moments and offloaded state is bitwise.
#  curve    bf16 vs fp32 AdamW moments on a real-text chat set (tools/gpu/make_doc_chat.py: the
#           Python standard library's docstrings as answers), the 0.8b preset, STEPS steps
#           (default 300): the loss gap against the noise floor of two fp32-moment runs with
#           different data orders.
# Usage: tools/gpu/check_lean.sh DELTATRON_BINARY OUT_DIR   (PARTS="bitwise curve")
set -uo pipefail
bin=$1
out=$2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
parts=" ${PARTS:-bitwise curve} "
mkdir -p "$out"
status=0

same_runs() {  # dir_a dir_b label: metrics (loss, grad norm per step) and checkpoint files
  local a=$1 b=$2 label=$3 same=1
  for f in model.safetensors training_state/master_weights.safetensors \
           training_state/optimizer.safetensors; do
    cmp -s "$(ls -d "$a"/checkpoint-* | tail -1)/$f" "$(ls -d "$b"/checkpoint-* | tail -1)/$f" ||
      { echo "   $label: $f differs"; same=0; }
  done
  python3 - "$a" "$b" <<'PY' || same=0
import json, sys
def steps(d):
    return [(j["step"], j["loss"], j["grad_norm"]) for j in map(json.loads, open(f"{d}/metrics.jsonl")) if "loss" in j]
a, b = steps(sys.argv[1]), steps(sys.argv[2])
ok = len(a) > 0 and a == b
first = next((x for x, y in zip(a, b) if x != y), None)
print(f"   {len(a)} logged steps, loss and grad norm: {'identical' if ok else f'differ (first: {first})'}")
sys.exit(0 if ok else 1)
PY
  echo "   $label: $([[ $same == 1 ]] && echo "bitwise identical" || echo DIFFER)"
  [[ $same == 1 ]] || status=1
}

if [[ $parts == *" bitwise "* ]]; then
  lean=(--training.device=cuda --training.steps=200 --training.eval_every=0
        --training.save_every=0 --training.log_every=10)
  train() {  # example name args...
    local ex=$1 name=$2; shift 2
    local t0=$SECONDS
    "$bin" train "$repo/examples/addition/$ex.toml" "${lean[@]}" "$@" \
      --training.out_dir="$out/$name" > "$out/$name.log" 2>&1 ||
      { echo "   $name failed:"; tail -3 "$out/$name.log"; status=1; }
    echo "   $name: $((SECONDS - t0)) s"
  }
  echo "== master remainder vs fp32, 200 steps"
  for ex in train train_moe; do
    for mo in fp32 bf16; do
      for ma in fp32 remainder; do
        train $ex "${ex}_${mo}_${ma}" --training.moments=$mo --training.master=$ma
      done
      same_runs "$out/${ex}_${mo}_fp32" "$out/${ex}_${mo}_remainder" "$ex, moments $mo"
    done
  done
  echo "== offload vs none, 200 steps (MoE example)"
  train train_moe off_rem_moments --training.moments=bf16 --training.master=remainder \
    --training.offload=moments
  train train_moe off_rem_all --training.moments=bf16 --training.master=remainder \
    --training.offload=master+moments
  train train_moe off_fp32_all --training.moments=fp32 --training.master=fp32 \
    --training.offload=master+moments
  same_runs "$out/train_moe_bf16_remainder" "$out/off_rem_moments" "remainder, bf16, offload moments"
  same_runs "$out/train_moe_bf16_remainder" "$out/off_rem_all" "remainder, bf16, offload master+moments"
  same_runs "$out/train_moe_fp32_fp32" "$out/off_fp32_all" "fp32, fp32, offload master+moments"

  echo "== resume with remainder masters, bf16 moments, offloaded state (bitwise)"
  rc=(--training.device=cuda --training.schedule=constant --training.warmup_steps=0
      --training.eval_every=0 --training.log_every=1 --training.master=remainder
      --training.moments=bf16 --training.offload=master+moments)
  moe=$repo/examples/addition/train_moe.toml
  "$bin" train "$moe" "${rc[@]}" --training.steps=10 --training.out_dir="$out/res_straight" \
    > /dev/null 2>&1 || status=1
  "$bin" train "$moe" "${rc[@]}" --training.steps=5 --training.out_dir="$out/res_resumed" \
    > /dev/null 2>&1 || status=1
  "$bin" train "$moe" "${rc[@]}" --training.steps=10 --training.out_dir="$out/res_resumed" \
    --resume > /dev/null 2>&1 || status=1
  python3 - "$out" <<'PY' || status=1
import json, sys
out = sys.argv[1]
def by_step(name):
    return {j["step"]: j["loss"] for j in map(json.loads, open(f"{out}/{name}/metrics.jsonl")) if "loss" in j}
a, b = by_step("res_straight"), by_step("res_resumed")
same = all(a[s] == b[s] for s in range(6, 11))
print("   losses of steps 6-10:", "identical" if same else f"differ {a} {b}")
sys.exit(0 if same else 1)
PY
  for f in training_state/master_weights.safetensors training_state/optimizer.safetensors; do
    if cmp -s "$(ls -d "$out"/res_straight/checkpoint-* | tail -1)/$f" \
              "$(ls -d "$out"/res_resumed/checkpoint-* | tail -1)/$f"; then
      echo "   $f after 10 steps: bitwise identical"
    else echo "   $f differs"; status=1; fi
  done
fi

if [[ $parts == *" curve "* ]]; then
  steps=${STEPS:-300}
  echo "== bf16 vs fp32 moments: 0.8b preset, $steps steps on the docstring chat set"
  data=$out/doc_chat
  mkdir -p "$data"
  python3 "$repo/tools/gpu/make_doc_chat.py" "$data/train.jsonl" 2>/dev/null | grep make_doc_chat
  tar -xJf "$repo/tests/data/tokenizer/qwen35_tokenizer.tar.xz" -C "$data"
  tok=$data/qwen35_tokenizer.json
  cat > "$data/curve.toml" <<TOML
[model]
preset = "0.8b"
init_seed = 0
[data]
train = "train.jsonl"
eval = ""
tokenizer = "$tok"
format = "chat"
chat_template = "chatml"
loss_on = "assistant"
[training]
device = "cuda"
steps = $steps
micro_batch_tokens = 4096
lr = 6e-4
min_lr = 6e-5
warmup_steps = 30
schedule = "cosine"
weight_decay = 0.1
beta2 = 0.95
grad_clip = 1.0
seed = 1
eval_every = 0
save_every = 0
log_every = 1
master = "remainder"
TOML
  for run in "fp32 1" "fp32 2" "bf16 1"; do
    set -- $run
    t0=$SECONDS
    "$bin" train "$data/curve.toml" --training.moments=$1 --training.seed=$2 \
      --training.out_dir="$out/curve_$1_seed$2" > "$out/curve_$1_seed$2.log" 2>&1 ||
      { echo "   curve $1 seed $2 failed:"; tail -3 "$out/curve_$1_seed$2.log"; status=1; }
    echo "   moments $1, data seed $2: $((SECONDS - t0)) s"
  done
  python3 - "$out" <<'PY' || status=1
import json, sys
out = sys.argv[1]
def losses(name):
    return [j["loss"] for j in map(json.loads, open(f"{out}/{name}/metrics.jsonl")) if "loss" in j]
a, b, c = losses("curve_fp32_seed1"), losses("curve_fp32_seed2"), losses("curve_bf16_seed1")
n = min(len(a), len(b), len(c))
w = max(1, n // 6)  # the last sixth of the run
mean = lambda x: sum(x) / len(x)
fa, fb, fc = mean(a[n - w:n]), mean(b[n - w:n]), mean(c[n - w:n])
noise = abs(fa - fb)
gap = abs(fc - fa)
# per-window means along the run, to see the curves overlap, not only their ends
for s in range(0, n, max(1, n // 10)):
    e = min(n, s + max(1, n // 10))
    print(f"   steps {s + 1:4d}-{e:4d}: fp32 {mean(a[s:e]):.4f}  fp32 (seed 2) {mean(b[s:e]):.4f}  bf16 {mean(c[s:e]):.4f}")
print(f"   mean loss of the last {w} steps: fp32 {fa:.4f}, fp32 other data order {fb:.4f}, bf16 {fc:.4f}")
print(f"   bf16 - fp32 gap {gap:.4f} vs data-order noise {noise:.4f}: "
      f"{'within noise' if gap <= max(noise, 0.01 * fa) else 'OUTSIDE noise'}")
json.dump({"fp32": a, "fp32_seed2": b, "bf16": c}, open(f"{out}/curve_losses.json", "w"))
PY
fi
echo "== check_lean: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
