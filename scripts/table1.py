#!/usr/bin/env python3
"""Reproduce the paper's Table 1 (and a Fig. 6 / Fig. 8 style figure) with a
trained libdrdm model on real ACDC short-axis slices.

What it does, deterministically:
  1. picks ACDC test-split subjects (patient number mod 20 in 10..18, the split
     suggested in ../shared/data/README.md), their end-diastole frame
     (frame01), and the mid-ventricular slice (the middle one of the slices
     whose label map holds LV cavity, label 3); writes each as a 2D NIfTI
     (in-plane spacing, origin and direction kept) into WORK/inputs;
  2. runs `drdm_deform --mode deform` on them for every level T' and K samples
     with a fixed seed;
  3. optionally (needs PyTorch in this Python) runs the same job with a copy
     of the model whose output layer is zeroed: the network then predicts no
     recovery, so the "generated" field is exactly the random start field
     phi_{T':1} that the real run started from (same per-sample seeds);
  4. re-reads every written field (ITK displacement field, mm), converts it
     back to voxels and recomputes, in numpy and independently of the
     library, the max / mean magnitude (% of image size) and the folding
     ratio, and checks them against manifest.json;
  5. computes diversity (mean pairwise distance between the K fields of one
     image and level), aggregates mean +- std over images and samples, writes
     OUT/table1.json, OUT/table1.md and the figures.

Needs numpy, SimpleITK, matplotlib (and PyTorch only for step 3; without it
step 3 is skipped). The default run (20 slices x 5 levels x 4 samples, plus
5 slices for the start fields) takes about 8-9 minutes on 2 idle CPU cores.

  python3 scripts/table1.py --drdm-deform build/apps/drdm_deform --threads 2
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parent.parent

# Table 1 of the paper (2D cardiac MRI, 256 x 256): mean +- std.
PAPER = {
    30: {"max": (7.8, 1.3), "mean": (2.4, 0.6), "fold": (0.7, 1.5)},
    45: {"max": (10.4, 2.4), "mean": (3.0, 0.8), "fold": (0.9, 1.2)},
    55: {"max": (11.8, 3.2), "mean": (3.3, 0.8), "fold": (2.4, 3.2)},
    65: {"max": (12.7, 4.0), "mean": (3.6, 0.9), "fold": (6.6, 5.5)},
    70: {"max": (14.8, 3.5), "mean": (4.3, 1.4), "fold": (9.8, 7.2)},
}


def log(msg: str) -> None:
    print(f"[table1] {msg}", flush=True)


# ---------------------------------------------------------------------------
# 1. Slice selection


def select_slices(data: Path, slices_per_subject: int, max_images: int) -> list[dict]:
    """Test-split subjects, ED frame, mid-ventricular slice(s); sorted, deterministic."""
    images = data / "images"
    labels = data / "labels"
    subjects = sorted({p.name.split("_")[0] for p in images.glob("patient*_frame01.nii.gz")})
    chosen = []
    for subj in subjects:
        number = int(subj.replace("patient", ""))
        if not 10 <= number % 20 <= 18:
            continue
        img_path = images / f"{subj}_frame01.nii.gz"
        lab_path = labels / f"{subj}_frame01.nii.gz"
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_path)))  # [z, y, x]
        zs = [z for z in range(lab.shape[0]) if (lab[z] == 3).any()]
        if not zs:
            continue
        if slices_per_subject == 1:
            picks = [zs[len(zs) // 2]]
        else:  # evenly inside the LV range, e.g. 3 -> 25 %, 50 %, 75 %
            q = [(i + 1) / (slices_per_subject + 1) for i in range(slices_per_subject)]
            picks = sorted({zs[min(len(zs) - 1, int(round(f * (len(zs) - 1))))] for f in q})
        for z in picks:
            chosen.append({"subject": subj, "image": str(img_path), "labels": str(lab_path), "z": int(z),
                           "name": f"{subj}_ED_z{z:02d}"})
    return spread(chosen, max_images)


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced over the sorted list (all when count <= 0 or >= len)."""
    if count <= 0 or count >= len(items):
        return list(items)
    idx = np.unique(np.round(np.linspace(0, len(items) - 1, count)).astype(int))
    return [items[i] for i in idx]


def stretch_slice(sl: sitk.Image, n: int) -> sitk.Image:
    """The slice resampled (linear) to n x n voxels of 1 mm, its aspect ratio not kept: what the
    authors' ACDC loader does (skimage `resize` to 256 x 256), so the anatomy fills the grid."""
    out = sitk.Image([n, n], sl.GetPixelID())
    size, spacing = sl.GetSize(), sl.GetSpacing()
    out.SetSpacing([1.0, 1.0])
    scale = [size[i] * spacing[i] / n for i in range(2)]  # mm of the slice per output voxel
    affine = sitk.AffineTransform(2)
    affine.SetMatrix([scale[0], 0.0, 0.0, scale[1]])
    # output voxel centre j (mm = j) -> slice point: origin + (j + 0.5) * scale - 0.5 * spacing
    affine.SetTranslation([-0.5 * spacing[i] + 0.5 * scale[i] for i in range(2)])
    flat = sitk.Image(sl)
    flat.SetOrigin([0.0, 0.0])
    flat.SetDirection([1.0, 0.0, 0.0, 1.0])
    return sitk.Resample(flat, out, affine, sitk.sitkLinear, 0.0, sl.GetPixelID())


