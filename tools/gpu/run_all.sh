#!/usr/bin/env bash
# One command on the GPU machine: GPU tests, the training checks, deltatron's benchmark and the
# HF + FLA peer on the same batches, with the ratio. Built elsewhere (CPU machine with nvcc):
#
#   cmake -S . -B build && cmake --build build -j2 && tools/gpu/pack_runtime.sh build   # here
#   tools/bench/fetch_peer.sh                                                          # here, once
#   tools/gpu/run_all.sh build/runtime.tar.xz [OUT_DIR]   # GPU machine (carry it and .peer)
#
# Environment: PARTS (default "tests memcheck train score presets bench-2b peer-2b bench-moe peer-moe";
# "parallel": the parallel layouts' CUDA path on one GPU; "multi": issue 16 on every GPU of a
# multi-GPU machine (tools/gpu/multi_gpu.sh: exactness, loss curves, scaling, bus bandwidth, the
# 35b-a3b preset under ZeRO 3 + ep, a killed rank; ~9 minutes on 8 GPUs: alone in its call);
# the lean state's: "lean lean-curve bench-moe-lean bench-moe-offload bench-4b bench-9b"; LoRA's:
# "peft-load bench-2b-lora peer-2b-lora bench-27b-lora peer-27b-lora bench-35b-lora"; one
# GPU call has 10 minutes, so split them across calls), LENGTHS (batches for both benchmarks,
# default tools/bench/lengths_ln600_s0.8_8x8192.json), MOE_LAYERS (layers of the 35b-a3b preset
# on both sides, default 4: 8 layers, 7.7B parameters, do not fit one H200 with fp32 master
# weights, gradients and AdamW moments); "bench-2b-lean" (12 bytes of state per parameter), "bench-2b-keep" (no selective recomputation),
# "peer-2b-liger" / "peer-2b-lean-liger" / "peer-moe-liger" (HF + FLA + Liger against bench-2b /
# bench-2b-lean / bench-moe-lean of the same call), "bench-2b-32k" / "peer-2b-32k" (one 32k-token sequence a step), "trace-2b" (the bench's GPU
# timeline: idle gaps by cause; tools/gpu/trace). Vision (issue 17, docs/vision.md "Benchmark"): parts
# "bench-vl-frozen peer-vl-frozen bench-vl-merger peer-vl-merger bench-vl-full peer-vl-full" on
# the VL_PRESET-vl preset (default 2b) and its HF peer, batches VL_LENGTHS (frozen, merger; default
# tools/bench/lengths_vl_docs_8x8192.json) and VL_LENGTHS_FULL (full; default
# tools/bench/lengths_vl_docs_8x4096.json: the 2b tower's activations for 8192-token packs of
# documents do not fit an H100's plan next to the training state). Writes JSON results to OUT_DIR
# (default $OUT or /tmp/dt-run).
set -uo pipefail
rt=${1:-build/runtime.tar.xz}
if [[ $rt == *.tar.xz ]]; then  # the compressed bundle made by pack_runtime.sh
  mkdir -p /tmp/dt-runtime && tar -xJf "$rt" -C /tmp/dt-runtime || exit 1
  rt=/tmp/dt-runtime/runtime
fi
rt=$(cd "$rt" && pwd) || { echo "run_all: no runtime directory" >&2; exit 1; }
out=${2:-${OUT:-/tmp/dt-run}}
mkdir -p "$out"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
nccl_dir=$("$(dirname "${BASH_SOURCE[0]}")/nccl_path.sh")  # NCCL is the machine's, not carried
export LD_LIBRARY_PATH="$rt/lib:/usr/local/cuda/lib64${nccl_dir:+:$nccl_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_WAIT_POLICY=PASSIVE DT_TEST_DATA_DIR="$repo/tests/data"
status=0
parts=" ${PARTS:-tests memcheck train score presets bench-2b peer-2b bench-moe peer-moe} "
lengths=${LENGTHS:-$repo/tools/bench/lengths_ln600_s0.8_8x8192.json}
has() { [[ $parts == *" $1 "* ]]; }

if has tests; then NO_MEMCHECK=1 "$repo/tools/gpu/run_gpu_tests.sh" "$rt" || status=1; fi
if has memcheck; then NO_CTEST=1 "$repo/tools/gpu/run_gpu_tests.sh" "$rt" || status=1; fi
if has train; then "$repo/tools/gpu/check_train.sh" "$rt/deltatron" "$out/train" || status=1; fi
if has lean; then PARTS=bitwise "$repo/tools/gpu/check_lean.sh" "$rt/deltatron" "$out/lean" || status=1; fi
if has lean-curve; then
  PARTS=curve "$repo/tools/gpu/check_lean.sh" "$rt/deltatron" "$out/lean" || status=1
