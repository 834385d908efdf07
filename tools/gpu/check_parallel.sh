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
for fx in dense_text_varied dense_text_mtp moe_text_fused_tied moe_vlm_mtp; do
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
  run1 zero3 shared 2 "${args[@]}" --zero 3
  compare "$fx: zero 3 (2 ranks, one device) vs one rank" "$out/$fx.one" "$out/$fx.zero3" 0 1e-6
  if [[ $fx == dense_text_mtp ]]; then  # heads divisible by 2 (dense_text_varied has 3)
    run1 tp2 shared 2 "${args[@]}" --tp 2
    compare "$fx: tp2 (2 ranks, one device) vs one rank" "$out/$fx.one" "$out/$fx.tp2" 1e-6 5e-5
    run1 tp2sp shared 2 "${args[@]}" --tp 2 --sp
    compare "$fx: tp2 + sp (2 ranks, one device) vs one rank" "$out/$fx.one" "$out/$fx.tp2sp" \
      1e-6 5e-5
  fi
  if [[ $fx == moe_* ]]; then
    run1 ep2 shared 2 "${args[@]}" --ep 2
    compare "$fx: ep2 (2 ranks, one device) vs one rank" "$out/$fx.one" "$out/$fx.ep2" 1e-6 2e-5
  fi
  if [[ $fx == moe_text_fused_tied ]]; then  # tp x ep
    run1 tp2ep2 shared 4 "${args[@]}" --tp 2 --sp --ep 2
    compare "$fx: tp2 + sp x ep2 (4 ranks, one device) vs one rank" "$out/$fx.one" \
      "$out/$fx.tp2ep2" 1e-6 5e-5
  fi
done
# Images under tensor parallelism (docs/parallel.md, "Images"): golden_vl with its tower trained,
# every rank of the group running the tower whole, on tp2 and tp2 + sp.
d=$repo/tests/data/golden_vl
vl_args=(score --quiet --model "$d" --data "$d/samples.jsonl" --pack-tokens 64 --device "$device"
         --precision fp32 --vision full)
vrun() { local o=$out/vl.$1; shift; "$@" --output "$o.jsonl" --grad-out "$o.safetensors" \
           >"$o.log" 2>&1 || { echo "   golden_vl $o: FAILED"; tail -3 "$o.log"; status=1; }; }
vrun one "$bin" "${vl_args[@]}"
for layout in "tp2 --tp 2" "tp2sp --tp 2 --sp"; do
  read -r name flags <<<"$layout"
  # shellcheck disable=SC2086
  vrun "$name" shared 2 "${vl_args[@]}" $flags
  compare "golden_vl with images: $name (2 ranks, one device) vs one rank" "$out/vl.one" \
    "$out/vl.$name" 1e-6 5e-5
done
# LoRA (docs/parallel.md, "LoRA under the layouts"): PEFT's routed-expert adapter on the MoE
# fixture, fp32 on every layout; bf16 with ZeRO 3 (the frozen base's bf16 shard, the routers' f32
# weights held whole) against one bf16 rank.
d=$repo/tests/data/golden/moe_text_fused_tied
lora_args=(score --quiet --model "$d" --data "$d/samples.jsonl" --pack-tokens 64 --device "$device"
           --adapter "$repo/tests/data/golden_lora/moe_experts/adapter" --router-aux-coef 0.01)
lrun() { local o=$out/lora.$1; shift; "$@" --output "$o.jsonl" --grad-out "$o.safetensors"            >"$o.log" 2>&1 || { echo "   lora $o: FAILED"; tail -3 "$o.log"; status=1; }; }
lrun one "$bin" "${lora_args[@]}" --precision fp32
for layout in "2 ep2 --ep 2" "2 zero3 --zero 3" "2 zero3ep2 --zero 3 --ep 2" "2 tp2 --tp 2" \
              "2 tp2zero3 --tp 2 --zero 3" "4 tp2ep2 --tp 2 --sp --ep 2"; do
  read -r n name flags <<<"$layout"
  # shellcheck disable=SC2086
  lrun "$name" shared "$n" "${lora_args[@]}" --precision fp32 $flags
  compare "lora $name ($n ranks, one device) vs one rank" "$out/lora.one" "$out/lora.$name" 1e-6 5e-5
