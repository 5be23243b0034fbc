#!/usr/bin/env bash
# The main job, end to end, on real images: installs what is missing, builds,
# then runs drdm_deform with the shipped DRDM model (models/cardiac2d-cpu):
# generated deformation fields, warped images and labels, registration pairs,
# previews and manifests, written to demo-output/.
#   scripts/demo.sh [OUTPUT_DIR]
# Images: Debian packages insighttoolkit5-examples (rat lung MRI slice) and
# mricron-data (Colin27 T1 with the AAL atlas on the same grid); and, when
# ../shared/data is present, ACDC cardiac MRI volumes with their labels (the
# domain the model was made for).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
BIN="${DRDM_BUILD_DIR:-$ROOT/build}/apps"
OUT="$(realpath -m "${1:-$ROOT/demo-output}")"
mkdir -p "$OUT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
summary() {  # manifest -> one line per level
  "$ROOT/.venv/bin/python" - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for row in m["summary"]:
    f = lambda k: "%.1f ± %.1f" % (row[k]["mean"], row[k]["std"])
    print(f"  level {row['level']}: max |u| {f('max_magnitude_pct')} %, mean |u| {f('mean_magnitude_pct')} %, "
          f"folding {100 * row['folding_ratio']['mean']:.2f} % ({row['samples']} samples)")
PY
}

ACDC="$ROOT/../shared/data/acdc"
if [ -f "$ACDC/images/patient001_frame01.nii.gz" ]; then
  say "ACDC cardiac MRI (3D, deformed slice by slice): augmentation with labels (Alg. 3)"
  "$BIN/drdm_deform" --mode augment -i "$ACDC/images/patient001_frame01.nii.gz" \
    -l "$ACDC/labels/patient001_frame01.nii.gz" -o "$OUT/acdc-augment" --levels 30,45 --samples 2 --seed 1
  summary "$OUT/acdc-augment/manifest.json"
  say "ACDC: a synthetic registration pair (Alg. 4): moving, fixed, target field"
  "$BIN/drdm_deform" --mode pairs -i "$ACDC/images/patient001_frame02.nii.gz" \
    -l "$ACDC/labels/patient001_frame02.nii.gz" -o "$OUT/acdc-pairs" --levels 45:30 --samples 1 --seed 2
  summary "$OUT/acdc-pairs/manifest.json"
fi

say "Rat lung MRI slice (2D, insighttoolkit5-examples): instance deformation (Alg. 2)"
"$BIN/drdm_deform" -i /usr/share/doc/insighttoolkit5-examples/examples/Data/RatLungSlice1.mha \
  -o "$OUT/rat-lung" --levels 30,55 --samples 2 --seed 3
summary "$OUT/rat-lung/manifest.json"

say "Colin27 T1 + AAL atlas (3D, mricron-data): augmentation with 116 labels, slice by slice"
"$BIN/drdm_deform" --mode augment -i /usr/share/mricron/templates/ch2.nii.gz \
  -l /usr/share/mricron/templates/aal.nii.gz -o "$OUT/colin27" --levels 45 --samples 1 --seed 4
summary "$OUT/colin27/manifest.json"

say "outputs in $OUT (each folder: images/ labels/ fields/ previews/ manifest.json config.json)"
echo "Look at the previews (input | deformed | deformed grid | displacement magnitude):"
find "$OUT" -name '*.png' -path '*previews*' | sort
