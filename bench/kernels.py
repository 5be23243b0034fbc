#!/usr/bin/env python3
"""Direct CPU spatial kernels beside ATen's grid sampler and the PyTorch peer.

Runs `drdm_bench_spatial --impl both` (libdrdm's direct kernels, impl "libdrdm",
and its ATen path, impl "libdrdm-aten") and `bench/peer_spatial.py` (the usual
Python spatial transformer) on the same cases, in alternating order, for
--rounds rounds. Each row's value is the median over rounds of the per-round
median; ratios are taken between rows of the same round set. Processes whose
command line matches --pause are stopped (SIGSTOP) while the programs run and
resumed afterwards (SIGCONT), so that a long training run does not share the
cores with the measurement.

    .venv/bin/python bench/kernels.py --rounds 3 --channels 3 --pause runbin/drdm_train
"""
import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def matching_pids(pattern):
    if not pattern:
        return []
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != os.getpid()]


@contextlib.contextmanager
def paused(pattern):
    """Processes matching `pattern` stopped (SIGSTOP) inside the block, resumed after it."""
    pids = matching_pids(pattern)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(1 if pids else 0)
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def write_results(out, text, raw):
    """The markdown table to `out` and the raw rows beside it (.json); prints the table."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(raw, f, indent=1)
    print(text)


def run_rows(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"kernels.py: {' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def key(row):
    return (row["op"], row["size"], row["batch"])


def collect(args):
    common = ["--sizes", args.sizes, "--ops", args.ops, "--threads", str(args.threads),
              "--min-time", str(args.min_time), "--channels", str(args.channels)]
    ours = [args.bench, "--impl", "both", "--device", "cpu"] + common
    peer = [args.python, os.path.join(HERE, "peer_spatial.py"), "--device", "cpu"] + common
    rows = {}
    for r in range(args.rounds):
        order = (ours, peer) if r % 2 == 0 else (peer, ours)
        for cmd in order:
            for row in run_rows(cmd):
                rows.setdefault((row["impl"],) + key(row), []).append(row["median_ms"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    return rows


def table(rows, args):
    cases = sorted({k[1:] for k in rows}, key=lambda k: (k[0], k[1]))
    lines = [
        f"threads {args.threads}, image channels {args.channels}, {args.rounds} rounds "
        f"(median of per-round medians, ms); {platform.processor() or platform.machine()}",
        "",
        "| op | size | batch | direct kernels | ATen path | PyTorch peer "
        "| ATen ÷ direct | peer ÷ direct |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for op, size, batch in cases:
        ms = {impl: statistics.median(rows[(impl, op, size, batch)])
              for impl in ("libdrdm", "libdrdm-aten", "pytorch-python")
              if (impl, op, size, batch) in rows}
        if len(ms) < 3:
            continue
        d = ms["libdrdm"]
        lines.append(f"| {op} | {size} | {batch} | {d:.2f} | {ms['libdrdm-aten']:.2f} "
                     f"| {ms['pytorch-python']:.2f} | {ms['libdrdm-aten'] / d:.1f} "
                     f"| {ms['pytorch-python'] / d:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", default=os.path.join(ROOT, "build/bench/drdm_bench_spatial"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--sizes", default="kernels", choices=["quick", "full", "kernels"])
    p.add_argument("--ops", default="warp,compose")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pause", default="", help="SIGSTOP processes matching this while measuring")
    p.add_argument("--out", default=os.path.join(ROOT, "bench/results/kernels.md"))
    args = p.parse_args()
    if not os.path.exists(args.bench):
        sys.exit(f"kernels.py: {args.bench} not found; build it with "
                 "cmake --build build --target drdm_bench_spatial")
    with paused(args.pause):
        rows = collect(args)
    write_results(args.out, table(rows, args), {"|".join(map(str, k)): v for k, v in rows.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