def write_slices(chosen: list[dict], folder: Path, stretch: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for c in chosen:
        vol = sitk.ReadImage(c["image"])
        size = list(vol.GetSize())
        sl = sitk.Extract(vol, [size[0], size[1], 0], [0, 0, c["z"]],
                          sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
        if stretch > 0:
            sl = stretch_slice(sitk.Cast(sl, sitk.sitkFloat32), stretch)
        path = folder / f"{c['name']}.nii.gz"
        sitk.WriteImage(sl, str(path))
        c["slice_file"] = str(path)
        c["size_xy"] = list(sl.GetSize())
        c["spacing_xy"] = list(sl.GetSpacing())


# ---------------------------------------------------------------------------
# 2./3. Running drdm_deform


def zero_output_model(model: Path, out: Path) -> bool:
    """Copy of `model` whose output convolution is zero (predicts no recovery)."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        log("PyTorch is not importable here: skipping the random start fields")
        return False
    ck = torch.load(str(model), map_location="cpu", weights_only=False)
    for key in ("out.weight", "out.bias"):
        ck["model"][key] = torch.zeros_like(ck["model"][key])
    torch.save(ck, str(out))
    return True


def run_deform(binary: Path, model: Path | None, inputs: Path, output: Path, levels: list[int], samples: int,
               seed: int, threads: int, jobs: int, schedule: str = "level") -> dict:
    """drdm_deform as `jobs` shards (--shard i/jobs, --threads each) in parallel; merges the manifests."""
    if output.exists():
        shutil.rmtree(output)
    base = [str(binary), "--mode", "deform", "-i", str(inputs), "-o", str(output),
            "--levels", ",".join(map(str, levels)), "--samples", str(samples), "--seed", str(seed),
            "--device", "cpu", "--no-preview", "--no-progress", "--threads", str(threads),
            "--schedule", schedule]
    if model is not None:
        base += ["--model", str(model)]
    cmds = [base + (["--shard", f"{i}/{jobs}"] if jobs > 1 else []) for i in range(jobs)]
    for c in cmds:
        log("running: " + " ".join(c))
    t0 = time.time()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate() for p in procs]
    wall = time.time() - t0
    for p, (o, e) in zip(procs, outs):
        if p.returncode != 0:
            sys.stderr.write(o + e)
            raise SystemExit(f"drdm_deform failed (exit {p.returncode})")
    shard_summaries = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    if jobs > 1:  # one manifest.json with every shard's samples
        parts = [json.loads(Path(s["manifest"]).read_text()) for s in shard_summaries]
        merged = dict(parts[0])
        merged["samples"] = [x for part in parts for x in part["samples"]]
        merged["cases"] = sum(part["cases"] for part in parts)
        merged.pop("summary", None)
        merged["merged_from"] = [Path(s["manifest"]).name for s in shard_summaries]
        (output / "manifest.json").write_text(json.dumps(merged, indent=2) + "\n")
    summary = {"samples": sum(s["samples"] for s in shard_summaries), "cases": sum(s["cases"] for s in shard_summaries),
               "seconds": [s["seconds"] for s in shard_summaries], "wall_seconds": wall, "command": base,
               "jobs": jobs}
    log(f"  done: {summary['samples']} samples in {wall:.1f} s")
    return summary


# ---------------------------------------------------------------------------
# 4. Independent metrics (numpy)


def read_field_voxels(path: Path) -> np.ndarray:
    """ITK displacement field (mm, physical) -> [2, H, W] displacement in voxels,
    channel i along numpy/tensor axis i (0 = y / rows, 1 = x / columns)."""
    img = sitk.ReadImage(str(path))
    phys = sitk.GetArrayFromImage(img).astype(np.float64)  # [H, W, 2], components in ITK (x, y) order
    d = img.GetDimension()
    m = np.array(img.GetDirection(), dtype=np.float64).reshape(d, d) @ np.diag(img.GetSpacing())
    idx = phys @ np.linalg.inv(m).T  # continuous-index displacement, ITK (x, y) order
    return np.moveaxis(idx[..., ::-1], -1, 0)  # [2, H, W], tensor order (y, x)


def magnitude_pct(u: np.ndarray) -> np.ndarray:
    """Per voxel || (u_i / size_i)_i ||_2 in % (DESIGN.md convention)."""
    sizes = np.array(u.shape[1:], dtype=np.float64).reshape((-1,) + (1,) * (u.ndim - 1))
    return 100.0 * np.sqrt(((u / sizes) ** 2).sum(0))


def magnitude_pct_longest(u: np.ndarray, spacing_yx: np.ndarray) -> np.ndarray:
    """Per voxel physical |u| / longest physical side in %: the paper's number
    when the slice is padded to a square (256 x 256) grid."""
    mm = u * spacing_yx.reshape(-1, 1, 1)
    extent = max(s * n for s, n in zip(spacing_yx, u.shape[1:]))
    return 100.0 * np.sqrt((mm ** 2).sum(0)) / extent


def jacobian_det(u: np.ndarray) -> np.ndarray:
    """det(I + grad u), central differences inside, one-sided at the border (voxel units)."""
    g00, g01 = np.gradient(u[0], edge_order=1)
    g10, g11 = np.gradient(u[1], edge_order=1)
    return (1.0 + g00) * (1.0 + g11) - g01 * g10


def field_metrics(u: np.ndarray, spacing_yx: np.ndarray) -> dict:
    mag = magnitude_pct(u)
    iso = magnitude_pct_longest(u, spacing_yx)
    det = jacobian_det(u)
    return {"max_magnitude_pct": float(mag.max()), "mean_magnitude_pct": float(mag.mean()),
            "folding_ratio": float((det <= 0).mean()),
            "max_magnitude_pct_longest_side": float(iso.max()),
            "mean_magnitude_pct_longest_side": float(iso.mean()),
            "min_jacobian": float(det.min())}


def pairwise_distance_pct(fields: list[np.ndarray]) -> float:
    """Mean over pairs of the voxel-mean of || ((u_a - u_b)_i / size_i)_i || in %."""
    vals = [magnitude_pct(a - b).mean() for a, b in itertools.combinations(fields, 2)]
    return float(np.mean(vals)) if vals else float("nan")


def analyse(run_dir: Path, chosen: list[dict]) -> tuple[list[dict], dict]:
    """Per-sample metrics (manifest + numpy) and per (case, level) field lists."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    spacing_of = {c["name"]: np.array(c["spacing_xy"][::-1], dtype=np.float64) for c in chosen}
    rows = []
    fields: dict = {}
    for s in manifest["samples"]:
        u = read_field_voxels(run_dir / s["outputs"]["field"])
        mine = field_metrics(u, spacing_of[s["case"]])
        rows.append({"case": s["case"], "level": int(s["level"]), "sample": int(s["sample"]), "seed": s["seed"],
                     "manifest": s["metrics"], "numpy": mine, "field": s["outputs"]["field"],
                     "image": s["outputs"]["image"]})
        fields.setdefault((s["case"], int(s["level"])), []).append((int(s["sample"]), u))
    return rows, fields


def mean_std(values) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    return [float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0]


def aggregate(rows: list[dict], levels: list[int], source: str) -> dict:
    out = {}
    for level in levels:
        r = [x[source] for x in rows if x["level"] == level]
        out[level] = {
            "n": len(r),
            "max_magnitude_pct": mean_std([x["max_magnitude_pct"] for x in r]),
            "mean_magnitude_pct": mean_std([x["mean_magnitude_pct"] for x in r]),
            "folding_pct": mean_std([100.0 * x["folding_ratio"] for x in r]),
        }
        if source == "numpy":
            out[level]["max_magnitude_pct_longest_side"] = mean_std([x["max_magnitude_pct_longest_side"] for x in r])
            out[level]["mean_magnitude_pct_longest_side"] = mean_std([x["mean_magnitude_pct_longest_side"] for x in r])
            out[level]["samples_with_folding"] = int(sum(x["folding_ratio"] > 0 for x in r))
            out[level]["min_jacobian"] = float(min(x["min_jacobian"] for x in r))
    return out


def diversity(fields: dict, levels: list[int]) -> dict:
    out = {}
    for level in levels:
        per_case = [pairwise_distance_pct([u for _, u in sorted(v, key=lambda t: t[0])])
                    for (case, lv), v in sorted(fields.items()) if lv == level]
        out[level] = {"n_images": len(per_case), "pairwise_distance_pct": mean_std(per_case)}
    return out


def recovery_effect(rows: list[dict], start_rows: list[dict], levels: list[int], source: str = "numpy") -> dict:
    """Per level: the generated field's mean magnitude over its own start field's (metrics from `source`)."""
    start = {(r["case"], r["level"], r["sample"]): r for r in start_rows}
    out = {}
    for level in levels:
        ratio = [r[source]["mean_magnitude_pct"] / start[(r["case"], r["level"], r["sample"])][source]["mean_magnitude_pct"]
                 for r in rows if r["level"] == level and (r["case"], r["level"], r["sample"]) in start]
        out[level] = {"mean_magnitude_ratio_generated_over_start": mean_std(ratio)}
    return out


def distance_to_start(fields: dict, start_fields: dict, levels: list[int]) -> dict:
    out = {}
    for level in levels:
        d = []
        for key, v in fields.items():
            if key[1] != level or key not in start_fields:
                continue
            st = dict(start_fields[key])
            d += [float(magnitude_pct(u - st[k]).mean()) for k, u in v if k in st]
        out[level] = mean_std(d) if d else None
    return out


# ---------------------------------------------------------------------------
# Warp cross-check and figures


def warp_with_sitk(image: sitk.Image, field_path: Path) -> np.ndarray:
    """Pull-back warp of `image` by the written field, with SimpleITK (linear, zero outside)."""
    disp = sitk.ReadImage(str(field_path), sitk.sitkVectorFloat64)
    tx = sitk.DisplacementFieldTransform(sitk.Image(disp))
    out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat64), image, tx, sitk.sitkLinear, 0.0)
    return sitk.GetArrayFromImage(out)


