#!/usr/bin/env python3
"""Run libdrdm's training-step and sampler benchmark beside its PyTorch-in-Python peer.

Builds nothing. Runs the built `drdm_bench_train` and `bench/peer_train.py`
with the same options, first cross-checks them (drdm_bench_train --dump, then
peer_train.py --check: parameter counts, one forward output, the loss terms,
gradients, one Adam step, the sampler's draws), then times both, case by case,
alternating which program goes first, and writes

  <out-dir>/train.md               Markdown table + machine info + cross-check
  <out-dir>/train_libdrdm.jsonl    raw results of drdm_bench_train
  <out-dir>/train_peer.jsonl       raw results of peer_train.py
  <out-dir>/train_check.json       the cross-check
  <out-dir>/train_machine.json     machine info

ratio = peer ms / libdrdm ms: above 1 means libdrdm is faster. For
sample_mixed the ms is the mean over whole cycles of a fixed table of t.

Example:
  python3 bench/run_train.py --bench build/bench/drdm_bench_train --threads 2 --device cpu
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from run import fmt_ms, machine_info, measured_run, run, wait_idle  # noqa: E402

OPS = ["train_step", "sample_t40", "sample_mixed"]
OP_LABEL = {
    "train_step": "training step (K=2 forward + loss + backward + Adam)",
    "sample_t40": "sampler, t = 40",
    "sample_mixed": "sampler, t ~ U{1..80}",
}


def other_jobs():
    """Other heavy processes on the machine (a concurrent drdm_train, a build)."""
    try:
        out = subprocess.run(["pgrep", "-af", "drdm_train|cc1plus"], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [line for line in out.splitlines() if line.strip() and "pgrep" not in line]


def cross_check(bench, python, peer, threads):
    with tempfile.TemporaryDirectory() as tmp:
        run([bench, "--dump", tmp, "--threads", str(threads)])
        out = subprocess.run([python, peer, "--check", tmp, "--threads", str(threads)],
                             check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def check_failures(checks):
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


def check_md(checks):
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


def main():
    p = argparse.ArgumentParser(description="libdrdm training step and sampler vs PyTorch-in-Python peer")
    p.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "drdm_bench_train"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--cases", default="0,1", help="0 = 2D 128x128 batch 8, 1 = 3D 64^3 batch 1")
    p.add_argument("--ops", default="all")
    p.add_argument("--reps", type=int, default=5, help="timed calls per row (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2,
                   help="per case, run both programs this many times, alternating; keep each row's best")
    p.add_argument("--peer-memory-format", choices=["auto", "contiguous", "channels_last"], default="auto",
                   help="peer training-step layout on CPU; auto times both and keeps the faster")
    p.add_argument("--wait-idle", type=float, default=0,
                   help="before each program, wait up to this many seconds for the CPUs to go idle")
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--no-check", action="store_true")
    args = p.parse_args()

    if not os.access(args.bench, os.X_OK):
        sys.exit(f"run_train.py: {args.bench} is not an executable; build target drdm_bench_train first")
    peer = os.path.join(HERE, "peer_train.py")
    os.makedirs(args.out_dir, exist_ok=True)
    info = machine_info(args.python)
    info["threads"] = args.threads
    info["command"] = " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    info["other_jobs_at_start"] = other_jobs()

    checks = {} if args.no_check else cross_check(args.bench, args.python, peer, args.threads)
    if checks:
        with open(os.path.join(args.out_dir, "train_check.json"), "w") as f:
            json.dump(checks, f, indent=1)

    common = ["--threads", str(args.threads), "--device", args.device, "--ops", args.ops,
              "--rounds", str(args.reps), "--warmup", str(args.warmup)]
    programs = [("libdrdm", [args.bench, *common], {}, []),
                ("peer", [args.python, peer, *common, "--memory-format", args.peer_memory_format], {}, [])]
    for case in [int(c) for c in args.cases.split(",") if c.strip()]:
        for rnd in range(max(1, args.rounds)):
            for name, cmd, store, raw in (programs if rnd % 2 == 0 else programs[::-1]):
                busy_before = wait_idle(args.wait_idle) if args.wait_idle > 0 else None
                rows, others = measured_run(cmd + ["--case", str(case)])
                for r in rows:
                    r.update(round=rnd, cpu_busy_before=busy_before, others_cpu=others)
                    raw.append(r)
                    k = (r["op"], r["size"], r["batch"], r["device"])
                    if k not in store or r["ms"] < store[k]["ms"]:
                        store[k] = r
    info["other_jobs_at_end"] = other_jobs()
    (_, _, ours, raw_ours), (_, _, theirs, raw_peer) = programs
    for fname, raw in (("train_libdrdm.jsonl", raw_ours), ("train_peer.jsonl", raw_peer)):
        with open(os.path.join(args.out_dir, fname), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in raw)

    keys = sorted(set(ours) | set(theirs),
                  key=lambda k: (k[3] != "cpu", k[3], OPS.index(k[0]), len(k[1].split("x")), k[2]))
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
        lines.append(f"| {OP_LABEL.get(op, op)} | {size}, batch {batch} | {dev} | {fmt_ms(a)} | "
                     f"{fmt_ms(b)} | {ratio} | {layout} |")
    others = [r.get("others_cpu") for r in list(ours.values()) + list(theirs.values())]
    others = [o for o in others if o is not None]
    info["max_others_cpu_kept_rows"] = max(others) if others else None
    busy = info["other_jobs_at_start"] or info["other_jobs_at_end"]
    md = [
        "# Training step and sampler: libdrdm vs PyTorch-in-Python",
        "",
        f"- command: `{info['command']}`",
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} cores, {info['cpu_model']}"
        + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"),
        f"- threads: {args.threads}; torch {info['torch']}; Python {info['python']}",
        f"- per row: {args.reps} timed calls after {args.warmup} warm-up calls (median; sampler with "
        f"mixed t: mean over the 8-row t table); best of {max(1, args.rounds)} rounds, the programs alternating",
        "- CPU time taken by other processes while the kept rows ran: max "
        + (f"{max(others):.0%}" if others else "unknown"),
        ("- **other jobs were running (" + "; ".join(j.split(" ", 1)[1][:60] for j in busy[:3])
         + "): these timings are disturbed and must be re-measured on an idle machine**") if busy else
        "- no other heavy jobs seen at start and end",
        "- ratio = PyTorch-Python ms / libdrdm ms (> 1: libdrdm faster)",
        "",
        *lines,
        "",
    ]
    if checks:
        md += check_md(checks)
    text = "\n".join(md)
    with open(os.path.join(args.out_dir, "train.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out_dir, "train_machine.json"), "w") as f:
        json.dump(info, f, indent=2)
    print(text)
    bad = check_failures(checks) if checks else []
    if bad:
        print("cross-check FAILED for: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
