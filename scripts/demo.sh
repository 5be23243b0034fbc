#!/usr/bin/env bash
# The main job, end to end, on real images: installs what is missing, builds,
# then deforms real scans with smooth random fields and writes fields, warped
# images and labels, statistics and preview PNGs to demo-output/.
#   scripts/demo.sh [OUTPUT_DIR]
# Images: Debian packages insighttoolkit5-examples (rat lung MRI slice) and
# mricron-data (Colin27 T1 with the AAL atlas on the same grid); and, when
# ../shared/data is present, an ACDC cardiac MRI volume with its labels.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
BIN="${DRDM_BUILD_DIR:-$ROOT/build}/apps"
OUT="$(realpath -m "${1:-$ROOT/demo-output}")"
mkdir -p "$OUT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

deform() {  # name image [labels] amplitude seed
  local name=$1 image=$2 labels=$3 amp=$4 seed=$5 ext=".nii.gz"
  say "$name: $(basename "$image")"
  "$BIN/drdm_random_field" -r "$image" -o "$OUT/$name-field$ext" --amplitude "$amp" --seed "$seed" > /dev/null
  "$BIN/drdm_warp" -i "$image" -f "$OUT/$name-field$ext" -o "$OUT/$name-warped$ext" --preview "$OUT/$name-preview.png"
  if [ -n "$labels" ]; then
    "$BIN/drdm_warp" -i "$labels" -f "$OUT/$name-field$ext" -o "$OUT/$name-labels-warped$ext" --labels
  fi
  "$BIN/drdm_field_stats" -f "$OUT/$name-field$ext" --json "$OUT/$name-stats.json" \
    --jacobian-map "$OUT/$name-jacobian$ext" | grep -E '"(max|mean)_magnitude_pct"|folding_ratio|min_jacobian'
}

deform rat-lung-2d /usr/share/doc/insighttoolkit5-examples/examples/Data/RatLungSlice1.mha "" 6 1
deform colin27-3d /usr/share/mricron/templates/ch2.nii.gz /usr/share/mricron/templates/aal.nii.gz 6 2
ACDC="$ROOT/../shared/data/acdc"
if [ -f "$ACDC/images/patient001_frame01.nii.gz" ]; then
  deform acdc-3d "$ACDC/images/patient001_frame01.nii.gz" "$ACDC/labels/patient001_frame01.nii.gz" 8 3
fi

say "outputs in $OUT"
ls -1 "$OUT"
echo
echo "Look at the previews (input | warped | deformed grid | displacement magnitude):"
ls -1 "$OUT"/*-preview.png
