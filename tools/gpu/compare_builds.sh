#!/usr/bin/env bash
# Old build vs new build on the same GPU in one call, same batches: `deltatron bench` of each
# binary, alternated (new, old, new, old) so drift of the card shows, then the ratios of
# real tokens/s and peak memory (new / old). For refactors that must not cost speed or memory.
#
# Usage (GPU machine): tools/gpu/compare_builds.sh NEW_DELTATRON OLD_DELTATRON OUT_DIR [bench args]
#   e.g. compare_builds.sh rt/deltatron rt/deltatron_old $OUT/cmp --preset 2b
# LENGTHS: the batches (default tools/bench/lengths_ln600_s0.8_8x8192.json). LD_LIBRARY_PATH must
# hold the bundle's lib/ (run_all.sh sets it; or export it before).
set -uo pipefail
new=$1 old=$2 out=$3
shift 3
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
lengths=${LENGTHS:-$repo/tools/bench/lengths_ln600_s0.8_8x8192.json}
mkdir -p "$out"
tag=$(echo "$*" | tr -c 'a-zA-Z0-9\n' '_')
for round in 1 2; do
  for which in new old; do
    bin=$new; [[ $which == old ]] && bin=$old
    echo "== $which build, round $round: deltatron bench $*"
    "$bin" bench "$@" --lengths "$lengths" --json "$out/${which}_${tag}_$round.json" >"$out/${which}_${tag}_$round.log" 2>&1 ||
      { tail -5 "$out/${which}_${tag}_$round.log"; exit 1; }
    grep -E "tok/s|peak" "$out/${which}_${tag}_$round.log" | head -4
  done
done
python3 - "$out" "$tag" <<'PY'
import json, sys, statistics
out, tag = sys.argv[1], sys.argv[2]
r = {w: [json.load(open(f"{out}/{w}_{tag}_{k}.json")) for k in (1, 2)] for w in ("new", "old")}
tps = {w: statistics.mean(x["real_tok_per_s"] for x in r[w]) for w in r}
mem = {w: max(x["peak_gib"] for x in r[w]) for w in r}
print(f"== {tag}: new {tps['new']:.0f} tok/s {mem['new']:.2f} GiB | old {tps['old']:.0f} tok/s "
      f"{mem['old']:.2f} GiB | speed new/old x{tps['new'] / tps['old']:.3f}, "
      f"peak memory new/old x{mem['new'] / mem['old']:.3f}")
PY