def warp_crosscheck(run_dir: Path, rows: list[dict], chosen: list[dict], limit: int = 10) -> dict:
    """SimpleITK's warp of the original slice by the written field vs drdm_deform's warped image,
    over the voxels whose sample point x + u(x) lies inside the slice (outside it ITK returns 0
    while grid_sample blends with the zero padding within one voxel of the edge)."""
    by_name = {c["name"]: c for c in chosen}
    diffs, means = [], []
    for r in rows[:limit]:
        src = sitk.ReadImage(by_name[r["case"]]["slice_file"])
        ours = sitk.GetArrayFromImage(sitk.ReadImage(str(run_dir / r["image"]))).astype(np.float64)
        theirs = warp_with_sitk(src, run_dir / r["field"])
        u = read_field_voxels(run_dir / r["field"])
        h, w = ours.shape
        yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        y, x = yy + u[0], xx + u[1]
        inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
        rng = float(sitk.GetArrayFromImage(src).max())
        d = np.abs(ours - theirs)[inside] / rng
        diffs.append(float(d.max()))
        means.append(float(d.mean()))
    return {"samples": len(diffs), "max_abs_diff_over_image_max": max(diffs) if diffs else None,
            "mean_abs_diff_over_image_max": float(np.mean(means)) if means else None}


def deformed_grid(shape: tuple[int, int], u: np.ndarray, step: int = 16) -> np.ndarray:
    """A regular grid (2-voxel lines every `step`) pulled back by u like the image: value in [0, 1]
    (bilinear), 0 where x + u(x) falls outside the slice."""
    h, w = shape
    grid = np.zeros((h, w), dtype=np.float64)
    for o in (0, 1):
        grid[o::step, :] = 1.0
        grid[:, o::step] = 1.0
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    y = yy + u[0]
    x = xx + u[1]
    inside = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1)
    y = np.clip(y, 0, h - 1)
    x = np.clip(x, 0, w - 1)
    y0 = np.floor(y).astype(int)
    x0 = np.floor(x).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    fy, fx = y - y0, x - x0
    v = ((1 - fy) * (1 - fx) * grid[y0, x0] + (1 - fy) * fx * grid[y0, x1] + fy * (1 - fx) * grid[y1, x0]
         + fy * fx * grid[y1, x1])
    return np.where(inside, v, 0.0)


def _show(ax, img, lo, hi, grid=None):
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear")
    if grid is not None:
        rgba = np.zeros(grid.shape + (4,))
        rgba[..., 1] = 0.9
        rgba[..., 0] = 0.2
        rgba[..., 3] = 0.55 * np.clip(grid, 0, 1)
        ax.imshow(rgba, interpolation="bilinear")
    ax.set_xticks([])
    ax.set_yticks([])


MODEL_NAME = "cardiac2d"  # the model's folder name, for figure titles (set in main)


