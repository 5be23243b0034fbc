#!/usr/bin/env python3
"""Does a generated deformation keep the topology of the cardiac labels?

Reads the fields that scripts/table1.py made (its --work-dir: drdm/ and, when
there, start/ with their manifest.json), warps each slice's own ACDC label map
with them (SimpleITK, nearest neighbour, the written ITK displacement field),
and compares, per class (RV 1, MYO 2, LV 3), the number of connected
components (8-connectivity) and of holes (background components, 4-connected,
that do not touch the slice border) with those of the unwarped labels. A
sample keeps the topology when every class keeps both numbers.

    .venv/bin/python scripts/label_topology.py --work-dir /tmp/drdm-table1 \\
        --data ../shared/data/acdc --out docs/results/label-topology
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

CLASSES = {1: "RV", 2: "MYO", 3: "LV"}
EIGHT = np.ones((3, 3), dtype=bool)


def topology(mask: np.ndarray) -> tuple[int, int]:
    """(components, holes) of a 2D binary mask."""
    _, components = ndimage.label(mask, structure=EIGHT)
    background, n = ndimage.label(~mask)  # 4-connected
    border = set(np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])))
    holes = sum(1 for k in range(1, n + 1) if k not in border)
    return int(components), int(holes)


def label_slice(data: Path, case: str) -> sitk.Image:
    """The ACDC label slice a table1.py case name (patientNNN_ED_zZZ) was cut from."""
    m = re.fullmatch(r"(patient\d+)_ED_z(\d+)", case)
    if not m:
        raise SystemExit(f"unexpected case name {case!r} (expected patientNNN_ED_zZZ)")
    vol = sitk.ReadImage(str(data / "labels" / f"{m.group(1)}_frame01.nii.gz"))
    size = list(vol.GetSize())
    return sitk.Extract(vol, [size[0], size[1], 0], [0, 0, int(m.group(2))],
                        sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)


def warp_labels(labels: sitk.Image, field: Path) -> np.ndarray:
    disp = sitk.ReadImage(str(field), sitk.sitkVectorFloat64)
    tx = sitk.DisplacementFieldTransform(sitk.Image(disp))
    return sitk.GetArrayFromImage(sitk.Resample(labels, labels, tx, sitk.sitkNearestNeighbor, 0))


def measure(run_dir: Path, data: Path) -> list[dict]:
    """One row per sample: level, case, and per class the topology before and after."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rows, cache = [], {}
    for s in manifest["samples"]:
        if s["case"] not in cache:
            sl = label_slice(data, s["case"])
            cache[s["case"]] = (sl, sitk.GetArrayFromImage(sl))
        sl, before = cache[s["case"]]
        after = warp_labels(sl, run_dir / s["outputs"]["field"])
        per_class = {name: {"before": topology(before == k), "after": topology(after == k)}
                     for k, name in CLASSES.items()}
        rows.append({"case": s["case"], "level": int(s["level"]), "sample": int(s["sample"]),
                     "classes": per_class, "kept": all(v["before"] == v["after"] for v in per_class.values())})
    return rows


def summary(rows: list[dict]) -> dict:
    out = {}
    for level in sorted({r["level"] for r in rows}):
        at = [r for r in rows if r["level"] == level]
        out[str(level)] = {"samples": len(at), "kept": sum(r["kept"] for r in at),
                           "kept_per_class": {name: sum(r["classes"][name]["before"] == r["classes"][name]["after"]
                                                        for r in at) for name in CLASSES.values()}}
    return out


def markdown(result: dict, command: str) -> str:
    runs = result["runs"]
    L = ["# Label topology under generated deformations (cardiac2d, ACDC)", "",
         "*Written by [`scripts/label_topology.py`](../../scripts/label_topology.py) from the fields of "
         "[table1.md](table1.md)'s run; raw numbers in [label-topology.json](label-topology.json).*", "",
         f"```sh\n{command}\n```", "",
         "Each field of Table 1 (20 ACDC test-split mid-ventricular ED slices, 2 samples per level) warps its "
         "slice's own label map (nearest neighbour, SimpleITK, the written ITK displacement field). A sample "
         "**keeps the topology** when each of RV, MYO and LV has as many connected components (8-connected) "
         "and holes (4-connected background not touching the border) as before: the myocardium stays one "
         "ring around one LV cavity, nothing splits, nothing vanishes.", "",
         "| T' | DRDM samples keeping the topology | RV | MYO | LV |"
         + (" random start fields φ_T' (same seeds) |" if "start" in runs else ""),
         "|---:|---:|---:|---:|---:|" + ("---:|" if "start" in runs else "")]
    for level, s in runs["drdm"].items():
        pc = s["kept_per_class"]
        row = (f"| {level} | **{s['kept']} / {s['samples']}** ({100 * s['kept'] / s['samples']:.0f} %) | "
               f"{pc['RV']} | {pc['MYO']} | {pc['LV']} |")
        if "start" in runs and level in runs["start"]:
            st = runs["start"][level]
            row += f" {st['kept']} / {st['samples']} ({100 * st['kept'] / st['samples']:.0f} %) |"
        L.append(row)
    L += ["", "The start-field column uses the slices of Table 1's start-field run (a subset of the images): "
          "the recovery's share of the topology is the difference between the two columns on those slices."]
    return "\n".join(L) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/drdm-table1"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/acdc"))
    ap.add_argument("--out", type=Path, default=Path("docs/results/label-topology"),
                    help="writes OUT.md and OUT.json")
    args = ap.parse_args()
    result = {"runs": {}, "rows": {}}
    for name in ("drdm", "start"):
        run_dir = args.work_dir / name
        if (run_dir / "manifest.json").exists():
            rows = measure(run_dir, args.data)
            result["rows"][name] = rows
            result["runs"][name] = summary(rows)
            print(name, json.dumps(result["runs"][name]))
    if "drdm" not in result["runs"]:
        raise SystemExit(f"no drdm/manifest.json in {args.work_dir}: run scripts/table1.py first")
    command = (f".venv/bin/python scripts/label_topology.py --work-dir {args.work_dir} --data {args.data} "
               f"--out {args.out}")
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result, command))


if __name__ == "__main__":
    main()
