#!/usr/bin/env python3
"""Measure a trained DRDM model on held-out images and write its model card.

From a drdm_train run folder (model.pt, config.json, metrics.jsonl, previews/)
and a small hand-written card text (JSON or Markdown: title, purpose, data and
split, limits), this writes OUT (e.g. models/NAME):

  model.pt, config.json, metrics.jsonl   copied from the run (never checkpoint.pt)
  loss_curve.png                         scripts/plot_training.py on metrics.jsonl
  preview_training.png                   the run's last training preview, if any
  recovery_check.json                    drdm_check_recovery on the held-out images
  preview.png                            held-out images deformed at each level
  card_measurements.json                 every number the card shows
  README.md                              the card text, then the measured sections

The Table-1-style measurement runs drdm_deform on --max-images held-out images
(mode deform, --levels, --samples each) and again with a copy of the model
whose output layer is zeroed (scripts/table1.py), which gives the random start
fields phi_{T':1} at the same seeds; the card puts both side by side.
Intermediate files (symlinks, ACDC slices, drdm_deform outputs) go to
--work-dir, outside the repository; --reuse skips the measurements already
there for the same model, inputs and options.

  .venv/bin/python scripts/model_card.py --run runs/chest2d --name chest2d --out models/chest2d \\
      --card-text scripts/cards/chest2d.json --heldout ../shared/data/jsrt/images --heldout-subset 0.7,1
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import plot_training  # noqa: E402
import table1  # noqa: E402

BUFFERS = ("time_table",)  # tensors in model.pt that are buffers, not trainable parameters
DATASET_LOG = re.compile(r"dataset: (\d+) files -> (\d+) (\dD) samples of (\S+) \((\d+) nearly empty skipped\)")


def log(msg: str) -> None:
    print(f"[model_card] {msg}", flush=True)


def rel(path) -> str:
    """`path` relative to the repository when it lies under the repository's parent (../shared/...)."""
    p = Path(path).resolve()
    if p == REPO or REPO.parent in p.parents:
        return os.path.relpath(p, REPO)
    return str(p)


def command_text(cmd: list[str], env: dict | None = None) -> str:
    prefix = "".join(f"{k}={v} " for k, v in (env or {}).items())
    return prefix + " ".join(shlex.quote(c) for c in cmd)


def pm(v, digits=2) -> str:
    return table1.pm(v, digits)


# ---------------------------------------------------------------------------
# Arguments


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="drdm_train output folder (model.pt, config.json, metrics.jsonl)")
    ap.add_argument("--name", required=True, help="model name, e.g. chest2d")
    ap.add_argument("--out", required=True, help="card folder to write, e.g. models/chest2d")
    ap.add_argument("--card-text", required=True, help="hand-written card text: .json (see scripts/cards/) or .md")
    ap.add_argument("--heldout", required=True, nargs="+", help="a folder of held-out images, or a list of files")
    ap.add_argument("--heldout-subset", default="0,1",
                    help="FROM,TO: this part of the folder's sorted files (like data.subset), e.g. 0.7,1")
    ap.add_argument("--include", default="", help="file pattern(s), comma-separated (default: the model's data.include)")
    ap.add_argument("--slices", choices=["auto", "acdc", "volumes"], default="auto",
                    help="2D model, 3D held-out volumes: acdc = table1.py's mid-ventricular ED slices "
                         "(needs DIR/../labels); volumes = the volumes themselves; auto: acdc for ACDC files")
    ap.add_argument("--levels", default="30,45,55", help="levels T' for the Table-1-style measurement")
    ap.add_argument("--samples", type=int, default=4, help="samples per image and level")
    ap.add_argument("--max-images", type=int, default=16, help="held-out images for drdm_deform (evenly spread)")
    ap.add_argument("--start-images", type=int, default=0,
                    help="images for the start-field run (evenly spread; 0: all of --max-images)")
    ap.add_argument("--preview-images", type=int, default=3, help="rows (held-out images) of preview.png")
    ap.add_argument("--check-levels", default="5,10,20,30,40,60,80", help="levels t of drdm_check_recovery")
    ap.add_argument("--check-images", type=int, default=64, help="drdm_check_recovery --max-images")
    ap.add_argument("--check-repeats", type=int, default=2, help="drdm_check_recovery --repeats")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of each program run")
    ap.add_argument("--device", default="cpu",
                    help="drdm_check_recovery's device (drdm_deform runs on the CPU: table1.run_deform)")
    ap.add_argument("--train-command", default="", help="the drdm_train command (else the card text's training_command)")
    ap.add_argument("--train-log", default="", help="drdm_train's log, for its dataset and parameter lines (optional)")
    ap.add_argument("--bin", default=str(REPO / "build/apps"), help="folder with drdm_deform, drdm_check_recovery")
    ap.add_argument("--work-dir", default="", help="intermediate files, outside the repo (default /tmp/drdm-card-NAME)")
    ap.add_argument("--reuse", action="store_true", help="reuse measurements already in --work-dir")
    return ap.parse_args(argv)


