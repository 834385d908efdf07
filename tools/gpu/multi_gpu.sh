#!/usr/bin/env bash
# Issue 16 in one command on a multi-GPU machine (docs/parallel.md, "Multi-GPU runs"), every part
# under its own `timeout`, about 9 minutes in all on 8 GPUs:
#   exact  `score --precision fp32` on 3 golden fixtures, one GPU against dp2, dp2 + ZeRO 3,
#          ep2, tp2 + sp and the largest layouts on all GPUs (ZeRO 3 x tp2 + sp x ep2 from 4 GPUs;
#          losses 1e-5, gradients 1e-4)
#   curve  bf16 training of the bundled examples: one GPU with grad_accum 2 (1 for tp) against
#          2 GPUs with ZeRO 1, ZeRO 3, ep2 (MoE) and tp2 + sp (CURVE_STEPS steps, default 50)
#   scale  `deltatron bench --preset 2b` data parallel on 1, 2, 4, 8 GPUs (as many as present), the
#          same global steps' micro-batches split over the ranks: per-GPU tokens/s retained
#   comm   `deltatron commbench` on all GPUs: all_reduce, reduce_scatter, all_gather bus bandwidth
#   moe    the 35b-a3b preset, all 40 layers, ZeRO 3 + expert parallelism over all GPUs: tokens/s
#          and TFLOP/s per GPU (against Megatron-Bridge's 262.6 per H100), peak memory; the state
#          options tried in order until one fits the memory plan (fp32 moments, bf16 moments,
#          bf16 moments + recomputation)
#   kill   a training run on all GPUs, one rank killed with SIGKILL mid-run: under `deltatron
#          launch` (the launcher stops the rest) and with the ranks started by hand (torchrun's
#          variables, no launcher: the others must fail on their own within DT_DIST_TIMEOUT)
# Results (JSON, logs) go to OUT_DIR/<part>/; a summary table at the end and OUT_DIR/summary.json.
#
#   tools/gpu/multi_gpu.sh DELTATRON [OUT_DIR]           (GPU machine; run_all.sh's PARTS=multi)
#   DEVICE=cpu tools/gpu/multi_gpu.sh DELTATRON OUT_DIR   (dry run: the same code paths on 2 CPU
#                                                         ranks over Gloo, tiny presets, few steps;
#                                                         the CTest multi_gpu_dry)
# Environment: PARTS (default "exact curve scale comm moe kill"), NGPU (default: nvidia-smi's
# count; DEVICE=cpu: 2), LENGTHS (bench batches, default tools/bench/lengths_ln600_s0.8_8x8192.json),
# BENCH_STEPS (timed steps of each 2b bench, default 8), MOE_LAYERS (default 40), MOE_EP (default
# NGPU), MOE_STEPS (default 4), CURVE_STEPS, FIXTURES (the golden fixtures of part exact),
# KILL_TIMEOUT (DT_DIST_TIMEOUT of the hand-started ranks, default 30), T_<PART> (each part's time
# limit in seconds, e.g. T_SCALE=150).
set -uo pipefail
bin=$(realpath "${1:?usage: multi_gpu.sh DELTATRON [OUT_DIR]}")
out=$(mkdir -p "${2:-${OUT:-/tmp/dt-multi}}" && cd "${2:-${OUT:-/tmp/dt-multi}}" && pwd)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
self=$repo/tools/gpu/multi_gpu.sh
compare=$repo/tools/gpu/compare_runs.py
device=${DEVICE:-cuda}
# NVLink multicast stays off on the lent machines (KINDS.md): kept set for every rank we start.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export OMP_WAIT_POLICY=PASSIVE
if [[ $device == cpu ]]; then
  n=${NGPU:-2}
  dry=1
else
  n=${NGPU:-$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)}
  dry=0
  # As run_all.sh: the runtime's libraries (pack_runtime.sh puts them beside the binary), CUDA's,
  # and the machine's NCCL.
  nccl_dir=$("$repo/tools/gpu/nccl_path.sh")
  rt_lib=$(dirname "$bin")/lib
  export LD_LIBRARY_PATH="$rt_lib:/usr/local/cuda/lib64${nccl_dir:+:$nccl_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
((n >= 1)) || { echo "multi_gpu: no GPUs" >&2; exit 1; }

