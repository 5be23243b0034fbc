#!/usr/bin/env python3
"""Draws docs/images/layers.png from the source: one box per layer of the
library (its folders and file count), the programs on top, and an arrow for
every pair of layers that include each other's headers, labelled with the
number of #include lines. Everything is counted from the tree; nothing typed.

  .venv/bin/python scripts/plot_layers.py [--out docs/images/layers.png]
"""
import argparse
import os
import re
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_layers import LAYERS, layer_of, resolve  # noqa: E402

ROLE = {"core": "spatial ops, random fields, logs, signals",
        "io": "images, NIfTI, atomic files, datasets, previews",
        "engine": "training runs, configs, optimiser, distributed",
        "diffusion": "DRDM: sampler, network, trainer, generation, jobs",
        "seg": "few-shot segmentation (seg_fewshot)",
        "reg": "registration from synthetic pairs (reg_synth)",
        "programs": "apps/, bench/, tests/, fuzz/"}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def count(root):
    files = subprocess.check_output(["git", "ls-files"], cwd=root, text=True).split()
    code = [f for f in files if f.endswith((".h", ".cpp")) and "/gloo_decl/" not in f]
    known = set(code)
    sizes, edges = {}, {}
    for f in code:
        here = layer_of(f) if f.startswith(("src/", "include/")) else "programs"
        if here is None or not os.path.exists(os.path.join(root, f)):
            continue
        sizes[here] = sizes.get(here, 0) + 1
        with open(os.path.join(root, f), encoding="utf-8") as t:
            for name in INCLUDE.findall(t.read()):
                target = resolve(name, f, known)
                there = layer_of(target) if target and target.startswith(("src/", "include/")) else None
                if there and there != here:
                    edges[(here, there)] = edges.get((here, there), 0) + 1
    return sizes, edges


def draw(sizes, edges, out):
    order = LAYERS + ["programs"]
    y = {name: i * 1.5 for i, name in enumerate(order)}
    fig, ax = plt.subplots(figsize=(9, 9.5))
    for name in order:
        ax.add_patch(FancyBboxPatch((0, y[name]), 4.2, 0.9, boxstyle="round,pad=0.05",
                                    fc="#eef3fb" if name != "programs" else "#f4f4f4", ec="#3b5b92"))
        where = f"src/{name}/, include/drdm/{name}/" if name != "programs" else ""
        ax.text(0.15, y[name] + 0.6, f"{name}  ({sizes.get(name, 0)} files)", fontsize=12,
                weight="bold")
        ax.text(0.15, y[name] + 0.22, f"{ROLE[name]}\n{where}".strip(), fontsize=8.5, va="center")
    for i, ((src, dst), n) in enumerate(sorted(edges.items(), key=lambda e: (y[e[0][0]], y[e[0][1]]))):
        x = 4.6 + 0.19 * i
        up = y[dst] > y[src]
        ax.annotate("", xy=(x, y[dst] + (0.0 if up else 0.9)), xytext=(x, y[src] + (0.9 if up else 0.0)),
                    arrowprops=dict(arrowstyle="->", color="red" if up else "#555", lw=0.9))
        ax.text(x, y[src] + 0.95, f"{n}", fontsize=6.5, color="#333", ha="center")
    ax.set_xlim(-0.2, 4.8 + 0.19 * len(edges))
    ax.set_ylim(-0.3, y["programs"] + 1.2)
    ax.axis("off")
    ax.set_title("libdrdm layers: arrows are #include lines between layers (all point down)",
                 fontsize=11)
    fig.savefig(out, dpi=110, bbox_inches="tight")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="docs/images/layers.png")
    a = p.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    draw(*count(root), a.out)
    print(a.out)


if __name__ == "__main__":
    main()
