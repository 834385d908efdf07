#!/usr/bin/env bash
# Installs deltatron's build dependencies (Debian/Ubuntu packages) if missing, then builds into
# ./build. Usage: bash tools/setup.sh   (re-running is cheap: apt is skipped when all are present)
set -euo pipefail
cd "$(dirname "$0")/.."

# libgloo-dev: the CPU ranks' collectives (src/dist/gloo_comm.cpp).
# libjpeg62-turbo-dev, libpng-dev, libwebp-dev: the image decoders (src/data/image_*.cpp).
# clang-format-14: the formatter tools/check_format.sh pins (the format_check test).
PKGS=(cmake g++ make pkg-config python3 libopenblas-openmp-dev nlohmann-json3-dev libgtest-dev libcli11-dev libtomlplusplus-dev libutf8proc-dev libpcre2-dev libgloo-dev libjpeg62-turbo-dev libpng-dev libwebp-dev clang-format-14)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

JOBS=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS"