# `deltatron ARGS` on k ranks (1: the plain command, no launcher).
ranks() {
  local k=$1; shift
  if ((k == 1)); then "$bin" "$@"; else "$bin" launch --nproc "$k" -- "$bin" "$@"; fi
}

# ---------------------------------------------------------------------------------------------
part_exact() {
  local o=$out/exact status=0
  mkdir -p "$o"
  # dense_text_varied (3 heads: dp and ZeRO 3 only) left out by default: about 5 s a run to start
  # 8 ranks, and the others cover what it would.
  local fixtures=${FIXTURES:-dense_text_mtp moe_text_fused_tied moe_vlm_mtp}
  for fx in $fixtures; do
    local d=$repo/tests/data/golden/$fx
    local args=(score --quiet --model "$d" --data "$d/samples.jsonl" --pack-tokens 64
                --device "$device" --precision fp32 --router-aux-coef 0.01)
    local layouts=("dp2 2" "dp2_zero3 2 --zero 3")
    ((n > 2)) && layouts+=("dp${n}_zero3 $n --zero 3")
    if [[ $fx == dense_text_mtp ]]; then  # 2 key-value heads: tp <= 2
      layouts+=("tp2sp 2 --tp 2 --sp")
      ((n > 2 && n % 2 == 0)) && layouts+=("dp$((n / 2))_tp2sp $n --tp 2 --sp")
    fi
    if [[ $fx == moe_* ]]; then  # 4 experts: ep <= 4
      layouts+=("ep2 2 --ep 2")
      local e=$((n < 4 ? n : 4))
      ((n > 2 && n % e == 0)) && layouts+=("dp${n}_zero3_ep$e $n --zero 3 --ep $e")
      # tensor x expert parallelism (the text fixture: the VLM's image packs refuse tp), ZeRO 3 on
      # top: tp2 + sp, ep2 among each tp slice's n / 2 data-parallel ranks
      [[ $fx == moe_text_fused_tied ]] && ((n >= 4 && n % 4 == 0)) &&
        layouts+=("zero3_tp2sp_ep2 $n --zero 3 --tp 2 --sp --ep 2")
    fi
    "$bin" "${args[@]}" --output "$o/$fx.one.jsonl" --grad-out "$o/$fx.one.safetensors" \
      >"$o/$fx.one.log" 2>&1 || { echo "   $fx one GPU: FAILED"; tail -3 "$o/$fx.one.log"; return 1; }
    for l in "${layouts[@]}"; do
      read -r name k flags <<<"$l"
      ((k <= n)) || continue
      local p=$o/$fx.$name
      # shellcheck disable=SC2086
      if ranks "$k" "${args[@]}" $flags --output "$p.jsonl" --grad-out "$p.safetensors" \
        >"$p.log" 2>&1; then
        COMPARE_JSONL=$o/compare.jsonl python3 "$compare" score "$fx: $name ($k ranks) vs one" \
          "$o/$fx.one" "$p" 1e-5 1e-4 || status=1
      else
        echo "   $fx $name: FAILED"; tail -3 "$p.log"; status=1
      fi
    done
  done
  return $status
}

# ---------------------------------------------------------------------------------------------
part_curve() {
  local o=$out/curve status=0 steps=${CURVE_STEPS:-$((dry ? 3 : 50))}
  mkdir -p "$o"
  ((n >= 2)) || { echo "   one GPU: nothing to compare"; return 0; }
  local dense=$repo/examples/addition/train.toml moe=$repo/examples/addition/train_moe.toml
  local common=(--training.steps="$steps" --training.eval_every=0 --training.save_every="$steps"
                --training.log_every=10 --training.warmup_steps=$((steps > 5 ? 5 : steps - 1))
                "--training.device=\"$device\"" "--data.cache_dir=\"$out/cache\"")
  [[ $device == cuda ]] && common+=(--training.precision=bf16)
  ((dry)) && common+=(--training.micro_batch_tokens=256)
  run() {  # name, ranks, toml, flags...
    local name=$1 k=$2 toml=$3; shift 3
    local t0=$SECONDS
    ranks "$k" train "$toml" "${common[@]}" "$@" "--training.out_dir=\"$o/$name\"" \
      >"$o/$name.log" 2>&1 || { echo "   train $name FAILED"; tail -3 "$o/$name.log"; return 1; }
    echo "   train $name: $((SECONDS - t0)) s"
  }
  # bf16 on different ranks sums the gradients in another order: the curves track, not match
  # (bounds as tools/gpu/check_train.sh's bf16 GPU-vs-CPU curve: 5e-2 over the first 20 steps;
  # the mean of the last 10 within 5%).
  curve() { COMPARE_JSONL=$o/compare.jsonl python3 "$compare" curve "$1" "$o/$2" "$o/$3" 5e-2 5e-2 ||
              status=1; }
  run one_ga2 1 "$dense" --training.grad_accum=2 || return 1
  run one_ga1 1 "$dense" --training.grad_accum=1 || status=1
  run zero1 2 "$dense" --training.grad_accum=1 --parallel.zero=1 && curve "dense zero 1 (2 ranks)" one_ga2 zero1
  run zero3 2 "$dense" --training.grad_accum=1 --parallel.zero=3 && curve "dense zero 3 (2 ranks)" one_ga2 zero3
  run tp2sp 2 "$dense" --training.grad_accum=1 --parallel.tp=2 --parallel.sp=true &&
    curve "dense tp2 + sp (2 ranks)" one_ga1 tp2sp
  run moe_one 1 "$moe" --training.grad_accum=2 &&
    run moe_ep2 2 "$moe" --training.grad_accum=1 --parallel.ep=2 &&
    curve "moe ep2 (2 ranks)" moe_one moe_ep2
  return $status
}

