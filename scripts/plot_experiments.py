#!/usr/bin/env python3
"""Distance term of several drdm_train runs against the images they have seen.

    scripts/plot_experiments.py OUT.png LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--title TEXT]

Runs with the same seed see the same batches and t at the same step, so their
curves compare directly; runs with another batch size are placed by images
seen (step x batch size from the run's config.json).
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from plot_training import read_metrics  # noqa: E402


def images_seen(run: Path, rows):
    batch = json.loads((run / "config.json").read_text())["train"]["batch_size"]
    return [r["step"] * batch for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output")
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    fig, ax = plt.subplots(figsize=(8, 4))
    for item in a.runs:
        label, run = item.split("=", 1)
        rows = read_metrics(Path(run) / "metrics.jsonl")
        ax.plot(images_seen(Path(run), rows), [r["distance"] for r in rows], label=label, lw=1.2)
    ax.set_xlabel("training images seen (after the 5,000-step starting model)")
    ax.set_ylabel("distance term (1 = predicts nothing)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if a.title:
        ax.set_title(a.title)
    fig.tight_layout()
    fig.savefig(a.output, dpi=110)
    print(a.output)


if __name__ == "__main__":
    main()
