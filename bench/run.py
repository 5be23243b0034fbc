#!/usr/bin/env python3
"""Run a libdrdm benchmark beside its peer, measured in the same run.

  bench/run.py spatial   drdm_bench_spatial vs bench/peer_spatial.py (warp, compose, ...)
  bench/run.py train     drdm_bench_train vs bench/peer_train.py (training step, sampler)
  bench/run.py generate  drdm_bench_generate vs bench/peer_generate.py (MONAI, TorchIO)
  bench/run.py memory    drdm_train vs bench/peer_train.py --train-config: peak resident
                         memory of a few training steps of each config
  bench/run.py seg       drdm_bench_seg vs bench/peer_seg.py (U-Net training step vs
                         PyTorch-Python; BigAug vs MONAI / TorchIO pipelines)
  bench/run.py reg       drdm_bench_reg vs bench/peer_reg.py (VoxelMorph training step vs
                         the same network in PyTorch-Python)
  bench/run.py scaling   data-parallel drdm_train: 2 Gloo ranks vs one process on the same
                         cores, same global batch (images per second)
  bench/run.py io        drdm_bench_io vs bench/peer_io.py (reading and writing NIfTI and
                         MetaImage volumes with SimpleITK and nibabel)

Builds nothing: run scripts/setup.sh (or build the bench targets) first.
`bench/run.py SUITE --help` lists each suite's options. Every suite writes a
Markdown report (<suite>.md), the raw JSON rows of both sides and the machine
information to --out-dir (default bench/results/, ignored by git).

The timing suites run the two programs case by case, in rounds that alternate
which goes first, so that changes in machine load hit both alike, and keep
each row's best. Time ratios are peer ms / libdrdm ms (above 1: libdrdm is
faster); generate reports libdrdm samples/s / peer samples/s. The memory suite
reports libdrdm peak MB / peer peak MB (below 1: libdrdm needs less).

Examples:
  .venv/bin/python bench/run.py spatial --threads 2 --sizes full --device cpu --rounds 3
  .venv/bin/python bench/run.py train --threads 2 --device cpu --reps 3 --warmup 1 --rounds 1
  .venv/bin/python bench/run.py generate --threads 2 --device cpu
  .venv/bin/python bench/run.py memory --threads 2
  .venv/bin/python bench/run.py seg --threads 1 --device cpu --step-reps 3 --step-warmup 1 --rounds 2
  .venv/bin/python bench/run.py reg --threads 1 --device cpu --reps 3 --warmup 1 --rounds 2
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ================================================================ shared harness
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(args):
    """Machine, torch build (as the peer's interpreter sees it), threads and this command."""
    code = (
        "import json, torch; print(json.dumps({'torch': torch.__version__, "
        "'cuda_available': torch.cuda.is_available(), "
        "'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "
        "'parallel_info': torch.__config__.parallel_info()}))"
    )
    info = json.loads(subprocess.check_output([args.python, "-c", code], text=True))
    info.update({
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "threads": args.threads,
        "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
    })
    return info


def machine_lines(info):
    """The report's first lines: command, date, machine."""
    return [
        f"- command: `{info['command']}`",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} cores, {info['cpu_model']}"
        + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"),
    ]


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


def other_jobs(pattern):
    """Other heavy processes on the machine (a training run, a build, other benchmarks)."""
    try:
        out = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout
    except OSError:
        return []
    mine = ("pgrep", "bench/run.py", "peer_generate.py", "peer_train.py --train-config")
    return [line for line in out.splitlines() if line.strip() and not any(m in line for m in mine)]


def other_jobs_line(info, what="these timings are disturbed and must be re-measured on an idle machine"):
    busy = info["other_jobs_at_start"] or info["other_jobs_at_end"]
    if not busy:
        return "- no other heavy jobs seen at start and end"
    return ("- **other jobs were running (" + "; ".join(j.split(" ", 1)[1][:60] for j in busy[:3])
            + f"): {what}**")


