#!/usr/bin/env bash
# Per-kernel GPU time of deltatron's training step, from Nsight Compute (ncu, in the CUDA
# toolkit of the GPU machine): the bench's warm-up step, timed step and stage-profiled step,
# every kernel's duration (gpu__time_duration; caches and clocks left as in a normal run), summed
# per kernel name and divided by the three steps. Kernels serialise under ncu, so the sum is a little above the
# bench's step time; use it to rank kernels, not as a throughput number.
#   tools/gpu/kernel_profile.sh DELTATRON [bench args, e.g. --preset 2b] > table.txt
set -uo pipefail
bin=${1:?usage: kernel_profile.sh DELTATRON [bench args]}
shift
for a in "$@"; do  # the per-step division assumes exactly the three steps set below
  case $a in --lengths*|--steps*|--warmup*)
    echo "kernel_profile: $a is set by the script (1 warm-up + 1 timed + 1 profiled step)" >&2
    exit 2 ;;
  esac
done
ncu_bin=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
[[ -x $ncu_bin ]] || { echo "kernel_profile: ncu not found" >&2; exit 1; }
csv=$(mktemp /tmp/dt-ncu.XXXXXX.csv)
trap 'rm -f "$csv"' EXIT
"$ncu_bin" --metrics gpu__time_duration.sum --csv --print-units base --cache-control none \
  --clock-control none "$bin" bench "$@" --warmup 1 --steps 1 >"$csv" 2>/dev/null || {
  echo "kernel_profile: ncu or the bench failed" >&2; exit 1; }
python3 - "$csv" <<'PY'
import collections, csv, re, sys
lines = open(sys.argv[1]).read().splitlines()
head = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
tot, cnt = collections.defaultdict(float), collections.Counter()
for r in csv.DictReader(lines[head:]):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"]
    # cuBLAS/cuBLASLt kernels (nvjet_*, sm90_xmma_*, cutlass*) as one family per tile shape
    name = re.sub(r"^(void )?(deltatron::|gdn::|attn::)?(<unnamed>::)?", "", name)
    name = re.sub(r"\(.*$", "", name)[:70]
    tot[name] += float(r["Metric Value"].replace(",", "")) / 3e6
    cnt[name] += 1
total = sum(tot.values())
gemm = sum(v for k, v in tot.items() if k.startswith(("nvjet", "sm90_xmma", "cutlass")))
print(f"kernel time per step: {total:.1f} ms (cuBLASLt GEMMs {gemm:.1f} ms, {100 * gemm / total:.0f}%)")
print(f"{'ms/step':>8} {'%':>5} {'calls':>6}  kernel")
for k, v in sorted(tot.items(), key=lambda t: -t[1])[:30]:
    print(f"{v:8.3f} {100 * v / total:5.1f} {cnt[k] / 3:6.1f}  {k}")
PY