def resolve_paths(args: argparse.Namespace) -> None:
    """Absolute paths (before the script changes into the repository) and checks."""
    args.run = Path(args.run).resolve()
    args.out = Path(args.out).resolve()
    args.card_text = Path(args.card_text).resolve()
    args.heldout = [Path(h).resolve() for h in args.heldout]
    args.bin = Path(args.bin).resolve()
    args.train_log = Path(args.train_log).resolve() if args.train_log else None
    args.work_dir = Path(args.work_dir or f"/tmp/drdm-card-{args.name}").resolve()
    if args.work_dir == REPO or REPO in args.work_dir.parents:
        raise SystemExit("--work-dir must be outside the repository (it holds copies of held-out data)")
    args.levels = [int(x) for x in args.levels.split(",")]
    args.subset = [float(x) for x in args.heldout_subset.split(",")]
    if len(args.subset) != 2 or not 0 <= args.subset[0] < args.subset[1] <= 1:
        raise SystemExit("--heldout-subset: expected FROM,TO with 0 <= FROM < TO <= 1")
    for f in ("model.pt", "config.json", "metrics.jsonl"):
        if not (args.run / f).is_file():
            raise SystemExit(f"--run: no {f} in {args.run}")
    if args.out == args.run:
        raise SystemExit("--out must differ from --run")


# ---------------------------------------------------------------------------
# The model file and the training run


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_info(path: Path) -> dict:
    """Step, parameter count, size and hash of a drdm_train model.pt."""
    import torch  # noqa: PLC0415

    ck = torch.load(str(path), map_location="cpu", weights_only=False)
    params = sum(t.numel() for k, t in ck["model"].items() if k.split(".")[-1] not in BUFFERS)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path), "format": ck.get("format"),
            "step": int(ck["step"]), "parameters": int(params)}


def copy_artifacts(run: Path, out: Path) -> dict:
    """model.pt, config.json, metrics.jsonl and the last training preview into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for f in ("model.pt", "config.json", "metrics.jsonl"):
        shutil.copy2(run / f, out / f)
    previews = sorted((run / "previews").glob("*.png"), key=lambda p: [int(x) for x in re.findall(r"\d+", p.name)])
    if not previews:
        return {"training_preview": None}
    shutil.copy2(previews[-1], out / "preview_training.png")
    return {"training_preview": previews[-1].name}


def wall_segments(rows: list[dict]) -> list[float]:
    """elapsed_seconds restarts at 0 when a run is resumed: the last value of each stretch."""
    segs, last = [], None
    for r in rows:
        e = float(r["elapsed_seconds"])
        if last is not None and e < last:
            segs.append(last)
        last = e
    return segs + [last]


def parse_train_log(path: Path | None) -> dict:
    if path is None:
        return {}
    text = path.read_text(errors="replace")
    out = {}
    m = DATASET_LOG.search(text)
    if m:
        out["dataset"] = {"files": int(m[1]), "samples": int(m[2]), "dims": m[3], "size": m[4],
                          "skipped_nearly_empty": int(m[5])}
    m = re.search(r"recovery network: (\d+) trainable parameters", text)
    if m:
        out["parameters"] = int(m[1])
    m = re.search(r"initialised from (\S+) \(trained (\d+) steps\)", text)
    if m:
        out["initialised_from"] = {"model": m[1], "steps": int(m[2])}
    return out


def training_summary(rows: list[dict], config: dict, train_log: Path | None) -> dict:
    segs = wall_segments(rows)
    keys = ("step", "loss", "distance", "angle", "folding", "lr")
    return {"steps": int(rows[-1]["step"]), "batch_size": config["train"]["batch_size"],
            "images_seen": int(rows[-1]["step"]) * int(config["train"]["batch_size"]),
            "wall_seconds": float(sum(segs)), "wall_segments": len(segs),
            "seconds_per_step_last": float(rows[-1]["seconds_per_step"]),
            "first": {k: rows[0][k] for k in keys}, "last": {k: rows[-1][k] for k in keys},
            "log": parse_train_log(train_log)}


# ---------------------------------------------------------------------------
# Held-out images


def subset_of(files: list, lo: float, hi: float) -> list:
    """The C++ rule (src/io/dataset.cpp subset_of): [floor(lo n), floor(hi n)) of the sorted files."""
    n = len(files)
    return files[min(int(np.floor(lo * n + 1e-9)), n):min(int(np.floor(hi * n + 1e-9)), n)]


def heldout_files(args: argparse.Namespace, include: list[str]) -> list[Path]:
    """One folder (recursive, sorted by path, --include patterns, --heldout-subset) or the files given."""
    if len(args.heldout) == 1 and args.heldout[0].is_dir():
        folder = args.heldout[0]
        files = sorted((p for p in folder.rglob("*") if p.is_file()
                        and any(fnmatch.fnmatchcase(p.name, pat) for pat in include)), key=str)
        return subset_of(files, *args.subset)
    missing = [str(p) for p in args.heldout if not p.is_file()]
    if missing:
        raise SystemExit(f"--heldout: not files: {missing}")
    return sorted(args.heldout, key=lambda p: p.name)


def link_folder(files: list[Path], folder: Path) -> Path:
    """A fresh folder of symlinks to `files` (same names)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def training_overlap(args: argparse.Namespace, config: dict) -> str | None:
    """A warning when the held-out folder is a training folder and the parts overlap."""
    if not (len(args.heldout) == 1 and args.heldout[0].is_dir()):
        return None
    folders = [(REPO / f).resolve() for f in config["data"]["folders"]]
    if args.heldout[0] not in folders:
        return None
    lo, hi = config["data"].get("subset", [0.0, 1.0])
    if args.subset[0] < hi and lo < args.subset[1]:
        return (f"the held-out part {args.subset} of {rel(args.heldout[0])} overlaps the training part "
                f"data.subset = [{lo}, {hi}] of the same folder")
    return None