# ---------------------------------------------------------------------------------------------
bench_args() {  # timed steps, warm-up steps; the batches: the 8 x 8192-token SFT file, or a
                # tiny one (and 2 and 1 steps) for the dry run
  if ((dry)); then
    echo '{"steps": [[61, 40], [113], [29, 50, 21], [83], [120], [64, 64]]}' >"$out/lengths_dry.json"
    echo "--device cpu --tokens 128 --lengths $out/lengths_dry.json --steps 2 --warmup 1"
  else
    echo "--device cuda --lengths ${LENGTHS:-$repo/tools/bench/lengths_ln600_s0.8_8x8192.json}" \
      "--steps $1 --warmup $2"
  fi
}

part_scale() {
  local o=$out/scale status=0 preset=2b
  ((dry)) && preset=tiny
  mkdir -p "$o"
  local -a ba
  read -ra ba <<<"$(bench_args "${BENCH_STEPS:-8}" 3)"
  for k in 1 2 4 8; do
    ((k <= n)) || continue
    local t0=$SECONDS
    ranks "$k" bench --preset "$preset" "${ba[@]}" --json "$o/dp$k.json" >"$o/dp$k.log" 2>&1 ||
      { echo "   bench dp$k FAILED"; tail -3 "$o/dp$k.log"; status=1; continue; }
    echo "   bench $preset dp$k: $((SECONDS - t0)) s"
  done
  python3 - "$o" <<'PY' || status=1
import glob, json, os, sys
o = sys.argv[1]
runs = sorted((json.load(open(f)) for f in glob.glob(o + "/dp*.json")), key=lambda j: j["world_size"])
base = next((j["tok_per_s_per_gpu"] for j in runs if j["world_size"] == 1), None)
rows = []
print(f"   {'GPUs':>4} {'tok/s (job)':>12} {'tok/s/GPU':>10} {'retained':>9} {'step ms':>8} "
      f"{'TFLOP/s/GPU':>11} {'peak GiB':>9}")
for j in runs:
    kept = j["tok_per_s_per_gpu"] / base if base else None
    rows.append({"gpus": j["world_size"], "global_tok_per_s": j["global_tok_per_s"],
                 "tok_per_s_per_gpu": j["tok_per_s_per_gpu"], "retained": kept,
                 "step_s_median": j["step_s_median"], "tflops_per_gpu": j["tflops"],
                 "peak_gib": j["peak_gib"]})
    print(f"   {j['world_size']:>4} {j['global_tok_per_s']:>12.0f} {j['tok_per_s_per_gpu']:>10.0f} "
          f"{'' if kept is None else f'{100 * kept:.1f}%':>9} {1e3 * j['step_s_median']:>8.1f} "
          f"{j['tflops']:>11.1f} {j['peak_gib']:>9.1f}")
json.dump({"preset": runs[0]["preset"] if runs else None, "runs": rows},
          open(o + "/scaling.json", "w"), indent=1)
PY
  return $status
}

