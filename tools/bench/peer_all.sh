#!/usr/bin/env bash
# Runs the peer benchmark (tools/bench/peer_hf.py) for SIZES (default "2b moe") on one lengths file,
# FLA kernels, modes packed + packed_cu; logs and JSON land in $OUT (default /tmp/peer).
#   tools/bench/peer_all.sh [lengths.json]      (env: SIZES, MODES, REPEAT, GC, TIMEOUT_<size>)
# On the GPU machine: run(carry=[".peer"], command="tools/bench/peer_all.sh")
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONUNBUFFERED=1 LENGTHS="${1:-${LENGTHS:-tools/bench/lengths_ln600_s0.8_8x8192.json}}"
export OUT="${OUT:-/tmp/peer}" MODES="${MODES:-packed,packed_cu}" REPEAT="${REPEAT:-2}"
export FLA="${FLA:-1}"
mkdir -p "$OUT"
if [ "$FLA" = 1 ] && [ ! -d .peer/fla ]; then
  echo "no .peer/fla: run tools/bench/fetch_peer.sh" >&2
  exit 1
fi
rc=0
for s in ${SIZES:-2b moe}; do
  t="TIMEOUT_$s"
  SIZE=$s timeout "${!t:-600}" python3 tools/bench/peer_hf.py 2>&1 \
    | grep -v "warnings.warn\|UserWarning" | tee "$OUT/peer_$s.log" || rc=1
done
grep -H "^# [a-z_]*: [0-9]* real tok/s\|OOM" "$OUT"/peer_*.log
exit $rc
