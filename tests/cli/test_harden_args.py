#!/usr/bin/env python3
"""Hardening of arguments, configs, run folders and soft labels (issue 12, items 6, 7, 10, 11, 13):
every bad option or config value is a clear error naming the option or key and writes nothing; a
training run folder is never silently overwritten or trained backwards; two runs into one output
folder are refused (the first finishes complete); soft label interpolation checks the class range
of every label file before any output. Inputs are written with SimpleITK / numpy; the lock holder
in some cases is this script (fcntl.flock), an implementation nobody here wrote."""
import fcntl
import json
import os
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

from cli_util import check, finish, run, start  # noqa: E402

LOCK = ".drdm.lock"


def expect_refusal(cmd, names, what, nothing_at=None, env=None):
    """cmd fails (rc != 0), its stderr holds every string in `names`, no C++ internals leak, and
    `nothing_at` (a path) was not created. `env`: variables added to the environment."""
    rc, _, err = run(cmd, env={**os.environ, **env} if env else None)
    missing = [n for n in names if n not in err]
    ok = rc != 0 and not missing and "bad_alloc" not in err and "terminate" not in err
    if nothing_at:
        ok = ok and not os.path.exists(nothing_at)
    check(ok, f"{what} -> rc {rc}, missing {missing}, stderr: {err.strip()[-220:]}")
    return err