# ---------------------------------------------------------------------------------------------
part_comm() {
  local o=$out/comm
  mkdir -p "$o"
  local extra=()
  ((dry)) && extra=(--max-bytes 4194304 --iters 3 --warmup 1)
  ranks "$n" commbench --device "$device" --ops all_reduce,reduce_scatter,all_gather \
    "${extra[@]}" --json "$o/commbench.json" 2>"$o/commbench.err" | tee "$o/commbench.txt"
  return "${PIPESTATUS[0]}"
}

# ---------------------------------------------------------------------------------------------
part_moe() {
  local o=$out/moe preset=35b-a3b layers=${MOE_LAYERS-40} ep=${MOE_EP:-$n}
  mkdir -p "$o"
  if ((dry)); then preset=tiny-moe layers=; fi
  local -a ba
  read -ra ba <<<"$(bench_args "${MOE_STEPS:-4}" 2)"
  local try=0 ok=0
  for opts in "" "--moments bf16" "--moments bf16 --recompute"; do
    try=$((try + 1))
    local t0=$SECONDS
    # shellcheck disable=SC2086
    if ranks "$n" bench --preset "$preset" ${layers:+--layers $layers} --zero 3 --ep "$ep" \
      "${ba[@]}" $opts --json "$o/moe.json" >"$o/try$try.log" 2>&1; then
      echo "   $preset zero 3 + ep $ep on $n ranks, ${opts:-fp32 moments}: $((SECONDS - t0)) s"
      echo "${opts:-fp32 moments}" >"$o/options.txt"
      ok=1
      break
    fi
    echo "   ${opts:-fp32 moments}: failed ($((SECONDS - t0)) s): $(grep -m1 -o 'error: .*' \
      "$o/try$try.log" | cut -c1-200)"
  done
  ((ok)) || return 1
  python3 - "$o/moe.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"   {j['preset']} ({j['layers']} layers, {j['params'] / 1e9:.2f}B params), "
      f"{j['world_size']} ranks, layout {j['layout']}: {j['tok_per_s_per_gpu']:.0f} tok/s per GPU "
      f"({j['global_tok_per_s']:.0f} the job), {j['tflops']:.1f} TFLOP/s per GPU = "
      f"{100 * j['tflops'] / 262.6:.0f}% of Megatron-Bridge's 262.6, MFU {100 * j['mfu']:.1f}%, "
      f"peak {j['peak_gib']:.1f} GiB (largest rank), median step {1e3 * j['step_s_median']:.0f} ms")
PY
}

