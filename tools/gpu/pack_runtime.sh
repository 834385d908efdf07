#!/usr/bin/env bash
# Bundles the GPU tests of a build, and the shared libraries the GPU machine lacks, into
# BUILD/runtime/ so they run there with tools/gpu/run_gpu_tests.sh BUILD/runtime.
#
# Usage (on the build machine, after building): tools/gpu/pack_runtime.sh [BUILD_DIR]  (default:
# build). Makes BUILD/runtime/ with
#   lib/                 every library ldd resolves for the gpu tests and deltatron, except the
#                        C/C++ runtime every Linux has (glibc, libstdc++, libgcc_s) and the CUDA
#                        driver and toolkit libraries (on the GPU machine in /usr/local/cuda/lib64)
#   deltatron            the CLI (bench, score/train --device cuda)
#   test_* (gpu tests)   copies of the executables listed in BUILD/gpu_tests.txt
#   CTestTestfile.cmake  those tests with their labels (gpu and the level) and relative paths (the
#                        folder can move)
# and BUILD/runtime.tar.xz, the same folder compressed (what travels to the GPU machine).
# ONLY="test_a test_b": bundle only these gpu tests (a smaller bundle, when a call carries more).
set -euo pipefail
build=${1:-build}
[[ -f $build/gpu_tests.txt ]] ||
  { echo "pack_runtime: no $build/gpu_tests.txt (build with DT_CUDA=ON first)" >&2; exit 1; }
out=$build/runtime
rm -rf "$out"
mkdir -p "$out/lib"
bins=()
if [[ -x $build/deltatron ]]; then bins+=("$build/deltatron"); fi
: >"$out/CTestTestfile.cmake"
# gpu_tests.txt: "name labels" per line (labels "gpu;<levels>"; "gpu" when a line has none)
while read -r t labels; do
  [[ -n $t ]] || continue
  [[ -z ${ONLY:-} || " $ONLY " == *" $t "* ]] || continue
  [[ -x $build/$t ]] || { echo "pack_runtime: $build/$t not built" >&2; exit 1; }
  bins+=("$build/$t")
  printf 'add_test(%s "./%s")\nset_tests_properties(%s PROPERTIES LABELS "%s" RUN_SERIAL ON)\n' \
    "$t" "$t" "$t" "${labels:-gpu}" >>"$out/CTestTestfile.cmake"
done <"$build/gpu_tests.txt"
# the executables and the non-system shared libraries they need
"$(dirname "${BASH_SOURCE[0]}")/bundle.sh" "$out" "${bins[@]}" >/dev/null
strip "$out"/test_* "$out"/deltatron 2>/dev/null || true
# The GPU machine receives at most 64 MiB per call: also pack the folder as BUILD/runtime.tar.xz
# (carry that; tools/gpu/run_all.sh unpacks it).
tar -C "$build" -cf - runtime | xz -T0 -6 >"$build/runtime.tar.xz"
du -sh "$out" "$build/runtime.tar.xz"
