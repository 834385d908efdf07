#!/usr/bin/env bash
# Fills the git-ignored .peer/ with flash-linear-attention's fla/ package (MIT) and liger-kernel
# (BSD-2-Clause) for peer_hf.py.
#
# transformers 5.17's qwen3_5 module imports `fla` at import time and takes
# fla.ops.gated_delta_rule.{chunk,fused_recurrent}_gated_delta_rule (needs fla >= 0.2.2, by the
# flash-linear-attention distribution's version). Since 0.3.2 the fla/ ops live in the `fla-core`
# wheel (pure Python + Triton; needs einops, packaging, torch, triton: all in the GPU image), so
# this downloads that wheel from PyPI, unpacks fla/ into .peer/, and writes a minimal
# flash_linear_attention-<version>.dist-info (METADATA, top_level.txt) so transformers detects it.
#
# Hopper + Triton 3.4..3.7.0 (the GPU machine has torch 2.11 / Triton 3.6): fla refuses the gated
# backward kernel chunk_bwd_dqkwg (FLA issue #640: wrong gradients below Triton 3.7.1). Unless
# PATCH_640=0, this disables that one guard in the carried copy, for TIMING ONLY, and leaves the
# marker .peer/PATCHED_FLA_640 (peer_hf.py then prints a warning and records it in its JSON).
#
#   tools/bench/fetch_peer.sh            # FLA_VERSION=0.6.0 by default
# Never commit .peer/ (it is in .gitignore).
set -euo pipefail
VER="${FLA_VERSION:-0.6.0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/.peer"
PY="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$TMP" "fla-core==$VER"
WHL="$(ls "$TMP"/fla_core-"$VER"-*.whl)"
mkdir -p "$TMP/x"
"$PY" -m zipfile -e "$WHL" "$TMP/x"

rm -rf "$DEST/fla" "$DEST"/flash_linear_attention-*.dist-info "$DEST/PATCHED_FLA_640"
mkdir -p "$DEST"
cp -r "$TMP/x/fla" "$DEST/fla"
DI="$DEST/flash_linear_attention-$VER.dist-info"
mkdir -p "$DI"
printf 'Metadata-Version: 2.1\nName: flash-linear-attention\nVersion: %s\nLicense: MIT\n' \
  "$VER" >"$DI/METADATA"
echo fla >"$DI/top_level.txt"
cp "$TMP"/x/fla_core-"$VER".dist-info/licenses/* "$DI/" 2>/dev/null || true

# The #640 guard (fla/ops/common/chunk_o.py, chunk_bwd_dqkwg), as of fla-core 0.5.x/0.6.0:
#   if g is not None and IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1:
#       raise RuntimeError("Triton >= 3.4.0 and < 3.7.1 on Hopper GPUs produces incorrect ...")
# The patch turns the condition off; nothing else changes.
F="$DEST/fla/ops/common/chunk_o.py"
GUARD='if g is not None and IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1:'
if [ "${PATCH_640:-1}" = 1 ] && grep -qF "$GUARD" "$F"; then
  "$PY" - "$F" "$GUARD" <<'EOF'
import sys
path, guard = sys.argv[1], sys.argv[2]
s = open(path).read()
assert s.count(guard) == 1, "expected exactly one #640 guard"
s = s.replace(guard, "if False:  # deltatron peer bench, TIMING ONLY: FLA #640 guard off; was: "
              + guard[3:-1])
open(path, "w").write(s)
EOF
  echo "fla-core $VER: Hopper/Triton<3.7.1 guard on chunk_bwd_dqkwg (FLA #640) disabled" \
    >"$DEST/PATCHED_FLA_640"
  echo "WARNING: disabled FLA's #640 guard in $F: gated delta rule backward gradients may be" \
       "wrong on Hopper with Triton < 3.7.1; use this copy for TIMING ONLY" >&2
elif grep -q "see #640" "$F"; then
  echo "WARNING: $F has a #640 guard this script does not recognise; left as is" >&2
fi

# liger-kernel (BSD-2-Clause; pure Python + Triton, needs torch and triton: in the GPU image) for
# peer_hf.py's LIGER=1 (HF + FLA + Liger, the memory-lean peer): the wheel's package and its
# dist-info, unpacked beside fla/.
LIGER_VER="${LIGER_VERSION:-0.8.5}"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$TMP" "liger-kernel==$LIGER_VER"
mkdir -p "$TMP/l"
"$PY" -m zipfile -e "$TMP"/liger_kernel-"$LIGER_VER"-*.whl "$TMP/l"
rm -rf "$DEST/liger_kernel" "$DEST"/liger_kernel-*.dist-info
cp -r "$TMP/l/liger_kernel" "$TMP/l/liger_kernel-$LIGER_VER.dist-info" "$DEST/"
echo "fla $VER and liger-kernel $LIGER_VER in $DEST ($(du -sh "$DEST" | cut -f1)); carry it: run(carry=[\".peer\"])"
