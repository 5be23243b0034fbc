#!/usr/bin/env python3
"""Held-out learning curves of the long runs in training/: the one-step recovery ratio of
each committed `recovery_check_stepN.json` (written by drdm_check_recovery) against the
training images seen (step x batch from the run's config.json), a least-squares fit
ratio = a + b log10(images), and where that fit would reach the issue's target.

    python3 scripts/learning_curve.py --out docs/results/learning-curve.png \
        --json docs/results/learning-curve.json

The fit is a reading aid, not a forecast: with 3-5 points, each from 4-64 held-out
images and one draw, its slope is uncertain, which the JSON states (the slope's standard
error). No number here is typed by hand: every point comes from the runs' own files.
"""
import argparse
import glob
import json
import math
import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run -> (level t whose ratio is tracked, target ratio from issue 22)
RUNS = {"cardiac2d-128": (40, 0.55), "hippocampus3d-48": (30, 0.75), "chest2d-128": (40, 0.6)}


def points(run, level):
    cfg = json.load(open(os.path.join(ROOT, "training", run, "config.json")))
    batch = cfg["train"]["batch_size"]
    out = []
    for path in glob.glob(os.path.join(ROOT, "training", run, "recovery_check_step*.json")):
        step = int(re.search(r"step(\d+)", path).group(1))
        check = json.load(open(path))
        for lv in check["levels"]:
            if lv["t"] == level:
                out.append({"step": step, "images_seen": step * batch, "ratio": lv["ratio"],
                            "held_out_images": check["images"], "repeats": check["repeats"]})
    return sorted(out, key=lambda p: p["step"])


def fit(pts, target):
    x = np.log10([p["images_seen"] for p in pts])
    y = np.array([p["ratio"] for p in pts])
    if len(pts) < 3:
        return None
    A = np.stack([np.ones_like(x), x], 1)
    coef, res, _, _ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ coef
    s2 = float(resid @ resid) / max(1, len(y) - 2)
    se_b = math.sqrt(s2 / float(((x - x.mean()) ** 2).sum()))
    a, b = float(coef[0]), float(coef[1])
    reach = 10 ** ((target - a) / b) if b < 0 else None
    return {"a": a, "b_per_decade": b, "b_standard_error": se_b,
            "images_to_target": reach, "target": target}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/results/learning-curve.png"))
    ap.add_argument("--json", default=os.path.join(ROOT, "docs/results/learning-curve.json"))
    args = ap.parse_args()
    result = {}
    for run, (level, target) in RUNS.items():
        pts = points(run, level)
        result[run] = {"level": level, "points": pts, "fit": fit(pts, target)}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RUNS), figsize=(5.5 * len(RUNS), 4))
    for ax, (run, r) in zip(axes, result.items()):
        xs = [p["images_seen"] for p in r["points"]]
        ax.plot(xs, [p["ratio"] for p in r["points"]], "o-", label="held-out check")
        f = r["fit"]
        if f:
            grid = np.logspace(math.log10(min(xs)), math.log10(max(xs) * 100), 50)
            ax.plot(grid, f["a"] + f["b_per_decade"] * np.log10(grid), "--", color="gray",
                    label=f"fit: {f['b_per_decade']:+.3f} ± {f['b_standard_error']:.3f} per decade")
            ax.axhline(f["target"], color="green", lw=1, label=f"target {f['target']}")
        ax.set_xscale("log")
        ax.set_xlabel("training images seen")
        ax.set_ylabel(f"error left after one step, t = {r['level']}")
        ax.set_title(run)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(json.dumps({k: v["fit"] for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
