#!/usr/bin/env bash
# Fails when a tracked C++ file differs from what clang-format (Debian's,
# with the repository's .clang-format) makes of it, and names each file.
# To fix: scripts/check_format.sh --fix (formats them in place).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FORMAT="${CLANG_FORMAT:-clang-format}"
command -v "$FORMAT" >/dev/null || { echo "check_format: $FORMAT not found (scripts/setup.sh installs it)"; exit 2; }
mapfile -t files < <(git ls-files '*.cpp' '*.h' | grep -v '/gloo_decl/')
if [ "${1:-}" = "--fix" ]; then
  "$FORMAT" -i "${files[@]}"
  exit 0
fi
bad=0
for f in "${files[@]}"; do
  if ! "$FORMAT" --dry-run -Werror "$f" >/dev/null 2>&1; then
    echo "not formatted: $f"
    bad=$((bad + 1))
  fi
done
echo "check_format: ${#files[@]} files, $bad not formatted ($("$FORMAT" --version | head -1))"
[ "$bad" -eq 0 ]
