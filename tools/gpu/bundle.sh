#!/usr/bin/env bash
# Copies executables and the shared libraries the GPU machine lacks into one folder, so they run
# there with LD_LIBRARY_PATH=<dir>/lib:/usr/local/cuda/lib64 (see tools/gpu/pack_runtime.sh).
# Usage: tools/gpu/bundle.sh OUT_DIR EXE...
set -euo pipefail
out=$1; shift
mkdir -p "$out/lib"
for b in "$@"; do cp -f "$b" "$out/"; done
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libresolv|libstdc\+\+|libgcc_s)\.so'
# NCCL (200 MB) is not carried: the GPU machine has it (the toolkit's, or PyTorch's
# nvidia-nccl wheel; tools/gpu/nccl_path.sh finds it).
skip_cuda='^(libcuda|libcudart|libcublas|libcublasLt|libnvidia-|libnvrtc|libnvJitLink|libnccl)\.so'
ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    if [[ $name =~ $skip || $name =~ $skip_cuda ]]; then continue; fi
    cp -L -f "$path" "$out/lib/$name"
  done
du -sh "$out"