def image_dims(path: Path) -> int:
    """Dimension ignoring axes of size 1 (a 256 x 256 x 1 radiograph is 2D)."""
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    return sum(1 for s in r.GetSize() if s > 1)


def slice_mode(args: argparse.Namespace, files: list[Path], dims: int) -> str:
    if dims != 2 or image_dims(files[0]) < 3:
        return "volumes"
    if args.slices != "auto":
        return args.slices
    acdc = files[0].name.startswith("patient") and (files[0].parent.parent / "labels").is_dir()
    return "acdc" if acdc else "volumes"


def prepare_inputs(args: argparse.Namespace, files: list[Path], mode: str, folder: Path) -> dict:
    """The drdm_deform input folder: --max-images of the held-out files (symlinks) or ACDC slices."""
    if mode == "volumes":
        chosen = table1.spread(files, args.max_images)
        link_folder(chosen, folder)
        return {"rule": "held-out files evenly spread over the sorted list", "folder": folder,
                "names": [f.name for f in chosen], "sources": [rel(f) for f in chosen]}
    keep = {f.resolve() for f in files}
    slices = [c for c in table1.select_slices(files[0].parent.parent, 1, 0) if Path(c["image"]).resolve() in keep]
    chosen = table1.spread(slices, args.max_images)
    if folder.exists():
        shutil.rmtree(folder)
    table1.write_slices(chosen, folder)
    return {"rule": "scripts/table1.py select_slices: ACDC test-split subjects (number mod 20 in 10..18), "
                    "end-diastole frame, middle slice of those with LV cavity; evenly spread",
            "folder": folder, "names": [Path(c["slice_file"]).name for c in chosen],
            "sources": [f"{rel(c['image'])} z={c['z']}" for c in chosen]}


# ---------------------------------------------------------------------------
# Measurements (each cached in the work folder under a key of everything it depends on)


def cached(args: argparse.Namespace, name: str, key: dict, run) -> dict:
    path = args.work_dir / f"{name}.json"
    if args.reuse and path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            log(f"{name}: reusing {path}")
            args.reused.append(name)
            return stored["result"]
        log(f"{name}: {path} was measured with other settings; measuring again")
    result = run()
    path.write_text(json.dumps({"key": key, "result": result}, indent=1) + "\n")
    return result


def supports_subset(binary: Path) -> bool:
    text = subprocess.run([str(binary), "--help"], capture_output=True, text=True).stdout
    return "--subset" in text


def recovery_command(args: argparse.Namespace, model: Path, files: list[Path], out_json: Path) -> list[str]:
    binary = args.bin / "drdm_check_recovery"
    cmd = [rel(binary), "--model", rel(model)]
    single = len(args.heldout) == 1 and args.heldout[0].is_dir()
    if single and supports_subset(binary):
        cmd += ["--data", rel(args.heldout[0]), "--subset", f"{args.subset[0]:g},{args.subset[1]:g}"]
    else:  # an older binary, or a list of files: a folder of symlinks to exactly the held-out files
        cmd += ["--data", str(link_folder(files, args.work_dir / "heldout_links"))]
    if args.include:
        cmd += ["--include", *args.include.split(",")]
    return cmd + ["--max-images", str(args.check_images), "--levels", args.check_levels, "--repeats",
                  str(args.check_repeats), "--device", args.device, "--seed", str(args.seed), "-o", rel(out_json)]


