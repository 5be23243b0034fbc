#!/usr/bin/env python3
"""Run libdrdm's generation benchmark beside elastic-augmentation peers (MONAI, TorchIO).

Builds nothing. Runs the built `drdm_bench_generate` and `bench/peer_generate.py`
(one process per case and implementation, so that each memory peak belongs to
one case), case by case, in rounds that alternate which program goes first,
and writes

  <out-dir>/generate.md               Markdown table + machine info
  <out-dir>/generate.json             kept rows, ratios and machine info
  <out-dir>/generate_libdrdm.jsonl    raw results of drdm_bench_generate
  <out-dir>/generate_peer.jsonl       raw results of peer_generate.py

ratio = libdrdm samples/s / peer samples/s: below 1 means libdrdm produces
fewer deformed images per second than the peer. This is not like for like:
the peers draw one random elastic warp per sample (a noise field, smoothing
or B-spline interpolation, one resampling), while DRDM runs the sampler and
then T' = 45 recovery steps, each two passes of the recovery network plus a
warp and a composition. The ratio is the price of the learned model.

MONAI and TorchIO are not in scripts/requirements.txt; install them with
  .venv/bin/pip install --no-deps -r bench/requirements.txt

Example:
  .venv/bin/python bench/run_generate.py --bench build/bench/drdm_bench_generate --threads 2 --device cpu
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import machine_info, measured_run, wait_idle  # noqa: E402

CASE_LABEL = {0: "2D 128x128", 1: "2D 256x256", 2: "3D 64x64x64"}
IMPLS = ["monai", "torchio"]
IMPL_LABEL = {"libdrdm": "libdrdm (DRDM generation)", "monai": "MONAI Rand{2,3}DElastic",
              "torchio": "TorchIO RandomElasticDeformation"}
INSTALL = ".venv/bin/pip install --no-deps -r bench/requirements.txt"


def other_jobs():
    """Other heavy processes on the machine (a training run, a build, other benchmarks)."""
    try:
        out = subprocess.run(["pgrep", "-af", "drdm_train|drdm_bench|cc1plus|drdm_deform"],
                             capture_output=True, text=True).stdout
    except OSError:
        return []
    return [line for line in out.splitlines() if line.strip() and "pgrep" not in line
            and "run_generate.py" not in line and "peer_generate.py" not in line]


def peers_missing(python):
    code = "import importlib.util as u, sys; sys.exit(0 if u.find_spec('monai') and u.find_spec('torchio') else 1)"
    return subprocess.run([python, "-c", code]).returncode != 0


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def fmt_rate(x):
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def main():
    p = argparse.ArgumentParser(description="libdrdm generation vs MONAI / TorchIO elastic augmentation")
    p.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "drdm_bench_generate"))
    p.add_argument("--python", default=sys.executable, help="interpreter with torch, monai and torchio")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--cases", default="0,1,2", help="0 = 2D 128x128 batch 8, 1 = 2D 256x256 batch 4, "
                                                    "2 = 3D 64^3 batch 1")
    p.add_argument("--impls", default="monai,torchio")
    p.add_argument("--level", type=int, default=45, help="T' of DRDM's samples")
    p.add_argument("--reps", type=int, default=1, help="timed generation calls per libdrdm row")
    p.add_argument("--warmup", type=int, default=1, help="libdrdm warm-up calls (level 1)")
    p.add_argument("--peer-min-time", type=float, default=2.0, help="peer: time each row at least this long")
    p.add_argument("--rounds", type=int, default=1,
                   help="per case, run all programs this many times, alternating the order; keep each row's "
                        "best. Round 0 runs the peers both before and after libdrdm.")
    p.add_argument("--wait-idle", type=float, default=0,
                   help="before each program, wait up to this many seconds for the CPUs to go idle")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    args = p.parse_args()

    if not os.access(args.bench, os.X_OK):
        sys.exit(f"run_generate.py: {args.bench} is not an executable; build target drdm_bench_generate first")
    if peers_missing(args.python):
        sys.exit(f"run_generate.py: MONAI and TorchIO are not importable by {args.python}; install them with\n"
                 f"  {INSTALL}\n(or pass --python an interpreter that has them)")
    peer = os.path.join(HERE, "peer_generate.py")
    os.makedirs(args.out_dir, exist_ok=True)
    info = machine_info(args.python)
    info["threads"] = args.threads
    info["command"] = " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    info["other_jobs_at_start"] = other_jobs()

    ours_cmd = [args.bench, "--threads", str(args.threads), "--device", args.device, "--level", str(args.level),
                "--rounds", str(args.reps), "--warmup", str(args.warmup)]
    peer_common = [args.python, peer, "--threads", str(args.threads), "--device", args.device,
                   "--min-time", str(args.peer_min_time)]
    impls = [i for i in args.impls.split(",") if i]
    ours, theirs, raw_ours, raw_peer = {}, {}, [], []

    def run_one(name, cmd, case, rnd):
        busy_before = wait_idle(args.wait_idle) if args.wait_idle > 0 else None
        rows, others = measured_run(cmd + ["--case", str(case)])
        for r in rows:
            r.update(round=rnd, cpu_busy_before=busy_before, others_cpu=others)
            if name == "libdrdm":
                raw_ours.append(r)
                k = (r["op"], r["size"], r["device"])
                if k not in ours or r["ms"] < ours[k]["ms"]:
                    ours[k] = r
            else:
                raw_peer.append(r)
                k = (r["impl"], r["size"], r["device"])
                if k not in theirs or r["ms"] < theirs[k]["ms"]:
                    theirs[k] = r

    programs = [("libdrdm", ours_cmd)] + [(i, peer_common + ["--impl", i]) for i in impls]
    for case in [int(c) for c in args.cases.split(",") if c.strip()]:
        for rnd in range(max(1, args.rounds)):
            order = programs if rnd % 2 == 0 else programs[::-1]
            if rnd == 0:  # the peers also before libdrdm: load drift shows in their two rows
                order = programs[1:] + programs
            for name, cmd in order:
                run_one(name, cmd, case, rnd)
    info["other_jobs_at_end"] = other_jobs()
    for fname, raw in (("generate_libdrdm.jsonl", raw_ours), ("generate_peer.jsonl", raw_peer)):
        with open(os.path.join(args.out_dir, fname), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in raw)

    # One table row per (size, device, implementation); ratios against each peer.
    sizes = sorted({(k[1], k[2]) for k in list(ours) + list(theirs)},
                   key=lambda s: (s[1] != "cpu", s[1], len(s[0].split("x")), int(s[0].split("x")[0])))
    lines = ["| case | device | implementation | samples/s | ms per sample | peak RSS MB (growth) | "
             "CUDA peak MB | mean displacement (vox) | libdrdm ÷ peer |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    ratios = []
    for size, dev in sizes:
        g = ours.get(("generate", size, dev))
        s = ours.get(("sampler", size, dev))
        label = f"{size}, batch {g['batch'] if g else '?'}"
        if g:
            disp = f"{fmt(g.get('start_mean_disp'))} start / {fmt(g.get('final_mean_disp'))} final"
            lines.append(f"| {label} | {dev} | {IMPL_LABEL['libdrdm']}, T' = {g['level']} | {fmt_rate(g['samples_per_s'])} | "
                         f"{g['ms'] / g['batch']:,.0f} | {fmt(g.get('peak_rss_mb'), '.0f')} "
                         f"({fmt(g.get('peak_growth_mb'), '.0f')}) | {fmt(g.get('cuda_peak_mb'), '.0f')} | "
                         f"{disp} | 1 |")
        for impl in impls:
            r = theirs.get((impl, size, dev))
            if not r:
                continue
            ratio = g["samples_per_s"] / r["samples_per_s"] if g else None
            ratios.append({"size": size, "device": dev, "peer": impl, "libdrdm_samples_per_s": g and g["samples_per_s"],
                           "peer_samples_per_s": r["samples_per_s"], "ratio": ratio,
                           "peer_per_libdrdm": 1 / ratio if ratio else None})
            lines.append(f"| {label} | {dev} | {IMPL_LABEL[impl]} | {fmt_rate(r['samples_per_s'])} | "
                         f"{r['ms'] / r['batch']:,.1f} | {fmt(r.get('peak_rss_mb'), '.0f')} "
                         f"({fmt(r.get('peak_growth_mb'), '.0f')}) | {fmt(r.get('cuda_peak_mb'), '.0f')} | "
                         f"{fmt(r.get('mean_disp'))} | {fmt(ratio, '.2g')} (peer {fmt(1 / ratio if ratio else None, ',.0f')}x) |")
        if s:
            ps = s.get("per_step_ms")
            lines.append(f"| {label} | {dev} | libdrdm parts: sampler (t = {s['level']}) per batch | - | "
                         f"{s['ms'] / s['batch']:,.1f} | | | | per recovery step per batch: "
                         f"{fmt(ps, ',.0f')} ms |")
    others = [r.get("others_cpu") for r in list(ours.values()) + list(theirs.values())]
    others = [o for o in others if o is not None]
    busy = info["other_jobs_at_start"] or info["other_jobs_at_end"]
    md = [
        "# Generation (Alg. 2) vs elastic augmentation: libdrdm vs MONAI / TorchIO",
        "",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} cores, {info['cpu_model']}"
        + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"),
        f"- threads: {args.threads}; torch {info['torch']}; Python {info['python']}",
        f"- libdrdm: T' = {args.level}, {args.reps} timed call(s) per case after {args.warmup} warm-up call(s) at "
        f"level 1; untrained RecoveryNet (same work per step as a trained one); peers: median over >= "
        f"{args.peer_min_time} s; best of {max(1, args.rounds)} round(s), peers run before and after libdrdm",
        "- CPU time taken by other processes while the kept rows ran: max "
        + (f"{max(others):.0%}" if others else "unknown"),
        ("- **other jobs were running (" + "; ".join(j.split(" ", 1)[1][:60] for j in busy[:3])
         + "): timings are disturbed**") if busy else "- no other heavy jobs seen at start and end",
        "- ratio = libdrdm samples/s ÷ peer samples/s (< 1: the peer makes more images per second). Not like for "
        "like: the peers draw one random elastic warp per sample, DRDM runs T' recovery steps of a network.",
        "",
        *lines,
        "",
    ]
    text = "\n".join(md)
    with open(os.path.join(args.out_dir, "generate.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out_dir, "generate.json"), "w") as f:
        json.dump({"machine": info, "libdrdm": list(ours.values()), "peers": list(theirs.values()),
                   "ratios": ratios}, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
