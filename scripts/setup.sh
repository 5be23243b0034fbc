#!/usr/bin/env bash
# Idempotent set-up of libdrdm on Debian 12: installs what is missing (Debian
# packages, a Python venv with the torch wheel), then configures and builds.
#   scripts/setup.sh            # everything, Release build in ./build
# Environment: DRDM_BUILD_DIR (default build), DRDM_VENV (default .venv),
#              DRDM_JOBS (default nproc), DRDM_CMAKE_ARGS (extra cmake args).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${DRDM_BUILD_DIR:-$ROOT/build}"
VENV="${DRDM_VENV:-$ROOT/.venv}"
JOBS="${DRDM_JOBS:-$(nproc)}"
TORCH_VERSION=2.11.0
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# ---- Debian packages ------------------------------------------------------
APT_PACKAGES=(build-essential cmake ccache git pkg-config clang-format
  libinsighttoolkit5-dev libcli11-dev libspdlog-dev nlohmann-json3-dev
  libgtest-dev googletest insighttoolkit5-examples mricron-data)
# A python3 that can make venvs is enough (Debian's, or pyenv's on our machines).
python3 -m venv --help >/dev/null 2>&1 || APT_PACKAGES+=(python3 python3-venv)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ---- Python venv with the torch wheel -------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating Python venv $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# Requirements first: torch goes in with --no-deps afterwards, so pip never
# complains about the nvidia-* wheels we deliberately leave out.
# nnU-Net v2 (a test oracle) without its declared dependencies, which would
# pull torch and nvidia-* wheels; the ones its tested modules import are in
# requirements.txt.
NODEPS_PACKAGES=(nnunetv2==2.8.1 batchgenerators==0.25.5 acvl-utils==0.2.6)
REQ_STAMP="$VENV/.drdm-requirements-$( (cat "$ROOT/scripts/requirements.txt"; echo "${NODEPS_PACKAGES[*]}") | sha256sum | cut -c1-16)"
if [ ! -f "$REQ_STAMP" ]; then
  "$PY" -m pip install -q --upgrade pip
  log "installing Python requirements (scripts/requirements.txt)"
  "$PY" -m pip install -q -r "$ROOT/scripts/requirements.txt"
  log "installing ${NODEPS_PACKAGES[*]} (--no-deps)"
  "$PY" -m pip install -q --no-deps "${NODEPS_PACKAGES[@]}"
  touch "$REQ_STAMP"
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION (CUDA 13.0 wheel, --no-deps; CUDA libraries from /usr/local/cuda)"
  "$PY" -m pip install -q --no-deps "torch==$TORCH_VERSION"
fi
"$PY" -c "import torch; print('[setup] torch', torch.__version__, '| CUDA available:', torch.cuda.is_available())"

# ---- configure and build --------------------------------------------------
export CCACHE_BASEDIR="$ROOT" CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}" CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
# Debug-info objects (the sanitized build's -g) are otherwise keyed to the
# build folder, so that no other checkout could reuse them.
export CCACHE_NOHASHDIR=1
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  log "configuring $BUILD_DIR"
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE="$PY" \
    ${DRDM_CMAKE_ARGS:-} > "$BUILD_DIR.configure.log" 2>&1 || { cat "$BUILD_DIR.configure.log"; exit 1; }
fi
log "building with $JOBS jobs"
cmake --build "$BUILD_DIR" -j "$JOBS"
log "done: programs in $BUILD_DIR/apps"
