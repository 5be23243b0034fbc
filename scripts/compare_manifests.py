#!/usr/bin/env python3
"""Compare two drdm_deform runs that used the same inputs, model and seed (say,
one on the CPU and one on a GPU): every sample's metrics and its written field.

  compare_manifests.py A/manifest.json B/manifest.json [C/manifest.json D/manifest.json ...]

Prints, per pair of runs, the largest difference in each metric and the largest
voxel-wise field difference (mm) next to the fields' largest magnitude. Reads
the fields with numpy alone (NIfTI-1, float32/float64, gzip or not), so it runs
wherever PyTorch's Python does. Exits 1 when a sample is missing on one side.
"""

import gzip
import json
import os
import struct
import sys

import numpy as np

DTYPES = {16: "f4", 64: "f8"}


def read_nifti(path):
    raw = (gzip.open if path.endswith(".gz") else open)(path, "rb").read()
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    dims = struct.unpack(endian + "8h", raw[40:56])
    code = struct.unpack(endian + "h", raw[70:72])[0]
    offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    if code not in DTYPES:
        raise SystemExit(f"{path}: datatype {code} is not float32/float64")
    shape = dims[1:1 + dims[0]]
    return np.frombuffer(raw, dtype=endian + DTYPES[code], count=int(np.prod(shape)), offset=offset)


def samples(manifest_path):
    m = json.load(open(manifest_path))
    root = os.path.dirname(manifest_path)
    return m.get("device"), {(s["case"], s["level"], s["sample"]): (s, root) for s in m["samples"]}


def compare(path_a, path_b):
    dev_a, a = samples(path_a)
    dev_b, b = samples(path_b)
    print(f"{path_a} ({dev_a}) vs {path_b} ({dev_b}): {len(a)} and {len(b)} samples")
    if a.keys() != b.keys():
        print("  the runs hold different samples")
        return False
    worst = {}
    field_diff = field_max = 0.0
    for key, (sa, root_a) in a.items():
        sb, root_b = b[key]
        for name, va in sa["metrics"].items():
            vb = sb["metrics"][name]
            worst[name] = max(worst.get(name, 0.0), abs(va - vb))
        fa = read_nifti(os.path.join(root_a, sa["outputs"]["field"]))
        fb = read_nifti(os.path.join(root_b, sb["outputs"]["field"]))
        field_diff = max(field_diff, float(np.abs(fa - fb).max()))
        field_max = max(field_max, float(np.abs(fa).max()))
    for name, d in sorted(worst.items()):
        print(f"  {name:>20}: largest difference {d:.3g}")
    print(f"  {'field (mm)':>20}: largest voxel difference {field_diff:.3g} (largest |u| {field_max:.3g})")
    return True


def main():
    paths = sys.argv[1:]
    if len(paths) < 2 or len(paths) % 2:
        raise SystemExit(__doc__)
    ok = all([compare(paths[i], paths[i + 1]) for i in range(0, len(paths), 2)])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