def run_recovery_check(cmd: list[str], env: dict) -> dict:
    log("running: " + command_text(cmd, env))
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"drdm_check_recovery failed (exit {p.returncode})")
    m = DATASET_LOG.search(p.stderr + p.stdout)
    dataset = {"files": int(m[1]), "samples": int(m[2]), "dims": m[3]} if m else None
    return {"result": json.loads(p.stdout[p.stdout.index("{"):]), "dataset": dataset,
            "seconds": time.time() - t0}


def recovery_check(args: argparse.Namespace, model: Path, files: list[Path], sha: str) -> dict:
    out_json = args.out / "recovery_check.json"
    cmd = recovery_command(args, model, files, args.work_dir / "recovery_check.json")
    env = {"OMP_NUM_THREADS": str(args.threads)}
    key = {"model_sha256": sha, "command": cmd, "files": [str(f) for f in files]}
    res = cached(args, "recovery_summary", key, lambda: run_recovery_check(cmd, env))
    written = args.work_dir / "recovery_check.json"
    if written.exists():
        shutil.copy2(written, out_json)
    else:
        out_json.write_text(json.dumps(res["result"], indent=2) + "\n")
    shown = cmd[:-1] + [rel(out_json)]
    return {**res, "command": command_text(shown, env)}


def deform(args: argparse.Namespace, name: str, model: Path, inputs: Path, names: list[str], sha: str) -> dict:
    """table1.run_deform (one process, --threads) into WORK/name, cached."""
    binary = args.bin / "drdm_deform"
    key = {"model_sha256": sha, "inputs": names, "levels": args.levels, "samples": args.samples,
           "seed": args.seed, "binary": str(binary)}

    def run():
        s = table1.run_deform(binary, model, inputs, args.work_dir / name, args.levels, args.samples, args.seed,
                              args.threads, 1)
        return {**s, "command": command_text([rel(c) if c.startswith("/") else c for c in s["command"]])}
    if not (args.work_dir / name / "manifest.json").exists():
        (args.work_dir / f"{name}.json").unlink(missing_ok=True)
    return cached(args, name, key, run)


