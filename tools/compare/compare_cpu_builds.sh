#!/usr/bin/env bash
# Two builds of `deltatron score --device cpu` on every golden fixture, with gradients (and router
# losses on the MoE fixtures): per-sample losses and every parameter gradient, bitwise and
# relative. For refactors that must leave the CPU results bitwise equal where the operation
# order is unchanged, and within docs/tolerances.md elsewhere.
#
# Usage: tools/compare/compare_cpu_builds.sh NEW_DELTATRON OLD_DELTATRON [OUT_DIR]
set -euo pipefail
new=$1 old=$2 out=${3:-/tmp/dt-compare-cpu}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mkdir -p "$out"
for dir in "$repo"/tests/data/golden/*/; do
  name=$(basename "$dir")
  extra=()
  [[ $name == moe_* ]] && extra=(--router-aux-coef 0.01 --router-aux-type seq --z-loss-coef 0.001)
  for which in new old; do
    bin=$new; [[ $which == old ]] && bin=$old
    "$bin" score --model "$dir" --data "$dir/samples.jsonl" --pad-multiple 8 --quiet \
      --output "$out/${name}_$which.jsonl" --grad-out "$out/${name}_$which.safetensors" \
      "${extra[@]}" >/dev/null
  done
  python3 "$repo/tools/compare/compare_score_outputs.py" "$out/${name}_new" "$out/${name}_old" "$name"
done
