#!/usr/bin/env bash
# One GPU call of a working session: the parts given as arguments (each "NAME:TIMEOUT_S:PARTS"
# for run_all.sh) and then the named GPU test binaries (TESTS="bin[:filter] ..."), each under its
# own timeout, logs under $OUT. Usage (GPU machine): tools/gpu/session_call.sh 'a:240:bench-2b' ...
set -u
out=${OUT:-/tmp/dt-session}
mkdir -p /tmp/dt-runtime "$out" && tar -xJf build/runtime.tar.xz -C /tmp/dt-runtime || exit 1
rt=/tmp/dt-runtime/runtime
for spec in "$@"; do
  IFS=: read -r name secs parts <<<"$spec"
  echo "== part $name ($parts), limit ${secs}s"
  timeout "$secs" env PARTS="$parts" tools/gpu/run_all.sh "$rt" "$out/$name" >"$out/$name.log" 2>&1
  echo "   rc $?"; grep -E "^== ratio|real tok|tok/s|peak|FAIL|PASS" "$out/$name.log" | tail -8
done
nccl_dir=$(tools/gpu/nccl_path.sh)
export DT_TEST_DATA_DIR=$PWD/tests/data OMP_WAIT_POLICY=PASSIVE
export LD_LIBRARY_PATH=$rt/lib:/usr/local/cuda/lib64${nccl_dir:+:$nccl_dir}
for t in ${TESTS:-}; do
  bin=${t%%:*}; filt='*'; [[ $t == *:* ]] && filt=${t#*:}
  timeout "${TEST_SECS:-150}" "$rt/$bin" --gtest_filter="$filt" >"$out/$bin.log" 2>&1 \
    && echo "== $bin PASS" || { echo "== $bin FAIL"; grep -E "Failure|FAILED|rror|Expected|actual|Which is" "$out/$bin.log" | head -14; }
  grep -E "^\[  PASSED|^\[  FAILED" "$out/$bin.log" | head -3
done
