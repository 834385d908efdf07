#!/usr/bin/env bash
# Builds libdt_trace.so (see cupti_trace.cpp) next to this script's OUT argument, with the CUPTI
# library it needs: tools/gpu/trace/build.sh OUT_DIR (then carry OUT_DIR to the GPU machine).
set -euo pipefail
out=${1:?usage: build.sh OUT_DIR}
cuda=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$out"
g++ -O2 -std=c++20 -shared -fPIC -I"$cuda/include" "$(dirname "$0")/cupti_trace.cpp" \
  -L"$cuda/lib" -L"$cuda/lib64" -lcupti -Wl,-rpath,'$ORIGIN' -o "$out/libdt_trace.so"
cp -L "$(ls "$cuda"/lib*/libcupti.so.* 2>/dev/null | head -1)" "$out/"
