#!/usr/bin/env python3
"""Run libdrdm's spatial benchmark beside its PyTorch-in-Python peer.

Builds nothing. Runs the built `drdm_bench_spatial` and `bench/peer_spatial.py`
with the same --threads/--sizes/--device, cross-checks that both compute the
same results on small deterministic inputs, joins the timings and writes

  <out-dir>/spatial.md               Markdown table + machine info + cross-check
  <out-dir>/spatial_libdrdm.jsonl    raw results of drdm_bench_spatial
  <out-dir>/spatial_peer.jsonl       raw results of peer_spatial.py
  <out-dir>/spatial_machine.json     machine info

ratio = peer ms / libdrdm ms: above 1 means libdrdm is faster.

Example:
  python3 bench/run.py --bench build/bench/drdm_bench_spatial --threads 2 --sizes full
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OPS = ["warp", "compose", "compose_power", "integrate_ss"]
OP_LABEL = {
    "warp": "warp (linear, zeros)",
    "compose": "compose",
    "compose_power": "compose_power (n=8)",
    "integrate_ss": "integrate_scaling_squaring (7)",
}


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(python):
    code = (
        "import json, torch; print(json.dumps({'torch': torch.__version__, "
        "'cuda_available': torch.cuda.is_available(), "
        "'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "
        "'parallel_info': torch.__config__.parallel_info()}))"
    )
    info = json.loads(subprocess.check_output([python, "-c", code], text=True))
    info.update({
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    })
    return info


def cpu_busy(interval=2.0):
    """Fraction of all CPU time spent busy over `interval` seconds (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    try:
        t0, i0 = sample()
        time.sleep(interval)
        t1, i1 = sample()
    except OSError:
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(timeout, threshold=0.15):
    """Waits until other processes leave the CPUs (up to timeout s); returns the last busy fraction."""
    deadline = time.time() + timeout
    busy = cpu_busy()
    while busy is not None and busy > threshold and time.time() < deadline:
        print(f"run.py: CPUs {busy:.0%} busy, waiting for them to go idle", file=sys.stderr, flush=True)
        time.sleep(5)
        busy = cpu_busy()
    return busy


def run(cmd):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cross_check(bench, python, peer, threads):
    """Max |libdrdm - peer| per op and dimension on small deterministic inputs."""
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = os.path.join(tmp, "ours"), os.path.join(tmp, "peer")
        os.makedirs(ours)
        os.makedirs(theirs)
        run([bench, "--dump", ours, "--threads", str(threads)])
        run([python, peer, "--dump", theirs, "--threads", str(threads)])
        for dims in (2, 3):
            for op in OPS:
                name = f"{op}_{dims}d.f32"
                a = np.fromfile(os.path.join(ours, name), dtype=np.float32)
                b = np.fromfile(os.path.join(theirs, name), dtype=np.float32)
                if a.shape != b.shape:
                    rows.append((op, dims, float("inf"), 0.0))
                    continue
                rows.append((op, dims, float(np.abs(a - b).max()), float(np.abs(b).max())))
    return rows


def fmt_ms(x):
    return "-" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.1f}")