fi
if has score; then
  echo "== deltatron score --device cuda on every golden fixture (tools/gpu/check_score.sh)"
  "$repo/tools/gpu/check_score.sh" "$rt/deltatron" "$out/score" || status=1
fi
if has parallel; then
  echo "== parallel layouts on one GPU (tools/gpu/check_parallel.sh)"
  "$repo/tools/gpu/check_parallel.sh" "$rt/deltatron" "$out/parallel" || status=1
fi
if has multi; then
  echo "== multi-GPU layouts, scaling and failure (tools/gpu/multi_gpu.sh)"
  "$repo/tools/gpu/multi_gpu.sh" "$rt/deltatron" "$out/multi" || status=1
fi
if has presets; then
  echo "== every preset, a few layers (tools/gpu/preset_sweep.sh)"
  "$repo/tools/gpu/preset_sweep.sh" "$rt/deltatron" "$out/presets" || status=1
fi

bench() {  # name, bench args...; env BATCHES: another lengths file
  local name=$1; shift
  echo "== deltatron bench $name"
  "$rt/deltatron" bench "$@" --lengths "${BATCHES:-$lengths}" --json "$out/bench_$name.json" ||
    status=1
}
peer() {  # name, peer SIZE, [layers]; env LORA=1 (HF + PEFT + FLA), LIGER=1 (HF + FLA + Liger),
  # GC=1, VISION, BATCHES, OURS (the bench result to compare with; default the same name)
  local name=$1 size=$2 layers=${3:-} ours=${OURS:-$1}
  echo "== peer: HF transformers + FLA$([[ ${LORA:-0} == 1 ]] && echo ' + PEFT LoRA')$([[ ${LIGER:-0} == 1 ]] && echo ' + Liger')$([[ -n ${VISION:-} ]] && echo ", vision $VISION"), same batches ($name)"
  (cd "$repo" && LENGTHS="${BATCHES:-$lengths}" SIZE=$size LAYERS=$layers OUT="$out" \
     VISION=${VISION:-} LIGER=${LIGER:-0} PYTHONUNBUFFERED=1 \
     python3 tools/bench/peer_hf.py | tee "$out/peer_$name.log") || { status=1; return; }
  [[ -f $out/bench_$ours.json ]] || return
  python3 - "$out/bench_$ours.json" "$out/peer_$name.log" <<'PY'
import json, sys
ours = json.load(open(sys.argv[1]))
peer = json.loads([l for l in open(sys.argv[2]) if l.startswith("{")][-1])
if "tok_per_s" not in peer:  # the peer's run failed (e.g. {"packed": "OOM"})
    print(f"== ratio {ours['preset']}: deltatron {ours['real_tok_per_s']:.0f} tok/s, "
          f"{ours['peak_gib']:.1f} GiB | peer {peer.get('results')}: no ratio")
    sys.exit(0)
ptps, pmem = peer["tok_per_s"], peer["peak_gib"] or float("nan")  # None: a CPU smoke run
print(f"== ratio {ours['preset']}{' vs HF + FLA + Liger' if peer.get('liger') else ''}: deltatron {ours['real_tok_per_s']:.0f} tok/s, "
      f"{ours['peak_gib']:.1f} GiB | peer {ptps:.0f} tok/s, {pmem:.1f} GiB | "
      f"speed x{ours['real_tok_per_s'] / ptps:.2f}, memory x{ours['peak_gib'] / pmem:.2f}")
if "image_patches_per_s" in ours and "image_patches_per_s" in peer:
    print(f"== ratio {ours['preset']} vision {ours['vision']}: deltatron "
          f"{ours['image_patches_per_s']:.0f} image patches/s, MFU {100 * ours['mfu']:.1f}% "
          f"(tower {100 * ours['vision_tflops_share']:.0f}% of the FLOPs) | peer "
          f"{peer['image_patches_per_s']:.0f} patches/s | speed "
          f"x{ours['image_patches_per_s'] / peer['image_patches_per_s']:.2f}")
PY
}
has bench-2b && bench 2b --preset 2b
lean=(--master remainder --moments bf16)
has bench-2b-lean && bench 2b_lean --preset 2b "${lean[@]}"
has bench-2b-keep && bench 2b_keep --preset 2b --no-recompute-selective  # every activation kept
# Long context: one 32,768-token sequence a step (tools/bench/lengths_1x32768.json), both sides
# with activation recomputation (the peer's HF gradient checkpointing; without it HF + FLA does
# not fit 80 GB at this length), deltatron with the lean state.
l32=$repo/tools/bench/lengths_1x32768.json
has bench-2b-32k && BATCHES=$l32 bench 2b_32k --preset 2b --tokens 32768 --recompute "${lean[@]}"
has peer-2b-32k && BATCHES=$l32 GC=1 peer 2b_32k 2b
# The GPU timeline of the 2b bench (CUPTI through CUDA_INJECTION64_PATH; TRACE_LIB: the folder
# tools/gpu/trace/build.sh made, default build/trace): idle gaps and their causes per step.
if has trace-2b; then
  tlib=$(cd "${TRACE_LIB:-$repo/build/trace}" && pwd)/libdt_trace.so
  echo "== GPU timeline of deltatron bench 2b (tools/gpu/trace/gaps.py)"
  CUDA_INJECTION64_PATH=$tlib DT_TRACE_OUT=$out/trace_2b.csv "$rt/deltatron" bench --preset 2b \
    ${TRACE_ARGS:-} --lengths "$lengths" --json "$out/bench_2b_traced.json" | tail -3 || status=1
  python3 "$repo/tools/gpu/trace/gaps.py" "$out/trace_2b.csv" --steps 1:-1 | tee "$out/gaps_2b.txt"
  python3 "$repo/tools/gpu/trace/kernels.py" "$out/trace_2b.csv" --steps 1:-1 | tee "$out/kernels_2b.txt"
  xz -9 "$out/trace_2b.csv"
