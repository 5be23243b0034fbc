#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (CTest: GoogleTest
# suites, the SimpleITK oracle, the command-line tests, the package consumer).
#   scripts/test.sh [extra ctest args]
#   scripts/test.sh --sanitize [extra ctest args]
# --sanitize builds a separate tree (build-sanitize, or DRDM_SANITIZE_BUILD_DIR)
# with AddressSanitizer + UndefinedBehaviorSanitizer (-DDRDM_SANITIZE=ON) and
# runs the suite there; any sanitizer report fails its test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CTEST_ARGS=()
if [ "${1:-}" = "--sanitize" ]; then
  shift
  export DRDM_BUILD_DIR="${DRDM_SANITIZE_BUILD_DIR:-$ROOT/build-sanitize}"
  export DRDM_CMAKE_ARGS="-DDRDM_SANITIZE=ON -DDRDM_BUILD_BENCH=OFF ${DRDM_CMAKE_ARGS:-}"
  SAN="$ROOT/scripts/sanitizer"
  # LibTorch, ITK and Python are not instrumented (see scripts/sanitizer/*.supp).
  export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0:check_initialization_order=1:strict_init_order=0:${ASAN_OPTIONS:-}"
  export LSAN_OPTIONS="suppressions=$SAN/lsan.supp:print_suppressions=0:${LSAN_OPTIONS:-}"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$SAN/ubsan.supp:${UBSAN_OPTIONS:-}"
  # The package consumer is built without sanitizer flags, so it cannot link
  # the instrumented libdrdm; the normal run covers packaging.
  CTEST_ARGS+=(-E '^package_consumer$')
fi
"$ROOT/scripts/setup.sh"
BUILD_DIR="${DRDM_BUILD_DIR:-$ROOT/build}"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${DRDM_JOBS:-$(nproc)}" ${CTEST_ARGS[@]+"${CTEST_ARGS[@]}"} "$@"
