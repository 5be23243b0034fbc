#!/usr/bin/env python3
"""Append one stretch of a model's training to docs/results/training-ledger.md.

Every number in the row is read from the run's own files, never typed:
  RUN/config.json      batch size, grid, device, mixed precision
  RUN/metrics.jsonl    the stretch's steps, wall time (elapsed_seconds) and images/s
  CHECK                a drdm_check_recovery JSON (held-out one-step ratio per t)

  scripts/training_ledger.py --model cardiac2d --run runs/cardiac2d-128 \\
      --from-step 0 --check runs/cardiac2d-128/check.json --machine "2-core AMD EPYC (AVX2)"

--from-step is the step the stretch resumed at (0 for a fresh run); rows of
metrics.jsonl at or below it belong to earlier stretches. --print shows the
row without writing it.
"""
import argparse
import json
import os
import sys

HEADER = (
    "| model | date | steps | images seen | wall h | images/s | grid, batch | device | precision | "
    "held-out one-step ratio (t: ratio) | note |\n"
    "|---|---|---|---:|---:|---:|---|---|---|---|---|\n")


def stretch_rows(metrics_path, from_step):
    rows = [json.loads(line) for line in open(metrics_path) if line.strip()]
    mine = [r for r in rows if r["step"] > from_step]
    if not mine:
        sys.exit(f"{metrics_path}: no logged step after {from_step}")
    before = [r for r in rows if r["step"] <= from_step]
    return mine, (before[-1]["elapsed_seconds"] if before else 0.0)


def ratio_text(check_path, wanted):
    check = json.load(open(check_path))
    levels = {lv["t"]: lv["ratio"] for lv in check["levels"]}
    picked = [t for t in wanted if t in levels] or sorted(levels)
    return ", ".join(f"{t}: {levels[t]:.3f}" for t in picked), check.get("model_step")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--run", required=True, help="drdm_train output folder")
    ap.add_argument("--from-step", type=int, default=0)
    ap.add_argument("--check", required=True, help="drdm_check_recovery JSON of the stretch's last model")
    ap.add_argument("--levels", default="10,20,30,40,60", help="t values to show")
    ap.add_argument("--machine", required=True, help="where it ran, e.g. '2-core AMD EPYC (AVX2)'")
    ap.add_argument("--date", required=True)
    ap.add_argument("--note", default="")
    ap.add_argument("--ledger", default=os.path.join(os.path.dirname(__file__), "..", "docs", "results",
                                                     "training-ledger.md"))
    ap.add_argument("--print", action="store_true")
    args = ap.parse_args()
    config = json.load(open(os.path.join(args.run, "config.json")))
    rows, start_elapsed = stretch_rows(os.path.join(args.run, "metrics.jsonl"), args.from_step)
    ratios, check_step = ratio_text(args.check, [int(t) for t in args.levels.split(",")])
    # The stretch ends at the checked model's step (the last checkpoint): rows
    # logged after it are lost to a resume and belong to no stretch.
    if check_step is not None:
        rows = [r for r in rows if r["step"] <= check_step]
        if not rows or rows[-1]["step"] != check_step:
            sys.exit(f"{args.check} measured the model of step {check_step}, which metrics.jsonl does not log")
    train, data = config["train"], config["data"]
    batch = train["batch_size"]
    last = rows[-1]["step"]
    # A resumed run counts elapsed_seconds from its own start again.
    if rows[0]["elapsed_seconds"] < start_elapsed:
        start_elapsed = 0.0
    hours = (rows[-1]["elapsed_seconds"] - start_elapsed) / 3600
    rate = sum(r["images_per_second"] for r in rows) / len(rows)
    grid = "x".join(str(s) for s in data["size"])
    row = (f"| {args.model} | {args.date} | {args.from_step}-{last} | {(last - args.from_step) * batch:,} | "
           f"{hours:.2f} | {rate:.2f} | {grid}, {batch} | {args.machine} | "
           f"{train.get('mixed_precision', 'none')} | {ratios} | {args.note} |\n")
    if args.print:
        print(row, end="")
        return
    exists = os.path.exists(args.ledger)
    with open(args.ledger, "a") as f:
        if not exists:
            f.write("# Training ledger\n\nOne row per stretch of training, written by "
                    "`scripts/training_ledger.py` from the run's config.json, metrics.jsonl and a "
                    "`drdm_check_recovery` JSON on held-out data.\n\n" + HEADER)
        f.write(row)
    print(row, end="")


if __name__ == "__main__":
    main()
