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
import resource
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


def measured_run(cmd):
    """Runs one benchmark program; returns its JSON rows and the share of CPU
    time that other processes used meanwhile (0: the machine was ours)."""
    def proc_stat():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    def children_cpu():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as tmp:
        t0, i0, c0 = *proc_stat(), children_cpu()
        run(cmd + ["--out", tmp.name])
        t1, i1, c1 = *proc_stat(), children_cpu()
        rows = read_jsonl(tmp.name)
    tick = os.sysconf("SC_CLK_TCK")
    capacity = (t1 - t0) / tick
    others = ((t1 - t0) - (i1 - i0)) / tick - (c1 - c0)
    return rows, round(max(0.0, others) / capacity, 3) if capacity > 0 else None


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
    p.add_argument("--rounds", type=int, default=3,
                   help="per case, run both programs this many times, alternating; keep each row's best median")
    p.add_argument("--wait-idle", type=float, default=120,
                   help="before each program, wait up to this many seconds for the CPUs to go idle")
    p.add_argument("--fixed-malloc", action="store_true",
                   help="run both programs with glibc's mmap/trim thresholds fixed at 1 GiB, so that "
                        "freed tensor memory is reused instead of returned to the OS and page-faulted "
                        "back (takes allocator state out of the comparison)")
    p.add_argument("--default-malloc", action="store_true",
                   help="run libdrdm without drdm::keep_freed_memory_for_reuse() (glibc defaults), "
                        "to see what the allocator setting is worth")
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

    if args.fixed_malloc:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 30)
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(1 << 30)
    if args.fixed_malloc:
        info["malloc"] = "glibc, mmap/trim thresholds fixed at 1 GiB in both programs"
    elif args.default_malloc:
        info["malloc"] = "glibc defaults in both programs"
    else:
        info["malloc"] = ("libdrdm as its programs ship (drdm::keep_freed_memory_for_reuse()); "
                          "Python peer with glibc defaults")
    checks = [] if args.no_check else cross_check(args.bench, args.python, peer, args.threads)
    # Each case (size, batch) is run by both programs in turn, `rounds` times,
    # alternating which goes first, so that changes in machine load hit both
    # alike; each row keeps its best (lowest) median over the rounds.
    ncases = 4 if args.sizes == "full" else 3
    ours, theirs = {}, {}
    raw_ours, raw_peer = [], []
    ours_flags = ["--default-malloc"] if (args.default_malloc or args.fixed_malloc) else []
    programs = [("libdrdm", [args.bench, *common, *ours_flags], ours, raw_ours),
                ("peer", [args.python, peer, *common], theirs, raw_peer)]
    for case in range(ncases):
        for rnd in range(max(1, args.rounds)):
            for name, cmd, store, raw in (programs if rnd % 2 == 0 else programs[::-1]):
                busy_before = wait_idle(args.wait_idle)
                rows, others = measured_run(cmd + ["--case", str(case)])
                for r in rows:
                    r.update(round=rnd, cpu_busy_before=busy_before, others_cpu=others)
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

    others = [r.get("others_cpu") for r in list(ours.values()) + list(theirs.values())]
    others = [o for o in others if o is not None]
    max_others = f"{max(others):.0%}" if others else "unknown"
    info["max_others_cpu_kept_rows"] = max(others) if others else None
    md = [
        "# Spatial core: libdrdm vs PyTorch-in-Python",
        "",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} cores, {info['cpu_model']}"
        + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"),
        f"- threads: {args.threads}; torch {info['torch']}; Python {info['python']}; "
        f"allocator: {info['malloc']}",
        "- per row: median of >= %d timed runs and >= %.1f s, after 2 warm-up runs; "
        "best median of %d rounds per case, the two programs alternating" % (args.min_reps, args.min_time, max(1, args.rounds)),
        "- CPU time taken by other processes while the kept rows ran: "
        + "max %s" % max_others,
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
