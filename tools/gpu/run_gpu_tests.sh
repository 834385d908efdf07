#!/usr/bin/env bash
# Runs the GPU tests (CTest label gpu) on the GPU machine, from a build made elsewhere.
#
# Usage (on the GPU machine): tools/gpu/run_gpu_tests.sh [RUNTIME_DIR]  (default: build/runtime)
# RUNTIME_DIR is the bundle tools/gpu/pack_runtime.sh made on the build machine (gpu test
# executables, their CTestTestfile.cmake, lib/). Runs nvidia-smi, ctest -L gpu and, when
# available, compute-sanitizer memcheck on the op tests (small shapes). NO_CTEST=1 / NO_MEMCHECK=1
# skip a part. Exits non-zero if any fails.
set -uo pipefail
rt=$(cd "${1:-build/runtime}" && pwd) || { echo "run_gpu_tests: no runtime directory" >&2; exit 1; }
nccl_dir=$("$(dirname "${BASH_SOURCE[0]}")/nccl_path.sh")  # NCCL is the machine's, not carried
export LD_LIBRARY_PATH="$rt/lib:/usr/local/cuda/lib64${nccl_dir:+:$nccl_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_WAIT_POLICY=PASSIVE
status=0

echo "== nvidia-smi"
nvidia-smi || status=1

if [[ ${NO_CTEST:-0} != 1 ]]; then
  echo "== ctest -L gpu"
  ctest --test-dir "$rt" -L gpu --output-on-failure || status=1
fi

if [[ ${NO_MEMCHECK:-0} == 1 ]]; then
  :
elif command -v compute-sanitizer >/dev/null; then
  # The op tests on their small shapes (DT_GPU_SMALL=1 skips the real-size sweeps and timings,
  # which memcheck would slow down a hundredfold); the model test is not memchecked.
  for t in $(ctest --test-dir "$rt" -L gpu -N | sed -n 's/^ *Test *#[0-9]*: *//p'); do
    [[ $t == test_cuda_* ]] || continue
    echo "== compute-sanitizer --tool memcheck $t (small shapes; API errors the tests provoke on purpose are not reported)"
    DT_GPU_SMALL=1 timeout 300 compute-sanitizer --tool memcheck --report-api-errors no \
      --error-exitcode 1 "$rt/$t" >"/tmp/memcheck_$t.log" 2>&1 || { status=1; tail -30 "/tmp/memcheck_$t.log"; }
    grep -E "ERROR SUMMARY|PASSED|FAILED" "/tmp/memcheck_$t.log" | tail -3
  done
else
  echo "== compute-sanitizer not found: memcheck skipped"
fi
echo "== run_gpu_tests: $([[ $status == 0 ]] && echo PASS || echo FAIL)"
exit $status
