#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (CTest: GoogleTest
# suites, the SimpleITK oracle, the command-line tests, the package consumer).
#   scripts/test.sh [extra ctest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
BUILD_DIR="${DRDM_BUILD_DIR:-$ROOT/build}"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${DRDM_JOBS:-$(nproc)}" "$@"