def figure_levels(path: Path, run_dir: Path, start_dir: Path | None, rows: list[dict], case: dict,
                  levels: list[int], samples: int, start_rows: list[dict] | None) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    src = sitk.GetArrayFromImage(sitk.ReadImage(case["slice_file"])).astype(np.float64)
    lo, hi = np.percentile(src, [0.5, 99.5])
    ncols = 1 + (1 if start_dir is not None else 0) + samples
    fig, axes = plt.subplots(len(levels), ncols, figsize=(1.75 * ncols, 1.95 * len(levels) + 0.4))
    axes = np.atleast_2d(axes)
    start_map = {(r["case"], r["level"], r["sample"]): r for r in (start_rows or [])}
    for i, level in enumerate(levels):
        col = 0
        _show(axes[i, col], src, lo, hi)
        axes[i, col].set_ylabel(f"T' = {level}", fontsize=11)
        if i == 0:
            axes[i, col].set_title("original", fontsize=9)
        col += 1
        mine = sorted([r for r in rows if r["case"] == case["name"] and r["level"] == level], key=lambda r: r["sample"])
        if start_dir is not None:
            st = start_map.get((case["name"], level, 0))
            if st is not None:
                u = read_field_voxels(start_dir / st["field"])
                img = sitk.GetArrayFromImage(sitk.ReadImage(str(start_dir / st["image"]))).astype(np.float64)
                _show(axes[i, col], img, lo, hi, deformed_grid(src.shape, u))
                axes[i, col].set_xlabel(f"max {st['numpy']['max_magnitude_pct']:.1f}%  "
                                        f"|J|<0 {100 * st['numpy']['folding_ratio']:.1f}%", fontsize=7)
            if i == 0:
                axes[i, col].set_title("random start s00\n(no recovery)", fontsize=9)
            col += 1
        for r in mine[:samples]:
            u = read_field_voxels(run_dir / r["field"])
            img = sitk.GetArrayFromImage(sitk.ReadImage(str(run_dir / r["image"]))).astype(np.float64)
            _show(axes[i, col], img, lo, hi, deformed_grid(src.shape, u))
            axes[i, col].set_xlabel(f"max {r['numpy']['max_magnitude_pct']:.1f}%  "
                                    f"|J|<0 {100 * r['numpy']['folding_ratio']:.1f}%", fontsize=7)
            if i == 0:
                axes[i, col].set_title(f"DRDM s{r['sample']:02d}", fontsize=9)
            col += 1
    fig.suptitle(f"DRDM ({MODEL_NAME}) on ACDC {case['name']}\nrows: level T'; columns: samples "
                 f"(each its own seed); green: warped grid", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def figure_subjects(path: Path, run_dir: Path, rows: list[dict], cases: list[dict], level: int, samples: int) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(len(cases), 1 + samples, figsize=(1.6 * (1 + samples), 1.75 * len(cases) + 0.4))
    axes = np.atleast_2d(axes)
    for i, c in enumerate(cases):
        src = sitk.GetArrayFromImage(sitk.ReadImage(c["slice_file"])).astype(np.float64)
        lo, hi = np.percentile(src, [0.5, 99.5])
        _show(axes[i, 0], src, lo, hi)
        axes[i, 0].set_ylabel(c["subject"], fontsize=9)
        if i == 0:
            axes[i, 0].set_title("original", fontsize=9)
        mine = sorted([r for r in rows if r["case"] == c["name"] and r["level"] == level], key=lambda r: r["sample"])
        for j, r in enumerate(mine[:samples]):
            img = sitk.GetArrayFromImage(sitk.ReadImage(str(run_dir / r["image"]))).astype(np.float64)
            _show(axes[i, 1 + j], img, lo, hi)
            if i == 0:
                axes[i, 1 + j].set_title(f"s{r['sample']:02d}", fontsize=9)
    fig.suptitle(f"DRDM samples for {len(cases)} ACDC subjects\nT' = {level}, each sample its own seed", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------
# Report


def pm(v, digits=1) -> str:
    return f"{v[0]:.{digits}f} ± {v[1]:.{digits}f}"


def grid_sentence(stretch: int) -> str:
    if stretch:
        return (f"Each slice is resampled to {stretch} × {stretch} voxels of 1 mm without keeping its aspect "
                "ratio (`--stretch`), as the authors' ACDC loader resizes to 256 × 256.")
    return "Slices keep their in-plane grid (mostly 216 × 256 or 256 × 216, spacing written as 1 mm)."


def write_markdown(path: Path, res: dict, command: str) -> None:
    levels = res["levels"]
    ours = res["table"]["numpy"]
    start = res.get("start_fields", {}).get("table")
    div = res["diversity"]["generated"]
    div_start = res.get("diversity", {}).get("start")
    cfg = res["config"]
    t = res["timing"]
    L = []
    L.append(f"# Table 1 on real ACDC slices with the shipped `{Path(cfg['model']).parent.name}` model")
    L.append("")
    L.append("*Generated by [`scripts/table1.py`](../../scripts/table1.py); raw numbers in "
             "[`table1.json`](table1.json). Do not edit by hand: rerun the script.*")
    L.append("")
    L.append("## How to run")
    L.append("")
    L.append("```bash")
    L.append(command)
    L.append("```")
    L.append("")
    L.append(f"- **Images**: {res['images']['count']} ACDC slices (target domain, never seen in training), one per "
             "subject: of the 45 test-split subjects of `../shared/data/README.md` (patient number mod 20 in 10–18), "
             f"{res['images']['count']} evenly spaced by number (so every pathology group of 20 is represented), "
             "end-diastole "
             "frame (`frame01`), mid-ventricular slice = the middle one of the slices whose label map holds LV "
             "cavity (label 3). " + grid_sentence(res['config'].get('stretch', 0)) +
             " They are written as 2D NIfTI to the work folder, never to the repository.")
    L.append(f"- **Generation**: `drdm_deform --mode deform --levels {','.join(map(str, levels))} "
             f"--samples {cfg['samples']} --seed {cfg['seed']}` on the CPU ({cfg['jobs']} processes (`--shard i/{cfg['jobs']}`) "
             f"× {cfg['threads']} thread(s)), schedule "
             + ("`level` (paper Alg. 2: recovery t = T'..1)" if cfg.get("schedule", "level") == "level"
                else "`all` (the authors' code: recovery t = T..1 whatever T' is)")
             + ". Every (image, level, sample) has its own seed derived "
             "from the run seed, the image name, the level and the sample index, so the "
             f"{res['images']['count']} × {len(levels)} × {cfg['samples']} = "
             f"{res['images']['count'] * len(levels) * cfg['samples']} fields are all different draws.")
    L.append("- **Metrics** (DESIGN.md conventions), per field on the input slice's own grid, then mean ± std "
             "(sample std) over all images × samples of a level: max and mean over voxels of "
             "‖(u_i / size_i)_i‖₂ in % of the image size; |J|<0 = % of voxels with det(I + ∇u) ≤ 0 "
             "(central differences, one-sided at the border).")
    L.append("")
    L.append("## Table 1: ours beside the paper")
    L.append("")
    L.append("| T' | max ‖φ‖ (% img) ours | paper | mean ‖φ‖ (% img) ours | paper | \\|J\\|<0 (%) ours | paper | "
             "fields with any \\|J\\|<0 |")
    L.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for lv in levels:
        o = ours[str(lv)]
        p = PAPER.get(lv)
        pp = (lambda k: pm(p[k])) if p else (lambda k: "–")
        L.append(f"| {lv} | **{pm(o['max_magnitude_pct'])}** | {pp('max')} | **{pm(o['mean_magnitude_pct'])}** | "
                 f"{pp('mean')} | **{pm(o['folding_pct'], 2)}** | {pp('fold')} | "
                 f"{o['samples_with_folding']} / {o['n']} |")
    L.append("")
    L.append("Same fields, magnitude relative to the slice's **longest side** for both axes (what a 256 × 256 "
             "padded grid like the paper's measures, apart from the padding voxels it also averages over):")
    L.append("")
    L.append("| T' | max (% longest side) | mean (% longest side) |")
    L.append("|---:|---:|---:|")
    for lv in levels:
        o = ours[str(lv)]
        L.append(f"| {lv} | {pm(o['max_magnitude_pct_longest_side'])} | {pm(o['mean_magnitude_pct_longest_side'])} |")
    L.append("")
    cc = res["crosscheck"]
    L.append(f"**Cross-check.** The numbers above were recomputed in numpy from the written field files "
             f"(mm, converted back to voxels with each file's spacing and direction), independently of the library. "
             f"They agree with `manifest.json` to {cc['max_abs_diff_magnitude_pct']:.2g} percentage points "
             f"(magnitudes) and {cc['max_abs_diff_folding_ratio']:.2g} (folding ratio) over all "
             f"{cc['samples']} fields. Warping the original slice with the written field in SimpleITK "
             f"(`DisplacementFieldTransform`, linear) reproduces `drdm_deform`'s warped image to "
             f"{100 * res['warp_crosscheck']['max_abs_diff_over_image_max']:.2g}% of the image maximum "
             f"at most (mean {100 * res['warp_crosscheck']['mean_abs_diff_over_image_max']:.2g}%; "
             f"{res['warp_crosscheck']['samples']} samples; voxels whose sample point x + u(x) falls outside the "
             "slice excluded, where ITK returns 0 and grid_sample blends with the zero padding), the written "
             "image is stored as uint16 like the input.")
    L.append("")
    if start:
        L.append("## Random start fields φ_T':1 (before recovery)")
        L.append("")
        L.append("The same job run with a copy of the model whose output layer is zeroed (made in the work folder; "
                 "the network then predicts no recovery step, and the same per-sample seeds give exactly the "
                 "start fields the table's fields grew from). This shows what the recovery does with this model. "
                 "The start field does not depend on the image's content, only on its grid and seed, so this run "
                 f"uses {len(res['start_fields']['images'])} of the slices "
                 f"({', '.join(res['start_fields']['images'])}); the ratio and distance columns pair each of their "
                 "generated fields with its own start field.")
        L.append("")
        L.append("| T' | start: max (% img) | start: mean (% img) | start: \\|J\\|<0 (%) | generated / start mean magnitude | "
                 "mean ‖φ − φ_start‖ (% img) |")
        L.append("|---:|---:|---:|---:|---:|---:|")
        rec = res["start_fields"]["recovery"]
        dts = res["start_fields"]["distance_to_start"]
        for lv in levels:
            s = start[str(lv)]
            L.append(f"| {lv} | {pm(s['max_magnitude_pct'])} | {pm(s['mean_magnitude_pct'])} | "
                     f"{pm(s['folding_pct'], 2)} | {pm(rec[str(lv)]['mean_magnitude_ratio_generated_over_start'], 2)} | "
                     f"{pm(dts[str(lv)], 2) if dts[str(lv)] else '–'} |")
        L.append("")
    L.append("## Diversity")
    L.append("")
    L.append(f"For each image and level, the mean over the {cfg['samples'] * (cfg['samples'] - 1) // 2} pairs of its "
             f"{cfg['samples']} fields of the voxel-mean distance ‖((u_a − u_b)_i / size_i)_i‖₂ (% of image size); "
             "mean ± std over images. Two independent fields of random direction would be about √2 × their RMS "
             "magnitude apart; fields that ignore the seed would be 0 apart.")
    L.append("")
    hdr = "| T' | pairwise distance, generated (% img) | mean magnitude, generated (% img) | distance / magnitude |"
    sep = "|---:|---:|---:|---:|"
    if div_start:
        hdr += " pairwise distance, start fields (% img) |"
        sep += "---:|"
    L.append(hdr)
    L.append(sep)
    for lv in levels:
        d = div[str(lv)]["pairwise_distance_pct"]
        m = ours[str(lv)]["mean_magnitude_pct"]
        row = f"| {lv} | {pm(d, 2)} | {pm(m, 2)} | {d[0] / m[0]:.2f} |"
        if div_start:
            row += f" {pm(div_start[str(lv)]['pairwise_distance_pct'], 2)} |"
        L.append(row)
    L.append("")
    L.append("The paper reports no diversity number; its Fig. 7/8 show diversity qualitatively.")
    L.append("")
    L.append("## Figures")
    L.append("")
    L.append("![levels and seeds](table1_figure.png)")
    L.append("")
    L.append(f"*Like the paper's Fig. 6: one ACDC slice ({res['figure']['case']}); rows are the levels T', columns "
             "the original, " + ("the random start field of sample 0 (before recovery), " if start else "")
             + "and the DRDM samples. The green grid is a regular grid warped by the same field. Below each panel: "
             "max magnitude and |J|<0 of that field. Each level and sample has its own seed (drdm_deform derives "
             "it from the level too), so a row is not the same start field at another T'.*")
    L.append("")
    L.append("![subjects](table1_subjects.png)")
    L.append("")
    L.append(f"*Like the paper's Fig. 8: {len(res['figure']['subjects'])} different subjects, original and "
             f"{res['figure']['subjects_samples']} samples at T' = {res['figure']['subjects_level']}.*")
    L.append("")
    L.append("## Runtime")
    L.append("")
    L.append(f"- DRDM run: {t['generated_seconds']:.0f} s for {res['images']['count'] * len(levels) * cfg['samples']} "
             f"fields ({cfg['jobs']} processes × {cfg['threads']} thread(s), {res['machine']}; the 2 cores were shared "
             "with other work, so expect less on an idle machine).")
    if "start_seconds" in t:
        L.append(f"- Start-field run (zeroed model): {t['start_seconds']:.0f} s.")
    if "models/cardiac2d/" in cfg["model"] and grid_text(res) == "64 × 64":  # measured at 64²
        L.append("- For scale: one slice × 5 levels × 4 samples alone (1 thread, `/usr/bin/time`) took 40 s of CPU "
                 "time, so on 2 idle cores the default run (20 + 5 slices) should take about 8–9 minutes.")
    L.append(f"- Reading the fields, metrics, figures: {t['analysis_seconds']:.0f} s; whole script about "
             f"{t['total_seconds']:.0f} s.")
    L.append("")
    L.append("## Where we differ from the paper, and why")
    L.append("")
    if "models/cardiac2d/" in cfg["model"]:
        L.append(narrative(res))
    else:  # the narrative speaks of the shipped cardiac2d model
        L.append("The reading of this run is in [README.md](README.md) beside this file (written by hand: "
                 "the narrative below the shipped `cardiac2d` model's table speaks of that model).")
    L.append("")
    path.write_text("\n".join(L) + "\n")


def model_facts(model: Path) -> dict:
    """The model's grid and training steps (its config.json) and its card's recovery check, when there."""
    facts = {}
    cfg_path, check_path = model.parent / "config.json", model.parent / "recovery_check.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        facts["size"] = cfg["data"]["size"]
        facts["batch_size"] = cfg["train"]["batch_size"]
    if check_path.exists():
        check = json.loads(check_path.read_text())
        facts["step"] = check.get("model_step")
        facts["recovery"] = {str(r["t"]): {"ratio": r["ratio"], "cosine": r["cosine"]} for r in check["levels"]}
    return facts


def grid_text(res: dict) -> str:
    size = res.get("model", {}).get("size", [64, 64])
    return " × ".join(str(v) for v in size)


def narrative(res: dict) -> str:
    """Where we differ from the paper and why; the numbers come from this run."""
    levels = res["levels"]
    ours = res["table"]["numpy"]
    lo, hi = str(levels[0]), str(levels[-1])
    ratio_max = [ours[str(l)]["max_magnitude_pct"][0] / PAPER[l]["max"][0] for l in levels if l in PAPER]
    ratio_mean = [ours[str(l)]["mean_magnitude_pct"][0] / PAPER[l]["mean"][0] for l in levels if l in PAPER]
    st = res.get("start_fields")
    L = []
    L.append(
        f"- **What we see.** The trend is the paper's: magnitude and folding grow with T'. Our magnitudes are "
        f"{min(ratio_max):.1f}–{max(ratio_max):.1f}× the paper's for the max and {min(ratio_mean):.1f}–"
        f"{max(ratio_mean):.1f}× for the mean (T' = {lo}: {pm(ours[lo]['max_magnitude_pct'])} vs "
        f"{pm(PAPER[int(lo)]['max'])}; T' = {hi}: {pm(ours[hi]['max_magnitude_pct'])} vs {pm(PAPER[int(hi)]['max'])}). "
        f"Our folding is far lower: at most {max(ours[str(l)]['folding_pct'][0] for l in levels):.2f}% of voxels "
        f"on average against the paper's 0.7–9.8%, though the share of fields with any folded voxel grows "
        f"({ours[lo]['samples_with_folding']} / {ours[lo]['n']} at T' = {lo}, {ours[hi]['samples_with_folding']} / "
        f"{ours[hi]['n']} at T' = {hi}). Between T' = 65 and 70 our numbers level off.")
    facts = res.get("model", {})
    rec40 = facts.get("recovery", {}).get("40")
    recovery = (f"one predicted step removes {100 * (1 - rec40['ratio']):.0f}% of a step's error at t = 40 "
                f"(cosine {rec40['cosine']:.2f} with the true inverse; its card's recovery check)"
                if rec40 else "one predicted step removes only a small part of a step's error")
    model = (
        "- **The model (the main reason).** The paper trains on four cardiac datasets (SCD, LASC, M&Ms, M&Ms-2) for "
        "1,000 epochs at 256 × 256, batch 64, on a 48 GB GPU. `cardiac2d` was trained on MyoPS (513 slices) "
        f"on 2 CPU cores, last at **{grid_text(res)}**, batch {facts.get('batch_size', 8)} "
        f"(`models/cardiac2d/README.md` gives its stages): it has learned the direction of the recovery, but "
        f"{recovery}, where the authors' network removes 64%. At 64² a step of a fraction of a voxel was "
        "invisible to the network (docs/results/recovery-experiments.md), hence the larger grid; the learning "
        "curve (docs/results/learning-curve.md) puts a converged recovery orders of magnitude more images away. "
        "Alg. 2 starts from a large random field φ_T':1 and relies on "
        "the T' recovery steps to pull it back to a plausible deformation; a weak recovery leaves the output "
        "close to the random start.")
    if st:
        rec = st["recovery"]
        sm = st["table"]
        model += (
            f" The start-field table shows it: the start fields are already {pm(sm[lo]['mean_magnitude_pct'])}% "
            f"(T' = {lo}) to {pm(sm[hi]['mean_magnitude_pct'])}% (T' = {hi}) of the image on average, and the "
            f"recovery shrinks the mean magnitude to {rec[lo]['mean_magnitude_ratio_generated_over_start'][0]:.2f}× "
            f"(T' = {lo}) – {rec[hi]['mean_magnitude_ratio_generated_over_start'][0]:.2f}× (T' = {hi}) of it. A "
            "converged model should pull back more; the paper's generated fields are 2–4 times smaller than our "
            "start fields. The recovery also removes folding: the start fields fold "
            f"{sm[hi]['folding_pct'][0]:.2f}% of voxels at T' = {hi}, the generated ones "
            f"{ours[hi]['folding_pct'][0]:.2f}%.")
    L.append(model)
    L.append(
        f"- **Grid.** Fields are generated on the {grid_text(res)} model grid (the slice fitted into it keeping "
        "its aspect ratio, zero-padded) and resampled to the slice's own grid. The paper generates at 256², so its fields "
        "can hold finer structure; ours are smoother, which also makes local folding rarer. The size of the "
        "random start field in % of the image is set by the forward process (control grid of 64 points over "
        "twice the field of view, σ, m_t; `models/cardiac2d/config.json`); the paper does not report the "
        "size of its start fields, so we cannot tell how much of the gap is the start and how much the recovery.")
    L.append(
        "- **Normalisation of \"% of image size\".** We divide each axis by its own size (DESIGN.md). ACDC slices "
        "are 216 × 256 (or 256 × 216); the paper pads to a 256² square, which for a non-square slice means "
        "dividing both axes by the longest side and also averaging over the padding. The second table gives "
        "that variant: about 10% lower, not enough to explain the gap.")
    L.append(
        "- **The Jacobian.** We count det(I + ∇u) ≤ 0 of the displacement u, identity included, and the model "
        "was trained with a penalty on det(I + ∇ψ̂) < 0. The authors' training penalty omits the identity and "
        "one axis (DESIGN.md), so it is almost zero: their network was in effect not penalised for folding, "
        "which may be why their |J|<0 reaches 9.8 ± 7.2% at T' = 70 (while their text says \"< 1%\"). How "
        "their Table 1 column was computed is not stated; if with the same function, it does not measure "
        "det(I + ∇u) ≤ 0 and is not directly comparable with ours.")
    L.append(
        "- **Data.** The paper does not say which images Table 1 used. We use ACDC mid-ventricular "
        "end-diastole slices of test-split subjects (one per subject): real, unseen, target-domain data. The "
        "slice spacing of our ACDC copy is unknown (written as 1 mm); in-plane the pixels are square, so "
        "the % numbers do not depend on it. Our std is over images × samples, like the paper's (as far as "
        "it says).")
    L.append(
        "- **Seeds and levels.** `drdm_deform` derives each sample's seed from the level too, so the fields at "
        "different T' are independent draws, not one start field at several levels (as a diffusion "
        "figure like the paper's Fig. 6 would show); the figure's rows are therefore different samples.")
    if res["config"].get("schedule", "level") == "level":
        L.append(
            "- **Recovery schedule.** We run t = T'..1 (Alg. 2 as printed). The authors' code runs all T steps "
            "whatever T' is (`--schedule all` in `drdm_deform`); we did not use it here.")
    else:
        L.append(
            "- **Recovery schedule.** t = T..1 whatever T' is (`--schedule all`), as the authors' code "
            "generates; Alg. 2 as printed runs t = T'..1.")
    div_lo, div_hi = (res["diversity"]["generated"][l]["pairwise_distance_pct"][0] /
                      ours[l]["mean_magnitude_pct"][0] for l in (lo, hi))
    L.append(
        f"- **Diversity.** Fields of one image with different seeds are "
        f"{res['diversity']['generated'][lo]['pairwise_distance_pct'][0]:.1f}–"
        f"{res['diversity']['generated'][hi]['pairwise_distance_pct'][0]:.1f}% of the image apart on average, "
        f"about {div_lo:.2f}–{div_hi:.2f} × their own mean magnitude: the samples are about as different from each other as "
        "independent fields of that size, i.e. the recovery does not collapse them to one deformation per "
        "image. The paper gives no number to compare with.")
    return "\n".join(L)


# ---------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drdm-deform", default=str(REPO / "build/apps/drdm_deform"), help="drdm_deform binary")
    ap.add_argument("--model", default=str(REPO / "models/cardiac2d/model.pt"))
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/acdc"), help="ACDC folder (images/, labels/)")
    ap.add_argument("--work-dir", default="/tmp/drdm-table1", help="slices and drdm_deform outputs (outside the repo)")
    ap.add_argument("--out-dir", default=str(REPO / "docs/results"), help="where table1.{md,json} and figures go")
    ap.add_argument("--levels", default="30,45,55,65,70")
    ap.add_argument("--schedule", default="level", choices=["level", "all"],
                    help="drdm_deform --schedule: level (t = T'..1, paper Alg. 2) or all (t = T..1, authors' code)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per drdm_deform process")
    ap.add_argument("--jobs", type=int, default=2, help="drdm_deform processes in parallel (--shard i/jobs)")
    ap.add_argument("--slices-per-subject", type=int, default=1)
    ap.add_argument("--max-images", type=int, default=20,
                    help="slices, evenly spaced over the sorted selection (0: all 45)")
    ap.add_argument("--start-images", type=int, default=5,
                    help="slices (evenly spaced) for the random-start-field run; 0: as many as --max-images")
    ap.add_argument("--no-start-fields", action="store_true", help="skip the zeroed-model run (random start fields)")
    ap.add_argument("--reuse", action="store_true", help="reuse drdm_deform outputs already in --work-dir")
    ap.add_argument("--stretch", type=int, default=0,
                    help="resample each slice to N x N without keeping its aspect ratio, as the authors' "
                         "loader does (the imported cardiac2d-paper model expects it); 0: keep the slice")
    ap.add_argument("--figure-case", default="", help="slice name for the level figure (default: the first)")
    args = ap.parse_args()
    global MODEL_NAME
    MODEL_NAME = Path(args.model).parent.name

    t_start = time.time()
    levels = [int(x) for x in args.levels.split(",")]
    work = Path(args.work_dir).resolve()
    out_dir = Path(args.out_dir).resolve()
    if REPO in work.parents or work == REPO:
        raise SystemExit("--work-dir must be outside the repository (it holds ACDC data)")
    binary = Path(args.drdm_deform).resolve()
    if not binary.exists():
        raise SystemExit(f"no drdm_deform at {binary} (build it, or pass --drdm-deform)")
    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    chosen = select_slices(Path(args.data), args.slices_per_subject, args.max_images)
    if len(chosen) < 1:
        raise SystemExit("no ACDC slices selected")
    inputs = work / "inputs"
    if inputs.exists():
        shutil.rmtree(inputs)
    write_slices(chosen, inputs, args.stretch)
    log(f"{len(chosen)} slices from {len({c['subject'] for c in chosen})} subjects -> {inputs}")

    timing = {}
    gen_dir = work / "drdm"
    if args.reuse and (gen_dir / "manifest.json").exists():
        gen_summary = json.loads((work / "drdm_summary.json").read_text())
    else:
        gen_summary = run_deform(binary, Path(args.model), inputs, gen_dir, levels, args.samples, args.seed,
                                 args.threads, args.jobs, args.schedule)
        (work / "drdm_summary.json").write_text(json.dumps(gen_summary))
    timing["generated_seconds"] = gen_summary["wall_seconds"]

    start_dir = None
    start_summary = None
    if not args.no_start_fields:
        sd = work / "start"
        if args.reuse and (sd / "manifest.json").exists():
            start_summary = json.loads((work / "start_summary.json").read_text())
            start_dir = sd
        else:
            zero = work / "model_zero_output.pt"
            if zero_output_model(Path(args.model), zero):
                # The start field does not depend on the image's content (only on its grid and
                # the seed), so a few slices suffice; same names, so the same seeds.
                sub = spread(chosen, args.start_images)
                start_inputs = work / "inputs_start"
                if start_inputs.exists():
                    shutil.rmtree(start_inputs)
                start_inputs.mkdir()
                for c in sub:
                    shutil.copy(c["slice_file"], start_inputs / Path(c["slice_file"]).name)
                start_summary = run_deform(binary, zero, start_inputs, sd, levels, args.samples, args.seed,
                                           args.threads, args.jobs, args.schedule)
                start_summary["images"] = [c["name"] for c in sub]
                (work / "start_summary.json").write_text(json.dumps(start_summary))
                start_dir = sd
        if start_summary:
            timing["start_seconds"] = start_summary["wall_seconds"]

    t_analysis = time.time()
    log("reading fields and computing metrics")
    rows, fields = analyse(gen_dir, chosen)
    diffs_mag = [abs(r["manifest"][k] - r["numpy"][k]) for r in rows for k in ("max_magnitude_pct", "mean_magnitude_pct")]
    diffs_fold = [abs(r["manifest"]["folding_ratio"] - r["numpy"]["folding_ratio"]) for r in rows]
    crosscheck = {"samples": len(rows), "max_abs_diff_magnitude_pct": float(max(diffs_mag)),
                  "max_abs_diff_folding_ratio": float(max(diffs_fold))}
    log(f"cross-check manifest vs numpy: {crosscheck}")
    if crosscheck["max_abs_diff_magnitude_pct"] > 1e-2 or crosscheck["max_abs_diff_folding_ratio"] > 1e-3:
        log("WARNING: manifest and numpy metrics disagree")

    res = {
        "paper": {str(k): v for k, v in PAPER.items()},
        "levels": levels,
        "config": {"samples": args.samples, "seed": args.seed, "threads": args.threads, "jobs": args.jobs,
                   "model": args.model,
                   "schedule": args.schedule, "slices_per_subject": args.slices_per_subject,
                   "stretch": args.stretch},
        "images": {"count": len(chosen), "rule": "ACDC subjects with number % 20 in 10..18, frame01 (ED), middle "
                   "slice among those with LV cavity (label 3); --max-images of them evenly spaced by subject number",
                   "list": [{k: c[k] for k in ("name", "subject", "z", "size_xy", "spacing_xy")} for c in chosen]},
        "table": {"numpy": {str(k): v for k, v in aggregate(rows, levels, "numpy").items()},
                  "manifest": {str(k): v for k, v in aggregate(rows, levels, "manifest").items()}},
        "crosscheck": crosscheck,
        "diversity": {"generated": {str(k): v for k, v in diversity(fields, levels).items()}},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible",
        "drdm_deform": {"command": gen_summary["command"], "seconds_reported": gen_summary.get("seconds")},
    }
    res["model"] = model_facts(Path(args.model))
    res["warp_crosscheck"] = warp_crosscheck(gen_dir, rows, chosen)
    log(f"warp cross-check: {res['warp_crosscheck']}")
    start_rows = None
    if start_dir is not None:
        start_rows, start_fields = analyse(start_dir, chosen)
        res["start_fields"] = {
            "table": {str(k): v for k, v in aggregate(start_rows, levels, "numpy").items()},
            "recovery": {str(k): v for k, v in recovery_effect(rows, start_rows, levels).items()},
            "distance_to_start": {str(k): v for k, v in distance_to_start(fields, start_fields, levels).items()},
            "command": start_summary["command"],
            "images": start_summary.get("images"),
        }
        res["diversity"]["start"] = {str(k): v for k, v in diversity(start_fields, levels).items()}
        del start_fields
    res["per_sample"] = [{k: r[k] for k in ("case", "level", "sample", "seed", "manifest", "numpy")} for r in rows]
    if start_rows:
        res["per_sample_start"] = [{k: r[k] for k in ("case", "level", "sample", "seed", "numpy")} for r in start_rows]

    log("figures")
    fig_case = next((c for c in chosen if c["name"] == args.figure_case), chosen[0])
    figure_levels(out_dir / "table1_figure.png", gen_dir, start_dir, rows, fig_case, levels, min(args.samples, 4),
                  start_rows)
    step = max(1, len(chosen) // 5)
    subjects = chosen[::step][:5]
    sub_level = 55 if 55 in levels else levels[len(levels) // 2]
    figure_subjects(out_dir / "table1_subjects.png", gen_dir, rows, subjects, sub_level, min(args.samples, 4))
    res["figure"] = {"case": fig_case["name"], "subjects": [c["name"] for c in subjects],
                     "subjects_level": sub_level, "subjects_samples": min(args.samples, 4)}

    timing["analysis_seconds"] = time.time() - t_analysis
    if args.reuse:  # the drdm_deform runs were timed when they ran
        timing["total_seconds"] = timing["generated_seconds"] + timing.get("start_seconds", 0.0) + timing["analysis_seconds"]
    else:
        timing["total_seconds"] = time.time() - t_start
    res["timing"] = timing
    command = ("python3 scripts/table1.py --drdm-deform build/apps/drdm_deform --data ../shared/data/acdc "
               + (f"--model {args.model} --schedule {args.schedule} --out-dir {args.out_dir} "
                  if args.schedule != "level" or "models/cardiac2d/" not in args.model else "") +
               f"--work-dir /tmp/drdm-table1 --levels {args.levels} --samples {args.samples} --seed {args.seed} "
               f"--jobs {args.jobs} --threads {args.threads} --max-images {args.max_images} "
               f"--start-images {args.start_images}")
    if args.slices_per_subject != 1:
        command += f" --slices-per-subject {args.slices_per_subject}"
    if args.stretch:
        command += f" --stretch {args.stretch}"
    if args.no_start_fields:
        command += " --no-start-fields"
    res["command"] = command
    (out_dir / "table1.json").write_text(json.dumps(res, indent=1) + "\n")
    write_markdown(out_dir / "table1.md", res, command)

    log(f"done in {timing['total_seconds']:.0f} s -> {out_dir}/table1.md")
    print(f"{'T':>3} {'max %':>14} {'mean %':>14} {'|J|<0 %':>14} {'diversity %':>14}")
    for lv in levels:
        o = res["table"]["numpy"][str(lv)]
        d = res["diversity"]["generated"][str(lv)]["pairwise_distance_pct"]
        print(f"{lv:>3} {pm(o['max_magnitude_pct']):>14} {pm(o['mean_magnitude_pct']):>14} "
              f"{pm(o['folding_pct'], 2):>14} {pm(d, 2):>14}")


if __name__ == "__main__":
    main()
