#!/usr/bin/env python3
"""Find volumes whose intensities look wrapped (stored modulo 256) or otherwise
turned to noise, by how rough they are.

Roughness of a volume = mean absolute difference between neighbouring voxels
(over the three axes, in its central half) divided by the standard deviation of
its intensities. A real MRI crop is smooth at 1 mm (about 0.25-0.45 in
../shared/data/hippocampus); a volume whose integer intensities wrapped around
(a uint8 cast of values above 255) is close to noise (0.75-1.2). The two
groups are far apart, so the threshold (default 0.6) is not critical.

  scripts/check_wrapped_intensities.py ../shared/data/hippocampus/images \
      [--threshold 0.6] [--split 0.7] [--json out.json]

Prints one line per volume and writes {"smooth": [...], "rough": [...],
"train": [...], "test": [...]}: train/test are the smooth volumes among the
first `split` of all files by name and among the rest (the split of
data.subset and of the registration issue).
"""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def roughness(path: Path) -> float:
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64)
    centre = tuple(slice(s // 4, s - s // 4) for s in a.shape)
    a = a[centre]
    steps = [np.abs(np.diff(a, axis=k)).mean() for k in range(a.ndim) if a.shape[k] > 1]
    return float(np.mean(steps) / (a.std() + 1e-9))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--threshold", type=float, default=0.6)
    ap.add_argument("--split", type=float, default=0.7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    files = sorted(p for p in args.folder.iterdir() if p.name.endswith((".nii.gz", ".nii", ".mha", ".nrrd")))
    if not files:
        raise SystemExit(f"no images in {args.folder}")
    cut = math.floor(args.split * len(files) + 1e-9)
    out = {"smooth": [], "rough": [], "train": [], "test": []}
    for i, f in enumerate(files):
        r = roughness(f)
        smooth = r < args.threshold
        print(f"{f.name}\t{r:.3f}\t{'ok' if smooth else 'ROUGH'}")
        out["smooth" if smooth else "rough"].append(f.name)
        if smooth:
            out["train" if i < cut else "test"].append(f.name)
    print(f"{len(out['smooth'])} smooth, {len(out['rough'])} rough of {len(files)}; "
          f"smooth in the first {args.split:.0%}: {len(out['train'])}, in the rest: {len(out['test'])}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