# ---------------------------------------------------------------------------------------------
part_kill() {
  local o=$out/kill status=0 k=$n
  mkdir -p "$o"
  ((k >= 2)) || { echo "   one GPU: no peer to kill"; return 0; }
  local limit=${KILL_TIMEOUT:-$((dry ? 10 : 30))}
  local args=(train "$repo/examples/addition/train.toml" --training.steps=1000000
              --training.eval_every=0 --training.save_every=0 --training.log_every=1
              "--training.device=\"$device\"" "--data.cache_dir=\"$out/cache\"")
  ((dry)) && args+=(--training.micro_batch_tokens=256)
  started() {  # wait (<= 120 s) for the first logged step of run dir $1; pids $2.. alive
    local dir=$1; shift
    for _ in $(seq 1200); do
      [[ -s $dir/metrics.jsonl ]] && return 0
      for p in "$@"; do kill -0 "$p" 2>/dev/null || return 1; done
      sleep 0.1
    done
    return 1
  }
  now() { date +%s.%N; }

  # 1. Under deltatron launch: SIGKILL to rank 1; the launcher must stop the others and exit.
  "$bin" launch --nproc "$k" -- "$bin" "${args[@]}" "--training.out_dir=\"$o/launch\"" \
    >"$o/launch.log" 2>&1 &
  local lpid=$!
  if started "$o/launch" "$lpid"; then
    local victim  # the launcher's child with RANK=1 in its environment (from /proc: no procps)
    victim=$(python3 - "$lpid" <<'PY'
import glob, sys
for stat in glob.glob("/proc/[0-9]*/stat"):
    try:
        pid, ppid = stat.split("/")[2], open(stat).read().rsplit(")", 1)[1].split()[1]
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    except OSError:
        continue
    if ppid == sys.argv[1] and b"RANK=1" in env:
        print(pid)
PY
)
    [[ -n $victim ]] || { echo "   under launch: no rank 1 found"; kill "$lpid"; wait "$lpid"; return 1; }
    local t0
    t0=$(now)
    kill -9 "$victim"
    # The launcher stops the others (SIGTERM, SIGKILL after its 5 s grace); a hang is cut here.
    local end=$((SECONDS + limit + 30))
    while kill -0 "$lpid" 2>/dev/null && ((SECONDS < end)); do sleep 0.1; done
    local dt
    dt=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
    kill -9 "$lpid" 2>/dev/null
    wait "$lpid"
    local rc=$?
    echo "   under launch: rank 1 (pid $victim) killed; the launcher exited with $rc after $dt s"
    grep -m2 '^launch:' "$o/launch.log" | sed 's/^/      /'
    echo "{\"mode\": \"launch\", \"ranks\": $k, \"exit\": $rc, \"seconds\": $dt}" >"$o/kill.jsonl"
    ((rc != 0)) || status=1
  else
    echo "   under launch: the run did not start"; tail -3 "$o/launch.log"; kill "$lpid" 2>/dev/null
    status=1
  fi

  # 2. Ranks started by hand with torchrun's variables (no launcher to stop them): SIGKILL to rank
  # 1; every other rank must exit non-zero with "error" in its log within DT_DIST_TIMEOUT.
  local port pids=()
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
  for ((r = 0; r < k; ++r)); do
    RANK=$r WORLD_SIZE=$k LOCAL_RANK=$r LOCAL_WORLD_SIZE=$k MASTER_ADDR=127.0.0.1 \
      MASTER_PORT=$port DT_DIST_TIMEOUT=$limit OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} \
      "$bin" "${args[@]}" "--training.out_dir=\"$o/direct\"" >"$o/direct_rank$r.log" 2>&1 &
    pids+=($!)
  done
  if ! started "$o/direct" "${pids[@]}"; then
    echo "   by hand: the run did not start"; tail -3 "$o/direct_rank0.log"
    kill -9 "${pids[@]}" 2>/dev/null
    return 1
  fi
  local t0 deadline
  t0=$(now)
  kill -9 "${pids[1]}"
  deadline=$(python3 -c "print($t0 + $limit + 15)")
  local -A ended=()
  while ((${#ended[@]} < k - 1)); do
    for ((r = 0; r < k; ++r)); do
      ((r == 1)) && continue
      [[ -n ${ended[$r]:-} ]] && continue
      kill -0 "${pids[$r]}" 2>/dev/null || ended[$r]=$(python3 -c "print(f'{$(now) - $t0:.2f}')")
    done
    python3 -c "import sys; sys.exit(0 if $(now) < $deadline else 1)" || break
    sleep 0.2
  done
  local worst=0 hung=0 ok=1
  for ((r = 0; r < k; ++r)); do
    ((r == 1)) && continue
    if [[ -z ${ended[$r]:-} ]]; then
      hung=$((hung + 1)); ok=0
      echo "   by hand: rank $r still running $limit + 15 s after the kill: killed"
      kill -9 "${pids[$r]}" 2>/dev/null
      wait "${pids[$r]}" 2>/dev/null
      continue
    fi
    wait "${pids[$r]}"
    local rc=$?
    local msg
    msg=$(grep -m1 -o 'error: .*' "$o/direct_rank$r.log" | cut -c1-160)
    echo "   by hand: rank $r exited with $rc after ${ended[$r]} s: ${msg:-no error message}"
    ((rc != 0)) && [[ -n $msg ]] || ok=0
    worst=$(python3 -c "print(max($worst, ${ended[$r]}))")
  done
  wait "${pids[1]}" 2>/dev/null
  echo "{\"mode\": \"direct\", \"ranks\": $k, \"timeout_s\": $limit, \"slowest_exit_s\": $worst," \
    "\"hung\": $hung, \"ok\": $([[ $ok == 1 ]] && echo true || echo false)}" >>"$o/kill.jsonl"
  echo "   by hand: every other rank exited with an error within ${worst} s" \
    "(DT_DIST_TIMEOUT $limit s): $([[ $ok == 1 ]] && echo PASS || echo FAIL)"
  ((ok)) || status=1
  return $status
}

# One part, run by the script itself under `timeout` (below).
if [[ -n ${_MULTI_GPU_PART:-} ]]; then
  rm -rf "${out:?}/$_MULTI_GPU_PART"  # an earlier run's results (the data cache stays)
  "part_$_MULTI_GPU_PART"
  exit $?
fi

# ---------------------------------------------------------------------------------------------
parts=${PARTS:-exact curve scale comm moe kill}
# Seconds per part: 530 in all, inside one 10-minute call with the runtime's unpacking.
declare -A limit_of=([exact]=120 [curve]=80 [scale]=120 [comm]=30 [moe]=110 [kill]=70)
echo "== multi_gpu: $n $([[ $device == cuda ]] && echo GPU\(s\) || echo CPU rank\(s\)), parts: $parts"
[[ $device == cuda ]] && nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader |
  sed 's/^/   /'
status=0
: >"$out/parts.jsonl"
for p in $parts; do
  declare -F "part_$p" >/dev/null || { echo "multi_gpu: unknown part '$p'" >&2; status=1; continue; }
  var=T_${p^^}
  t=${!var:-${limit_of[$p]}}
  echo "== $p (limit $t s)"
  t0=$SECONDS
  _MULTI_GPU_PART=$p timeout -k 10 "$t" "$self" "$bin" "$out" 2>&1 | tee "$out/$p.log"
  rc=${PIPESTATUS[0]}
  took=$((SECONDS - t0))
  res=$([[ $rc == 0 ]] && echo PASS || { [[ $rc == 124 || $rc == 137 ]] && echo TIMEOUT || echo FAIL; })
  [[ $rc == 0 ]] || status=1
  echo "{\"part\": \"$p\", \"result\": \"$res\", \"exit\": $rc, \"seconds\": $took, \"limit_s\": $t}" \
    >>"$out/parts.jsonl"
done

python3 - "$out" <<'PY'
import json, os, sys
o = sys.argv[1]
parts = [json.loads(l) for l in open(o + "/parts.jsonl")]
def jl(path):
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []
def js(path):
    return json.load(open(path)) if os.path.exists(path) else None
notes = {}
c = jl(o + "/exact/compare.jsonl")
if c:
    notes["exact"] = (f"{sum(r['ok'] for r in c)}/{len(c)} layouts within 1e-5 / 1e-4; worst loss "
                      f"{max(r['loss'] for r in c):.1e}, grad {max(r['grad'] for r in c):.1e}")
c = jl(o + "/curve/compare.jsonl")
if c:
    notes["curve"] = (f"{sum(r['ok'] for r in c)}/{len(c)} curves track; worst first-20 "
                      f"{max(r['first_abs'] for r in c):.1e}, tail {max(r['tail_rel'] for r in c):.1e}")
s = js(o + "/scale/scaling.json")
if s and s["runs"]:
    last = s["runs"][-1]
    kept = "" if last["retained"] is None else f", {100 * last['retained']:.1f}% per GPU retained"
    notes["scale"] = (f"{s['preset']}: {last['gpus']} ranks {last['tok_per_s_per_gpu']:.0f} tok/s/GPU"
                      + kept)
cb = js(o + "/comm/commbench.json")
if cb:
    notes["comm"] = ", ".join(f"{k} peak {v:.1f} GB/s" for k, v in cb["peak_busbw_gbps"].items())
m = js(o + "/moe/moe.json")
if m:
    notes["moe"] = (f"{m['layers']} layers, {m['tok_per_s_per_gpu']:.0f} tok/s/GPU, "
                    f"{m['tflops']:.1f} TFLOP/s/GPU ({100 * m['tflops'] / 262.6:.0f}% of 262.6), "
                    f"peak {m['peak_gib']:.1f} GiB")
k = jl(o + "/kill/kill.jsonl")
if k:
    notes["kill"] = "; ".join(
        f"launch: exit {r['exit']} after {r['seconds']} s" if r["mode"] == "launch" else
        f"by hand: slowest exit {r['slowest_exit_s']} s (timeout {r['timeout_s']} s), "
        f"{'ok' if r['ok'] else 'FAIL'}" for r in k)
print("\n== multi_gpu summary")
print(f"   {'part':<6} {'result':<8} {'time':>7}  numbers")
for p in parts:
    print(f"   {p['part']:<6} {p['result']:<8} {p['seconds']:>5} s  {notes.get(p['part'], '')}")
json.dump({"parts": parts, "notes": notes, "scaling": s, "moe": m, "commbench": cb and {
    "peak_busbw_gbps": cb["peak_busbw_gbps"], "avg_busbw_gbps": cb["avg_busbw_gbps"]}},
          open(o + "/summary.json", "w"), indent=1)
PY
echo "== multi_gpu: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