def run(cmd):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_raw(args, suite, raw):
    """Every row of each side, in run order: <out-dir>/<suite>_libdrdm.jsonl, <suite>_peer.jsonl."""
    for group, rows in raw.items():
        with open(os.path.join(args.out_dir, f"{suite}_{group}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


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


def run_rounds(programs, cases, rounds, idle_timeout, key, metric, peers_first=False):
    """Runs each program of `programs` ([(group, cmd)], libdrdm first) once per
    case and round with `--case I`, alternating the order between rounds; with
    peers_first, round 0 runs the peers before and after libdrdm. Returns, per
    group, the best row (lowest metric) per key(row) and every row in run order."""
    best = {group: {} for group, _ in programs}
    raw = {group: [] for group, _ in programs}
    for case in cases:
        for rnd in range(max(1, rounds)):
            order = programs if rnd % 2 == 0 else programs[::-1]
            if rnd == 0 and peers_first:
                order = programs[1:] + programs
            for group, cmd in order:
                busy_before = wait_idle(idle_timeout) if idle_timeout > 0 else None
                rows, others = measured_run(cmd + ["--case", str(case)])
                for r in rows:
                    r.update(round=rnd, cpu_busy_before=busy_before, others_cpu=others)
                    raw[group].append(r)
                    k = key(r)
                    if k not in best[group] or metric(r) < metric(best[group][k]):
                        best[group][k] = r
    return best, raw


def measure_cases(args, suite, programs, info, jobs, key):
    """run_rounds over --cases (metric "ms"), then notes the other jobs and
    writes the raw rows; returns the kept rows of libdrdm and of the peers."""
    best, raw = run_rounds(programs, [int(c) for c in args.cases.split(",") if c.strip()], args.rounds,
                           args.wait_idle, key=key, metric=lambda r: r["ms"])
    info["other_jobs_at_end"] = other_jobs(jobs)
    write_raw(args, suite, raw)
    return best["libdrdm"], best["peer"]


def max_others(*stores):
    others = [r.get("others_cpu") for s in stores for r in s.values()]
    others = [o for o in others if o is not None]
    return max(others) if others else None


def others_line(worst):
    return ("- CPU time taken by other processes while the kept rows ran: max "
            + (f"{worst:.0%}" if worst is not None else "unknown"))


def fmt_ms(x):
    return "-" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.1f}")


def fmt(x, spec=".3g"):
    return "-" if x is None else format(x, spec)


def write_report(args, name, text, info, extra=None):
    """<out-dir>/<name>.md and, unless extra names its own, <name>_machine.json."""
    with open(os.path.join(args.out_dir, name + ".md"), "w") as f:
        f.write(text)
    if extra is None:
        with open(os.path.join(args.out_dir, name + "_machine.json"), "w") as f:
            json.dump(info, f, indent=2)
    print(text)


def write_kept(args, suite, info, ours, theirs, **extra):
    """<out-dir>/<suite>.json: the machine, the kept rows of both sides and `extra`."""
    with open(os.path.join(args.out_dir, suite + ".json"), "w") as f:
        json.dump({"machine": info, "libdrdm": list(ours.values()), "peers": list(theirs.values()), **extra},
                  f, indent=1)


def need_executable(path, target):
    if not os.access(path, os.X_OK):
        sys.exit(f"run.py: {path} is not an executable; build target {target} first")


def row_key(r):
    """A result row's key where one program may emit several ops and impls."""
    return r["op"], r["impl"], r["size"], r["batch"], r["device"]


def param_failures(ours, theirs, op):
    """Per `op` row (key row_key): "" if libdrdm's and the
    PyTorch-Python peer's parameter counts and per-name shapes agree (and
    libdrdm's count is its closed form), else what differs."""
    bad = {}
    for k, a in ours.items():
        if k[0] != op:
            continue
        b = theirs.get((op, "pytorch-python") + k[2:])
        if b is None:
            continue
        why = []
        if a["params"] != b["params"]:
            why.append(f"parameter counts {a['params']:,} (libdrdm) != {b['params']:,} (peer)")
        if a["params"] != a.get("params_closed_form"):
            why.append(f"libdrdm count {a['params']:,} != closed form {a.get('params_closed_form')}")
        if a.get("param_shapes") != b.get("param_shapes"):
            names = set(a.get("param_shapes", {})) ^ set(b.get("param_shapes", {}))
            names |= {n for n in set(a.get("param_shapes", {})) & set(b.get("param_shapes", {}))
                      if a["param_shapes"][n] != b["param_shapes"][n]}
            why.append("parameter shapes differ: " + ", ".join(sorted(names)[:6]))
        bad[k] = "; ".join(why)
    return bad



def finish_checked(args, suite, md, info, ours, theirs, failures, network, **extra):
    """Writes <suite>.json (kept rows, `extra`, the parameter check of
    param_failures) and <suite>.md; returns 1 when the check failed, else 0."""
    write_kept(args, suite, info, ours, theirs, **extra,
               param_failures={"/".join(map(str, k)): v for k, v in failures.items()})
    write_report(args, suite, "\n".join(md), info, extra=suite + ".json")
    bad = [v for v in failures.values() if v]
    if bad:
        print(f"{network} parameter check FAILED: " + "; ".join(bad), file=sys.stderr)
    return 1 if bad else 0


# ================================================================ spatial
SPATIAL_OPS = ["warp", "compose", "compose_power", "integrate_ss"]
SPATIAL_LABEL = {
    "warp": "warp (linear, zeros)",
    "compose": "compose",
    "compose_power": "compose_power (n=8)",
    "integrate_ss": "integrate_scaling_squaring (7)",
}


def spatial_cross_check(args, peer):
    """Max |libdrdm - peer| per op and dimension on small deterministic inputs."""
    import numpy as np

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = os.path.join(tmp, "ours"), os.path.join(tmp, "peer")
        os.makedirs(ours)
        os.makedirs(theirs)
        run([args.bench, "--dump", ours, "--threads", str(args.threads)])
        run([args.python, peer, "--dump", theirs, "--threads", str(args.threads)])
        for dims in (2, 3):
            for op in SPATIAL_OPS:
                name = f"{op}_{dims}d.f32"
                a = np.fromfile(os.path.join(ours, name), dtype=np.float32)
                b = np.fromfile(os.path.join(theirs, name), dtype=np.float32)
                if a.shape != b.shape:
                    rows.append((op, dims, float("inf"), 0.0))
                    continue
                rows.append((op, dims, float(np.abs(a - b).max()), float(np.abs(b).max())))
    return rows


def suite_spatial(args):
    """spatial.md, spatial_libdrdm.jsonl, spatial_peer.jsonl, spatial_machine.json."""
    need_executable(args.bench, "drdm_bench_spatial")
    peer = os.path.join(HERE, "peer_spatial.py")
    info = machine_info(args)
    common = ["--threads", str(args.threads), "--sizes", args.sizes, "--device", args.device,
              "--min-time", str(args.min_time), "--min-reps", str(args.min_reps)]

    if args.fixed_malloc:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(1 << 30)
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(1 << 30)
        info["malloc"] = "glibc, mmap/trim thresholds fixed at 1 GiB in both programs"
    elif args.default_malloc:
        info["malloc"] = "glibc defaults in both programs"
    else:
        info["malloc"] = ("libdrdm as its programs ship (drdm::keep_freed_memory_for_reuse()); "
                          "Python peer with glibc defaults")
    checks = [] if args.no_check else spatial_cross_check(args, peer)
    ours_flags = ["--default-malloc"] if (args.default_malloc or args.fixed_malloc) else []
    programs = [("libdrdm", [args.bench, *common, *ours_flags]), ("peer", [args.python, peer, *common])]
    ncases = 4 if args.sizes == "full" else 3
    best, raw = run_rounds(programs, range(ncases), args.rounds, args.wait_idle,
                           key=lambda r: (r["op"], r["size"], r["batch"], r["device"]),
                           metric=lambda r: r["median_ms"])
    ours, theirs = best["libdrdm"], best["peer"]
    write_raw(args, "spatial", raw)

    keys = sorted(set(ours) | set(theirs),
                  key=lambda k: (k[3] != "cpu", k[3], SPATIAL_OPS.index(k[0]), len(k[1].split("x")),
                                 int(k[1].split("x")[0]), k[2]))
    lines = ["| op | size | device | libdrdm ms | PyTorch-Python ms | ratio |",
             "|---|---|---|---:|---:|---:|"]
    for k in keys:
        op, size, batch, dev = k
        a = ours.get(k, {}).get("median_ms")
        b = theirs.get(k, {}).get("median_ms")
        ratio = f"{b / a:.2f}" if a and b else "-"
        lines.append(f"| {SPATIAL_LABEL.get(op, op)} | {size}, batch {batch} | {dev} | {fmt_ms(a)} | "
                     f"{fmt_ms(b)} | {ratio} |")

    info["max_others_cpu_kept_rows"] = max_others(ours, theirs)
    md = [
        "# Spatial core: libdrdm vs PyTorch-in-Python",
        "",
        *machine_lines(info),
        f"- threads: {args.threads}; torch {info['torch']}; Python {info['python']}; "
        f"allocator: {info['malloc']}",
        "- per row: median of >= %d timed runs and >= %.1f s, after 2 warm-up runs; "
        "best median of %d rounds per case, the two programs alternating"
        % (args.min_reps, args.min_time, max(1, args.rounds)),
        others_line(info["max_others_cpu_kept_rows"]),
        "- ratio = PyTorch-Python ms / libdrdm ms (> 1: libdrdm faster)",
        "",
        *lines,
        "",
    ]
    if checks:
        md += ["Cross-check (small deterministic inputs, max |libdrdm - peer|):", "",
               "| op | dims | max abs diff | max abs value |", "|---|---:|---:|---:|"]
        md += [f"| {op} | {d} | {diff:.3g} | {mx:.3g} |" for op, d, diff, mx in checks]
        md.append("")
    write_report(args, "spatial", "\n".join(md), info)
    bad = [c for c in checks if not c[2] <= 1e-3 * max(1.0, c[3])]
    if bad:
        print("cross-check FAILED for: " + ", ".join(f"{op} {d}D" for op, d, _, _ in bad), file=sys.stderr)
        return 1
    return 0


# ================================================================ train
TRAIN_OPS = ["train_step", "sample_t40", "sample_mixed"]
TRAIN_LABEL = {
    "train_step": "training step (K=2 forward + loss + backward + Adam)",
    "sample_t40": "sampler, t = 40",
    "sample_mixed": "sampler, t ~ U{1..80}",
}


def train_cross_check(args, peer):
    with tempfile.TemporaryDirectory() as tmp:
        run([args.bench, "--dump", tmp, "--threads", str(args.threads)])
        out = subprocess.run([args.python, peer, "--check", tmp, "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def train_check_failures(checks):
    bad = []
    for dims, r in checks.items():
        if not r["params_peer"] == r["params_libdrdm"] == r["params_expected"]:
            bad.append(f"{dims}: parameter counts")
        if r["psi_hat_max_abs_diff"] > 1e-4 * max(1.0, r["psi_hat_max_abs"]):
            bad.append(f"{dims}: forward output")
        for k, v in r["loss_libdrdm"].items():
            if abs(v - r["loss_peer"][k]) > 1e-4 * max(1.0, abs(v)):
                bad.append(f"{dims}: loss {k}")
        if r["adam_step_params_max_abs_diff"] > 1e-6:
            bad.append(f"{dims}: Adam step")
        if r["grad_worst_rel_diff"]["libdrdm_vs_peer_channels_last"][0] > 0.05:
            bad.append(f"{dims}: gradients")
        for kind in ("t40", "mixed"):
            if r[f"sampler_{kind}_stats_max_rel_diff"] > 0.03:
                bad.append(f"{dims}: sampler {kind} statistics")
    return bad


def train_check_md(checks):
    md = ["Cross-check (`drdm_bench_train --dump`, `peer_train.py --check`; small 2D 64x48 batch 2 "
          "and 3D 24x16x32 inputs for the network, the benchmark's own cases for the sampler):", "",
          "| check | 2D | 3D |", "|---|---|---|"]

    def row(name, f):
        md.append(f"| {name} | " + " | ".join(f(checks[d]) for d in ("2d", "3d")) + " |")

    row("trainable parameters (libdrdm / peer)", lambda r: f"{r['params_libdrdm']:,} / {r['params_peer']:,}")
    row("forward output, max abs diff (max abs value)",
        lambda r: f"{r['psi_hat_max_abs_diff']:.2g} ({r['psi_hat_max_abs']:.3g} voxels)")
    row("loss total (libdrdm / peer)", lambda r: f"{r['loss_libdrdm']['total']:.7g} / {r['loss_peer']['total']:.7g}")
    row("gradients vs peer with channels-last weights, worst param",
        lambda r: "%.2g (%s)" % tuple(r["grad_worst_rel_diff"]["libdrdm_vs_peer_channels_last"]))
    row("gradients vs peer contiguous, worst param",
        lambda r: "%.2g (%s)" % tuple(r["grad_worst_rel_diff"]["libdrdm_vs_peer"]))
    row("gradients, peer contiguous vs float64 / channels-last vs float64",
        lambda r: "%.2g / %.2g" % (r["grad_worst_rel_diff"]["peer_vs_float64"][0],
                                    r["grad_worst_rel_diff"]["peer_channels_last_vs_float64"][0]))
    row("Adam step from libdrdm's gradients, params max abs diff",
        lambda r: f"{r['adam_step_params_max_abs_diff']:.2g}")
    row("loss after one Adam step, lr 1e-3 (libdrdm / peer)",
        lambda r: f"{r['loss_after_adam_step_libdrdm']:.7g} / {r['loss_after_adam_step_peer']:.7g}")
    for kind in ("t40", "mixed"):
        row(f"sampler {kind}: first draw max abs diff (max abs value)",
            lambda r: f"{r[f'sampler_{kind}_first_draw_max_abs_diff']:.2g} "
                      f"({r[f'sampler_{kind}_first_draw_max_abs']:.3g})")
        row(f"sampler {kind}: mean norm of phi, libdrdm / peer (samples)",
            lambda r: f"{r[f'sampler_{kind}_stats_libdrdm']['phi_mean_norm']:.4g} / "
                      f"{r[f'sampler_{kind}_stats_peer']['phi_mean_norm']:.4g}, {r[f'sampler_{kind}_samples']}")
    md.append("")
    md.append("Gradient figures: per parameter max |difference| / max |gradient| (float64 run of the peer as "
              "the yardstick for float32 rounding); the conv biases just before an instance norm, whose "
              "gradient is 0 in exact arithmetic, are left out.")
    md.append("")
    return md


def suite_train(args):
    """train.md, train_libdrdm.jsonl, train_peer.jsonl, train_check.json, train_machine.json;
    exits non-zero when a cross-check fails."""
    need_executable(args.bench, "drdm_bench_train")
    peer = os.path.join(HERE, "peer_train.py")
    jobs = "drdm_train|cc1plus"
    info = machine_info(args)
    info["other_jobs_at_start"] = other_jobs(jobs)

    checks = {} if args.no_check else train_cross_check(args, peer)
    if checks:
        with open(os.path.join(args.out_dir, "train_check.json"), "w") as f:
            json.dump(checks, f, indent=1)

    common = ["--threads", str(args.threads), "--device", args.device, "--ops", args.ops,
              "--rounds", str(args.reps), "--warmup", str(args.warmup)]
    programs = [("libdrdm", [args.bench, *common]),
                ("peer", [args.python, peer, *common, "--memory-format", args.peer_memory_format])]
    best, raw = run_rounds(programs, [int(c) for c in args.cases.split(",") if c.strip()], args.rounds,
                           args.wait_idle, key=lambda r: (r["op"], r["size"], r["batch"], r["device"]),
                           metric=lambda r: r["ms"])
    info["other_jobs_at_end"] = other_jobs(jobs)
    ours, theirs = best["libdrdm"], best["peer"]
    write_raw(args, "train", raw)

    keys = sorted(set(ours) | set(theirs),
                  key=lambda k: (k[3] != "cpu", k[3], TRAIN_OPS.index(k[0]), len(k[1].split("x")), k[2]))
    lines = ["| op | size | device | libdrdm ms | PyTorch-Python ms | ratio | peer layout |",
             "|---|---|---|---:|---:|---:|---|"]
    for k in keys:
        op, size, batch, dev = k
        a = ours.get(k, {}).get("ms")
        b = theirs.get(k, {}).get("ms")
        ratio = f"{b / a:.2f}" if a and b else "-"
        layout = theirs.get(k, {}).get("memory_format", "")
        variants = theirs.get(k, {}).get("variants")
        if variants and len(variants) > 1:
            layout += " (" + ", ".join(f"{v}: {fmt_ms(ms)} ms" for v, ms in variants.items()) + ")"
        lines.append(f"| {TRAIN_LABEL.get(op, op)} | {size}, batch {batch} | {dev} | {fmt_ms(a)} | "
                     f"{fmt_ms(b)} | {ratio} | {layout} |")
    info["max_others_cpu_kept_rows"] = max_others(ours, theirs)
    md = [
        "# Training step and sampler: libdrdm vs PyTorch-in-Python",
        "",
        *machine_lines(info),
        f"- threads: {args.threads}; torch {info['torch']}; Python {info['python']}",
        f"- per row: {args.reps} timed calls after {args.warmup} warm-up calls (median; sampler with "
        f"mixed t: mean over the 8-row t table); best of {max(1, args.rounds)} rounds, the programs alternating",
        others_line(info["max_others_cpu_kept_rows"]),
        other_jobs_line(info),
        "- ratio = PyTorch-Python ms / libdrdm ms (> 1: libdrdm faster)",
        "",
        *lines,
        "",
    ]
    if checks:
        md += train_check_md(checks)
    write_report(args, "train", "\n".join(md), info)
    bad = train_check_failures(checks) if checks else []
    if bad:
        print("cross-check FAILED for: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


# ================================================================ generate
GENERATE_LABEL = {"libdrdm": "libdrdm (DRDM generation)", "monai": "MONAI Rand{2,3}DElastic",
                  "torchio": "TorchIO RandomElasticDeformation"}
GENERATE_INSTALL = ".venv/bin/pip install --no-deps -r bench/requirements.txt"


def fmt_rate(x):
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def suite_generate(args):
    """generate.md, generate.json (kept rows, ratios, machine), generate_libdrdm.jsonl,
    generate_peer.jsonl. Not like for like: the peers draw one random elastic warp
    per sample, DRDM runs the sampler and then T' recovery steps of a network."""
    need_executable(args.bench, "drdm_bench_generate")
    impls = [i for i in args.impls.split(",") if i]
    code = ("import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in %r) else 1)" % (impls,))
    if subprocess.run([args.python, "-c", code]).returncode != 0:
        sys.exit(f"run.py: {' and '.join(impls)} not importable by {args.python}; install them with\n"
                 f"  {GENERATE_INSTALL}\n(or pass --python an interpreter that has them)")
    peer = os.path.join(HERE, "peer_generate.py")
    jobs = "drdm_train|drdm_bench|cc1plus|drdm_deform"
    info = machine_info(args)
    info["other_jobs_at_start"] = other_jobs(jobs)

    ours_cmd = [args.bench, "--threads", str(args.threads), "--device", args.device, "--level", str(args.level),
                "--rounds", str(args.reps), "--warmup", str(args.warmup)]
    peer_common = [args.python, peer, "--threads", str(args.threads), "--device", args.device,
                   "--min-time", str(args.peer_min_time)]
    impls = [i for i in args.impls.split(",") if i]
    programs = [("libdrdm", ours_cmd)] + [("peer", peer_common + ["--impl", i]) for i in impls]
    best, raw = run_rounds(programs, [int(c) for c in args.cases.split(",") if c.strip()], args.rounds,
                           args.wait_idle, metric=lambda r: r["ms"], peers_first=True,
                           key=lambda r: (r["op"] if r["impl"] == "libdrdm" else r["impl"], r["size"], r["device"]))
    info["other_jobs_at_end"] = other_jobs(jobs)
    ours, theirs = best["libdrdm"], best["peer"]
    write_raw(args, "generate", raw)

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
            lines.append(f"| {label} | {dev} | {GENERATE_LABEL['libdrdm']}, T' = {g['level']} | "
                         f"{fmt_rate(g['samples_per_s'])} | "
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
            lines.append(f"| {label} | {dev} | {GENERATE_LABEL[impl]} | {fmt_rate(r['samples_per_s'])} | "
                         f"{r['ms'] / r['batch']:,.1f} | {fmt(r.get('peak_rss_mb'), '.0f')} "
                         f"({fmt(r.get('peak_growth_mb'), '.0f')}) | {fmt(r.get('cuda_peak_mb'), '.0f')} | "
                         f"{fmt(r.get('mean_disp'))} | {fmt(ratio, '.2g')} (peer {fmt(1 / ratio if ratio else None, ',.0f')}x) |")
        if s:
            ps = s.get("per_step_ms")
            lines.append(f"| {label} | {dev} | libdrdm parts: sampler (t = {s['level']}) per batch | - | "
                         f"{s['ms'] / s['batch']:,.1f} | | | | per recovery step per batch: "
                         f"{fmt(ps, ',.0f')} ms |")
    md = [
        "# Generation (Alg. 2) vs elastic augmentation: libdrdm vs MONAI / TorchIO",
        "",
        *machine_lines(info),
        f"- threads: {args.threads}; torch {info['torch']}; Python {info['python']}",
        f"- libdrdm: T' = {args.level}, {args.reps} timed call(s) per case after {args.warmup} warm-up call(s) at "
        f"level 1; untrained RecoveryNet (same work per step as a trained one); peers: median over >= "
        f"{args.peer_min_time} s; best of {max(1, args.rounds)} round(s), peers run before and after libdrdm",
        others_line(max_others(ours, theirs)),
        other_jobs_line(info, "timings are disturbed"),
        "- ratio = libdrdm samples/s ÷ peer samples/s (< 1: the peer makes more images per second). Not like for "
        "like: the peers draw one random elastic warp per sample, DRDM runs T' recovery steps of a network.",
        "",
        *lines,
        "",
    ]
    write_kept(args, "generate", info, ours, theirs, ratios=ratios)
    write_report(args, "generate", "\n".join(md), info, extra="generate.json")
    return 0


# ================================================================ memory
# (name, config, --set overrides, steps: None = --steps). The hippocampus
# sizes are the paper config with the CPU sampler (control 32, 3 levels) at
# batch 1 on all 231 volumes: the setting of the earlier hippocampus3d-cpu
# config at 64^3. The paper configs do not fit this kind of machine at full
# batch: they run at a reduced batch (and 128^3 for 2 steps), and the report
# says so.
H3D_CPU = ["train.batch_size=1", "sampler.control=32", "sampler.levels=3"]
MEMORY_CASES = [
    ("cardiac2d-cpu", "configs/cardiac2d-cpu.json", [], None),
    ("chest2d-cpu", "configs/chest2d-cpu.json", [], None),
    ("hippocampus3d-cpu", "configs/hippocampus3d-cpu.json", [], None),
    ("hippocampus3d-32", "configs/hippocampus3d-paper.json", ["data.size=[32,32,32]", *H3D_CPU], None),
    ("hippocampus3d-48", "configs/hippocampus3d-paper.json", ["data.size=[48,48,48]", *H3D_CPU], None),
    ("hippocampus3d-64", "configs/hippocampus3d-paper.json", ["data.size=[64,64,64]", *H3D_CPU], None),
    ("cardiac2d-paper-b4", "configs/cardiac2d-paper.json", ["train.batch_size=4"], None),
    ("cardiac2d-paper-b8", "configs/cardiac2d-paper.json", ["train.batch_size=8"], None),
    ("hippocampus3d-paper-b1", "configs/hippocampus3d-paper.json", ["train.batch_size=1"], 2),
]


def run_child(cmd, limit_mb, env=None, log_path=None):
    """Runs cmd; returns (exit status, peak RSS MB from wait4's ru_maxrss,
    wall seconds, killed). A watchdog kills the child when its resident set
    passes limit_mb (so that a case too big for the machine cannot take it down)."""
    print("+ " + " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    killed, done = threading.Event(), threading.Event()

    def watch():  # reads /proc only: the main thread alone reaps the child (wait4)
        while not done.wait(0.05):
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
            except (OSError, StopIteration):  # exiting (a zombie has no VmRSS)
                continue
            if rss > limit_mb:
                killed.set()
                os.kill(proc.pid, signal.SIGKILL)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    watcher.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if log_path:
        log.close()
    return proc.returncode, usage.ru_maxrss / 1024.0, time.perf_counter() - start, killed.is_set()


def dataset_line(log_path):
    """libdrdm's "dataset: N files -> M 3D samples of ..." log line."""
    try:
        with open(log_path) as f:
            for line in f:
                if "dataset:" in line:
                    return line.split("dataset:", 1)[1].strip()
    except OSError:
        pass
    return None


def suite_memory(args):
    """memory.md, memory.json: per config, the peak resident set of drdm_train
    and of the same steps in PyTorch-in-Python (peer_train.py --train-config)."""
    need_executable(args.bench, "drdm_train")
    peer = os.path.join(HERE, "peer_train.py")
    info = machine_info(args)
    info["other_jobs_at_start"] = other_jobs("drdm_train|cc1plus")
    wanted = None if args.cases == "all" else set(args.cases.split(","))
    env = dict(os.environ, **dict(kv.split("=", 1) for kv in args.env))
    rows = []
    for name, config, sets, steps in MEMORY_CASES:
        if wanted is not None and name not in wanted:
            continue
        with tempfile.TemporaryDirectory(prefix=f"drdm-mem-{name}-") as tmp:
            out = os.path.join(tmp, "run")
            sets_all = [f"train.steps={steps or args.steps}", "train.warmup_steps=0", "train.device=cpu",
                        "train.preview_every=0", "train.prefetch=0", f"train.threads={args.threads}",
                        "train.log_every=1", *sets, *args.set]
            cmd = [args.bench, "--config", config, "--output", out, "--set", *sets_all]
            log = os.path.join(tmp, "libdrdm.log")
            rc, peak, secs, killed = run_child(cmd, args.max_rss_gb * 1024, env=env, log_path=log)
            row = {"case": name, "config": config, "set": sets_all, "libdrdm_peak_mb": round(peak, 1),
                   "libdrdm_seconds": round(secs, 1), "libdrdm_status": "killed" if killed else rc,
                   "libdrdm_dataset": dataset_line(log)}
            resolved = os.path.join(out, "config.json")
            if rc != 0 and not killed:
                with open(log) as f:
                    row["libdrdm_log_tail"] = f.read()[-2000:]
            if os.path.exists(resolved):
                with open(resolved) as f:
                    cfg = json.load(f)
                row["size"] = "x".join(map(str, cfg["data"]["size"]))
                row["batch"] = cfg["train"]["batch_size"]
                row["steps"] = cfg["train"]["steps"]
            if os.path.exists(resolved) and not args.no_peer:
                pjson = os.path.join(tmp, "peer.json")
                pcmd = [args.python, peer, "--train-config", resolved, "--threads", str(args.threads),
                        "--out", pjson]
                prc, ppeak, psecs, pkilled = run_child(pcmd, args.max_rss_gb * 1024, env=env,
                                                       log_path=os.path.join(tmp, "peer.log"))
                row.update(peer_peak_mb=round(ppeak, 1), peer_seconds=round(psecs, 1),
                           peer_status="killed" if pkilled else prc)
                if prc == 0:
                    row["peer"] = read_jsonl(pjson)[-1]
                if prc == 0 and rc == 0:
                    row["ratio"] = round(peak / ppeak, 3)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    info["other_jobs_at_end"] = other_jobs("drdm_train|cc1plus")

    lines = ["| case | size, batch, steps | libdrdm peak MB | PyTorch-Python peak MB | ratio | "
             "libdrdm s | peer s | samples (libdrdm / peer) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        def peak(side):
            status = r.get(f"{side}_status")
            if status == "killed":
                return f"> {args.max_rss_gb * 1024:,.0f} (killed)"
            if status not in (0, None):
                return f"failed ({status})"
            return fmt(r.get(f"{side}_peak_mb"), ",.0f")
        ours_n = (r.get("libdrdm_dataset") or "").split(" samples")[0].split("-> ")[-1]
        theirs_n = r.get("peer", {}).get("samples", "-")
        lines.append(f"| {r['case']} | {r.get('size', '?')}, {r.get('batch', '?')}, {r.get('steps', '?')} | "
                     f"{peak('libdrdm')} | {peak('peer')} | {fmt(r.get('ratio'), '.2f')} | "
                     f"{fmt(r.get('libdrdm_seconds'), '.0f')} | {fmt(r.get('peer_seconds'), '.0f')} | "
                     f"{ours_n or '-'} / {theirs_n} |")
    md = [
        "# Training memory: libdrdm vs PyTorch-in-Python",
        "",
        *machine_lines(info),
        f"- memory: {info['memory_gb']} GB; threads: {args.threads}; torch {info['torch']}; Python {info['python']}"
        + (f"; environment: {' '.join(args.env)}" if args.env else ""),
        f"- libdrdm: `{os.path.relpath(args.bench, ROOT)} --config C --set train.steps={args.steps} train.device=cpu "
        f"train.preview_every=0 train.prefetch=0 train.threads={args.threads} ...`; peer: the same steps of the "
        "same model in Python (`bench/peer_train.py --train-config OUTPUT/config.json`, the resolved config)",
        "- peak = the child's maximum resident set (getrusage / wait4 `ru_maxrss`), the whole process "
        "(LibTorch or Python + torch, dataset cache, training) over the run; ratio = libdrdm / peer (< 1: libdrdm "
        "needs less); s = wall seconds of the whole run, data loading included",
        other_jobs_line(info, "times are disturbed (peaks are not)"),
        "",
        *lines,
        "",
    ]
    with open(os.path.join(args.out_dir, "memory.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    write_report(args, "memory", "\n".join(md), info, extra="memory.json")
    return 0 if all(r.get("libdrdm_status") == 0 for r in rows) else 1


# ================================================================ seg
SEG_BIGAUG_LABEL = {"libdrdm": "libdrdm drdm::seg::bigaug (batched)", "monai": "MONAI Compose, per sample",
                    "torchio": "TorchIO Compose, per sample"}
# Transforms in each BigAug pipeline, each at p = 0.5 (bench/peer_seg.py MAPPING).
SEG_TRANSFORMS = {"libdrdm": 9, "monai": 9, "torchio": 6}


def suite_seg(args):
    """seg.md, seg.json (kept rows, checks, mapping, machine), seg_libdrdm.jsonl,
    seg_peer.jsonl; exits non-zero when the U-Nets' parameters differ."""
    need_executable(args.bench, "drdm_bench_seg")
    ops = [o for o in args.ops.split(",") if o]
    impls = [i for i in args.impls.split(",") if i] if "bigaug" in ops else []
    if impls:
        code = ("import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in %r) else 1)"
                % (impls,))
        if subprocess.run([args.python, "-c", code]).returncode != 0:
            sys.exit(f"run.py: {' and '.join(impls)} not importable by {args.python}; install with\n"
                     f"  {GENERATE_INSTALL}\n(or pass --python an interpreter that has them)")
    peer = os.path.join(HERE, "peer_seg.py")
    jobs = "drdm_train|drdm_bench|cc1plus|drdm_deform"
    info = machine_info(args)
    info["other_jobs_at_start"] = other_jobs(jobs)
    mapping = json.loads(subprocess.check_output([args.python, peer, "--mapping"], text=True))

    common = ["--threads", str(args.threads), "--device", args.device,
              "--step-reps", str(args.step_reps), "--step-warmup", str(args.step_warmup),
              "--aug-min-time", str(args.aug_min_time), "--aug-min-reps", str(args.aug_min_reps),
              "--aug-warmup", str(args.aug_warmup)]
    programs = [("libdrdm", [args.bench, *common, "--ops", ",".join(ops)])]
    if "unet_step" in ops:
        programs.append(("peer", [args.python, peer, *common, "--impl", "pytorch",
                                  "--memory-format", args.peer_memory_format]))
    programs += [("peer", [args.python, peer, *common, "--impl", i]) for i in impls]
    ours, theirs = measure_cases(args, "seg", programs, info, jobs, key=row_key)
    failures = param_failures(ours, theirs, "unet_step")

    def order(k):
        return (k[4] != "cpu", k[4], int(k[2].split("x")[0]), k[3])

    step = ["| size, batch | device | libdrdm ms | PyTorch-Python ms | ratio | trainable parameters "
            "(libdrdm / peer) | peer layout |", "|---|---|---:|---:|---:|---|---|"]
    for k in sorted((k for k in ours if k[0] == "unet_step"), key=order):
        a, b = ours[k], theirs.get(("unet_step", "pytorch-python") + k[2:], {})
        bad = failures.get(k)
        ratio = ("FAILED: " + bad) if bad else (f"{b['ms'] / a['ms']:.2f}" if b else "-")
        layout = b.get("memory_format", "")
        if len(b.get("variants", {})) > 1:
            layout += " (" + ", ".join(f"{v}: {fmt_ms(ms)} ms" for v, ms in b["variants"].items()) + ")"
        step.append(f"| {k[2]}, batch {k[3]} | {k[4]} | {fmt_ms(a['ms'])} | {fmt_ms(b.get('ms'))} | {ratio} | "
                    f"{a['params']:,} / {fmt(b.get('params'), ',')} (closed form {a['params_closed_form']:,}) | "
                    f"{layout} |")
    aug = ["| size, batch | device | implementation | transforms at p 0.5 | samples/s | ms per sample | "
           "libdrdm ÷ peer |", "|---|---|---|---:|---:|---:|---:|"]
    ratios = []
    for k in sorted((k for k in ours if k[0] == "bigaug"), key=order):
        a = ours[k]
        aug.append(f"| {k[2]}, batch {k[3]} | {k[4]} | {SEG_BIGAUG_LABEL['libdrdm']} | 9 | "
                   f"{fmt_rate(a['samples_per_s'])} | {a['ms'] / a['batch']:.2f} | 1 |")
        for impl in impls:
            b = theirs.get(("bigaug", impl) + k[2:])
            if not b:
                continue
            ratio = a["samples_per_s"] / b["samples_per_s"]
            ratios.append({"size": k[2], "batch": k[3], "device": k[4], "peer": impl, "ratio": ratio,
                           "libdrdm_samples_per_s": a["samples_per_s"], "peer_samples_per_s": b["samples_per_s"]})
            aug.append(f"| {k[2]}, batch {k[3]} | {k[4]} | {SEG_BIGAUG_LABEL[impl]} | {SEG_TRANSFORMS[impl]} | "
                       f"{fmt_rate(b['samples_per_s'])} | {b['ms'] / b['batch']:.2f} | {ratio:.2f} |")
    maps = ["| BigAug transform (docs/bigaug.md) | MONAI | TorchIO |", "|---|---|---|"]
    maps += [f"| {ours_t} | {m or 'none'} | {t or 'none (no transform of this kind)'} |" for ours_t, m, t in mapping]

    info["max_others_cpu_kept_rows"] = max_others(ours, theirs)
    md = [
        "# Segmentation: U-Net training step and BigAug, libdrdm vs PyTorch-Python / MONAI / TorchIO",
        "",
        *machine_lines(info),
        f"- threads: {args.threads}; torch {info['torch']}; Python {info['python']}",
        f"- U-Net step: {args.step_reps} timed steps after {args.step_warmup} warm-up steps (median); BigAug: "
        f"median over >= {args.aug_min_reps} calls and >= {args.aug_min_time} s after {args.aug_warmup} warm-up "
        f"calls, one call = the whole batch; best of {max(1, args.rounds)} round(s) per case, the programs "
        "alternating",
        others_line(info["max_others_cpu_kept_rows"]),
        other_jobs_line(info),
        "",
        "U-Net training step (drdm::seg::UNet widths 16, 32, 64, 128, 1 input channel, 4 classes; forward, "
        "bce_loss (Eq. 17), loss read, backward, Adam) vs the same network in torch.nn with "
        "BCEWithLogits on one-hot labels and torch.optim.Adam; ratio = PyTorch-Python ms / libdrdm ms "
        "(> 1: libdrdm faster):",
        "",
        *step,
        "",
    ]
    if len(aug) > 2:
        md += ["BigAug throughput (images with labels; libdrdm transforms the batch at once, the peers one "
               "sample after another as those libraries work); ratio = libdrdm samples/s ÷ peer samples/s "
               "(> 1: libdrdm faster). Not like for like: MONAI resamples up to three times per sample "
               "(rotate, zoom, elastic) where libdrdm composes them into one field, and TorchIO has no "
               "transform of three of the nine kinds:", "", *aug, "", *maps, ""]
    return finish_checked(args, "seg", md, info, ours, theirs, failures, "U-Net", bigaug_ratios=ratios,
                          mapping=mapping)


# ================================================================ reg
def reg_table(ours, theirs, failures):
    """The report's table lines and the ratios, one per (case, device)."""
    lines = ["| size, batch | device | libdrdm ms | PyTorch-Python ms | ratio | trainable parameters "
             "(libdrdm / peer) | first loss (libdrdm / peer) |", "|---|---|---:|---:|---:|---|---|"]
    ratios = []
    for k in sorted(ours, key=lambda k: (k[4] != "cpu", k[4], len(k[2].split("x")), k[3])):
        a, b = ours[k], theirs.get(("voxelmorph_step", "pytorch-python") + k[2:], {})
        ratio = b["ms"] / a["ms"] if b else None
        if ratio is not None:
            ratios.append({"size": k[2], "batch": k[3], "device": k[4], "ratio": ratio,
                           "libdrdm_ms": a["ms"], "peer_ms": b["ms"]})
        shown = ("FAILED: " + failures[k]) if failures.get(k) else fmt(ratio, ".2f")
        lines.append(f"| {k[2]}, batch {k[3]} | {k[4]} | {fmt_ms(a['ms'])} | {fmt_ms(b.get('ms'))} | {shown} | "
                     f"{a['params']:,} / {fmt(b.get('params'), ',')} (closed form {a['params_closed_form']:,}) | "
                     f"{a['first_loss']:.6g} / {fmt(b.get('first_loss'), '.6g')} |")
    return lines, ratios


def suite_reg(args):
    """reg.md, reg.json (kept rows, ratios, checks, machine), reg_libdrdm.jsonl,
    reg_peer.jsonl; exits non-zero when the two networks' parameters differ."""
    need_executable(args.bench, "drdm_bench_reg")
    peer = os.path.join(HERE, "peer_reg.py")
    jobs = "drdm_train|drdm_bench|cc1plus|drdm_deform"
    info = machine_info(args)
    info["other_jobs_at_start"] = other_jobs(jobs)
    common = ["--threads", str(args.threads), "--device", args.device, "--rounds", str(args.reps),
              "--warmup", str(args.warmup)]
    programs = [("libdrdm", [args.bench, *common]), ("peer", [args.python, peer, *common])]
    ours, theirs = measure_cases(args, "reg", programs, info, jobs, key=row_key)
    failures = param_failures(ours, theirs, "voxelmorph_step")
    lines, ratios = reg_table(ours, theirs, failures)
    info["max_others_cpu_kept_rows"] = max_others(ours, theirs)
    md = [
        "# Registration: VoxelMorph training step, libdrdm vs PyTorch-Python",
        "",
        *machine_lines(info),
        f"- threads: {args.threads}; torch {info['torch']}; Python {info['python']}",
        f"- per row: median of {args.reps} timed steps after {args.warmup} warm-up step(s); best of "
        f"{max(1, args.rounds)} round(s) per case, the programs alternating",
        others_line(info["max_others_cpu_kept_rows"]),
        other_jobs_line(info),
        "",
        "VoxelMorph step (drdm::reg::VoxelMorph defaults: encoder 16, 32, 32, 32, decoder 32, 32, 32, 32, 32, "
        "16, 16, velocity integrated by 7 squarings at half resolution; forward, MSE(warp(moving, displacement), "
        "fixed) + 0.01 x mean squared forward difference of the velocity, loss read, backward, Adam) vs the same "
        "network in torch.nn and torch.optim.Adam, both contiguous, on the same fixed random pair; ratio = "
        "PyTorch-Python ms / libdrdm ms (> 1: libdrdm faster). The first loss is the step-0 loss (same inputs, "
        "different random initial weights):",
        "",
        *lines,
        "",
    ]
    return finish_checked(args, "reg", md, info, ours, theirs, failures, "VoxelMorph", ratios=ratios)


# ================================================================ command line
def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scaling_run(args, ranks, threads, out):
    """drdm_train on `ranks` Gloo ranks (started by hand, as torchrun would) of
    `threads` threads each; the images per second of the logged windows after
    the first (start-up and warm-up excluded), median."""
    sets = [f"train.steps={args.steps}", f"train.log_every={args.log_every}", "train.preview_every=0",
            f"train.checkpoint_every={args.steps}", "train.device=cpu", f"train.threads={threads}",
            f"train.batch_size={args.batch}", *args.set]
    cmd = [args.bench, "--config", args.config, "--output", out, "--no-progress", "-q", "--set", *sets]
    port, procs = free_port(), []
    for r in range(ranks):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        if ranks > 1:
            env.update(RANK=str(r), WORLD_SIZE=str(ranks), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate()[1] for p in procs]
    if any(p.returncode != 0 for p in procs):
        sys.exit("run.py scaling: drdm_train failed:\n" + "\n".join(e[-1500:] for e in errors))
    rates = sorted(m["images_per_second"] for m in read_jsonl(os.path.join(out, "metrics.jsonl"))[1:])
    return rates[len(rates) // 2], rates


def suite_scaling(args):
    """scaling.md, scaling.json: images per second of data-parallel drdm_train
    (Gloo ranks on this machine's CPUs) beside one process using the same
    cores, at the same global batch."""
    need_executable(args.bench, "drdm_train")
    info = machine_info(args)
    info["other_jobs_at_start"] = other_jobs("drdm_train|cc1plus")
    layouts = [("one process (the peer)", 1, args.threads), ("1 rank", 1, args.threads // 2),
               (f"2 ranks x {args.threads // 2} threads", 2, args.threads // 2)]
    rows = []
    for rnd in range(args.rounds):
        for name, ranks, threads in layouts:
            wait_idle(args.wait_idle)
            with tempfile.TemporaryDirectory(prefix="drdm-scaling-") as tmp:
                median, rates = scaling_run(args, ranks, threads, os.path.join(tmp, "run"))
            rows.append({"layout": name, "ranks": ranks, "threads": threads, "round": rnd,
                         "images_per_second": round(median, 2), "windows": [round(r, 2) for r in rates]})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    info["other_jobs_at_end"] = other_jobs("drdm_train|cc1plus")
    best = {name: max(r["images_per_second"] for r in rows if r["layout"] == name) for name, _, _ in layouts}
    peer = best[layouts[0][0]]
    lines = ["| layout | images/s | ratio to one process |", "|---|---:|---:|"]
    lines += [f"| {name} | {fmt(v)} | {fmt(v / peer)} |" for name, v in best.items()]
    md = (f"# Data-parallel drdm_train on the CPU: ranks beside one process\n\n"
          + "\n".join(machine_lines(info)) + "\n"
          f"- config: `{args.config}`, global batch {args.batch}, {args.steps} steps, images/s per "
          f"{args.log_every}-step window after the first, median; best of {args.rounds} round(s)\n"
          f"{other_jobs_line(info)}\n\n" + "\n".join(lines) + "\n")
    with open(os.path.join(args.out_dir, "scaling.json"), "w") as f:
        json.dump({"machine": info, "rows": rows}, f, indent=1)
    write_report(args, "scaling", md, info)
    return 0



# ================================================================ io
IO_CASES = ["ct_int16.nii.gz", "mr_float32.nii.gz", "mr_float32.nii", "mr_float32.mha"]


def io_sum_failures(ours, theirs):
    """Read rows whose voxel sum differs between libdrdm and a peer (relative 1e-6)."""
    bad = []
    for k, a in ours.items():
        if k[0] != "read":
            continue
        for impl in ("simpleitk", "nibabel"):
            b = theirs.get(("read", impl, k[2]))
            if b is not None and abs(a["sum"] - b["sum"]) > 1e-6 * max(1.0, abs(b["sum"])):
                bad.append(f"{k[2]}: libdrdm read sum {a['sum']:.9g}, {impl} {b['sum']:.9g}")
    return bad


def suite_io(args):
    """io.md, io.json, io_libdrdm.jsonl, io_peer.jsonl: reading and writing
    NIfTI (gzip and plain) and MetaImage volumes, libdrdm beside SimpleITK and nibabel."""
    need_executable(args.bench, "drdm_bench_io")
    peer = os.path.join(HERE, "peer_io.py")
    info = machine_info(args)
    with tempfile.TemporaryDirectory(prefix="drdm-bench-io-", dir=args.tmp_dir) as folder:
        run([args.python, peer, "--make", folder, "--size", *map(str, args.size)])
        common = ["--dir", folder, "--threads", str(args.threads), "--min-time", str(args.min_time),
                  "--min-reps", str(args.min_reps), "--warmup", "1"]
        programs = [("libdrdm", [args.bench, *common]),
                    ("peer", [args.python, peer, *common, "--impls", args.impls])]
        best, raw = run_rounds(programs, [int(c) for c in args.cases.split(",")], args.rounds, args.wait_idle,
                               key=lambda r: (r["op"], r["impl"], r["file"]), metric=lambda r: r["ms"])
    ours, theirs = best["libdrdm"], best["peer"]
    write_raw(args, "io", raw)
    impls = args.impls.split(",")
    lines = ["| op | file | MB on disk | libdrdm ms | " + " | ".join(f"{i} ms" for i in impls) + " | "
             + " | ".join(f"ratio vs {i}" for i in impls) + " |",
             "|---|---|---:|---:|" + "---:|" * (2 * len(impls))]
    for op in ("read", "write"):
        for name in IO_CASES:
            a = ours.get((op, "libdrdm", name))
            if a is None:
                continue
            peers = [theirs.get((op, i, name), {}).get("ms") for i in impls]
            ratios = [fmt(b / a["ms"], ".2f") if b else "-" for b in peers]
            lines.append(f"| {op} | {name} ({a['size']}, {a['pixel']}) | {a['file_mb']:.1f} | {fmt_ms(a['ms'])} | "
                         + " | ".join(fmt_ms(b) for b in peers) + " | " + " | ".join(ratios) + " |")
    failures = io_sum_failures(ours, theirs)
    info["max_others_cpu_kept_rows"] = max_others(ours, theirs)
    md = [
        "# Image reading and writing: libdrdm vs SimpleITK and nibabel",
        "",
        *machine_lines(info),
        f"- volume {'x'.join(map(str, args.size[::-1]))} (x, y, z), written by SimpleITK; "
        f"per row the median of >= {args.min_reps} calls and >= {args.min_time} s after 1 warm-up call, "
        f"best of {max(1, args.rounds)} round(s), the programs alternating",
        others_line(info["max_others_cpu_kept_rows"]),
        "- ratio = peer ms / libdrdm ms (> 1: libdrdm faster)",
        "- libdrdm's read also checks the gzip CRC and length, the raw voxels for NaN/Inf and the header; "
        "its write goes to a temporary file, is read back and checked, fsynced and renamed. "
        "The peers do none of this (nibabel reads no MetaImage).",
        "- read: to float32 in memory; write: the same array in the file's format and pixel type",
        "- voxel sums of the reads: " + ("equal on both sides (relative 1e-6)" if not failures
                                         else "DIFFER: " + "; ".join(failures)),
        "",
        *lines,
        "",
    ]
    write_kept(args, "io", info, ours, theirs, sum_failures=failures)
    write_report(args, "io", "\n".join(md), info, extra="io.json")
    return 1 if failures else 0


def main():
    p = argparse.ArgumentParser(description="libdrdm benchmarks beside their peers",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    suites = p.add_subparsers(dest="suite", required=True, metavar="SUITE")

    def suite(name, fn, help, bench, rounds, wait_idle):
        s = suites.add_parser(name, help=help, description=help)
        s.set_defaults(run=fn)
        s.add_argument("--bench", default=os.path.join(ROOT, *bench), help="the built libdrdm program")
        s.add_argument("--python", default=sys.executable, help="interpreter for the peer")
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--out-dir", default=os.path.join(HERE, "results"))
        if rounds is not None:
            s.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
            s.add_argument("--rounds", type=int, default=rounds,
                           help="per case, run the programs this many times, alternating; keep each row's best")
            s.add_argument("--wait-idle", type=float, default=wait_idle,
                           help="before each program, wait up to this many seconds for the CPUs to go idle")
        return s

    s = suite("spatial", suite_spatial, "warp, compose, compose_power, scaling and squaring",
              ["build", "bench", "drdm_bench_spatial"], rounds=3, wait_idle=120)
    s.add_argument("--sizes", choices=["quick", "full"], default="full")
    s.add_argument("--min-time", type=float, default=0.5)
    s.add_argument("--min-reps", type=int, default=5)
    s.add_argument("--fixed-malloc", action="store_true",
                   help="run both programs with glibc's mmap/trim thresholds fixed at 1 GiB, so that "
                        "freed tensor memory is reused instead of returned to the OS and page-faulted "
                        "back (takes allocator state out of the comparison)")
    s.add_argument("--default-malloc", action="store_true",
                   help="run libdrdm without drdm::keep_freed_memory_for_reuse() (glibc defaults), "
                        "to see what the allocator setting is worth")
    s.add_argument("--no-check", action="store_true", help="skip the correctness cross-check")

    s = suite("train", suite_train, "training step and forward-process sampler",
              ["build", "bench", "drdm_bench_train"], rounds=2, wait_idle=0)
    s.add_argument("--cases", default="0,1", help="0 = 2D 128x128 batch 8, 1 = 3D 64^3 batch 1")
    s.add_argument("--ops", default="all")
    s.add_argument("--reps", type=int, default=5, help="timed calls per row (after --warmup)")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--peer-memory-format", choices=["auto", "contiguous", "channels_last"], default="auto",
                   help="peer training-step layout on CPU; auto times both and keeps the faster")
    s.add_argument("--no-check", action="store_true")

    s = suite("generate", suite_generate, "generation (Alg. 2) vs MONAI / TorchIO elastic augmentation",
              ["build", "bench", "drdm_bench_generate"], rounds=1, wait_idle=0)
    s.add_argument("--cases", default="0,1,2", help="0 = 2D 128x128 batch 8, 1 = 2D 256x256 batch 4, "
                                                    "2 = 3D 64^3 batch 1")
    s.add_argument("--impls", default="monai,torchio")
    s.add_argument("--level", type=int, default=45, help="T' of DRDM's samples")
    s.add_argument("--reps", type=int, default=1, help="timed generation calls per libdrdm row")
    s.add_argument("--warmup", type=int, default=1, help="libdrdm warm-up calls (level 1)")
    s.add_argument("--peer-min-time", type=float, default=2.0, help="peer: time each row at least this long")

    s = suite("memory", suite_memory, "peak resident memory of training steps, per config (CPU)",
              ["build", "apps", "drdm_train"], rounds=None, wait_idle=0)
    s.add_argument("--cases", default="all", help="comma-separated names of: "
                   + ", ".join(c[0] for c in MEMORY_CASES))
    s.add_argument("--steps", type=int, default=3, help="training steps per run (where the case sets none)")
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="more config overrides for every case (after the case's own)")
    s.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE",
                   help="environment of both programs (e.g. MALLOC_ARENA_MAX=2)")
    s.add_argument("--max-rss-gb", type=float, default=16.0,
                   help="kill a program whose resident set passes this (reported as '> limit')")
    s.add_argument("--no-peer", action="store_true", help="libdrdm only")

    s = suite("seg", suite_seg, "U-Net training step vs PyTorch-Python, BigAug vs MONAI / TorchIO",
              ["build", "bench", "drdm_bench_seg"], rounds=2, wait_idle=0)
    s.add_argument("--cases", default="0", help="0 = 2D 128x128 batch 16 (the CPU config), "
                                                "1 = 2D 256x256 batch 8")
    s.add_argument("--ops", default="unet_step,bigaug")
    s.add_argument("--impls", default="monai,torchio", help="BigAug peers")
    s.add_argument("--step-reps", type=int, default=5, help="timed U-Net steps per row (after --step-warmup)")
    s.add_argument("--step-warmup", type=int, default=2)
    s.add_argument("--aug-min-time", type=float, default=2.0, help="BigAug: time each row at least this long (s)")
    s.add_argument("--aug-min-reps", type=int, default=5)
    s.add_argument("--aug-warmup", type=int, default=3)
    s.add_argument("--peer-memory-format", choices=["auto", "contiguous", "channels_last"], default="auto",
                   help="peer U-Net layout on CPU; auto times both and keeps the faster (libdrdm: contiguous)")

    s = suite("reg", suite_reg, "VoxelMorph training step vs the same network in PyTorch-Python",
              ["build", "bench", "drdm_bench_reg"], rounds=2, wait_idle=0)
    s.add_argument("--cases", default="0,1", help="0 = 2D 128x128 batch 8, 1 = 3D 64^3 batch 1")
    s.add_argument("--reps", type=int, default=5, help="timed steps per row (after --warmup)")
    s.add_argument("--warmup", type=int, default=2)

    s = suite("scaling", suite_scaling, "data-parallel drdm_train: Gloo ranks vs one process (CPU)",
              ["build", "apps", "drdm_train"], rounds=None, wait_idle=0)
    s.add_argument("--config", default=os.path.join(ROOT, "configs", "cardiac2d-cpu.json"))
    s.add_argument("--batch", type=int, default=8, help="the global batch")
    s.add_argument("--steps", type=int, default=30)
    s.add_argument("--log-every", type=int, default=5)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--wait-idle", type=float, default=60)
    s.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")

    s = suite("io", suite_io, "reading and writing NIfTI / MetaImage volumes vs SimpleITK and nibabel",
              ["build", "bench", "drdm_bench_io"], rounds=3, wait_idle=0)
    s.add_argument("--cases", default="0,1,2,3", help="0 = int16 .nii.gz, 1 = float32 .nii.gz, "
                                                      "2 = float32 .nii, 3 = float32 .mha")
    s.add_argument("--size", type=int, nargs=3, default=[128, 256, 256], metavar=("Z", "Y", "X"))
    s.add_argument("--impls", default="simpleitk,nibabel")
    s.add_argument("--min-time", type=float, default=1.0)
    s.add_argument("--min-reps", type=int, default=3)
    s.add_argument("--tmp-dir", default=None, help="where the files go (default: the system's temp folder)")

    args = p.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
