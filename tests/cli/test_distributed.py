#!/usr/bin/env python3
"""Data-parallel drdm_train on c10d (issue 13), two Gloo ranks on the CPU.

- torchrun --no-python (the project's venv) with 2 ranks gives the weights and
  Adam state of one process with the same global batch, to float tolerance,
  for drdm_train, and for seg_fewshot's U-Net and reg_synth's VoxelMorph;
- SLURM's variables and a config master work the same way;
- resuming a 2-rank run with 1 process equals the uninterrupted run;
- failures, with processes started by hand (no agent to hide a hang): a killed
  rank, a rank that never comes, a wrong MASTER_PORT, a WORLD_SIZE mismatch,
  a global batch that does not split: every rank stops non-zero with a message
  within the timeout, and the checkpoint stays readable.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_util import check, finish, run, start  # noqa: E402

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(folder):
    os.makedirs(folder)
    for i in range(6):
        coarse = np.random.default_rng(i).random((7, 7))
        arr = (np.kron(coarse, np.ones((4, 4)))[:24, :24] * 150 + 20).astype(np.float32)
        sitk.WriteImage(sitk.GetImageFromArray(arr), os.path.join(folder, f"case{i}.nii.gz"))


def make_config(path, data, steps=4, batch=4):
    cfg = {"name": "tiny", "data": {"folders": [data], "size": [16, 16], "min_foreground": 0},
           "sampler": {"control": 16, "levels": 2, "integrated_max": 10},
           "train": {"batch_size": batch, "steps": steps, "lr": 1e-7, "checkpoint_every": 1, "preview_every": 2,
                     "log_every": 1, "device": "cpu", "threads": 1, "prefetch": 0}}
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def env_for(rank, size, port, **extra):
    e = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(size), RANK=str(rank),
             LOCAL_RANK=str(rank))
    e.update({k: str(v) for k, v in extra.items()})
    return e


def launch(cmd, env):
    return subprocess.Popen([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_all(procs, timeout):
    """(rc, stderr, seconds) of each process; kills what outlives `timeout`."""
    t0, out = time.time(), []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1, timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            err += "\n(killed by the test: still running after the timeout)"
        out.append((p.returncode, err, time.time() - t0))
    return out


def diff(tool, a, b):
    rc, out, err = run([tool, a, b])
    return json.loads(out) if rc == 0 else {"error": err}


def close(d, what, steps=4, lr=1e-7):
    """Float tolerance: the all-reduce sums in another order than one process.
    At a normal learning rate Adam amplifies that: a gradient at the rounding
    level can change sign, its update is a full lr, and the next gradients
    differ (after 4 steps at lr 1e-4 between 0.06 % and half of the weights
    were 1e-4 apart, depending on the build). So the runs compare at lr 1e-7,
    where the path stays put: Adam's moments (the gradients' history) equal to
    1e-4 absolute (observed 6e-6; they reach about 14), weights within 2 lr
    per step."""
    ok = "max_abs_diff" in d and d["adam_max_abs_diff"] <= 1e-4 and \
        d["changed"] <= 0.005 and d["max_abs_diff"] <= 2 * lr * steps
    check(ok, f"{what}: weights and Adam state equal to float tolerance ({d})")


def lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def equal_results(args, train, cfg, w):
    """2 ranks under torchrun == 1 process; SLURM variables + config master likewise."""
    one, two, slurm = w("one"), w("torchrun"), w("slurm")
    rc, _, err = run([train, "-c", cfg, "-o", one, "--no-progress", "-q"])
    check(rc == 0, "one process trains 4 steps " + err[-300:])
    port = free_port()
    rc, _, err = run([TORCHRUN, "--no-python", "--nproc-per-node", "2", "--master-port", port, train, "-c", cfg,
                      "-o", two, "--no-progress"], timeout=180)
    check(rc == 0, "torchrun --no-python --nproc-per-node 2 drdm_train succeeds " + err[-400:])
    if rc != 0:
        return one
    check("joined a world of 2 ranks" in err and "backend gloo" in err, "the world is logged (2 ranks, gloo)")
    close(diff(args.diff_tool, f"{one}/checkpoint.pt", f"{two}/checkpoint.pt"), "2 ranks (torchrun) vs 1 process")
    m1, m2 = lines(f"{one}/metrics.jsonl"), lines(f"{two}/metrics.jsonl")
    check(len(m2) == 4, f"rank 0 alone wrote metrics.jsonl: {len(m2)} lines for 4 steps")
    check(all(abs(x["loss"] - y["loss"]) <= 1e-5 * (1 + abs(x["loss"])) and abs(x["t_mean"] - y["t_mean"]) < 1e-9
              for x, y in zip(m1, m2)), "the logged loss and t_mean are the global batch's")
    check(sorted(os.listdir(f"{two}/previews")) == sorted(os.listdir(f"{one}/previews")), "previews from rank 0")
    # SLURM's variables, the master from the config (train.dist_master).
    port = free_port()
    procs = []
    for r in range(2):
        e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        e.update(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r))
        procs.append(launch([train, "-c", cfg, "-o", slurm, "--no-progress", "-q", "--set",
                             f"train.dist_master=127.0.0.1:{port}"], e))
    res = wait_all(procs, 120)
    check(all(rc == 0 for rc, _, _ in res), "2 ranks from SLURM_PROCID / SLURM_NTASKS + train.dist_master " +
          " | ".join(err[-200:] for _, err, _ in res))
    close(diff(args.diff_tool, f"{one}/checkpoint.pt", f"{slurm}/checkpoint.pt"), "2 ranks (SLURM) vs 1 process")
    return one


def resume_other_size(args, train, cfg, one, w):
    """Steps 0-2 on 2 ranks, then 2-4 in one process: the uninterrupted run."""
    out, port = w("resume"), free_port()
    # Many small gradient buckets (10 kB): they must start in the same order on every rank.
    procs = [launch([train, "-c", cfg, "-o", out, "--no-progress", "-q", "--set", "train.steps=2"],
                    env_for(r, 2, port, DRDM_DIST_BUCKET_MB=0.01)) for r in range(2)]
    res = wait_all(procs, 120)
    check(all(rc == 0 for rc, _, _ in res), "2 ranks started by hand train 2 steps")
    rc, _, err = run([train, "-c", cfg, "-o", out, "--no-progress", "-q", "--resume"])
    check(rc == 0, "one process resumes the 2-rank run to 4 steps " + err[-300:])
    close(diff(args.diff_tool, f"{one}/checkpoint.pt", f"{out}/checkpoint.pt"), "resumed with another world size")
    check([m["step"] for m in lines(f"{out}/metrics.jsonl")] == [1, 2, 3, 4], "metrics.jsonl continues at step 3")


def kill_a_rank(args, train, cfg, w):
    out, port = w("killed"), free_port()
    long = [train, "-c", cfg, "-o", out, "--no-progress", "-q", "--set", "train.steps=100000"]
    procs = [launch(long, env_for(r, 2, port, DRDM_DIST_TIMEOUT=60)) for r in range(2)]
    end = time.time() + 120
    while time.time() < end and not (os.path.exists(f"{out}/metrics.jsonl") and
                                     len(lines(f"{out}/metrics.jsonl")) >= 3):
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    (rc, err, _), = wait_all(procs[:1], 90)
    procs[1].wait()
    check(rc not in (0, None) and time.time() - t0 < 30,
          f"killing rank 1 stops rank 0 non-zero in {time.time() - t0:.1f} s (rc {rc})")
    check("failed" in err and "rank" in err, "rank 0 says a rank is gone: " + err.strip()[-240:])
    d = diff(args.diff_tool, f"{out}/checkpoint.pt", f"{out}/checkpoint.pt")
    check("max_abs_diff" in d and d["step"][0] >= 3, f"the last checkpoint is readable ({d})")


def failures(args, train, cfg, w):
    # Only rank 0 of 2: the missing rank is named within the timeout.
    out = w("alone")
    t0 = time.time()
    (rc, err, _), = wait_all([launch([train, "-c", cfg, "-o", out, "--no-progress"],
                                     env_for(0, 2, free_port(), DRDM_DIST_TIMEOUT=3))], 60)
    check(rc == 1 and "rank 1 of 2 did not join within 3 s" in err and time.time() - t0 < 20,
          f"only rank 0 of 2: exit 1 in {time.time() - t0:.1f} s naming rank 1: " + err.strip()[-200:])
    check(not os.path.exists(out), "nothing was written")
    # A wrong MASTER_PORT on rank 1.
    good, bad = free_port(), free_port()
    procs = [launch([train, "-c", cfg, "-o", w("port"), "--no-progress"],
                    env_for(r, 2, good if r == 0 else bad, DRDM_DIST_TIMEOUT=3)) for r in range(2)]
    (rc0, err0, t_0), (rc1, err1, t_1) = wait_all(procs, 60)
    check(rc1 == 1 and "could not reach the master at 127.0.0.1:%d" % bad in err1 and t_1 < 20,
          "rank 1 with a wrong MASTER_PORT says it cannot reach the master: " + err1.strip()[-200:])
    check(rc0 == 1 and "rank 1 of 2 did not join" in err0 and t_0 < 20, "rank 0 names the rank that did not come")
    # WORLD_SIZE 2 on rank 0, 3 on rank 1.
    port = free_port()
    procs = [launch([train, "-c", cfg, "-o", w("size"), "--no-progress"],
                    env_for(r, 2 if r == 0 else 3, port, DRDM_DIST_TIMEOUT=10)) for r in range(2)]
    res = wait_all(procs, 60)
    check(all(rc == 1 and "WORLD_SIZE differs between ranks" in err and s < 20 for rc, err, s in res),
          "a WORLD_SIZE mismatch stops both ranks at once: " + " | ".join(e.strip()[-160:] for _, e, _ in res))
    # A global batch of 3 does not split over 2 ranks.
    port = free_port()
    procs = [launch([train, "-c", cfg, "-o", w("batch"), "--no-progress", "--set", "train.batch_size=3"],
                    env_for(r, 2, port, DRDM_DIST_TIMEOUT=10)) for r in range(2)]
    res = wait_all(procs, 60)
    check(all(rc == 1 and "train.batch_size = 3" in err and "world size 2" in err for rc, err, _ in res),
          "a batch that does not split is refused, naming train.batch_size")
    check(not os.path.exists(w("batch")), "and nothing was written")
    bad_env = dict(os.environ, RANK="1", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
    p = subprocess.run([train, "-c", cfg, "-o", w("env")], env=bad_env, capture_output=True, text=True)
    check(p.returncode == 1 and "RANK" in p.stderr and "[0, 0]" in p.stderr, "RANK outside [0, WORLD_SIZE) is named")


def world_of_one(args, train, cfg, one, w):
    """A launcher's world of size 1 (single-task Slurm job, RANK=0 WORLD_SIZE=1) without MASTER_ADDR runs as
    one process: the uninterrupted one-process result (issue 26, item 14)."""
    bare = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    for name, extra in (("slurm1", dict(SLURM_PROCID="0", SLURM_NTASKS="1")),
                        ("torchrun1", dict(RANK="0", WORLD_SIZE="1"))):
        p = subprocess.run([train, "-c", cfg, "-o", w(name), "--no-progress"], env=dict(bare, **extra),
                           capture_output=True, text=True, timeout=120)
        check(p.returncode == 0 and "a world of one rank" in p.stderr,
              f"{extra} without MASTER_ADDR trains as one process (rc {p.returncode}) {p.stderr[-200:]}")
        if p.returncode == 0:
            d = diff(args.diff_tool, f"{one}/checkpoint.pt", f"{w(name)}/checkpoint.pt")
            check(d.get("max_abs_diff") == 0 and d.get("adam_max_abs_diff") == 0, f"{name} == 1 process: {d}")


def one_and_two(program, cfg, sets, one, two, name):
    """`program run` as one process into `one`, then as 2 ranks started by hand into `two`."""
    rc, _, err = run([program, "run", "--config", cfg, "--output", one, "--no-progress"] + sets)
    check(rc == 0, f"{name}: one process " + err[-300:])
    port = free_port()
    procs = [launch([program, "run", "--config", cfg, "--output", two, "--no-progress"] + sets,
                    env_for(r, 2, port)) for r in range(2)]
    res = wait_all(procs, 180)
    check(all(rc == 0 for rc, _, _ in res), f"{name}: 2 ranks " + " | ".join(e[-200:] for _, e, _ in res))
    return one, two


def seg_equal(args, w):
    """seg_fewshot's U-Net: a one-cell grid on 2 ranks == 1 process, with the
    bce loss (a mean over samples; dice_ce's Dice is per rank's share)."""
    from test_seg_cli import write_case
    seg = os.path.join(args.bin_dir, "seg_fewshot")
    data = w("seg_data")
    for s in (1, 2, 21, 10, 30):
        for f in (1, 2):
            write_case(data, f"patient{s:03d}_frame0{f}", s % 5 - 2)
    tiny = ["--set", f"data.images={data}/images", f"data.labels={data}/labels", "data.size=[32,32]",
            "unet.widths=[4,8]", 'unet.loss="bce"', "train.steps=3", "train.warmup_steps=0", "train.batch_size=4",
            "train.device=cpu", "train.threads=1", "grid.subjects=[1]", 'grid.augmentations=["none"]']
    cfg = os.path.join(args.configs, "seg-acdc-cpu.json")
    one, two = one_and_two(seg, cfg, tiny, w("seg_one"), w("seg_two"), "seg_fewshot")
    close(diff(args.diff_tool, f"{one}/runs/none-n1-s0/model.pt", f"{two}/runs/none-n1-s0/model.pt"),
          "seg_fewshot U-Net, 2 ranks vs 1 process", steps=3, lr=c_lr(cfg))
    check(sorted(os.listdir(one)) == sorted(os.listdir(two)), "rank 0 wrote the grid's files, once")


def reg_equal(args, w):
    """reg_synth's VoxelMorph (pretraining on DRDM and MRBS pairs, fine-tuning):
    a smoke grid on real JSRT images, 2 ranks == 1 process."""
    reg = os.path.join(args.bin_dir, "reg_synth")
    jsrt = os.path.join(args.data, "jsrt")
    tiny = ["--set", f"data.images={jsrt}/images", f"data.labels={jsrt}/labels",
            'data.include=["JPCLN00[1-3]*", "JPCNN08[0-2]*"]', "data.size=[64, 64]",
            "synthetic.mrbs=[[4, 6.4], [8, 3.2]]", "data.test_pairs=2", "synthetic.pairs_per_image=1",
            "synthetic.drdm_levels=[[1, 2]]"]
    for phase in ("pretrain", "finetune"):
        tiny += [f"{phase}.steps=4", f"{phase}.batch_size=2", f"{phase}.warmup_steps=0", f"{phase}.lr=1e-7",
                 f"{phase}.lr_min=0", f'{phase}.device="cpu"', f"{phase}.threads=1"]
    cfg = os.path.join(args.configs, "reg-jsrt-cpu.json")
    one, two = one_and_two(reg, cfg, tiny, w("reg_one"), w("reg_two"), "reg_synth")
    for run_dir in ("pretrain-drdm", "pretrain-mrbs", "drdm-finetuned"):
        close(diff(args.diff_tool, f"{one}/{run_dir}/checkpoint.pt", f"{two}/{run_dir}/checkpoint.pt"),
              f"reg_synth {run_dir}, 2 ranks vs 1 process")
    same = sorted(os.path.relpath(os.path.join(r, f), one) for r, _, fs in os.walk(one) for f in fs) == \
        sorted(os.path.relpath(os.path.join(r, f), two) for r, _, fs in os.walk(two) for f in fs)
    check(same, "rank 0 wrote the same files as one process")


def stopped_in_time(proc, sig, want, what, limit=10):
    """Sends `sig` to `proc`: it must exit with `want` within `limit` seconds."""
    proc.send_signal(sig)
    t0 = time.time()
    (rc, err, _), = wait_all([proc], limit)
    check(rc == want and time.time() - t0 < limit,
          f"{what}: exit {rc} (want {want}) {time.time() - t0:.1f} s after the signal " + err.strip()[-160:])


def signals_while_waiting(train, cfg, w):
    """SIGINT / SIGTERM act at once while a rank waits for its peers, not when DRDM_DIST_TIMEOUT
    (60 s) ends (issue 26, item 11)."""
    rank0 = launch([train, "-c", cfg, "-o", w("sig0"), "--no-progress"],
                   env_for(0, 2, free_port(), DRDM_DIST_TIMEOUT=60))
    time.sleep(3)
    stopped_in_time(rank0, signal.SIGINT, 130, "rank 0 waiting for rank 1 to join, SIGINT")
    rank1 = launch([train, "-c", cfg, "-o", w("sig1"), "--no-progress"],
                   env_for(1, 2, free_port(), DRDM_DIST_TIMEOUT=60))
    time.sleep(3)
    stopped_in_time(rank1, signal.SIGTERM, 143, "rank 1 trying to reach an absent master, SIGTERM")
    out, port = w("sig2"), free_port()
    long = [train, "-c", cfg, "-o", out, "--no-progress", "-q", "--set", "train.steps=100000"]
    procs = [launch(long, env_for(r, 2, port, DRDM_DIST_TIMEOUT=60)) for r in range(2)]
    end = time.time() + 120
    metrics = f"{out}/metrics.jsonl"
    while time.time() < end and not (os.path.exists(metrics) and len(lines(metrics)) >= 2):
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGSTOP)
    time.sleep(1)
    stopped_in_time(procs[0], signal.SIGTERM, 143, "rank 0 in a collective with a stopped rank 1, SIGTERM")
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait()


def refused_on_both(cmd_of, env_extra, names, out, what):
    port = free_port()
    res = wait_all([launch(cmd_of(r), env_for(r, 2, port, DRDM_DIST_TIMEOUT=30, **env_extra)) for r in range(2)], 120)
    check(all(rc == 1 and all(n in err for n in names) for rc, err, _ in res),
          f"{what}: both ranks exit 1 naming {names}: " + " | ".join(e.strip()[-160:] for _, e, _ in res))
    check(not os.path.exists(out), f"{what}: nothing was written ({out})")


def checks_before_writing(args, train, cfg, w):
    """A batch that does not split over the ranks (seg_fewshot, reg_synth) and a bad
    DRDM_DIST_BUCKET_MB are refused before any folder is made (issue 26, item 19)."""
    from test_seg_cli import write_case
    data = w("seg_data")
    if not os.path.exists(data):
        for s in (1, 2, 21, 10, 30):
            for f in (1, 2):
                write_case(data, f"patient{s:03d}_frame0{f}", s % 5 - 2)
    seg = os.path.join(args.bin_dir, "seg_fewshot")
    sets = ["--set", f"data.images={data}/images", f"data.labels={data}/labels", "data.size=[32,32]",
            "unet.widths=[4,8]", "train.steps=2", "train.warmup_steps=0", "train.batch_size=3", "train.device=cpu",
            "grid.subjects=[1]", 'grid.augmentations=["none"]']
    out = w("seg_batch3")
    refused_on_both(lambda r: [seg, "run", "--config", os.path.join(args.configs, "seg-acdc-cpu.json"), "--output",
                               out, "--no-progress"] + sets, {}, ["train.batch_size = 3", "world size 2"], out,
                    "seg_fewshot train.batch_size=3 on 2 ranks")
    reg = os.path.join(args.bin_dir, "reg_synth")
    jsrt = os.path.join(args.data, "jsrt")
    out = w("reg_batch3")
    refused_on_both(lambda r: [reg, "run", "--config", os.path.join(args.configs, "reg-jsrt-cpu.json"), "--output",
                               out, "--no-progress", "--set", f"data.images={jsrt}/images",
                               f"data.labels={jsrt}/labels", 'data.include=["JPCLN00[1-3]*", "JPCNN08[0-2]*"]',
                               "data.size=[64, 64]", "pretrain.batch_size=3", 'pretrain.device="cpu"'],
                    {}, ["pretrain.batch_size = 3", "world size 2"], out, "reg_synth pretrain.batch_size=3 on 2 ranks")
    for value in ("abc", "-5"):
        out = w("bucket" + value)
        refused_on_both(lambda r: [train, "-c", cfg, "-o", out, "--no-progress"], {"DRDM_DIST_BUCKET_MB": value},
                        ["DRDM_DIST_BUCKET_MB", value], out, f"DRDM_DIST_BUCKET_MB={value}")


def c_lr(cfg):
    text = open(cfg).read()
    return json.loads(text)["train"]["lr"]


def main():
    args = start([("--diff-tool", "checkpoint_diff_tool"), ("--configs", "the configs/ folder"),
                  ("--data", "the shared data folder")])
    w = lambda *p: os.path.join(args.workdir, *p)  # noqa: E731
    train = os.path.join(args.bin_dir, "drdm_train")
    make_data(w("data"))
    cfg = make_config(w("tiny.json"), w("data"))
    one = equal_results(args, train, cfg, w)
    resume_other_size(args, train, cfg, one, w)
    world_of_one(args, train, cfg, one, w)
    kill_a_rank(args, train, cfg, w)
    failures(args, train, cfg, w)
    signals_while_waiting(train, cfg, w)
    checks_before_writing(args, train, cfg, w)
    seg_equal(args, w)
    reg_equal(args, w)
    return finish("cli_distributed", args.workdir)


if __name__ == "__main__":
    sys.exit(main())
