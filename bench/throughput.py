#!/usr/bin/env python3
"""End-to-end training throughput of drdm_train (images/s), settings side by side.

Each variant runs the real program on the real data for a few steps and is
read from its own metrics.jsonl (images_per_second of the logged windows after
the first, which holds start-up). Variants of one case run interleaved, round
after round, so that a slow spell of the machine hits all of them; the report
gives the median over rounds and each variant's ratio to the case's first
variant (the baseline).

  bench/throughput.py --case cardiac64 --case cardiac128 --case hippocampus \\
      --variant base=BASE_BIN: --variant ours=build/apps/drdm_train:train.prefetch=2 \\
      --rounds 3 --out docs/results/throughput.json

A variant is NAME=BINARY:SET[,SET...] (SET: a config key=value, as --set);
BINARY "ranks2/abs/path/drdm_train" runs 2 local ranks under torchrun; a SET
written CASE@key=value applies to that case only.
Other jobs on the machine disturb the numbers: --pause PATTERN stops processes
whose command line matches (SIGSTOP) for the duration and resumes them after.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = {
    "cardiac64": ("configs/cardiac2d-cpu.json", ["data.size=[64,64]"]),
    "cardiac128": ("configs/cardiac2d-cpu.json", ["data.size=[128,128]"]),
    "hippocampus": ("configs/hippocampus3d-cpu.json", []),
}


def parse_variant(text):
    name, _, rest = text.partition("=")
    binary, _, sets = rest.partition(":")
    if not name or not binary:
        raise SystemExit(f"--variant {text!r}: expected NAME=BINARY[:key=value,...]")
    return name, binary, [s for s in sets.split(",") if s]


def pids_matching(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


def run_variant(binary, config, sets, steps, log_every, workdir):
    out = os.path.join(workdir, "run")
    launcher = []
    if binary.startswith("ranks"):  # rankN/BINARY: N local ranks under torchrun, one thread each
        n, _, binary = binary[len("ranks"):].partition("/")
        launcher = [os.path.join(ROOT, ".venv/bin/torchrun"), "--no-python", "--standalone",
                    f"--nproc-per-node={n}"]
        binary = "/" + binary
    cmd = launcher + [binary, "--config", os.path.join(ROOT, config), "--output", out, "--no-progress", "-q"]
    common = [f"train.steps={steps}", f"train.log_every={log_every}", "train.preview_every=0",
              f"train.checkpoint_every={steps}"]
    for s in common + sets:
        cmd += ["--set", s]
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    subprocess.run(["rm", "-rf", out])
    rates = [row["images_per_second"] for row in rows[1:]] or [rows[-1]["images_per_second"]]
    return statistics.mean(rates), wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", choices=sorted(CASES), required=True)
    ap.add_argument("--variant", action="append", type=parse_variant, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=0, help="steps per run (default: 60 in 2D, 16 in 3D)")
    ap.add_argument("--extra", action="append", default=[], help="key=value set in every run")
    ap.add_argument("--pause", default="", help="pgrep -f pattern of jobs to stop while measuring")
    ap.add_argument("--out", default="", help="JSON report (also printed)")
    args = ap.parse_args()
    paused = pids_matching(args.pause) if args.pause else []
    for p in paused:
        os.kill(p, signal.SIGSTOP)
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="drdm-throughput-") as work:
            for rnd in range(args.rounds):
                for case in args.case:
                    config, case_sets = CASES[case]
                    steps = args.steps or (16 if case == "hippocampus" else 60)
                    log_every = max(1, steps // 4)
                    for name, binary, sets in args.variant:
                        mine = [x.split("@", 1)[-1] for x in sets if "@" not in x or x.startswith(case + "@")]
                        rate, wall = run_variant(binary, config, case_sets + args.extra + mine, steps,
                                                 log_every, work)
                        results.setdefault(case, {}).setdefault(name, []).append(rate)
                        print(f"round {rnd + 1} {case} {name}: {rate:.3f} images/s ({wall:.0f} s)",
                              file=sys.stderr, flush=True)
    finally:
        for p in paused:
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
    report = {"rounds": args.rounds, "variants": {n: {"binary": b, "set": s} for n, b, s in args.variant},
              "extra": args.extra, "cases": {}}
    for case, by_variant in results.items():
        base = statistics.median(next(iter(by_variant.values())))
        report["cases"][case] = {
            n: {"median_images_per_s": statistics.median(v), "rounds": v,
                "ratio_to_first": statistics.median(v) / base} for n, v in by_variant.items()}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
