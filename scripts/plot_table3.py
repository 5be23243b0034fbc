#!/usr/bin/env python3
"""Fig. 12-like box plots of reg_synth runs: per test pair DSC, ASD and HD95
(each the mean over classes) for every Table-3 row, one figure row per data set.

  .venv/bin/python scripts/plot_table3.py --runs runs/reg-jsrt-cpu runs/reg-hippocampus-cpu \
      --labels "JSRT 2D" "hippocampus 3D" --out docs/results/table3_boxplots.png
"""

import argparse
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = [("dice", "DSC (%)", 100.0), ("asd", "ASD (mm)", 1.0), ("hd95", "HD95 (mm)", 1.0)]
COLOURS = {"none": "#9e9e9e", "mrbs": "#4c72b0", "drdm": "#dd8452"}


def pair_means(row, metric, scale):
    out = []
    for p in row["pairs"]:
        v = [c[metric] for c in p["classes"].values() if c[metric] is not None]
        if v:
            out.append(scale * sum(v) / len(v))
    return [x for x in out if math.isfinite(x)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--labels", nargs="+")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    labels = a.labels or [os.path.basename(r) for r in a.runs]
    fig, axes = plt.subplots(len(a.runs), 3, figsize=(13, 3.6 * len(a.runs)), squeeze=False)
    for i, (run, label) in enumerate(zip(a.runs, labels)):
        rows = json.load(open(os.path.join(run, "results.json")))["rows"]
        names = [f"{r['pretrain']}\n{'+ real' if r['finetune'] else 'synthetic only'}" for r in rows]
        for j, (metric, title, scale) in enumerate(METRICS):
            ax = axes[i][j]
            data = [pair_means(r, metric, scale) for r in rows]
            box = ax.boxplot(data, patch_artist=True, widths=0.6, showfliers=True)
            for patch, r in zip(box["boxes"], rows):
                patch.set_facecolor(COLOURS[r["pretrain"]])
                patch.set_alpha(0.45 if not r["finetune"] else 0.85)
            ax.set_xticks(range(1, len(rows) + 1))
            ax.set_xticklabels(names, fontsize=7)
            ax.set_title(f"{label}: {title}", fontsize=10)
            ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Registration of held-out pairs: synthetic pretraining (none / MRBS / DRDM) x real fine-tuning",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
