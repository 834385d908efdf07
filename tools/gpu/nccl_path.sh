#!/usr/bin/env bash
# Prints the directory of the GPU machine's libnccl.so.2 (the CUDA toolkit's, else the one of
# PyTorch's nvidia-nccl wheel), for LD_LIBRARY_PATH; nothing when there is none.
for d in /usr/local/cuda/lib64 /usr/lib/x86_64-linux-gnu; do
  [[ -e $d/libnccl.so.2 ]] && { echo "$d"; exit 0; }
done
python3 - <<'PY' 2>/dev/null
import glob, os, site
for base in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(base, "nvidia", "nccl*", "lib", "libnccl.so.2")):
        print(os.path.dirname(lib)); raise SystemExit
PY
