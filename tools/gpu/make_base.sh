#!/usr/bin/env bash
# Builds deltatron at an earlier commit and writes it xz-compressed for tools/gpu/ab_bench.sh (the
# old side of an alternated A/B on the GPU machine). Uses a git worktree beside the repository and
# its own build folder; ccache makes a rebuild after a recent build of main take minutes.
#
# Usage (build machine): tools/gpu/make_base.sh COMMIT [OUT]   (OUT default build/base/deltatron.xz)
# Then carry OUT with build/runtime.tar.xz and run tools/gpu/ab_bench.sh OUT on the GPU machine.
set -euo pipefail
commit=${1:?usage: tools/gpu/make_base.sh COMMIT [OUT]}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${2:-$repo/build/base/deltatron.xz}
rev=$(git -C "$repo" rev-parse --short "$commit^{commit}")
tree=$(dirname "$repo")/deltatron-base-$rev
if [[ ! -d $tree ]]; then git -C "$repo" worktree add --detach "$tree" "$rev" >/dev/null; fi
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(dirname "$repo")}
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
cmake -S "$tree" -B "$tree/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDT_CUDA=ON \
  "${launcher[@]}" >/dev/null
ninja -C "$tree/build" deltatron >/dev/null
mkdir -p "$(dirname "$out")"
strip -o "$out.tmp" "$tree/build/deltatron"
xz -T0 -6 -c "$out.tmp" >"$out"
rm -f "$out.tmp"
echo "make_base: deltatron at $rev -> $out ($(du -h "$out" | cut -f1)); worktree $tree"
