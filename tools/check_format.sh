#!/usr/bin/env bash
# Checks that the C++/CUDA sources are formatted by the pinned clang-format (.clang-format).
# Usage: tools/check_format.sh [--fix] [FILE...]
#   (no FILE)  every tracked .h .cpp .cu .cuh under src/ tests/ tools/ (git ls-files; without
#              git or outside a checkout, find)
#   --fix      reformat the files in place instead of checking them
# Exit status: 0 when every file is formatted (or was fixed), 1 naming the files that are not,
# 2 when the pinned clang-format is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: formatting changes between clang-format versions, so CI and every developer use the
# same one, Debian bookworm's. Change it here and in tools/setup.sh together, with a reformat.
CLANG_FORMAT_VERSION=14
CLANG_FORMAT=clang-format-${CLANG_FORMAT_VERSION}
CLANG_FORMAT_PACKAGE=clang-format-${CLANG_FORMAT_VERSION}

fix=0
files=()
for arg in "$@"; do
  case "$arg" in
    --fix) fix=1 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "check_format: unknown option $arg" >&2; exit 2 ;;
    *) files+=("$arg") ;;
  esac
done

if ! command -v "$CLANG_FORMAT" >/dev/null 2>&1; then
  echo "check_format: $CLANG_FORMAT not found; install the Debian package $CLANG_FORMAT_PACKAGE" \
       "(sudo apt-get install $CLANG_FORMAT_PACKAGE, or bash tools/setup.sh)" >&2
  exit 2
fi

if [ ${#files[@]} -eq 0 ]; then
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files -- 'src/*' 'tests/*' 'tools/*' |
                         grep -E '\.(h|cpp|cu|cuh)$' || true)
  else
    mapfile -t files < <(find src tests tools -type f \
                         \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' -o -name '*.cuh' \) |
                         LC_ALL=C sort)
  fi
fi
if [ ${#files[@]} -eq 0 ]; then
  echo "check_format: no files to check" >&2
  exit 2
fi

if [ $fix -eq 1 ]; then
  "$CLANG_FORMAT" -i --style=file "${files[@]}"
  echo "check_format: formatted ${#files[@]} files with $CLANG_FORMAT"
  exit 0
fi

# One run over all files; each unformatted place is reported on stderr as
# "FILE:LINE:COL: error: code should be clang-formatted [-Wclang-format-violations]".
status=0
report=$("$CLANG_FORMAT" --dry-run --Werror --style=file "${files[@]}" 2>&1 >/dev/null) || status=$?
mapfile -t bad < <(printf '%s\n' "$report" |
                   sed -n 's/^\(.*\):[0-9]*:[0-9]*: error: code should be clang-formatted.*/\1/p' |
                   uniq)
if [ $status -ne 0 ] && [ ${#bad[@]} -eq 0 ]; then
  printf '%s\n' "$report" >&2
  echo "check_format: $CLANG_FORMAT failed (exit $status)" >&2
  exit 1
fi
if [ ${#bad[@]} -gt 0 ]; then
  echo "check_format: ${#bad[@]} of ${#files[@]} files are not formatted by $CLANG_FORMAT:" >&2
  printf '  %s\n' "${bad[@]}" >&2
  echo "check_format: see the changes with '$CLANG_FORMAT --dry-run FILE'; fix them with" \
       "tools/check_format.sh --fix [FILE...]" >&2
  exit 1
fi
echo "check_format: ${#files[@]} files formatted ($CLANG_FORMAT)"
