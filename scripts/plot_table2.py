#!/usr/bin/env python3
"""Fig. 11-like box plots of a seg_fewshot grid: per-subject DSC of each class
(and their average) for each augmentation, one panel per labelled-subset size.

  scripts/plot_table2.py runs/seg-acdc-cpu/results.json docs/results/table2_boxplots.png
"""
import argparse
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"none": "#9e9e9e", "bigaug": "#f2a541", "drdm": "#3c7dd9"}


def per_subject(runs, aug, n, metric, cls):
    """Per-subject values of (aug, n), averaged over seeds."""
    chosen = [r for r in runs if r["augmentation"] == aug and r["subjects"] == n]
    if not chosen:
        return []
    columns = [r["per_subject"][metric][cls] for r in chosen]
    out = []
    for values in zip(*columns):
        finite = [v for v in values if v is not None and not math.isnan(v)]
        if finite:
            out.append(sum(finite) / len(finite))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results")
    p.add_argument("output")
    p.add_argument("--metric", default="dice")
    a = p.parse_args()
    with open(a.results) as f:
        res = json.load(f)
    cfg = res["config"]
    classes = cfg["data"]["classes"] + ["avg"]
    augs = cfg["grid"]["augmentations"]
    sizes = sorted({r["subjects"] for r in res["runs"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes), 3.8), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], sizes):
        data, positions, colours = [], [], []
        for ci, cls in enumerate(classes):
            for ai, aug in enumerate(augs):
                values = per_subject(res["runs"], aug, n, a.metric, cls)
                data.append([100 * v if a.metric in ("dice", "sensitivity", "precision") else v for v in values])
                positions.append(ci * (len(augs) + 1) + ai)
                colours.append(COLOURS.get(aug, "#555555"))
        box = ax.boxplot(data, positions=positions, widths=0.8, patch_artist=True, showfliers=True,
                         flierprops={"markersize": 2})
        for patch, c in zip(box["boxes"], colours):
            patch.set_facecolor(c)
        ax.set_xticks([ci * (len(augs) + 1) + (len(augs) - 1) / 2 for ci in range(len(classes))])
        ax.set_xticklabels(classes)
        ax.set_title(f"{n} labelled subject{'s' if n > 1 else ''}")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{a.metric} {'(%)' if a.metric in ('dice', 'sensitivity', 'precision') else ''}")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS.get(x, "#555555")) for x in augs]
    fig.legend(handles, augs, loc="upper center", ncol=len(augs), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(a.output, dpi=110)
    print(a.output)


if __name__ == "__main__":
    main()
