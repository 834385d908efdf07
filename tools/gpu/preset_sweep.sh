#!/usr/bin/env bash
# Every published preset, cut to a few layers, through `deltatron bench` on the GPU: real head
# counts and dims (GQA ratios, G = 2H and 3H value heads, 1024-5120 hidden), MoE with 256 and
# 512 experts, MTP. Each must train 3 steps to a finite loss, or, where the cut model still
# cannot fit the GPU, stop with deltatron's out-of-memory message (never a raw CUDA error).
#   tools/gpu/preset_sweep.sh DELTATRON [OUT_DIR]
set -uo pipefail
bin=${1:?usage: preset_sweep.sh DELTATRON [OUT_DIR]}
out=${2:-/tmp/dt-presets}
mkdir -p "$out"
status=0
# preset layers [extra flags]
cases=("0.8b 4" "2b 4 --mtp" "4b 4" "9b 4" "27b 4" "35b-a3b 4 --mtp" "122b-a10b 1" "397b-a17b 1")
for c in "${cases[@]}"; do
  read -r preset layers extra <<<"$c"
  log="$out/$preset.log"
  "$bin" bench --preset "$preset" --layers "$layers" --warmup 1 --steps 2 --tokens 8192 \
    $extra --json "$out/$preset.json" >"$log" 2>&1
  rc=$?
  tps=$(grep -m1 "^  real tokens/s" "$log" | awk '{print $3}')
  mem=$(grep -m1 "peak GPU memory" "$log" | awk '{print $4}')
  loss=$(grep -m1 "loss (last step)" "$log" | awk '{print $4}')
  if [[ $rc == 0 ]]; then
    echo "   $preset x$layers $extra: ok, loss $loss, $tps tok/s, $mem GiB"
  elif [[ $rc -lt 128 ]] && grep -q "out of GPU memory" "$log"; then
    echo "   $preset x$layers $extra: does not fit (clean message): $(grep -m1 'out of GPU memory' "$log" | cut -c1-240)"
  else
    echo "   $preset x$layers $extra: FAILED (exit $rc)"; tail -5 "$log" | sed 's/^/      /'
    status=1
  fi
done
echo "== preset_sweep: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
