#!/usr/bin/env bash
# The parallel layouts' CUDA path on one GPU (issue 15): `deltatron score` in fp32 on the golden
# fixtures and 6 training steps, with 2 ranks sharing the GPU through the staged Gloo backend
# (DT_DIST_BACKEND=gloo; NCCL refuses two ranks on one GPU) in data-parallel and expert-parallel
# layouts, and one rank through NCCL (DT_DIST_BACKEND=nccl), each against one plain CUDA rank.
#   tools/gpu/check_parallel.sh DELTATRON [OUT_DIR]     (DEVICE=cpu: the same on CPU ranks, no NCCL)
set -uo pipefail
bin=${1:?usage: check_parallel.sh DELTATRON [OUT_DIR]}
out=${2:-/tmp/dt-parallel}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$out"
status=0
device=${DEVICE:-cuda}
shared() {  # N ranks on GPU 0 (LOCAL_RANK forced to 0), staged Gloo
  local n=$1; shift
  DT_DIST_BACKEND=gloo "$bin" launch --nproc "$n" -- sh -c 'LOCAL_RANK=0 exec "$@"' sh "$bin" "$@"
}
compare() {  # label, reference prefix, prefix, loss tolerance, gradient tolerance
  python3 - "$@" <<'PY' || status=1
import json, math, struct, sys
label, ref, got, ltol, gtol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
def st(path):
    b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: struct.unpack(f"<{(v['data_offsets'][1] - v['data_offsets'][0]) // 4}f",
                             b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__"}
a = [json.loads(l) for l in open(ref + ".jsonl")]; b = [json.loads(l) for l in open(got + ".jsonl")]
loss = max(abs(x["loss_sum"] - y["loss_sum"]) / max(abs(x["loss_sum"]), 1.0) for x, y in zip(a, b))
ga, gb = st(ref + ".safetensors"), st(got + ".safetensors")
grad, worst = 0.0, ""
for k, w in ga.items():
    g = gb[k]
    num = math.sqrt(sum((p - q) ** 2 for p, q in zip(g, w)) / len(w)); den = math.sqrt(sum(q * q for q in w) / len(w))
    r = num / den if den > 0 else num
    if r > grad: grad, worst = r, k
ok = len(a) == len(b) and loss <= ltol and grad <= gtol
print(f"   {label}: worst loss rel diff {loss:.2e}, worst grad rel RMS {grad:.2e} ({worst})"
      + ("" if ok else "  FAIL"))
sys.exit(0 if ok else 1)
PY
}
for fx in dense_text_varied moe_text_fused_tied moe_vlm_mtp; do
  d=$repo/tests/data/golden/$fx
  args=(score --quiet --model "$d" --data "$d/samples.jsonl" --pack-tokens 64 --device "$device"
        --precision fp32 --router-aux-coef 0.01)
  run1() { local o=$out/$fx.$1; shift; "$@" --output "$o.jsonl" --grad-out "$o.safetensors" \
             >"$o.log" 2>&1 || { echo "   $fx $o: FAILED"; tail -3 "$o.log"; status=1; }; }
  run1 one "$bin" "${args[@]}"
  if [[ $device == cuda ]]; then
    run1 nccl1 env DT_DIST_BACKEND=nccl "$bin" "${args[@]}"
    compare "$fx: one rank through NCCL vs plain" "$out/$fx.one" "$out/$fx.nccl1" 0 0
  fi
  run1 dp2 shared 2 "${args[@]}"
  compare "$fx: dp2 (2 ranks, one GPU) vs one rank" "$out/$fx.one" "$out/$fx.dp2" 0 1e-6
  if [[ $fx == moe_* ]]; then
    run1 ep2 shared 2 "${args[@]}" --ep 2
    compare "$fx: ep2 (2 ranks, one GPU) vs one rank" "$out/$fx.one" "$out/$fx.ep2" 1e-6 2e-5
  fi
done
# Six training steps of the bundled MoE example in fp32: one rank with 2 micro-batches against 2
# ranks sharing the GPU with 1 each, with ZeRO 2 and with expert parallelism.
toml=$repo/examples/addition/train_moe.toml
train_args=(train "$toml" --training.steps=6 --training.warmup_steps=2
            --training.micro_batch_tokens=256 --training.save_every=6 --training.eval_every=0
            "--training.device=\"$device\"" --training.precision=fp32 --training.router_aux_type=seq
            "--data.cache_dir=\"$out/cache\"")
"$bin" "${train_args[@]}" --training.grad_accum=2 "--training.out_dir=\"$out/t_one\"" \
  >"$out/t_one.log" 2>&1 || { echo "   train one rank FAILED"; tail -3 "$out/t_one.log"; status=1; }
for layout in "zero2 --parallel.zero=2" "ep2 --parallel.ep=2"; do
  read -r name flags <<<"$layout"
  shared 2 "${train_args[@]}" --training.grad_accum=1 $flags "--training.out_dir=\"$out/t_$name\"" \
    >"$out/t_$name.log" 2>&1 || { echo "   train $name FAILED"; tail -3 "$out/t_$name.log"; status=1; continue; }
  python3 - "$out/t_one" "$out/t_$name" "$name" <<'PY' || status=1
import glob, json, math, struct, sys
def st(path):
    b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: struct.unpack(f"<{(v['data_offsets'][1] - v['data_offsets'][0]) // 4}f",
                             b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__" and v["dtype"] == "F32"}
def last(d):
    return sorted(glob.glob(d + "/checkpoint-*"))[-1] + "/model.safetensors"
def losses(d):
    return [json.loads(l)["loss"] for l in open(d + "/metrics.jsonl") if '"loss"' in l]
a, b = st(last(sys.argv[1])), st(last(sys.argv[2]))
w, worst = 0.0, ""
for k, x in a.items():
    y = b[k]
    num = math.sqrt(sum((p - q) ** 2 for p, q in zip(y, x)) / len(x)); den = math.sqrt(sum(q * q for q in x) / len(x))
    r = num / den if den > 0 else num
    if r > w: w, worst = r, k
la, lb = losses(sys.argv[1]), losses(sys.argv[2])
l = max(abs(p - q) / abs(p) for p, q in zip(la, lb))
ok = len(la) == len(lb) == 6 and l <= 1e-5 and w <= 1e-5
print(f"   train {sys.argv[3]} (2 ranks, one GPU) vs one rank: step losses {l:.2e}, weights {w:.2e} ({worst})"
      + ("" if ok else "  FAIL"))
sys.exit(0 if ok else 1)
PY
done
echo "== check_parallel: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
