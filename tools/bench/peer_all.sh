#!/usr/bin/env bash
# Runs the peer benchmark (tools/bench/peer_hf.py) for SIZES (default "2b moe") on one lengths file,
# FLA kernels, modes packed + packed_cu; logs and JSON land in $OUT (default /tmp/peer).
#   tools/bench/peer_all.sh [lengths.json]      (env: SIZES, MODES, REPEAT, GC, TIMEOUT_<size>
#                                                with - and . as _ (TIMEOUT_35b_a3b); LORA=1 with
#                                                LORA_R, LORA_ALPHA, LORA_TARGETS)
# On the GPU machine: run(carry=[".peer"], command="tools/bench/peer_all.sh")
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONUNBUFFERED=1 LENGTHS="${1:-${LENGTHS:-tools/bench/lengths_ln600_s0.8_8x8192.json}}"
export OUT="${OUT:-/tmp/peer}" MODES="${MODES:-packed,packed_cu}" REPEAT="${REPEAT:-2}"
export FLA="${FLA:-1}"
# LoRA mode: peer_hf.py reads LORA and LORA_R / LORA_ALPHA / LORA_TARGETS from the environment
# this script inherits; its logs (like its JSON) get a _lora suffix
export LORA="${LORA:-0}"
suffix=""
[ "$LORA" = 1 ] && suffix=_lora
mkdir -p "$OUT"
if [ "$FLA" = 1 ] && [ ! -d .peer/fla ]; then
  echo "no .peer/fla: run tools/bench/fetch_peer.sh" >&2
  exit 1
fi
rc=0
for s in ${SIZES:-2b moe}; do
  t="TIMEOUT_${s//[^A-Za-z0-9_]/_}"
  SIZE=$s timeout "${!t:-600}" python3 tools/bench/peer_hf.py 2>&1 \
    | grep -v "warnings.warn\|UserWarning" | tee "$OUT/peer_$s$suffix.log" || rc=1
done
grep -H "^# [a-z_]*: [0-9]* real tok/s\|OOM" "$OUT"/peer_*.log
exit $rc
