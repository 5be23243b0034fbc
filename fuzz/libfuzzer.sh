#!/usr/bin/env bash
# Coverage-guided fuzzing of libdrdm's config parsers and image/field readers
# with libFuzzer (clang; Debian: clang-14 and libclang-rt-14-dev).
#
#   fuzz/libfuzzer.sh build [BUILD_DIR]          # -> BUILD_DIR/fuzz/libfuzzer/drdm_fuzz
#   fuzz/libfuzzer.sh run TARGET SECONDS [BUILD_DIR] [libFuzzer flags...]
#   fuzz/libfuzzer.sh smoke [BUILD_DIR] [RUNS]   # every target, RUNS inputs each (default 2000)
#
# BUILD_DIR (default build) is a configured and built (GCC, Release) build
# tree. The sources under test (image_io, config_json and the train/seg/reg
# config parsers) are compiled again with clang -fsanitize=fuzzer,address,
# undefined, using the build's own compile flags; the rest of libdrdm comes
# from BUILD_DIR's libdrdm.so, whose copies of those functions the
# executable's instrumented ones override. Corpora grow in
# BUILD_DIR/fuzz/libfuzzer/corpus-TARGET (seeded from fuzz/corpus), crashes
# land in BUILD_DIR/fuzz/libfuzzer/crashes/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLANG="${DRDM_FUZZ_CXX:-$(command -v clang++-14 || command -v clang++ || true)}"
TARGETS=(config nii niigz gz mha nrrd)

build() {
  local build_dir; build_dir="$(cd "${1:-$ROOT/build}" && pwd)"
  local out="$build_dir/fuzz/libfuzzer"
  [ -n "$CLANG" ] || { echo "libfuzzer.sh: no clang++ found (set DRDM_FUZZ_CXX)" >&2; exit 77; }
  [ -f "$build_dir/compile_commands.json" ] || { echo "libfuzzer.sh: $build_dir is not a configured build" >&2; exit 2; }
  mkdir -p "$out/obj"
  # Compile flags of image_io.cpp (defines, include paths) and libdrdm's link line.
  python3 - "$build_dir" "$ROOT" "$out" <<'PY'
import json, os, shlex, sys
build, root, out = sys.argv[1:]
cmds = json.load(open(os.path.join(build, "compile_commands.json")))
cmd = next(e["command"] for e in cmds if e["file"].endswith("src/io/image_io.cpp"))
flags, skip = [], False
toks = shlex.split(cmd)[1:]
for i, t in enumerate(toks):
    if t in ("-o", "-c"):
        skip = True; continue
    if skip:
        skip = False; continue
    if t.startswith(("-D", "-I", "-std=")) or t == "-isystem" or (i and toks[i - 1] == "-isystem"):
        flags.append(t)
flags = [f for f in flags if f != "-Ddrdm_EXPORTS"]
open(os.path.join(out, "cxxflags"), "w").write(" ".join(shlex.quote(f) for f in flags))
link = open(os.path.join(build, "src/CMakeFiles/drdm.dir/link.txt")).read()
libs = []
for t in shlex.split(link):
    if t.startswith("-Wl,--no-as-needed,"):
        libs.append(t)
    elif t.startswith(("-l", "-Wl,-rpath,")) or (t.startswith("/") and ".so" in t):
        libs.append(t)
open(os.path.join(out, "libs"), "w").write(" ".join(shlex.quote(l) for l in libs))
PY
  local cxxflags libs
  cxxflags="$(cat "$out/cxxflags")"; libs="$(cat "$out/libs")"
  local san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"
  local objs=() src obj compiler cov
  for src in src/io/image_io.cpp src/engine/config_json.cpp src/diffusion/train_config.cpp src/seg/config.cpp \
             src/reg/config.cpp fuzz/fuzz_targets.cpp fuzz/libfuzzer_main.cpp; do
    obj="$out/obj/$(echo "$src" | tr / _).o"
    objs+=("$obj")
    # Debian's ITK headers accept GCC only, so image_io.cpp is instrumented by
    # GCC (ASan + UBSan, comparison tracing for -use_value_profile=1), whose
    # sanitizer ABI clang's runtime serves; the rest gets full clang coverage.
    compiler="$CLANG" cov=-fsanitize=fuzzer-no-link
    if [ "$src" = src/io/image_io.cpp ]; then compiler="${DRDM_FUZZ_GXX:-g++}" cov=-fsanitize-coverage=trace-cmp; fi
    if [ ! -f "$obj" ] || [ "$ROOT/$src" -nt "$obj" ]; then
      echo "[libfuzzer] compiling $src ($compiler)"
      # shellcheck disable=SC2086
      eval "$compiler" $cxxflags -I"$ROOT/include" -I"$ROOT/src" $san $cov -c "$ROOT/$src" -o "$obj"
    fi
  done
  echo "[libfuzzer] linking $out/drdm_fuzz"
  # shellcheck disable=SC2086
  eval "$CLANG" $san -fsanitize=fuzzer "${objs[@]}" "$build_dir/src/libdrdm.so" $libs \
    -Wl,-rpath,"$build_dir/src" -o "$out/drdm_fuzz"
}

run() {
  local target="$1" seconds="$2" build_dir; build_dir="$(cd "${3:-$ROOT/build}" && pwd)"
  shift 3 || shift $#
  local out="$build_dir/fuzz/libfuzzer"
  local seeds="$ROOT/fuzz/corpus/$target"
  [ "$target" = niigz ] && seeds="$ROOT/fuzz/corpus/nii"
  mkdir -p "$out/corpus-$target" "$out/crashes"
  local extra=()
  [ "$target" = config ] && extra+=("$ROOT/configs")
  # detect_leaks=0: LibTorch and ITK keep caches alive on purpose.
  DRDM_FUZZ_TARGET="$target" OMP_NUM_THREADS=1 ASAN_OPTIONS="detect_leaks=0:${ASAN_OPTIONS:-}" \
  TMPDIR="$out" "$out/drdm_fuzz" -max_total_time="$seconds" -max_len=4096 -rss_limit_mb=4096 \
    -malloc_limit_mb=2048 -timeout=30 -print_final_stats=1 -artifact_prefix="$out/crashes/$target-" \
    "$@" "$out/corpus-$target" "$seeds" "${extra[@]}"
}

smoke() {
  local build_dir="${1:-$ROOT/build}" runs="${2:-2000}" t
  build "$build_dir"
  for t in "${TARGETS[@]}"; do
    run "$t" 600 "$build_dir" -runs="$runs" -seed=1
  done
}

case "${1:-}" in
  build) build "${2:-}";;
  run) shift; [ $# -ge 2 ] || { echo "usage: $0 run TARGET SECONDS [BUILD_DIR] [flags]" >&2; exit 2; }
       t="$1" s="$2"; shift 2; b="${1:-}"; [ $# -gt 0 ] && shift; run "$t" "$s" "$b" "$@";;
  smoke) smoke "${2:-}" "${3:-}";;
  *) sed -n '2,17p' "$0"; exit 2;;
esac
