#!/usr/bin/env python3
"""seg_fewshot run, reg_synth run and drdm_train at hostile moments (issue 26, items 9-11, 15, 16,
18, 19), on tiny images written by SimpleITK: signals during bank generation, checks that must come
before the first write, config values LibTorch would reject without naming the key, a rerun through
another spelling of the output folder, and the wording of errors. Each section names its item."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

from cli_util import check, finish, run, start  # noqa: E402

ARGS = None


def exe(name):
    return os.path.abspath(os.path.join(ARGS.bin_dir, name))


def w(*parts):
    return os.path.join(ARGS.workdir, *parts)


def write_case(folder, name, shift, size=(40, 48), slices=2):
    """A disc (3) in a ring (2) and a blob (1): folder/images/name.nii.gz, folder/labels/name.nii.gz.
    slices=0 writes 2D images."""
    h, wd = size
    yy, xx = np.mgrid[0:h, 0:wd]
    r = np.sqrt((yy - h / 2 - shift) ** 2 + (xx - wd / 2 - shift) ** 2)
    lab = np.zeros((h, wd), np.uint8)
    lab[r < h / 4] = 2
    lab[r < h / 6] = 3
    lab[(abs(yy - h / 2) < 4) & (abs(xx - wd * 0.8) < 3)] = 1
    if slices:
        lab = np.repeat(lab[None], slices, 0)
    img = (lab * 60 + 20 + np.random.default_rng(shift + 5).random(lab.shape) * 10).astype(np.float32)
    for arr, sub in ((img, "images"), (lab, "labels")):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((1.4, 1.3, 7.5)[: arr.ndim])
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        sitk.WriteImage(im, os.path.join(folder, sub, name + ".nii.gz"))


def seg_data(name):
    """Subjects 1, 2, 21 (pool) and 10, 30 (test) of seg-acdc-cpu.json's split, two frames each."""
    d = w(name)
    for s in (1, 2, 21, 10, 30):
        for f in (1, 2):
            write_case(d, f"patient{s:03d}_frame0{f}", s % 5 - 2)
    return d


def seg_cmd(data, out, *sets):
    tiny = [f"data.images={data}/images", f"data.labels={data}/labels", "data.size=[32,32]",
            "unet.widths=[4,8]", "train.steps=2", "train.warmup_steps=0", "train.batch_size=2",
            "train.device=cpu", "train.threads=1", "grid.subjects=[1]", 'grid.augmentations=["none"]']
    return [exe("seg_fewshot"), "run", "--config", os.path.join(ARGS.configs, "seg-acdc-cpu.json"),
            "--output", out, "--no-progress", "--set"] + tiny + list(sets)


def reg_data(name):
    """Four 2D images 32 x 32 with labels 1..3: 2 training and 2 test images."""
    d = w(name)
    for i in range(4):
        write_case(d, f"case{i}", i - 1, size=(32, 32), slices=0)
    return d


def reg_cmd(data, out, *sets):
    tiny = [f"data.images={data}/images", f"data.labels={data}/labels", "data.size=[32,32]",
            "data.test_pairs=2", "synthetic.pairs_per_image=1", "synthetic.drdm_levels=[[1, 2]]",
            "synthetic.mrbs=[[4, 2.0]]", 'grid.pretrain=["mrbs"]', "grid.finetune=[true]"]
    for phase in ("pretrain", "finetune"):
        tiny += [f"{phase}.steps=2", f"{phase}.batch_size=1", f"{phase}.warmup_steps=0",
                 f'{phase}.device="cpu"', f"{phase}.threads=1", f"{phase}.checkpoint_every=1"]
    return [exe("reg_synth"), "run", "--config", os.path.join(ARGS.configs, "reg-jsrt-cpu.json"),
            "--output", out, "--no-progress", "--set"] + tiny + list(sets)