fi
has peer-2b && peer 2b 2b
# HF + FLA + Liger (memory-lean peer; liger-kernel carried in .peer by fetch_peer.sh), compared
# with the same bench run (bench-2b / bench-2b-lean / bench-moe-lean must run first in the call)
has peer-2b-liger && LIGER=1 OURS=2b peer 2b_liger 2b
has peer-2b-lean-liger && LIGER=1 OURS=2b_lean peer 2b_lean_liger 2b
moe_layers=${MOE_LAYERS:-4}
has bench-moe && bench moe --preset 35b-a3b --layers "$moe_layers"
# compared with bench-moe, or bench-moe-lean where only that ran in the call
has peer-moe && OURS=$([[ -f $out/bench_moe.json ]] && echo moe || echo moe_lean) \
  peer moe moe "$moe_layers"
# The lean state (issue 12): the MoE slice with 12 and 8 bytes of state per parameter (the peer
# above keeps bf16 weights and bf16 AdamW state), the 4b and 9b presets fully fine-tuned on one GPU.
has bench-moe-lean && bench moe_lean --preset 35b-a3b --layers "$moe_layers" "${lean[@]}"
has peer-moe-liger && LIGER=1 OURS=moe_lean peer moe_liger moe "$moe_layers"
has bench-moe-offload && bench moe_offload --preset 35b-a3b --layers "$moe_layers" "${lean[@]}" \
  --offload moments
has bench-4b && bench 4b_lean --preset 4b "${lean[@]}" --recompute
has bench-9b && bench 9b_lean --preset 9b "${lean[@]}" --recompute --offload "${OFFLOAD_9B:-none}"
# LoRA (issue 13): r 16, alpha 32, the default targets on both sides; PEFT loads our adapters.
if has peft-load; then
  echo "== PEFT loads deltatron's LoRA checkpoints (tools/gpu/check_peft_load.sh)"
  "$repo/tools/gpu/check_peft_load.sh" "$rt/deltatron" "$out/peft" || status=1
fi
has bench-2b-lora && bench 2b_lora --preset 2b --lora
has peer-2b-lora && LORA=1 peer 2b_lora 2b
has bench-27b-lora && bench 27b_lora --preset 27b --lora --recompute
has peer-27b-lora && LORA=1 GC=1 peer 27b_lora 27b
# 35b-a3b, all 40 layers, routed-expert adapters on: an H200 (run with needs_h200).
has bench-35b-lora && bench 35b_a3b_lora --preset 35b-a3b --lora --lora-experts --recompute
# Vision-language SFT (issue 17): packed document/receipt images + text, the tower frozen, merger
# only, or trained; HF Qwen3_5ForConditionalGeneration + FLA on the same batches.
vl=${VL_PRESET:-2b}
vl_len=${VL_LENGTHS:-$repo/tools/bench/lengths_vl_docs_8x8192.json}
vl_len_full=${VL_LENGTHS_FULL:-$repo/tools/bench/lengths_vl_docs_8x4096.json}
has bench-vl-frozen && BATCHES=$vl_len bench vl_frozen --preset "$vl-vl" --vision frozen
has peer-vl-frozen && BATCHES=$vl_len VISION=frozen peer vl_frozen "$vl"
has bench-vl-merger && BATCHES=$vl_len bench vl_merger --preset "$vl-vl" --vision merger
has peer-vl-merger && BATCHES=$vl_len VISION=merger peer vl_merger "$vl"
has bench-vl-full && BATCHES=$vl_len_full bench vl_full --preset "$vl-vl" --vision full \
  --tokens "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["micro_batch_tokens"])' "$vl_len_full")"
has peer-vl-full && BATCHES=$vl_len_full VISION=full peer vl_full "$vl"
echo "== run_all: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
