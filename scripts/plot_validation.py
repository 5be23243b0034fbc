#!/usr/bin/env python3
"""Validation curves of training runs (seg_fewshot, reg_synth): the DSC of each
run's validation.json against its step, the chosen step (the best check) marked.

  .venv/bin/python scripts/plot_validation.py --out docs/results/table3_hippocampus_validation.png \
      --run "MRBS pretraining=runs/reg-hip-a/pretrain-mrbs" --run "NCC fine-tuning=runs/reg-hip-a/mrbs-finetuned" \
      --baseline 0.5276 --baseline-label "unregistered" --title "hippocampus 3D, 20 validation pairs"

A run given as LABEL=FOLDER@OFFSET is drawn shifted by OFFSET steps (a run that
continues another one).
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_run(label, folder, shift=0):
    path = os.path.join(folder, "validation.json")
    if not os.path.exists(path):
        raise SystemExit(f"{label}: no {path}")
    v = json.load(open(path))
    steps = [h["step"] + shift for h in v["history"]]
    scores = [h["score"] for h in v["history"]]
    return label, steps, scores, v["best_step"] + shift, v["best"]


def plot(runs, out, title="", baseline=None, baseline_label="baseline"):
    """runs: (label, folder, step offset) triples; draws their validation DSC to out."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, folder, shift in runs:
        label, steps, scores, best_step, best = read_run(label, folder, shift)
        line, = ax.plot(steps, scores, marker=".", label=f"{label} (best {best:.3f} at {best_step})")
        ax.plot([best_step], [best], marker="*", markersize=14, color=line.get_color())
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label=f"{baseline_label} {baseline:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("validation DSC")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def parse_spec(spec):
    label, _, where = spec.partition("=")
    if not where:
        raise SystemExit(f"--run {spec!r}: expected LABEL=FOLDER[@OFFSET]")
    folder, _, offset = where.partition("@")
    return label, folder, int(offset) if offset else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="LABEL=FOLDER[@OFFSET] (repeat)")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--baseline", type=float, help="a horizontal reference (e.g. no registration)")
    p.add_argument("--baseline-label", default="baseline")
    a = p.parse_args()
    plot([parse_spec(s) for s in a.run], a.out, a.title, a.baseline, a.baseline_label)
    print(a.out)


if __name__ == "__main__":
    main()