def write_json(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def blocky(shape, seed):
    rng = np.random.default_rng(seed)
    coarse = rng.random(tuple(n // 4 + 1 for n in shape))
    arr = np.kron(coarse, np.ones([4] * len(shape)))[tuple(slice(0, n) for n in shape)]
    return (arr * 150 + 20).astype(np.float32)


def write_image(path, arr, like=None):
    img = sitk.GetImageFromArray(arr)
    if like is not None:
        img.CopyInformation(like)
    sitk.WriteImage(img, path)
    return img


def wait_for(path, proc, timeout=120):
    """Waits until `path` exists while `proc` runs; True when it appeared."""
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def hold_lock(folder, text, shared=False):
    """Takes the run lock of `folder` the way a running program does (flock on folder/.drdm.lock)."""
    os.makedirs(folder, exist_ok=True)
    f = open(os.path.join(folder, LOCK), "a+")
    fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    if text:
        f.truncate(0)
        f.write(text)
        f.flush()
    return f


# ---------------------------------------------------------------------------
def deform_cases(b, w):
    """Item 13 for drdm_deform: every option and config key."""
    deform = os.path.join(b, "drdm_deform")
    img = w("img.nii.gz")
    write_image(img, blocky((40, 36), 1))
    base = [deform, "-i", img, "--threads", "1", "--no-progress", "-q"]
    out = w("deform_bad")
    for args, names, what in [
        (["--batch", "-1"], ["--batch"], "--batch -1 (was silently 16)"),
        (["--batch", "0"], ["--batch"], "--batch 0"),
        (["--batch", "100000"], ["--batch"], "--batch 100000"),
        (["--seed", "-1"], ["--seed"], "--seed -1 (wrapped to 2^64-1)"),
        (["--levels", ""], ["--levels"], "--levels '' (silently the defaults)"),
        (["--levels", "3:2"], ["levels", "3:2", "pairs"], "--levels 3:2 in deform mode (dropped :2)"),
        (["--samples", "100000000000"], ["--samples"], "--samples 1e11 (std::bad_alloc)"),
        (["--samples", "0"], ["--samples"], "--samples 0"),
        (["--seed", "18446744073709551616"], ["--seed"], "--seed 2^64"),
        (["--threads", "-1"], ["--threads"], "--threads -1"),
        (["--slice-axis", "5"], ["--slice-axis"], "--slice-axis 5"),
        (["--slice-sigma", "nan"], ["--slice-sigma"], "--slice-sigma nan"),
        (["--shard", ""], ["--shard"], "--shard ''"),
        (["--model", ""], ["--model"], "--model '' (silently the default model)"),
        (["--device", ""], ["--device"], "--device ''"),
        (["--labels", ""], ["--labels"], "--labels ''"),
    ]:
        levels = [] if "--levels" in args else ["--levels", "2"]
        expect_refusal(base + ["-o", out] + levels + args, names, "drdm_deform " + what, out)
    expect_refusal(base + ["-o", ""], ["--output"], "drdm_deform -o ''")
    cfg = lambda name, text: write_json(w(name), text)  # noqa: E731
    for name, text, names, what in [
        ("c_frac.json", '{"samples": 1.7}', ["c_frac.json", "samples", "1.7"], "config samples 1.7 (became 1)"),
        ("c_huge.json", '{"samples": 100000000000}', ["c_huge.json", "samples"], "config samples 1e11"),
        ("c_seed.json", '{"seed": -1}', ["c_seed.json", "seed"], "config seed -1"),
        ("c_batch.json", '{"batch": -1}', ["c_batch.json", "batch"], "config batch -1"),
        ("c_dup.json", '{"samples": 1, "samples": 3}', ["c_dup.json", "duplicate", "samples"],
         "config with a duplicate key"),
        ("c_levels.json", '{"levels": [2.5]}', ["c_levels.json", "levels"], "config levels [2.5]"),
        ("c_pairs.json", '{"levels": "3:2"}', ["levels", "3:2"], "config levels 3:2 in deform mode"),
    ]:
        expect_refusal([deform, "-i", img, "-o", out, "-q", "--config", cfg(name, text)], names,
                       "drdm_deform " + what, out)


def tool_cases(b, w):
    """Item 13 for drdm_warp, drdm_field_stats, drdm_random_field, drdm_check_recovery."""
    warp, stats, rnd, rec = (os.path.join(b, n) for n in
                             ("drdm_warp", "drdm_field_stats", "drdm_random_field", "drdm_check_recovery"))
    img = write_image(w("ref.nii.gz"), blocky((20, 24), 2))
    field = sitk.GetImageFromArray(np.zeros((20, 24, 2), np.float32), isVector=True)
    field.CopyInformation(img)
    sitk.WriteImage(field, w("zero_field.nii.gz"))
    expect_refusal([rnd, "-r", w("ref.nii.gz"), "-o", w("rf.nii.gz"), "--seed", "-1"], ["--seed"],
                   "drdm_random_field --seed -1", w("rf.nii.gz"))
    for amp in ("nan", "inf", "-1"):
        expect_refusal([rnd, "-r", w("ref.nii.gz"), "-o", w("rf.nii.gz"), "--amplitude", amp], ["--amplitude"],
                       f"drdm_random_field --amplitude {amp}", w("rf.nii.gz"))
    expect_refusal([rnd, "-r", w("ref.nii.gz"), "-o", ""], ["--output"], "drdm_random_field -o ''")
    for level in ("0", "10", "fast"):
        expect_refusal([rnd, "-r", w("ref.nii.gz"), "-o", w("rf.nii.gz")], ["DRDM_GZIP_LEVEL", level],
                       f"DRDM_GZIP_LEVEL={level} drdm_random_field", w("rf.nii.gz"), env={"DRDM_GZIP_LEVEL": level})
    expect_refusal([warp, "-i", w("ref.nii.gz"), "-f", w("zero_field.nii.gz"), "-o", w("wp.nii.gz"),
                    "--preview", ""], ["--preview"], "drdm_warp --preview ''", w("wp.nii.gz"))
    expect_refusal([warp, "-i", w("ref.nii.gz"), "-f", w("zero_field.nii.gz"), "-o", ""], ["--output"],
                   "drdm_warp -o ''")
    expect_refusal([stats, "-f", w("zero_field.nii.gz"), "--json", ""], ["--json"], "drdm_field_stats --json ''")
    expect_refusal([stats, "-f", w("zero_field.nii.gz"), "--jacobian-map", ""], ["--jacobian-map"],
                   "drdm_field_stats --jacobian-map ''")
    expect_refusal([rec, "-m", "cardiac2d", "-d", w(""), "--seed", "-1"], ["--seed"], "drdm_check_recovery --seed -1")
    expect_refusal([rec, "-m", "cardiac2d", "-d", w(""), "--levels", ""], ["--levels"],
                   "drdm_check_recovery --levels ''")
    expect_refusal([rec, "-m", "cardiac2d", "-d", w(""), "--levels", "0"], ["--levels"],
                   "drdm_check_recovery --levels 0")


# ---------------------------------------------------------------------------
def soft_label_cases(b, w):
    """Item 11: soft label interpolation checks the class range of every label file up front."""
    warp, deform = os.path.join(b, "drdm_warp"), os.path.join(b, "drdm_deform")
    img = write_image(w("s_img.nii.gz"), blocky((12, 10), 3))
    field = sitk.GetImageFromArray(np.full((12, 10, 2), 0.3, np.float32), isVector=True)
    field.CopyInformation(img)
    sitk.WriteImage(field, w("s_field.nii.gz"))
    for value, dtype in ((-1, np.int16), (70000, np.int32)):
        lab = np.zeros((12, 10), dtype)
        lab[3:6, 2:5] = value
        name = f"s_lab_{value}.nii.gz"
        write_image(w(name), lab, img)
        out = w(f"s_out_{value}.nii.gz")
        expect_refusal([warp, "-i", w(name), "-f", w("s_field.nii.gz"), "-o", out, "--labels", "--label-mode", "soft"],
                       [name, str(value), "nearest"], f"drdm_warp soft labels with class {value}", out)
        rc, _, err = run([warp, "-i", w(name), "-f", w("s_field.nii.gz"), "-o", out, "--labels"])
        check(rc == 0, f"drdm_warp nearest labels with class {value} still work ({err.strip()[-120:]})")
    # drdm_deform on a folder: the bad label file is the last case; nothing at all is written.
    os.makedirs(w("s_imgs"))
    os.makedirs(w("s_labs"))
    for i, name in enumerate(("a", "b", "c")):
        im = write_image(w("s_imgs", name + ".nii.gz"), blocky((40, 36), 10 + i))
        lab = (blocky((40, 36), 20 + i) > 90).astype(np.int32)
        if name == "c":
            lab[5, 5] = 70000
        write_image(w("s_labs", name + ".nii.gz"), lab, im)
    out = w("s_deform")
    expect_refusal([deform, "-i", w("s_imgs"), "-l", w("s_labs"), "-o", out, "--label-interpolation", "soft",
                    "--levels", "2", "--samples", "1", "--threads", "1", "--no-progress", "-q"],
                   [os.path.join("s_labs", "c.nii.gz"), "70000", "nearest"],
                   "drdm_deform --label-interpolation soft with a class 70000 in the last case: no output", out)


# ---------------------------------------------------------------------------
def train_config(w, data_dir, name="tiny.json", **train):
    t = {"batch_size": 2, "steps": 2, "checkpoint_every": 1, "preview_every": 0, "log_every": 1, "device": "cpu",
         "threads": 1, "prefetch": 0}
    t.update(train)
    with open(w(name), "w") as f:
        json.dump({"name": "tiny", "data": {"folders": [data_dir], "size": [16, 16], "min_foreground": 0},
                   "sampler": {"control": 16, "levels": 2, "integrated_max": 10}, "train": t}, f)
    return w(name)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def train_cases(b, w):
    """Items 6, 10 and 13 for drdm_train."""
    train = os.path.join(b, "drdm_train")
    data_dir = w("t_data")
    os.makedirs(data_dir)
    for i in range(4):
        write_image(os.path.join(data_dir, f"case{i}.nii.gz"), blocky((24, 24), 30 + i))
    cfg = train_config(w, data_dir)
    run_dir = w("t_run")
    rc, out, err = run([train, "-c", cfg, "-o", run_dir, "--no-progress", "-q"])
    check(rc == 0, f"drdm_train: a tiny run ({err.strip()[-200:]})")
    if rc != 0:
        return
    before = {n: read_bytes(os.path.join(run_dir, n)) for n in ("config.json", "checkpoint.pt", "metrics.jsonl")}
    # Item 6: no silent restart over a run, no resume with fewer steps than the checkpoint.
    expect_refusal([train, "-c", cfg, "-o", run_dir, "--no-progress", "-q"], ["--resume", run_dir],
                   "drdm_train without --resume on a finished run")
    expect_refusal([train, "-c", cfg, "-o", run_dir, "--no-progress", "-q", "--resume", "--set", "train.steps=1"],
                   ["train.steps = 1", "the 2 steps"], "drdm_train --resume --set train.steps=1 below the checkpoint's 2")
    after = {n: read_bytes(os.path.join(run_dir, n)) for n in before}
    check(after == before, "the refused runs left config.json, checkpoint.pt and metrics.jsonl untouched")
    check(not os.path.exists(os.path.join(run_dir, LOCK)), "the lock file is gone after the runs")
    # Item 10: a data error leaves no folder behind.
    os.makedirs(w("t_bad_data"))
    with open(w("t_bad_data", "broken.nii.gz"), "wb") as f:
        f.write(os.urandom(500))
    bad_cfg = train_config(w, w("t_bad_data"), "bad_data.json")
    expect_refusal([train, "-c", bad_cfg, "-o", w("t_bad_run"), "--no-progress", "-q"], ["broken.nii.gz"],
                   "drdm_train with a corrupt data file writes no folder", w("t_bad_run"))
    empty_cfg = train_config(w, w("t_no_such_folder"), "missing_data.json")
    expect_refusal([train, "-c", empty_cfg, "-o", w("t_bad_run"), "--no-progress", "-q"], ["t_no_such_folder"],
                   "drdm_train with a missing data folder writes no folder", w("t_bad_run"))
    # Item 13: configs and --set.
    fresh = w("t_never")
    expect_refusal([train, "-c", cfg, "-o", fresh, "--set", "train.steps=-5"], ["--set train.steps=-5", "train.steps"],
                   "an error in a --set value names the --set, not the file", fresh)
    expect_refusal([train, "-c", write_json(w("t_dup.json"), '{"train": {"steps": 2, "steps": 3}}'), "-o", fresh],
                   ["t_dup.json", "duplicate", "train.steps"], "a duplicate key in a train config", fresh)
    expect_refusal([train, "-c", cfg, "-o", fresh, "--set", "data.size=[16.5, 16]"], ["data.size"],
                   "a non-integral list entry (data.size 16.5)", fresh)
    expect_refusal([train, "-c", write_json(w("t_seed.json"), '{"train": {"seed": 18446744073709551615}}'),
                    "-o", fresh], ["train.seed"], "train.seed 2^64-1", fresh)
    expect_refusal([train, "-c", cfg, "-o", ""], ["--output"], "drdm_train -o ''")


# ---------------------------------------------------------------------------
def concurrent_cases(b, w, data, configs):
    """Item 7: one run per output folder."""
    deform, train = os.path.join(b, "drdm_deform"), os.path.join(b, "drdm_train")
    img = w("c_img.nii.gz")
    write_image(img, blocky((48, 40), 5))
    out = w("c_deform")
    args = ["-i", img, "-o", out, "--threads", "1", "--no-progress", "-q", "--levels", "20", "--batch", "2"]
    first = subprocess.Popen([deform] + args + ["--samples", "12"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    appeared = wait_for(os.path.join(out, LOCK), first)
    expect_refusal([deform] + args + ["--samples", "1", "--seed", "9"], [out, "in use", f"pid {first.pid}"],
                          "a second drdm_deform into the same folder is refused, naming the folder and holder")
    still = first.poll() is None
    _, e1 = first.communicate(timeout=600)
    check(appeared and still, f"the first drdm_deform held its lock while the second was refused "
                              f"(appeared {appeared}, running {still})")
    check(first.returncode == 0, f"the first drdm_deform finishes ({e1.strip()[-200:]})")
    manifest = os.path.join(out, "manifest.json")
    if first.returncode == 0 and os.path.exists(manifest):
        m = json.load(open(manifest))
        files = [f for s in m["samples"] for f in s["outputs"].values()]
        check(len(m["samples"]) == 12 and all(os.path.exists(os.path.join(out, f)) for f in files)
              and m["options"]["seed"] == 0, "the first run's manifest is complete: 12 samples, all files there")
        check(LOCK not in open(manifest).read(), "the manifest does not list the lock file")
    check(not os.path.exists(os.path.join(out, LOCK)), "the lock file is removed when the run ends")

    # Two drdm_train into one folder.
    data_dir = w("c_data")
    os.makedirs(data_dir)
    for i in range(4):
        write_image(os.path.join(data_dir, f"case{i}.nii.gz"), blocky((24, 24), 40 + i))
    cfg = train_config(w, data_dir, "c_train.json", steps=150, checkpoint_every=50)
    run_dir = w("c_train")
    first = subprocess.Popen([train, "-c", cfg, "-o", run_dir, "--no-progress", "-q"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    appeared = wait_for(os.path.join(run_dir, LOCK), first)
    expect_refusal([train, "-c", cfg, "-o", run_dir, "--no-progress", "-q"], [run_dir, "in use", f"pid {first.pid}"],
                   "a second drdm_train into the same folder is refused")
    still = first.poll() is None
    _, e1 = first.communicate(timeout=600)
    check(appeared and still and first.returncode == 0, f"the first drdm_train ran on and finished ({e1[-200:]})")
    if first.returncode == 0:
        rows = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
        check([r["step"] for r in rows] == list(range(1, 151)), "its metrics.jsonl has every step once")

    # Holders simulated with flock: shards share a folder; seg_fewshot and reg_synth refuse.
    sh = w("c_shards")
    holder = hold_lock(sh, "", shared=True)
    shard_lock = open(os.path.join(sh, ".drdm-shard-0-of-2.lock"), "a+")
    fcntl.flock(shard_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    shard_lock.write("drdm_deform, pid 4242 on testhost\n")
    shard_lock.flush()
    base = [deform, "-i", w("c_imgs"), "-o", sh, "--threads", "1", "--no-progress", "-q", "--levels", "2",
            "--samples", "1"]
    os.makedirs(w("c_imgs"))
    for i in range(2):
        write_image(w("c_imgs", f"x{i}.nii.gz"), blocky((40, 36), 50 + i))
    rc, _, err = run(base + ["--shard", "1/2"])
    check(rc == 0 and os.path.exists(os.path.join(sh, "manifest-shard-1-of-2.json")),
          f"shard 1/2 runs beside a running shard 0/2 ({err.strip()[-160:]})")
    expect_refusal(base + ["--shard", "0/2"], ["in use", "pid 4242"], "a second shard 0/2 is refused")
    expect_refusal(base, ["in use"], "an unsharded run into a folder that shards use is refused")
    shard_lock.close()
    holder.close()
    for prog, cfg_name, sets in (
            # The data folders are checked before the lock is taken (issue 23 item 9).
            ("seg_fewshot", "seg-acdc-cpu.json", [f"data.images={data}/acdc/images", f"data.labels={data}/acdc/labels"]),
            ("reg_synth", "reg-jsrt-cpu.json", [f"data.images={data}/jsrt/images", f"data.labels={data}/jsrt/labels",
                                                "data.size=[64,64]", "data.test_pairs=2",
                                                'data.include=["JPCLN00[1-3]*", "JPCNN08[0-2]*"]'])):
        folder = w("c_" + prog)
        held = hold_lock(folder, f"{prog} test holder, pid 777 on elsewhere\n")
        cmd = [os.path.join(b, prog), "run", "--config", os.path.join(configs, cfg_name), "--output", folder,
               "--no-progress"] + (["--set"] + sets if sets else [])
        expect_refusal(cmd, [folder, "in use", "pid 777"], f"{prog} run into a locked folder is refused")
        check(sorted(os.listdir(folder)) == [LOCK], f"{prog}: nothing written into the locked folder")
        held.close()


def seg_reg_cases(b, w, configs):
    """Item 13 for seg_fewshot and reg_synth: --set errors name the --set; bad options."""
    seg, reg = os.path.join(b, "seg_fewshot"), os.path.join(b, "reg_synth")
    out = w("sr_never")
    expect_refusal([seg, "run", "--config", os.path.join(configs, "seg-acdc-cpu.json"), "--output", out, "--set",
                    "train.steps=0"], ["--set train.steps=0", "train.steps"], "seg_fewshot: a bad --set value", out)
    expect_refusal([seg, "run", "--config", os.path.join(configs, "seg-acdc-cpu.json"), "--output", out, "--set",
                    "grid.seeds=[1.5]"], ["grid.seeds"], "seg_fewshot: grid.seeds [1.5]", out)
    expect_refusal([seg, "run", "--config", os.path.join(configs, "seg-acdc-cpu.json"), "--output", ""],
                   ["--output"], "seg_fewshot run --output ''")
    expect_refusal([seg, "evaluate", "--pred", w(""), "--truth", w(""), "--classes", "-1"], ["--classes"],
                   "seg_fewshot evaluate --classes -1")
    expect_refusal([reg, "run", "--config", os.path.join(configs, "reg-jsrt-cpu.json"), "--output", out, "--set",
                    "pretrain.steps=0"], ["--set pretrain.steps=0", "pretrain.steps"], "reg_synth: a bad --set value",
                   out)
    expect_refusal([reg, "run", "--config", os.path.join(configs, "reg-jsrt-cpu.json"), "--output", out, "--set",
                    "synthetic.drdm_levels=[[1.5, 2]]"], ["synthetic.drdm_levels"],
                   "reg_synth: synthetic.drdm_levels [[1.5, 2]] (became [[1, 2]])", out)
    expect_refusal([reg, "run", "--config", write_json(w("r_dup.json"), '{"data": {"seed": 1, "seed": 2}}'),
                    "--output", out], ["r_dup.json", "duplicate", "data.seed"], "reg_synth: a duplicate key", out)


def main():
    a = start([("--data", "the shared data folder (jsrt/)"), ("--configs", "the configs/ folder")])
    w = lambda *names: os.path.join(a.workdir, *names)  # noqa: E731
    t0 = time.time()
    deform_cases(a.bin_dir, w)
    tool_cases(a.bin_dir, w)
    soft_label_cases(a.bin_dir, w)
    train_cases(a.bin_dir, w)
    seg_reg_cases(a.bin_dir, w, a.configs)
    concurrent_cases(a.bin_dir, w, a.data, a.configs)
    print(f"({time.time() - t0:.0f} s)")
    return finish("cli harden args", a.workdir)


if __name__ == "__main__":
    sys.exit(main())