def manifest_rows(folder: Path) -> list[dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return [{"case": s["case"], "level": int(s["level"]), "sample": int(s["sample"]), "seed": s["seed"],
             "manifest": s["metrics"], "field": s["outputs"]["field"], "image": s["outputs"]["image"],
             "input": s["input"]} for s in manifest["samples"]]


def start_field_inputs(args: argparse.Namespace, inputs: dict) -> tuple[Path, list[str]]:
    names = table1.spread(inputs["names"], args.start_images)
    if len(names) == len(inputs["names"]):
        return inputs["folder"], names
    folder = args.work_dir / "inputs_start"
    link_folder([(inputs["folder"] / n).resolve() for n in names], folder)
    return folder, names


def table(rows: list[dict], levels: list[int]) -> dict:
    agg = table1.aggregate(rows, levels, "manifest")
    for lv in levels:
        agg[lv]["fields_with_folding"] = sum(r["manifest"]["folding_ratio"] > 0 for r in rows if r["level"] == lv)
    return {str(k): v for k, v in agg.items()}


def deform_measurement(args: argparse.Namespace, model: Path, inputs: dict, sha: str) -> dict:
    gen = deform(args, "deform", model, inputs["folder"], inputs["names"], sha)
    zero = args.work_dir / "model_zero_output.pt"
    if not table1.zero_output_model(model, zero):
        raise SystemExit("PyTorch is needed for the start fields (run with .venv/bin/python)")
    start_in, start_names = start_field_inputs(args, inputs)
    start = deform(args, "start", zero, start_in, start_names, sha)
    rows, start_rows = manifest_rows(args.work_dir / "deform"), manifest_rows(args.work_dir / "start")
    ratio = table1.recovery_effect(rows, start_rows, args.levels, source="manifest")
    return {"command": gen["command"], "start_command": start["command"], "seconds": gen["wall_seconds"],
            "start_seconds": start["wall_seconds"], "images": len(inputs["names"]), "start_images": start_names,
            "table": table(rows, args.levels), "start_table": table(start_rows, args.levels),
            "generated_over_start": {str(k): v["mean_magnitude_ratio_generated_over_start"] for k, v in ratio.items()},
            "rows": rows}


# ---------------------------------------------------------------------------
# Preview figure


def planes(arr: np.ndarray, axes=(0, 1, 2)) -> list[tuple[str, int, np.ndarray]]:
    """(name, fixed axis, 2D array): the array itself in 2D, the central planes across `axes` in 3D."""
    if arr.ndim == 2:
        return [("", -1, arr)]
    names = ("axial", "coronal", "sagittal")
    return [(f"{names[a]} {arr.shape[a] // 2}", a, np.take(arr, arr.shape[a] // 2, axis=a)) for a in axes]


def read_array(path: Path) -> np.ndarray:
    return np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float64))


def read_field(path: Path, shape: tuple) -> np.ndarray | None:
    """Displacement in voxels [d, *shape] (tensor order), None if it is not on that grid."""
    u = table1.read_field_voxels(path)
    return u if u.shape[1:] == shape else None


def plane_view(u: np.ndarray | None, axis: int, index: int, shape2: tuple) -> tuple:
    """In-plane grid pulled back by the in-plane components, and |u| (% of image size) on one plane."""
    if u is None:
        return None, None
    if axis < 0:
        return table1.deformed_grid(shape2, u), table1.magnitude_pct(u)
    inplane = np.take(u, [a for a in range(3) if a != axis], axis=0)
    u2 = np.take(inplane, index, axis=axis + 1)
    return table1.deformed_grid(shape2, u2, step=8), np.take(table1.magnitude_pct(u), index, axis=axis)


def preview_cells(args: argparse.Namespace, case: str, source: Path, rows: list[dict]) -> list[list[dict]]:
    """One list of panels per plane: input, deformed (sample 0) per level, |phi| at the last level."""
    src = read_array(source)
    axes = (args.slice_axis,) if args.model_dims == 2 else (0, 1, 2)  # a 2D model: its own slices only
    out = []
    for name, axis, img in planes(src, axes):
        index = src.shape[axis] // 2 if axis >= 0 else 0
        cells = [{"img": img, "title": "input", "label": f"{case} {name}".strip()}]
        mag = None
        for lv in args.levels:
            r = next(x for x in rows if x["case"] == case and x["level"] == lv and x["sample"] == 0)
            u = read_field(args.work_dir / "deform" / r["field"], src.shape)
            warped = planes(read_array(args.work_dir / "deform" / r["image"]), (axis,))[0][2]
            grid, mag = plane_view(u, axis, index, img.shape)
            cells.append({"img": warped, "grid": grid, "title": f"T' = {lv}",
                          "note": f"max {r['manifest']['max_magnitude_pct']:.1f}%"})
        cells.append({"mag": mag, "title": f"|φ| (% size), T' = {args.levels[-1]}"})
        out.append([dict(c, flip=axis > 0) for c in cells])
    return out


def draw_cell(ax, cell: dict, lo: float, hi: float) -> None:
    flip = (lambda a: a[::-1]) if cell.get("flip") else (lambda a: a)
    if "mag" in cell:
        if cell["mag"] is not None:
            im = ax.imshow(flip(cell["mag"]), cmap="viridis", vmin=0)
            ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    grid = cell.get("grid")
    table1._show(ax, flip(cell["img"]), lo, hi, None if grid is None else flip(grid))
    if "label" in cell:
        ax.set_ylabel(cell["label"], fontsize=7)
    if "note" in cell:
        ax.set_xlabel(cell["note"], fontsize=7)


def preview_figure(args: argparse.Namespace, inputs: dict, rows: list[dict], path: Path) -> dict:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = table1.spread(inputs["names"], args.preview_images)
    case_of = {Path(r["input"]).name: r["case"] for r in rows}
    cases = [case_of[n] for n in names]
    grid_rows = [r for n, c in zip(names, cases) for r in preview_cells(args, c, inputs["folder"] / n, rows)]
    ncols = len(grid_rows[0])
    fig, axes = plt.subplots(len(grid_rows), ncols, figsize=(1.9 * ncols, 1.9 * len(grid_rows) + 0.5), squeeze=False)
    for i, cells in enumerate(grid_rows):
        lo, hi = np.percentile(cells[0]["img"], [0.5, 99.5])
        for j, cell in enumerate(cells):
            draw_cell(axes[i, j], cell, lo, hi)
            if i == 0:
                axes[i, j].set_title(cell["title"], fontsize=8)
    fig.suptitle(f"{args.name} on held-out images: sample 0 at each level\ngreen: a regular grid warped by "
                 "the same field", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return {"file": path.name, "cases": cases, "levels": args.levels, "rows": len(grid_rows)}


# ---------------------------------------------------------------------------
# The card


def card_text(path: Path) -> tuple[str, dict]:
    """The hand-written part: Markdown as it is, or JSON rendered (title, summary, sections)."""
    if path.suffix.lower() != ".json":
        return path.read_text().rstrip() + "\n", {}
    spec = json.loads(path.read_text())
    L = [f"# {spec['title']}", ""]
    for para in as_list(spec.get("summary", [])):
        L += [para, ""]
    for sec in spec.get("sections", []):
        L += [f"## {sec['heading']}", ""]
        for para in as_list(sec.get("text", [])):
            L += [para, ""]
        if sec.get("bullets"):
            L += [f"- {b}" for b in sec["bullets"]] + [""]
    return "\n".join(L), spec


def as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def model_section(m: dict) -> list[str]:
    cfg, info = m["config"], m["model"]
    s, d = cfg["sampler"], cfg["data"]
    size = " × ".join(map(str, d["size"]))
    shape = ", ".join(map(str, d["size"]))
    return [
        "## The model file", "",
        "| | |", "|---|---|",
        f"| file | [`model.pt`](model.pt), {info['bytes'] / 1e6:.1f} MB (sha256 `{info['sha256'][:16]}…`): weights "
        f"and the resolved training config, written by `drdm_train` at step {info['step']:,} |",
        f"| network | recursive ACNN-II U-Net, {d['dims']}D, K = {cfg['model']['recursion']}, time embedding "
        f"{cfg['model']['time_embedding']}, **{info['parameters']:,} parameters** |",
        f"| input | image [N, {cfg['model']['in_channels']}, {shape}] in [0, 1] (clipped to the "
        f"{d['clip_low_pct']}–{d['clip_high_pct']} percentiles, resampled to {size} keeping the aspect ratio) "
        f"and a step t ∈ [0, {s['timesteps']}] |",
        f"| output | the recovery step ψ̂_t [N, {d['dims']}, {shape}] in voxels of the {size} grid |",
        f"| forward process | {s['process']}, T = {s['timesteps']}, control grid {s['control']}, {s['levels']} levels, "
        f"σ = {s['sigma']}, n_t = ⌊t^{s['alpha']}·{s['beta']}⌋, m_t = clamp(⌊t^{s['integrated_alpha']}/"
        f"{s['integrated_beta']}⌋, 1, {s['integrated_max']}), {100 * s['perturbation']:g}% perturbation |", ""]


def lr_text(train: dict, t: dict) -> str:
    sched = train.get("lr_schedule", "exponential")
    if sched == "cosine":
        how = f"cosine to {train.get('lr_min')} after {train.get('warmup_steps', 0)} warm-up steps"
    else:
        how = f"× {train.get('lr_decay')}^step"
    return f"Adam, lr {train['lr']:g} {how} (logged: {t['first']['lr']:.3g} → {t['last']['lr']:.3g})"


def training_section(m: dict) -> list[str]:
    cfg, t = m["config"], m["training"]
    d, train = cfg["data"], cfg["train"]
    data = f"{', '.join(f'`{f}`' for f in d['folders'])}, include {d['include']}"
    data += f", exclude {d['exclude']}" if d.get("exclude") else ""
    data += f", `data.subset` = {d['subset']}" if "subset" in d else ", all files"
    if t["log"].get("dataset"):
        ds = t["log"]["dataset"]
        data += f": {ds['files']} files → **{ds['samples']} {ds['dims']} samples** (drdm_train's log)"
    L = ["## Training", "", "| | |", "|---|---|",
         "| config | [`config.json`](config.json) (the resolved config; also embedded in `model.pt`) |"]
    if m.get("train_command"):
        L.append(f"| command | `{m['train_command']}` |")
    if train.get("init_from") or t["log"].get("initialised_from"):
        L.append(f"| initialised from | `{train.get('init_from') or t['log']['initialised_from']['model']}` |")
    L += [f"| data | {data} |",
          f"| steps | {t['steps']:,} × batch {t['batch_size']} = {t['images_seen']:,} samples |",
          f"| optimiser | {lr_text(train, t)}; loss weights λ = ({cfg['loss']['distance']}, {cfg['loss']['angle']}, "
          f"{cfg['loss']['regularisation']}) |",
          f"| seed | {train['seed']} |",
          f"| wall time | **{t['wall_seconds'] / 60:.1f} min** ({t['wall_seconds']:,.0f} s, `elapsed_seconds` of "
          f"[`metrics.jsonl`](metrics.jsonl), {t['wall_segments']} stretch(es)); last window "
          f"{t['seconds_per_step_last']:.2f} s per step |", ""]
    return L + loss_text(t) + training_preview(m)


def loss_text(t: dict) -> list[str]:
    f, last = t["first"], t["last"]
    return ["![loss curve](loss_curve.png)", "",
            f"*Loss terms per logging window ([`metrics.jsonl`](metrics.jsonl)). Distance "
            f"‖compose(ψ, ψ̂)‖ / ‖ψ‖ (1 = predicts nothing): {f['distance']:.3f} at step {f['step']} → "
            f"{last['distance']:.3f} at step {last['step']}. −angle, mean cos(ψ, −ψ̂) (1 = points exactly back): "
            f"{-f['angle']:.3f} → {-last['angle']:.3f}. Folding term in the last window: {last['folding']:.3g}.*", ""]


def training_preview(m: dict) -> list[str]:
    if not m["copied"].get("training_preview"):
        return []
    return ["![last training preview](preview_training.png)", "",
            f"*The run's last training preview (`previews/{m['copied']['training_preview']}`): original | deformed by "
            "φ_t:1 | deformed grid | |φ|, then deformed | after one predicted recovery step | recovery grid | |ψ̂|.*", ""]


def heldout_text(m: dict) -> str:
    h = m["heldout"]
    where = (f"`{h['folder']}`, sorted files {h['subset'][0]:g}–{h['subset'][1]:g}" if h["folder"]
             else "linked into the work folder's `heldout_links/`: " + ", ".join(f"`{f}`" for f in h["list"]))
    return f"{h['files']} held-out files ({where})"


def recovery_section(m: dict) -> list[str]:
    r = m["recovery_check"]
    res = r["result"]
    ds = r["dataset"]
    got = f"{ds['files']} files gave {ds['samples']} {ds['dims']} samples; " if ds else ""
    L = ["## Has it learned? Recovery check on held-out images", "",
         f"Command (it writes [`recovery_check.json`](recovery_check.json)):", "", "```bash", r["command"], "```", "",
         f"Data: {heldout_text(m)}; {got}{res['images']} of them, evenly spread, each deformed {res['repeats']} times "
         "by the forward process (φ_t:1) at every level t. The network predicts the recovery step ψ̂_t from the "
         "deformed image alone. \"No step\" is the error of predicting nothing, mean ‖ψ_t‖; \"one step\" the error "
         "left after the predicted step, mean ‖compose(ψ_t, ψ̂_t)‖; both in voxels of the model grid. An untrained "
         "network has a ratio of 1 and a cosine of about 0.", "",
         "| t | error, no step (vox) | error after one predicted step (vox) | ratio | cos(ψ, −ψ̂) | samples |",
         "|---:|---:|---:|---:|---:|---:|"]
    for lv in res["levels"]:
        L.append(f"| {lv['t']} | {lv['no_step_error_voxels']:.3f} | {lv['one_step_error_voxels']:.3f} | "
                 f"{lv['ratio']:.3f} | {lv['cosine']:.2f} | {lv['samples']} |")
    best = min(res["levels"], key=lambda lv: lv["ratio"])
    if best["ratio"] < 1:
        L += ["", f"Best level: t = {best['t']}, where one predicted step removes {100 * (1 - best['ratio']):.1f}% "
              f"of the step's error (cosine {best['cosine']:.2f}).", ""]
    else:
        L += ["", f"**At no level does the predicted step beat predicting nothing** (best ratio "
              f"{best['ratio']:.3f} at t = {best['t']}): this model has not learned to recover.", ""]
    return L


def deform_section(m: dict) -> list[str]:
    dm, inp = m["deform"], m["inputs"]
    L = ["## Generated deformations on held-out images (Table 1 style)", "",
         f"Inputs: {dm['images']} held-out images ({inp['rule']}: {', '.join(inp['names'])}), "
         + ("written as 2D slices" if inp["mode"] == "acdc" else "linked") + " into the work folder's `inputs/` by "
         "`scripts/model_card.py`. Generated fields (paper Alg. 2, recovery t = T'..1):",
         "", "```bash", dm["command"], "```", "",
         "Random start fields φ_T':1 at the same seeds: the same job with a copy of the model whose output layer "
         f"is zeroed (`scripts/table1.py`'s `zero_output_model`), on {len(dm['start_images'])} of the images:", "",
         "```bash", dm["start_command"], "```", "",
         f"Per field on the input's own grid (`manifest.json`), mean ± std over images × {m['options']['samples']} "
         "samples: max and mean over voxels of ‖(u_i / size_i)_i‖ in % of the image size, and |J|<0 = % of voxels "
         "with det(I + ∇u) ≤ 0.", "",
         "| T' | max (% img) | mean (% img) | \\|J\\|<0 (%) | fields with \\|J\\|<0 | start: max | start: mean | "
         "start: \\|J\\|<0 | generated / start mean | removed by the recovery |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in map(str, m["options"]["levels"]):
        g, s, r = dm["table"][lv], dm["start_table"][lv], dm["generated_over_start"][lv]
        L.append(f"| {lv} | {pm(g['max_magnitude_pct'])} | {pm(g['mean_magnitude_pct'])} | "
                 f"{pm(g['folding_pct'], 3)} | {g['fields_with_folding']} / {g['n']} | {pm(s['max_magnitude_pct'])} | "
                 f"{pm(s['mean_magnitude_pct'])} | {pm(s['folding_pct'], 3)} | {pm(r)} | {removed_text(r[0])} |")
    L += ["", "*\"Generated / start mean\" pairs each generated field with its own start field (same image, level "
          "and seed); \"removed\" is 1 minus its mean: the share of the start field's mean magnitude that the "
          "recovery takes away.*", ""]
    return L


def removed_text(ratio: float) -> str:
    return f"{100 * (1 - ratio):.0f}%" if ratio <= 1 else f"none: it grows × {ratio:.2f}"


def preview_section(m: dict) -> list[str]:
    p = m["preview"]
    return ["## Preview on held-out images", "", f"![held-out preview]({p['file']})", "",
            f"*Rows: {', '.join(p['cases'])}" + (" (central axial, coronal, sagittal planes)" if p["rows"] > len(
                p["cases"]) else "") + f"; columns: input | sample 0 at T' = {', '.join(map(str, p['levels']))} "
            "(green: a regular grid warped by the same field, in 3D by its in-plane components) | its displacement "
            f"magnitude at T' = {p['levels'][-1]} in % of the image size. From the fields and images of the "
            "measurement above.*", ""]


def reproduce_section(m: dict) -> list[str]:
    t = m["timing"]
    reused = f"; this run reused {', '.join(t['reused'])} from its work folder" if t["reused"] else ""
    return ["## Reproduce this card", "", "```bash", m["command"], "```", "",
            f"On {m['machine']} with `--threads {m['options']['threads']}`: recovery check "
            f"{m['recovery_check']['seconds']:.0f} s, generated fields {m['deform']['seconds']:.0f} s, start fields "
            f"{m['deform']['start_seconds']:.0f} s; the script took {t['total_seconds']:.0f} s{reused}. Every "
            "number above is in [`card_measurements.json`](card_measurements.json).", ""]


def write_card(path: Path, text: str, m: dict) -> None:
    warn = [f"> **Warning:** {m['heldout']['overlap']}.", ""] if m["heldout"].get("overlap") else []
    parts = [text.rstrip(), ""] + warn + model_section(m) + training_section(m) + recovery_section(m) \
        + deform_section(m) + preview_section(m) + reproduce_section(m)
    path.write_text("\n".join(parts).rstrip() + "\n")


# ---------------------------------------------------------------------------


def this_command(argv: list[str]) -> str:
    """The command line, with paths as the card shows them (relative to the repository where they can be)."""
    shown = [rel(a) if a.startswith("/") or Path(a).exists() else a for a in argv if a != "--reuse"]
    return command_text([".venv/bin/python", "scripts/model_card.py"] + shown)


def describe(args: argparse.Namespace, config: dict, spec: dict, files: list[Path], command: str) -> dict:
    """Everything the card shows that is read rather than measured: model file, config, training log."""
    copied = copy_artifacts(args.run, args.out)
    rows = plot_training.read_metrics(args.run / "metrics.jsonl")
    plot_training.plot(rows, args.out / "loss_curve.png", f"{args.name}: training loss")
    single = len(args.heldout) == 1 and args.heldout[0].is_dir()
    return {"name": args.name, "command": command, "config": config, "model": model_info(args.out / "model.pt"),
            "copied": copied, "train_command": args.train_command or spec.get("training_command", ""),
            "training": training_summary(rows, config, args.train_log),
            "heldout": {"folder": rel(args.heldout[0]) if single else None, "subset": args.subset,
                        "files": len(files), "list": None if single else [rel(f) for f in files],
                        "overlap": training_overlap(args, config)},
            "options": {k: getattr(args, k) for k in ("levels", "samples", "max_images", "seed", "threads", "device")},
            "machine": f"{os.uname().machine}, {os.cpu_count()} CPUs visible"}


def measure(args: argparse.Namespace, m: dict, files: list[Path]) -> None:
    """The recovery check, the generated and start fields, and the preview, into `m`."""
    model, sha = args.out / "model.pt", m["model"]["sha256"]
    m["recovery_check"] = recovery_check(args, model, files, sha)
    mode = slice_mode(args, files, args.model_dims)
    inputs = prepare_inputs(args, files, mode, args.work_dir / "inputs")
    m["deform"] = deform_measurement(args, model, inputs, sha)
    m["preview"] = preview_figure(args, inputs, m["deform"].pop("rows"), args.out / "preview.png")
    m["inputs"] = {k: v for k, v in inputs.items() if k != "folder"} | {"mode": mode}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = this_command(argv)
    resolve_paths(args)
    args.reused, t0 = [], time.time()
    os.chdir(REPO)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((args.run / "config.json").read_text())
    args.model_dims, args.slice_axis = config["data"]["dims"], config["data"].get("slice_axis", 0)
    text, spec = card_text(args.card_text)
    files = heldout_files(args, args.include.split(",") if args.include else config["data"]["include"])
    if not files:
        raise SystemExit("no held-out files")
    m = describe(args, config, spec, files, command)
    if m["heldout"]["overlap"]:
        log("WARNING: " + m["heldout"]["overlap"])
    log(f"{len(files)} held-out files; model step {m['model']['step']}, {m['model']['parameters']:,} parameters")
    measure(args, m, files)
    m["timing"] = {"total_seconds": time.time() - t0, "reused": args.reused}
    (args.out / "card_measurements.json").write_text(json.dumps(m, indent=1, default=str) + "\n")
    write_card(args.out / "README.md", text, m)
    log(f"wrote {rel(args.out / 'README.md')} in {m['timing']['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
