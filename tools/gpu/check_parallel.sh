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
  python3 "$repo/tools/gpu/compare_runs.py" score "$@" || status=1
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
  compare "$fx: dp2 (2 ranks, one device) vs one rank" "$out/$fx.one" "$out/$fx.dp2" 0 1e-6
  if [[ $fx == moe_* ]]; then
    run1 ep2 shared 2 "${args[@]}" --ep 2
    compare "$fx: ep2 (2 ranks, one device) vs one rank" "$out/$fx.one" "$out/$fx.ep2" 1e-6 2e-5
  fi
done
# Six training steps of the bundled MoE example in fp32: one rank with 2 micro-batches against 2
# ranks sharing the GPU with 1 each, with ZeRO 2 and with expert parallelism.
toml=$repo/examples/addition/train_moe.toml
train_args=(train "$toml" --training.steps=6 --training.warmup_steps=2
            --training.micro_batch_tokens=256 --training.save_every=6 --training.eval_every=0
            "--training.device=\"$device\"" --training.precision=fp32 --training.router_aux_coef=0.05
            "--data.cache_dir=\"$out/cache\"")
"$bin" "${train_args[@]}" --training.grad_accum=2 "--training.out_dir=\"$out/t_one\"" \
  >"$out/t_one.log" 2>&1 || { echo "   train one rank FAILED"; tail -3 "$out/t_one.log"; status=1; }
for layout in "zero2 --parallel.zero=2" "ep2 --parallel.ep=2"; do
  read -r name flags <<<"$layout"
  shared 2 "${train_args[@]}" --training.grad_accum=1 $flags "--training.out_dir=\"$out/t_$name\"" \
    >"$out/t_$name.log" 2>&1 || { echo "   train $name FAILED"; tail -3 "$out/t_$name.log"; status=1; continue; }
  python3 "$repo/tools/gpu/compare_runs.py" train "train $name (2 ranks, one device) vs one rank" \
    "$out/t_one" "$out/t_$name" 1e-5 || status=1
done
echo "== check_parallel: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