done
if [[ $device == cuda ]]; then
  lrun one_bf16 "$bin" "${lora_args[@]}" --precision bf16
  lrun zero3_bf16 shared 2 "${lora_args[@]}" --precision bf16 --zero 3
  compare "lora zero3 bf16 (2 ranks, one device) vs one bf16 rank" "$out/lora.one_bf16" \
    "$out/lora.zero3_bf16" 1e-6 1e-5
fi
# Six training steps of the bundled MoE example in fp32: one rank with 2 micro-batches against 2
# ranks sharing the GPU with 1 each, with ZeRO 2 and with expert parallelism.
toml=$repo/examples/addition/train_moe.toml
train_args=(train "$toml" --training.steps=6 --training.warmup_steps=2
            --training.micro_batch_tokens=256 --training.save_every=6 --training.eval_every=0
            "--training.device=\"$device\"" --training.precision=fp32 --training.router_aux_coef=0.05
            "--data.cache_dir=\"$out/cache\"")
"$bin" "${train_args[@]}" --training.grad_accum=2 "--training.out_dir=\"$out/t_one\"" \
  >"$out/t_one.log" 2>&1 || { echo "   train one rank FAILED"; tail -3 "$out/t_one.log"; status=1; }
# Also ZeRO 2 and 3 with the moments offloaded (each rank its shard's, in pinned host memory), and tp2 +
# sp x ep2 on 4 ranks (2 data-parallel ranks of 1 micro-batch each; the tensor-parallel partial
# sums round differently: the bound of dense tp below).
for layout in "2 zero2 1e-5 --parallel.zero=2" "2 ep2 1e-5 --parallel.ep=2" \
              "2 zero2off 1e-5 --parallel.zero=2 --training.offload=moments" \
              "2 zero3off 1e-5 --parallel.zero=3 --training.offload=moments" \
              "4 tp2ep2 1e-4 --parallel.tp=2 --parallel.sp=true --parallel.ep=2"; do
  read -r n name tol flags <<<"$layout"
  # shellcheck disable=SC2086
  shared "$n" "${train_args[@]}" --training.grad_accum=1 $flags "--training.out_dir=\"$out/t_$name\"" \
    >"$out/t_$name.log" 2>&1 || { echo "   train $name FAILED"; tail -3 "$out/t_$name.log"; status=1; continue; }
  python3 "$repo/tools/gpu/compare_runs.py" train "train $name ($n ranks, one device) vs one rank" \
    "$out/t_one" "$out/t_$name" "$tol" || status=1
done
# The dense example with ZeRO 3 (2 ranks x 1 micro-batch vs 1 x 2) and with tensor + sequence
# parallelism (one group of 2 ranks runs the same micro-batch: vs one rank with 1).
dense_args=("${train_args[@]}")
dense_args[1]=$repo/examples/addition/train.toml
train1() {  # name, ranks, flags...: one run into $out/d_NAME
  local name=$1 n=$2; shift 2
  local run=("$bin"); [[ $n == 2 ]] && run=(shared 2)
  "${run[@]}" "${dense_args[@]}" "$@" "--training.out_dir=\"$out/d_$name\"" >"$out/d_$name.log" \
    2>&1 || { echo "   train dense $name FAILED"; tail -3 "$out/d_$name.log"; status=1; }
}
train1 one_ga2 1 --training.grad_accum=2
train1 one_ga1 1 --training.grad_accum=1
train1 zero3 2 --training.grad_accum=1 --parallel.zero=3
train1 tp2sp 2 --training.grad_accum=1 --parallel.tp=2 --parallel.sp=true
python3 "$repo/tools/gpu/compare_runs.py" train "train dense zero 3 (2 ranks, one device) vs one rank" \
  "$out/d_one_ga2" "$out/d_zero3" 1e-5 || status=1
python3 "$repo/tools/gpu/compare_runs.py" train "train dense tp2 + sp (2 ranks, one device) vs one rank" \
  "$out/d_one_ga1" "$out/d_tp2sp" 1e-4 || status=1
echo "== check_parallel: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
