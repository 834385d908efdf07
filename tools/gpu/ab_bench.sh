#!/usr/bin/env bash
# One GPU call: the runtime's deltatron against a base binary (xz-compressed, built elsewhere from
# an earlier commit) on the 2b bench, alternated by tools/gpu/compare_builds.sh, after the GPU
# tests named in TESTS (session_call.sh). Usage (GPU machine):
#   TESTS="test_a test_b" tools/gpu/ab_bench.sh build/base/deltatron.xz [bench args]
set -u
base_xz=$1
shift
out=${OUT:-/tmp/dt-ab}
mkdir -p "$out"
TESTS=${TESTS:-} OUT=$out tools/gpu/session_call.sh
rt=/tmp/dt-runtime/runtime
xz -dc "$base_xz" >"$rt/deltatron_base" && chmod +x "$rt/deltatron_base"
nccl_dir=$(tools/gpu/nccl_path.sh)
export LD_LIBRARY_PATH=$rt/lib:/usr/local/cuda/lib64${nccl_dir:+:$nccl_dir} OMP_WAIT_POLICY=PASSIVE
[[ $# -gt 0 ]] || set -- --preset 2b
tools/gpu/compare_builds.sh "$rt/deltatron" "$rt/deltatron_base" "$out/ab" "$@"
