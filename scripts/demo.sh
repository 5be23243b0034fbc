#!/usr/bin/env bash
# The main job, end to end, on real images: installs what is missing, builds,
# then runs drdm_deform with each shipped DRDM model on images of its own
# domain: generated deformation fields, warped images and labels,
# registration pairs, previews and manifests, written to demo-output/.
#   scripts/demo.sh [OUTPUT_DIR]
# Models (models/): cardiac2d (cardiac MRI), chest2d (chest radiographs),
# hippocampus3d (3D brain MRI around the hippocampus).
# Images: Debian's mricron-data (Colin27 T1 with the AAL atlas on the same
# grid: a 64^3 crop around the left hippocampus, for hippocampus3d), and, when
# ../shared/data is present, ACDC cardiac MRI volumes with their labels
# (cardiac2d), held-out JSRT chest radiographs with their masks (chest2d) and
# held-out hippocampus crops with their labels (hippocampus3d).
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
          f"folding {100 * row['folding_ratio']['mean']:.2f} % ({row['samples']} samples)"
          + (f", slice incoherence {f('slice_incoherence')}" if "slice_incoherence" in row else ""))
PY
}

ACDC="$ROOT/../shared/data/acdc"
if [ -f "$ACDC/images/patient001_frame01.nii.gz" ]; then
  say "ACDC cardiac MRI (3D through the 2D cardiac2d model, coherent across slices): augmentation with labels (Alg. 3)"
  "$BIN/drdm_deform" --model cardiac2d --mode augment -i "$ACDC/images/patient001_frame01.nii.gz" \
    -l "$ACDC/labels/patient001_frame01.nii.gz" -o "$OUT/acdc-augment" --levels 30,45 --samples 2 --seed 1
  summary "$OUT/acdc-augment/manifest.json"
  say "ACDC: a synthetic registration pair (Alg. 4): moving, fixed, target field"
  "$BIN/drdm_deform" --model cardiac2d --mode pairs -i "$ACDC/images/patient001_frame02.nii.gz" \
    -l "$ACDC/labels/patient001_frame02.nii.gz" -o "$OUT/acdc-pairs" --levels 45:30 --samples 1 --seed 2
  summary "$OUT/acdc-pairs/manifest.json"
fi

JSRT="$ROOT/../shared/data/jsrt"
if [ -f "$JSRT/images/JPCNN093.nii.gz" ]; then
  say "JSRT chest radiograph (held out from chest2d's training): augmentation with lung and heart masks"
  "$BIN/drdm_deform" --model chest2d --mode augment -i "$JSRT/images/JPCNN093.nii.gz" \
    -l "$JSRT/labels/JPCNN093.nii.gz" -o "$OUT/jsrt-augment" --levels 30,45 --samples 2 --seed 5
  summary "$OUT/jsrt-augment/manifest.json"
fi

HIPPO="$ROOT/../shared/data/hippocampus"
if [ -f "$HIPPO/images/hippocampus_352.nii.gz" ]; then
  say "Hippocampus MRI crop (3D, held out from hippocampus3d's training): augmentation with labels"
  "$BIN/drdm_deform" --model hippocampus3d --mode augment -i "$HIPPO/images/hippocampus_352.nii.gz" \
    -l "$HIPPO/labels/hippocampus_352.nii.gz" -o "$OUT/hippocampus-augment" --levels 30,45 --samples 1 --seed 6
  summary "$OUT/hippocampus-augment/manifest.json"
fi

say "Colin27 T1 + AAL atlas (mricron-data): a 64^3 crop around the left hippocampus, deformed in 3D"
CROP="$OUT/colin27-hippocampus-input"
mkdir -p "$CROP"
"$ROOT/.venv/bin/python" - /usr/share/mricron/templates "$CROP" <<'PY'
import sys
import numpy as np
import SimpleITK as sitk
src, dst = sys.argv[1], sys.argv[2]
image, atlas = sitk.ReadImage(f"{src}/ch2.nii.gz"), sitk.ReadImage(f"{src}/aal.nii.gz")
# AAL label 37 is Hippocampus_L: a 64^3 box (1 mm) centred on it, as the MSD hippocampus crops are.
centre = np.argwhere(sitk.GetArrayFromImage(atlas) == 37).mean(axis=0).round().astype(int)[::-1]  # x, y, z
start = [int(c) - 32 for c in centre]
for name, img in (("ch2_hippocampus_L", image), ("aal_hippocampus_L", atlas)):
    sitk.WriteImage(sitk.RegionOfInterest(img, [64, 64, 64], start), f"{dst}/{name}.nii.gz")
PY
"$BIN/drdm_deform" --model hippocampus3d --mode augment -i "$CROP/ch2_hippocampus_L.nii.gz" \
  -l "$CROP/aal_hippocampus_L.nii.gz" -o "$OUT/colin27-hippocampus" --levels 30,45 --samples 1 --seed 4
summary "$OUT/colin27-hippocampus/manifest.json"

say "outputs in $OUT (each folder: images/ labels/ fields/ previews/ manifest.json config.json)"
echo "Look at the previews (input | deformed | deformed grid | displacement magnitude):"
find "$OUT" -name '*.png' -path '*previews*' | sort
