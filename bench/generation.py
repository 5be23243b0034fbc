#!/usr/bin/env python3
"""Generation (Alg. 2) throughput: libdrdm's direct kernels, its ATen path, the authors' code.

For each case of drdm_bench_generate (--cases), and each of --rounds rounds
(order rotated between rounds), runs
  - `drdm_bench_generate --ops generate` (impl "libdrdm", direct CPU kernels),
  - the same with DRDM_SPATIAL_KERNELS=aten (impl "libdrdm-aten": the spatial
    path every earlier release used),
  - `bench/authors_generate.py` (impl "authors": their DeformDDPM.diff_recover
    with the same number of recovery steps, one image per call),
and reports samples/s (median over rounds) and the ratios. Processes matching
--pause are stopped while measuring (see bench/kernels.py).

    .venv/bin/python bench/generation.py --cases 0,2 --level 45 --rounds 3 --pause runbin/drdm_train
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from kernels import paused, write_results  # noqa: E402


def run_json(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"generation.py: {' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")][-1]


def commands(args, case):
    ours = [args.bench, "--case", str(case), "--level", str(args.level), "--ops", "generate",
            "--threads", str(args.threads)]
    aten_env = dict(os.environ, DRDM_SPATIAL_KERNELS="aten")
    authors = [args.python, os.path.join(HERE, "authors_generate.py"), "--case", str(case),
               "--level", str(args.level), "--steps", str(args.level), "--threads",
               str(args.threads), "--reps", str(args.authors_reps)]
    return [("libdrdm", ours, None), ("libdrdm-aten", ours, aten_env), ("authors", authors, None)]


def measure(args):
    rows = {}
    for case in args.cases:
        runs = commands(args, case)
        for r in range(args.rounds):
            for impl, cmd, env in runs[r % 3:] + runs[:r % 3]:
                row = run_json(cmd, env)
                rows.setdefault((case, impl), []).append(row["samples_per_s"])
                print(f"case {case} round {r + 1} {impl}: {row['samples_per_s']:.4g} samples/s",
                      file=sys.stderr)
    return rows


def table(rows, args):
    names = {0: "2D 128², batch 8", 1: "2D 256², batch 4", 2: "3D 64³, batch 1"}
    out = [f"T' = {args.level} ({args.level} recovery steps for every implementation), "
           f"threads {args.threads}, {args.rounds} rounds (median samples/s)", "",
           "| case | libdrdm direct kernels | libdrdm ATen path | authors' code (batch 1) "
           "| direct ÷ ATen | direct ÷ authors |", "|---|---:|---:|---:|---:|---:|"]
    for case in args.cases:
        s = {impl: statistics.median(rows[(case, impl)])
             for impl in ("libdrdm", "libdrdm-aten", "authors")}
        out.append(f"| {names[case]} | {s['libdrdm']:.4g} | {s['libdrdm-aten']:.4g} "
                   f"| {s['authors']:.4g} | {s['libdrdm'] / s['libdrdm-aten']:.2f} "
                   f"| {s['libdrdm'] / s['authors']:.2f} |")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bench", default=os.path.join(ROOT, "build/bench/drdm_bench_generate"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--cases", default="0,2")
    p.add_argument("--level", type=int, default=45)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--authors-reps", type=int, default=1)
    p.add_argument("--pause", default="")
    p.add_argument("--out", default=os.path.join(ROOT, "bench/results/generation.md"))
    args = p.parse_args()
    args.cases = [int(c) for c in args.cases.split(",")]
    with paused(args.pause):
        rows = measure(args)
    write_results(args.out, table(rows, args), {f"{c}|{i}": v for (c, i), v in rows.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