def refused(cmd, what, names, absent, cwd=None):
    """cmd exits 1 naming every string of `names`, and the paths `absent` do not exist afterwards."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, cwd=cwd)
    missing = [n for n in names if n not in p.stderr]
    left = [a for a in absent if os.path.exists(a)]
    check(p.returncode == 1 and not missing and not left,
          f"{what}: exit {p.returncode} (want 1), names {names} (missing {missing}), leaves {left} "
          f"({p.stderr.strip()[-260:]})")
    return p.stderr


# -- item 16: values LibTorch refuses without a key, refused by the config naming the key -------------

def config_bounds(seg, reg):
    refused(seg_cmd(seg, w("lr"), "train.lr=1e38"), "seg_fewshot train.lr=1e38", ["train.lr", "(0, 10]"],
            [w("lr")])
    refused(reg_cmd(reg, w("lr"), "pretrain.lr=1e38"), "reg_synth pretrain.lr=1e38", ["pretrain.lr"], [w("lr")])
    refused([exe("drdm_train"), "-c", os.path.join(ARGS.configs, "cardiac2d-cpu.json"), "-o", w("lr"),
             "--set", "train.lr=1e38"], "drdm_train train.lr=1e38", ["train.lr"], [w("lr")])
    refused(seg_cmd(seg, w("levels"), 'grid.augmentations=["drdm"]', "drdm.levels=[10000]"),
            "seg_fewshot drdm.levels=[10000]", ["drdm.levels", "10000", "cardiac2d"], [w("levels")])
    refused(reg_cmd(reg, w("levels"), 'grid.pretrain=["drdm"]', "synthetic.drdm_levels=[[1, 10000]]"),
            "reg_synth synthetic.drdm_levels=[[1, 10000]]", ["synthetic.drdm_levels", "10000"], [w("levels")])


# -- item 19: every check before the first write --------------------------------------------------------

def checks_before_writing(seg, reg):
    bad = seg_data("seg_bad")
    with open(f"{bad}/images/patient030_frame02.nii.gz", "r+b") as f:
        f.truncate(200)  # a test image: read only at evaluation before the fix
    refused(seg_cmd(bad, w("seg_bad_out")), "seg_fewshot run with a truncated test image",
            ["patient030_frame02.nii.gz"], [w("seg_bad_out")])
    refused(seg_cmd(seg, f"{seg}/images/out"), "seg_fewshot run --output inside data.images",
            ["data.images", "out"], [f"{seg}/images/out"])
    os.symlink(f"{reg}/labels", w("reg_labels_link"))
    refused(reg_cmd(reg, w("reg_labels_link", "out")), "reg_synth run --output inside data.labels (via a link)",
            ["data.labels"], [f"{reg}/labels/out"])


# -- item 9: signals during bank generation --------------------------------------------------------------

def interrupt_when(cmd, ready, sig, want_rc, what, absent):
    """Starts cmd, waits until ready() (at most 120 s), sends sig; it must exit want_rc within 20 s and
    leave none of `absent`."""
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.time() + 120
    while time.time() < end and p.poll() is None and not ready():
        time.sleep(0.1)
    time.sleep(1.5)
    p.send_signal(sig)
    t0 = time.time()
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        err += "(killed by the test: still running 20 s after the signal)"
    left = [a for a in absent if os.path.exists(a)]
    check(p.returncode == want_rc and not left and "interrupted" in err,
          f"{what}: exit {p.returncode} (want {want_rc}) {time.time() - t0:.1f} s after the signal, "
          f"leaves {left} ({err.strip()[-200:]})")


def signals_during_banks(seg, reg):
    out = w("sig_reg")
    interrupt_when(reg_cmd(reg, out, "synthetic.pairs_per_image=100000"),
                   lambda: os.path.exists(f"{out}/.drdm.lock"), signal.SIGTERM, 143,
                   "SIGTERM while reg_synth makes 400000 MRBS pairs", [f"{out}/bank-mrbs"])
    out = w("sig_seg")
    interrupt_when(seg_cmd(seg, out, 'grid.augmentations=["drdm"]', "drdm.fields_per_slice=5000",
                           "drdm.batch=4"),
                   lambda: os.path.exists(f"{out}/config.json"), signal.SIGINT, 130,
                   "SIGINT while seg_fewshot makes a DRDM bank of 20000 fields", [f"{out}/banks"])


# -- item 15: a rerun does not depend on how --output was spelled, nor on where the folder is -----------

def rerun_elsewhere(reg):
    cmd = lambda out: reg_cmd(reg, out)  # noqa: E731
    p = subprocess.run(cmd("y1"), cwd=ARGS.workdir, capture_output=True, text=True, timeout=300)
    check(p.returncode == 0, "reg_synth run --output y1 (relative) " + p.stderr[-300:])
    if p.returncode != 0:
        return
    os.remove(w("y1", "mrbs-finetuned", "results.json"))  # as a kill after fine-tuning, before scoring
    p = subprocess.run(cmd(w("y1")), capture_output=True, text=True, timeout=300)
    check(p.returncode == 0 and "nothing to do" in p.stderr,
          f"rerun with --output $PWD/y1 resumes the finished fine-tuning (rc {p.returncode}) {p.stderr[-300:]}")
    shutil.copytree(w("y1"), w("y2"))
    shutil.rmtree(w("y1"))
    os.remove(w("y2", "mrbs-finetuned", "results.json"))
    p = subprocess.run(cmd("y2"), cwd=ARGS.workdir, capture_output=True, text=True, timeout=300)
    check(p.returncode == 0 and "nothing to do" in p.stderr and os.path.exists(w("y2", "pair.png")),
          f"rerun of a moved copy (y1 removed) resumes and draws pair.png (rc {p.returncode}) {p.stderr[-300:]}")
    if p.returncode == 0:
        rows = json.load(open(w("y2", "results.json")))["rows"]
        check(all(r["model"] == "" or r["model"].startswith("y2/") for r in rows),
              f"results.json names the models where they are now {[r['model'] for r in rows]}")


# -- item 18: wording ---------------------------------------------------------------------------------------

class FullDisk:
    """A 48 KiB tmpfs at `path` (filled to `free` bytes), or, where mount is not allowed, a file size
    limit on the child (the reason then reads "File too large")."""

    def __init__(self, path, free=4096):
        os.makedirs(path)
        self.path = path
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", path],
                                      capture_output=True).returncode == 0
        if self.mounted:
            with open(os.path.join(path, "fill"), "wb") as f:
                f.write(b"\0" * (48 * 1024 - free))
        self.reason = "No space left on device" if self.mounted else "File too large"
        print("full disk: " + ("a tmpfs" if self.mounted else "no mount permitted; RLIMIT_FSIZE instead"))

    def preexec(self):
        if not self.mounted:
            import resource
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    def run(self, cmd):
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, preexec_fn=self.preexec)
        return p.returncode, p.stderr

    def close(self):
        if self.mounted:
            subprocess.run(["umount", self.path])


def full_disk_wording(seg, reg):
    disk = FullDisk(w("full"))
    try:
        out = os.path.join(disk.path, "pred")
        rc, err = disk.run([exe("seg_fewshot"), "predict", "--model", "seg-cardiac2d", "--device", "cpu", "-q",
                            "--input", f"{seg}/images/patient001_frame01.nii.gz", "--output", out])
        check(rc == 1 and disk.reason in err and "patient001_frame01.nii.gz" in err,
              f"full disk under seg_fewshot predict's .nii.gz: exit {rc}, says '{disk.reason}' ({err.strip()[-200:]})")
        shards = w("shards")
        for i in range(2):
            rc, _, err = run([exe("drdm_deform"), "--model", "cardiac2d", "--device", "cpu", "-i", f"{reg}/images",
                              "-o", shards, "--levels", "2", "--samples", "1", "--shard", f"{i}/2", "-q",
                              "--no-progress"])
            check(rc == 0, f"drdm_deform --shard {i}/2 " + err[-200:])
        rc, err = disk.run([exe("drdm_deform"), "merge", shards, "-o", os.path.join(disk.path, "merged")])
        check(rc == 1 and disk.reason in err, f"full disk under drdm_deform merge -o: exit {rc}, says "
              f"'{disk.reason}' ({err.strip()[-200:]})")
    finally:
        disk.close()


def flipped_crc(seg):
    src = f"{seg}/labels/patient001_frame01.nii.gz"
    data = bytearray(open(src, "rb").read())
    check(len(data) < 2000, f"the label map is small ({len(data)} bytes): its header reaches the trailer")
    data[-8] ^= 0x01  # the CRC-32
    bad = w("crc", "patient001_frame01.nii.gz")
    os.makedirs(os.path.dirname(bad))
    open(bad, "wb").write(bytes(data))
    try:
        gzip.decompress(bytes(data))
        check(False, "Python's gzip refuses the flipped CRC too")
    except (OSError, EOFError, gzip.BadGzipFile):
        pass
    rc, _, err = run([exe("seg_fewshot"), "predict", "--model", "seg-cardiac2d", "--device", "cpu",
                      "--input", bad, "--output", w("crc_out")])
    check(rc == 1 and bad in err and "CRC" in err and "unknown format" not in err,
          f"a small .nii.gz with a flipped CRC is named as damaged, not of unknown format ({err.strip()[-200:]})")


def lock_names_a_live_holder(reg):
    """Shard 0 holds the folder (stopped), shard 1 runs and exits: a third run is refused without
    naming the exited shard as the holder."""
    out = w("locked")
    base = [exe("drdm_deform"), "--model", "cardiac2d", "--device", "cpu", "-i", f"{reg}/images", "-o", out,
            "--levels", "2", "--samples", "1", "-q", "--no-progress"]
    first = subprocess.Popen(base + ["--shard", "0/2"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = os.path.join(out, ".drdm.lock")
    end = time.time() + 60
    while time.time() < end and not (os.path.exists(lock) and f"pid {first.pid}" in open(lock).read()):
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(base + ["--shard", "1/2"], capture_output=True, text=True, timeout=300)
        check(second.returncode == 0, "shard 1 runs beside the stopped shard 0 " + second.stderr[-200:])
        rc, _, err = run(base)
        check(rc == 1 and "in use" in err and "has exited" in err,
              f"an unsharded run is refused and the exited shard is not named as the holder ({err.strip()[-300:]})")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def engine_wording(reg):
    """seg_fewshot and reg_synth have no --resume; overflowing MRBS displacements are the config's fault."""
    rc, _, err = run(reg_cmd(reg, w("y2"), "pretrain.steps=1"))
    check(rc == 1 and "--resume" not in err and "pretrain.steps = 1" in err,
          f"reg_synth: fewer steps than the checkpoint: no --resume in the message ({err.strip()[-240:]})")
    refused(reg_cmd(reg, w("mrbs"), "synthetic.mrbs=[[4, 1e38]]"), "reg_synth synthetic.mrbs=[[4, 1e38]]",
            ["synthetic.mrbs", "[0, 1024]"], [w("mrbs")])


def main():
    global ARGS
    ARGS = start([("--models", "the models/ folder"), ("--configs", "the configs/ folder")])
    ARGS.workdir, ARGS.configs = os.path.abspath(ARGS.workdir), os.path.abspath(ARGS.configs)
    seg, reg = seg_data("seg"), reg_data("reg")
    config_bounds(seg, reg)
    checks_before_writing(seg, reg)
    signals_during_banks(seg, reg)
    rerun_elsewhere(reg)
    full_disk_wording(seg, reg)
    flipped_crc(seg)
    lock_names_a_live_holder(reg)
    engine_wording(reg)
    return finish("cli_hostile_runtime", ARGS.workdir)


if __name__ == "__main__":
    sys.exit(main())