def main():
    p = argparse.ArgumentParser(description="libdrdm spatial benchmark vs PyTorch-in-Python peer")
    p.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "drdm_bench_spatial"),
                   help="path of the built drdm_bench_spatial")
    p.add_argument("--python", default=sys.executable, help="interpreter for the peer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", choices=["quick", "full"], default="full")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--min-time", type=float, default=0.5)
    p.add_argument("--min-reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2,
                   help="run both programs this many times, alternating; keep each row's best median")
    p.add_argument("--wait-idle", type=float, default=600,
                   help="before each program, wait up to this many seconds for the CPUs to go idle")
    p.add_argument("--no-check", action="store_true", help="skip the correctness cross-check")
    args = p.parse_args()

    if not os.access(args.bench, os.X_OK):
        sys.exit(f"run.py: {args.bench} is not an executable; build target drdm_bench_spatial first")
    peer = os.path.join(HERE, "peer_spatial.py")
    os.makedirs(args.out_dir, exist_ok=True)
    ours_path = os.path.join(args.out_dir, "spatial_libdrdm.jsonl")
    peer_path = os.path.join(args.out_dir, "spatial_peer.jsonl")

    info = machine_info(args.python)
    info["threads"] = args.threads
    common = ["--threads", str(args.threads), "--sizes", args.sizes, "--device", args.device,
              "--min-time", str(args.min_time), "--min-reps", str(args.min_reps)]
    info["command"] = " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])

    checks = [] if args.no_check else cross_check(args.bench, args.python, peer, args.threads)
    # Alternate the two programs so that drift in machine load hits both alike;
    # each row keeps its best (lowest) median over the rounds.
    ours, theirs = {}, {}
    raw_ours, raw_peer = [], []
    info["cpu_busy_before_runs"] = []
    for rnd in range(max(1, args.rounds)):
        for cmd, store, raw in (([args.bench, *common], ours, raw_ours),
                                ([args.python, peer, *common], theirs, raw_peer)):
            info["cpu_busy_before_runs"].append(wait_idle(args.wait_idle))
            with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as tmp:
                run(cmd + ["--out", tmp.name])
                rows = read_jsonl(tmp.name)
            for r in rows:
                r["round"] = rnd
                raw.append(r)
                k = (r["op"], r["size"], r["batch"], r["device"])
                if k not in store or r["median_ms"] < store[k]["median_ms"]:
                    store[k] = r
    for path, raw in ((ours_path, raw_ours), (peer_path, raw_peer)):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in raw)
    keys = sorted(set(ours) | set(theirs),
                  key=lambda k: (k[3] != "cpu", k[3], OPS.index(k[0]), len(k[1].split("x")),
                                 int(k[1].split("x")[0]), k[2]))

    lines = [
        "| op | size | device | libdrdm ms | PyTorch-Python ms | ratio |",
        "|---|---|---|---:|---:|---:|",
    ]
    for k in keys:
        op, size, batch, dev = k
        a = ours.get(k, {}).get("median_ms")
        b = theirs.get(k, {}).get("median_ms")
        ratio = f"{b / a:.2f}" if a and b else "-"
        label = f"{size}, batch {batch}"
        lines.append(f"| {OP_LABEL.get(op, op)} | {label} | {dev} | {fmt_ms(a)} | {fmt_ms(b)} | {ratio} |")
    table = "\n".join(lines)

    md = [
        "# Spatial core: libdrdm vs PyTorch-in-Python",
        "",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} cores, {info['cpu_model']}"
        + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"),
        f"- threads: {args.threads}; torch {info['torch']}; Python {info['python']}",
        "- per row: median of >= %d timed runs and >= %.1f s, after 2 warm-up runs; "
        "best median of %d alternating rounds" % (args.min_reps, args.min_time, max(1, args.rounds)),
        "- CPU busy before each program run: "
        + ", ".join("-" if b is None else f"{b:.0%}" for b in info["cpu_busy_before_runs"]),
        "- ratio = PyTorch-Python ms / libdrdm ms (> 1: libdrdm faster)",
        "",
        table,
        "",
    ]
    if checks:
        md += ["Cross-check (small deterministic inputs, max |libdrdm - peer|):", "",
               "| op | dims | max abs diff | max abs value |", "|---|---:|---:|---:|"]
        md += [f"| {op} | {d} | {diff:.3g} | {mx:.3g} |" for op, d, diff, mx in checks]
        md.append("")
    text = "\n".join(md)
    with open(os.path.join(args.out_dir, "spatial.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out_dir, "spatial_machine.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(text)
    bad = [c for c in checks if not c[2] <= 1e-3 * max(1.0, c[3])]
    if bad:
        print("cross-check FAILED for: " + ", ".join(f"{op} {d}D" for op, d, _, _ in bad),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
