#!/usr/bin/env bash
# Runs the GPU tests (CTest label gpu) on the GPU machine, from a build made elsewhere.
#
# Usage (on the GPU machine): tools/gpu/run_gpu_tests.sh [RUNTIME_DIR]  (default: build/runtime)
# RUNTIME_DIR is the bundle tools/gpu/pack_runtime.sh made on the build machine (gpu test
# executables, their CTestTestfile.cmake, lib/). Runs nvidia-smi, ctest -L gpu and, when
# available, compute-sanitizer memcheck on each gpu test executable. Exits non-zero if any fails.
set -uo pipefail
rt=$(cd "${1:-build/runtime}" && pwd) || { echo "run_gpu_tests: no runtime directory" >&2; exit 1; }
export LD_LIBRARY_PATH="$rt/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_WAIT_POLICY=PASSIVE
status=0

echo "== nvidia-smi"
nvidia-smi || status=1

echo "== ctest -L gpu"
ctest --test-dir "$rt" -L gpu --output-on-failure || status=1

if command -v compute-sanitizer >/dev/null; then
  for t in $(ctest --test-dir "$rt" -L gpu -N | sed -n 's/^ *Test *#[0-9]*: *//p'); do
    echo "== compute-sanitizer --tool memcheck $t (API errors the tests provoke on purpose are not reported)"
    compute-sanitizer --tool memcheck --report-api-errors no --error-exitcode 1 "$rt/$t" || status=1
  done
else
  echo "== compute-sanitizer not found: memcheck skipped"
fi
echo "== run_gpu_tests: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
