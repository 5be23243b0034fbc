#!/usr/bin/env python3
"""Plot a drdm_train run's metrics.jsonl (loss terms against step) as a PNG.

    scripts/plot_training.py RUN_DIR/metrics.jsonl OUT.png [--title TEXT]
"""
import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path):
    """The rows of a metrics.jsonl (exits with a message if unreadable or empty)."""
    try:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"plot_training.py: cannot read {path}: {e}")
    if not rows:
        sys.exit(f"plot_training.py: {path} has no rows")
    return rows


def plot(rows, output, title=""):
    """Loss terms of metrics.jsonl rows against step, saved as the PNG `output`."""
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(steps, [r["loss"] for r in rows], color="k", label="total")
    axes[0].set_title("total loss (Eq. 14)")
    axes[1].plot(steps, [r["distance"] for r in rows], label="distance  ||compose(ψ, ψ̂)|| / ||ψ||")
    axes[1].plot(steps, [-r["angle"] for r in rows], label="−angle  (1 = points exactly back)")
    axes[1].axhline(1.0, color="grey", lw=0.8, ls=":")
    axes[1].set_title("recovery terms")
    axes[1].legend(fontsize=8)
    axes[2].plot(steps, [r["smoothness"] for r in rows], label="smoothness |∇(ψ̂/S)|₁")
    axes[2].plot(steps, [r["folding"] for r in rows], label="folding relu(−det)")
    axes[2].set_title("regularisation terms")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("metrics")
    ap.add_argument("output")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    plot(read_metrics(a.metrics), a.output, a.title)
    print(a.output)


if __name__ == "__main__":
    main()
