#!/usr/bin/env python3
"""Writing outputs safely (issue 12): a full disk, output = input, output locations checked
before any work, fsync around the atomic rename, SIGINT/SIGTERM, and stale temporaries.

A full disk is a small tmpfs when this process may mount one (root); otherwise the file
size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes writes fail the same way. Written
files are checked with Python's gzip / zlib and SimpleITK, not with our own readers.
"""
import gzip
import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

from cli_util import check, finish, run, start

FULL_DISK_BYTES = 48 * 1024  # a tmpfs this small; without mount, each file's size limit is 8 KiB
FILE_LIMIT_BYTES = 8 * 1024


def temporaries(folder):
    return [os.path.join(r, n) for r, ds, fs in os.walk(folder) for n in ds + fs if n.startswith(".drdm-tmp")]


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def complete_image(path):
    """True when SimpleITK reads `path` and, for gzip files, gzip inflates it to a valid end."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                f.read()  # raises on a cut-short stream or a CRC / length mismatch
        sitk.ReadImage(path)
        return True
    except Exception:  # noqa: BLE001
        return False


class FullDisk:
    """A folder where writes fail after FULL_DISK_BYTES: a tmpfs, or RLIMIT_FSIZE on the child."""

    def __init__(self, workdir):
        self.path = os.path.join(workdir, "full")
        os.makedirs(self.path)
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FULL_DISK_BYTES}", "tmpfs", self.path],
                                      capture_output=True).returncode == 0
        print(f"full disk: a tmpfs of {FULL_DISK_BYTES} bytes" if self.mounted else
              f"full disk: no mount permitted; RLIMIT_FSIZE of {FILE_LIMIT_BYTES} bytes per file instead "
              "(the --preview case needs the tmpfs and is not run)")

    def preexec(self):
        if not self.mounted:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT_BYTES, FILE_LIMIT_BYTES))

    def run(self, cmd):
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300,
                           preexec_fn=self.preexec)
        return p.returncode, p.stdout, p.stderr

    def clear(self):
        for name in os.listdir(self.path):
            full = os.path.join(self.path, name)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)

    def close(self):
        if self.mounted:
            subprocess.run(["umount", self.path])


def full_disk_tests(b, w):
    """Items 1 and 2: every write checked; a failed one is an error naming the file, no crash, no
    file under its final name, no temporary left."""
    disk = FullDisk(w(""))
    try:
        def expect_clean_failure(cmd, name, what):
            disk.clear()
            rc, _, err = disk.run(cmd)
            left = sorted(os.listdir(disk.path))
            check(rc == 1 and name in err and not left,
                  f"full disk: {what} -> exit {rc} (want 1), names {name}, leaves {left} ({err.strip()[-200:]})")

        for ext in (".nii.gz", ".mha", ".nii"):
            out = os.path.join(disk.path, "warped" + ext)
            expect_clean_failure([b("drdm_warp"), "-i", w("big.nii.gz"), "-f", w("big_field.nii.gz"), "-o", out],
                                 out, f"drdm_warp -o *{ext}")
            out = os.path.join(disk.path, "field" + ext)
            expect_clean_failure([b("drdm_random_field"), "-r", w("big.nii.gz"), "-o", out], out,
                                 f"drdm_random_field -o *{ext}")
        out = os.path.join(disk.path, "jac.nii.gz")
        expect_clean_failure([b("drdm_field_stats"), "-f", w("big_field.nii.gz"), "--jacobian-map", out], out,
                             "drdm_field_stats --jacobian-map")
        out = os.path.join(disk.path, "p.png")
        if disk.mounted:  # (a file size limit would stop -o first)
            expect_clean_failure([b("drdm_warp"), "-i", w("big.nii.gz"), "-f", w("big_field.nii.gz"), "-o",
                                  w("warped_ok.nii.gz"), "--preview", out], out,
                                 "drdm_warp --preview (ITK's PNG writer)")

        # drdm_deform fills the disk part-way through: a clean error, and every file it left under a
        # final name is complete.
        disk.clear()
        out = os.path.join(disk.path, "deformed")
        rc, _, err = disk.run([b("drdm_deform"), "-i", w("small2d.nii.gz"), "-o", out, "--levels", "3",
                               "--samples", "2", "--threads", "1", "--device", "cpu", "--no-progress", "-q"])
        files = [os.path.join(r, n) for r, _, fs in os.walk(disk.path) for n in fs]
        broken = [f for f in files if f.endswith((".nii.gz", ".png")) and not complete_image(f)]
        check(rc == 1 and "cannot write" in err,
              f"full disk: drdm_deform -> exit {rc} (want 1, not a crash) with a message ({err.strip()[-200:]})")
        check(not broken and not temporaries(disk.path),
              f"full disk: drdm_deform leaves no incomplete file {broken} and no temporary {temporaries(disk.path)}")
    finally:
        disk.close()


def same_file_tests(b, w):
    """Item 3: an output that is an input (same name, ./, a symlink or a hard link) is refused and
    the input is unchanged."""
    os.symlink(w("img.nii.gz"), w("img_link.nii.gz"))
    os.link(w("field.nii.gz"), w("field_hardlink.nii.gz"))
    here = os.path.relpath(w("img.nii.gz"))
    cases = [
        ([b("drdm_warp"), "-i", w("img.nii.gz"), "-f", w("field.nii.gz"), "-o", w("img.nii.gz")], "img.nii.gz",
         "drdm_warp -o = -i"),
        ([b("drdm_warp"), "-i", w("img.nii.gz"), "-f", w("field.nii.gz"), "-o", "./" + here], "img.nii.gz",
         "drdm_warp -o = ./-i"),
        ([b("drdm_warp"), "-i", w("img_link.nii.gz"), "-f", w("field.nii.gz"), "-o", w("img.nii.gz")],
         "img.nii.gz", "drdm_warp -o = the target of the -i symlink"),
        ([b("drdm_warp"), "-i", w("img.nii.gz"), "-f", w("field.nii.gz"), "-o", w("field.nii.gz")],
         "field.nii.gz", "drdm_warp -o = -f"),
        ([b("drdm_warp"), "-i", w("img.nii.gz"), "-f", w("field.nii.gz"), "-o", w("field_hardlink.nii.gz")],
         "field.nii.gz", "drdm_warp -o = a hard link of -f"),
        ([b("drdm_random_field"), "-r", w("img.nii.gz"), "-o", w("img_link.nii.gz")], "img",
         "drdm_random_field -o = -r (through a symlink)"),
        ([b("drdm_field_stats"), "-f", w("field.nii.gz"), "--jacobian-map", w("field.nii.gz")], "field.nii.gz",
         "drdm_field_stats --jacobian-map = -f"),
    ]
    for cmd, name, what in cases:
        before = {f: digest(w(f)) for f in ("img.nii.gz", "field.nii.gz")}
        rc, _, err = run(cmd)
        after = {f: digest(w(f)) for f in ("img.nii.gz", "field.nii.gz")}
        check(rc == 1 and name in err and "input" in err and before == after and os.path.islink(w("img_link.nii.gz")),
              f"{what} refused, inputs unchanged (rc {rc}: {err.strip()[-160:]})")


def output_location_tests(b, w):
    """Item 10: output locations are checked before any work, so a bad one leaves no other output."""
    def expect(cmd, name, not_written, what):
        rc, _, err = run(cmd)
        check(rc == 1 and name in err and not os.path.exists(not_written),
              f"{what} -> exit {rc}, names {name}, {os.path.basename(not_written)} not written ({err.strip()[-160:]})")

    expect([b("drdm_warp"), "-i", w("img.nii.gz"), "-f", w("field.nii.gz"), "-o", w("v1.nii.gz"),
            "--preview", "/nonexistent/p.png"], "/nonexistent", w("v1.nii.gz"), "drdm_warp --preview in a missing folder")
    os.makedirs(w("a_folder.png"))
    expect([b("drdm_warp"), "-i", w("img.nii.gz"), "-f", w("field.nii.gz"), "-o", w("v2.nii.gz"),
            "--preview", w("a_folder.png")], "a_folder.png", w("v2.nii.gz"), "drdm_warp --preview is a folder")
    expect([b("drdm_field_stats"), "-f", w("field.nii.gz"), "--jacobian-map", w("j1.nii.gz"),
            "--json", "/nonexistent/s.json"], "/nonexistent", w("j1.nii.gz"), "drdm_field_stats --json in a missing folder")
    os.makedirs(w("out_folder.nii.gz"))
    rc, _, err = run([b("drdm_random_field"), "-r", w("img.nii.gz"), "-o", w("out_folder.nii.gz")])
    check(rc == 1 and "out_folder.nii.gz" in err and os.listdir(w("out_folder.nii.gz")) == [],
          f"drdm_random_field -o an existing folder refused ({err.strip()[-160:]})")


SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void note(const char *call, int fd) {
  char link[64], target[4096] = "?", line[4200];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n >= 0) target[n] = 0;
  const char *log = getenv("FSYNC_LOG");
  if (!log) return;
  int out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
  int len = snprintf(line, sizeof line, "%s %s\n", call, target);
  if (out >= 0) { if (write(out, line, len) < 0) {} close(out); }
}
int fsync(int fd) { note("fsync", fd); return ((int (*)(int))dlsym(RTLD_NEXT, "fsync"))(fd); }
int fdatasync(int fd) { note("fdatasync", fd); return ((int (*)(int))dlsym(RTLD_NEXT, "fdatasync"))(fd); }
"""


def fsync_tests(b, w):
    """Item 9: the finished file is fsynced before the rename and its folder after it (an
    LD_PRELOAD shim records the calls)."""
    src, lib = w("fsync_shim.c"), w("fsync_shim.so")
    with open(src, "w") as f:
        f.write(SHIM)
    cc = os.environ.get("CC", "cc")
    built = subprocess.run([cc, "-shared", "-fPIC", "-o", lib, src, "-ldl"], capture_output=True, text=True)
    check(built.returncode == 0, f"fsync shim compiles with {cc} ({built.stderr.strip()[-200:]})")
    if built.returncode != 0:
        return
    os.makedirs(w("synced"))
    for cmd, target in [
        ([b("drdm_random_field"), "-r", w("img.nii.gz"), "-o", w("synced/r.nii.gz")], w("synced/r.nii.gz")),
        ([b("drdm_field_stats"), "-f", w("field.nii.gz"), "--json", w("synced/s.json")], w("synced/s.json")),
    ]:
        log = w("fsync.log")
        if os.path.exists(log):
            os.remove(log)
        # Under AddressSanitizer (scripts/test.sh --sanitize) a preloaded library may come first.
        asan = "verify_asan_link_order=0:" + os.environ.get("ASAN_OPTIONS", "")
        env = dict(os.environ, LD_PRELOAD=lib, FSYNC_LOG=log, ASAN_OPTIONS=asan)
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=300)
        calls = open(log).read().split("\n") if os.path.exists(log) else []
        folder = os.path.realpath(os.path.dirname(target))
        name = os.path.basename(target)
        file_synced = [i for i, c in enumerate(calls)
                       if c.startswith("fsync ") and ".drdm-tmp" in c and c.endswith("/" + name)]
        dir_synced = [i for i, c in enumerate(calls) if c == "fsync " + folder]
        check(p.returncode == 0 and file_synced and dir_synced and file_synced[0] < dir_synced[-1],
              f"{os.path.basename(cmd[0])}: {name} fsynced before the rename, its folder after it ({calls[:6]})")


def start_training(b, w, cfg, run_dir, extra=()):
    return subprocess.Popen([b("drdm_train"), "--config", cfg, "--output", run_dir, "--no-progress"] + list(extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path, proc, seconds=120):
    """Waits until `path` exists (a folder: holds a file) while `proc` runs."""
    end = time.time() + seconds
    while time.time() < end and proc.poll() is None:
        if os.path.isfile(path) or (os.path.isdir(path) and [n for n in os.listdir(path) if n.endswith(".gz")]):
            return True
        time.sleep(0.02)
    return False


def signal_tests(b, w):
    """Item 8: SIGINT / SIGTERM stop a run with a message and 128 + signal, leaving no temporary;
    the kept checkpoint resumes."""
    cfg = w("tiny.json")
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        run_dir = w(f"run_{sig.name}")
        p = start_training(b, w, cfg, run_dir)
        started = wait_for(os.path.join(run_dir, "checkpoint.pt"), p)
        time.sleep(0.3)  # mid-run: it writes a checkpoint every step
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        check(started and p.returncode == code and f"interrupted by {sig.name}" in err,
              f"drdm_train + {sig.name} -> exit {p.returncode} (want {code}), message ({err.strip()[-160:]})")
        check(not temporaries(run_dir), f"drdm_train + {sig.name} leaves no temporary {temporaries(run_dir)}")

    # Two signals: the second ends the run at once; the temporaries are still removed.
    run_dir = w("run_twice")
    p = start_training(b, w, cfg, run_dir)
    started = wait_for(os.path.join(run_dir, "checkpoint.pt"), p)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    check(started and p.returncode == 130 and not temporaries(run_dir),
          f"drdm_train + SIGINT twice -> exit {p.returncode} (want 130), temporaries {temporaries(run_dir)}")

    # drdm_deform on a folder: stops between files.
    out = w("deform_sig")
    p = subprocess.Popen([b("drdm_deform"), "-i", w("cases"), "-o", out, "--levels", "3", "--samples", "4",
                          "--threads", "1", "--device", "cpu", "--no-progress", "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = wait_for(os.path.join(out, "fields"), p)  # its first field is written
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    check(started and p.returncode == 143 and "interrupted by SIGTERM" in err and not temporaries(out),
          f"drdm_deform + SIGTERM -> exit {p.returncode} (want 143), temporaries {temporaries(out)} "
          f"({err.strip()[-160:]})")


def first_progress_line(proc, label):
    """Reads `proc`'s stderr until its progress bar prints `label` (True), or it ends (False)."""
    for line in proc.stderr:
        if label in line:
            return True
    return False


def deform_step_signal_test(b, w):
    """SIGINT in the middle of a chunk's generation stops drdm_deform at the next recovery step:
    no output folder is made (before the fix, the chunk ran on to its first write, which made them)."""
    out = w("deform_sig_step")
    # One chunk: 64 samples x 80 steps (--schedule all) of the shipped 2D model, minutes on one thread.
    p = subprocess.Popen([b("drdm_deform"), "-i", w("small2d.nii.gz"), "-o", out, "--levels", "3", "--samples", "64",
                          "--batch", "64", "--schedule", "all", "--threads", "1", "--device", "cpu", "--no-preview"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = first_progress_line(p, "drdm_deform recovery steps")
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)  # the whole chunk takes minutes on one thread
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        err += "\n(still running 60 s after SIGINT: killed)"
    made = sorted(n for n in os.listdir(out) if not n.startswith(".")) if os.path.isdir(out) else []
    check(started and p.returncode == 130 and "interrupted by SIGINT" in err and not made and not temporaries(out),
          f"drdm_deform + SIGINT during generation -> exit {p.returncode} (want 130), made {made} (want none), "
          f"temporaries {temporaries(out)} ({err.strip()[-160:]})")


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def stale_sweep_tests(b, w):
    """Item 8: a write into a folder removes the temporary folders of dead processes of this host,
    and keeps those of live processes and of other hosts."""
    host = socket.gethostname()
    folder = w("sweep")
    os.makedirs(folder)
    dead, live = dead_pid(), os.getpid()
    names = {"dead": f".drdm-tmp-{host}-{dead}-0", "live": f".drdm-tmp-{host}-{live}-3",
             "other_host": f".drdm-tmp-not-{host}-{dead}-1"}
    for n in names.values():
        os.makedirs(os.path.join(folder, n))
        open(os.path.join(folder, n, "partial.nii.gz"), "wb").write(b"\x1f\x8b partial")
    rc, _, err = run([b("drdm_random_field"), "-r", w("img.nii.gz"), "-o", os.path.join(folder, "r.nii.gz")])
    left = set(os.listdir(folder))
    check(rc == 0 and names["dead"] not in left and names["live"] in left and names["other_host"] in left,
          f"drdm_random_field sweeps a dead process's temporary only (left {sorted(left)}; {err.strip()[-120:]})")
    for n in ("live", "other_host"):  # made by this test, not by a program: no leftovers of ours
        shutil.rmtree(os.path.join(folder, names[n]), ignore_errors=True)

    # Training: a resumed run sweeps its folder too.
    run_dir = w("run_SIGINT")
    if os.path.isdir(run_dir):
        stale = os.path.join(run_dir, f".drdm-tmp-{host}-{dead}-7")
        os.makedirs(stale)
        open(os.path.join(stale, "checkpoint.pt"), "wb").write(b"partial")
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            logged = max(json.loads(line)["step"] for line in f)  # >= the checkpoint's step
        rc, out, err = run([b("drdm_train"), "--config", w("tiny.json"), "--output", run_dir, "--resume",
                            "--no-progress", "--set", f"train.steps={logged + 2}"])
        check(rc == 0 and not os.path.exists(stale),
              f"drdm_train --resume sweeps a dead process's temporary (rc {rc}: {err.strip()[-160:]})")


def make_inputs(w):
    rng = np.random.default_rng(0)
    big = sitk.GetImageFromArray((rng.random((40, 48, 56)) * 100).astype(np.float32))
    big.SetSpacing((0.9, 1.1, 1.3))
    sitk.WriteImage(big, w("big.nii.gz"))
    field = sitk.GetImageFromArray(rng.normal(0, 0.5, (40, 48, 56, 3)).astype(np.float32), isVector=True)
    field.CopyInformation(big)
    sitk.WriteImage(field, w("big_field.nii.gz"))
    small = sitk.GetImageFromArray((np.kron(rng.random((8, 8)), np.ones((8, 8))) * 150 + 20
                                    + rng.random((64, 64))).astype(np.float32))
    sitk.WriteImage(small, w("small2d.nii.gz"))
    img = sitk.GetImageFromArray((rng.random((20, 24)) * 100).astype(np.float32))
    sitk.WriteImage(img, w("img.nii.gz"))
    f = sitk.GetImageFromArray(np.full((20, 24, 2), 0.5, np.float32), isVector=True)
    sitk.WriteImage(f, w("field.nii.gz"))
    os.makedirs(w("cases"))
    for i in range(8):
        sitk.WriteImage(small, w(f"cases/case{i}.nii.gz"))
    data_dir = w("train_data")
    os.makedirs(data_dir)
    for i in range(4):
        arr = np.kron(rng.random((4, 4)), np.ones((6, 6))).astype(np.float32) * 200 + 10
        sitk.WriteImage(sitk.GetImageFromArray(arr), os.path.join(data_dir, f"case{i}.nii.gz"))
    with open(w("tiny.json"), "w") as f:
        json.dump({"name": "tiny", "data": {"folders": [data_dir], "size": [16, 16], "min_foreground": 0},
                   "sampler": {"control": 16, "levels": 2, "integrated_max": 10},
                   "train": {"batch_size": 2, "steps": 100000, "checkpoint_every": 1, "preview_every": 100000,
                             "log_every": 1, "device": "cpu", "threads": 1}}, f)


def main():
    a = start()
    w = lambda name: os.path.join(a.workdir, name)  # noqa: E731
    b = lambda name: os.path.join(a.bin_dir, name)  # noqa: E731
    make_inputs(w)
    full_disk_tests(b, w)
    same_file_tests(b, w)
    output_location_tests(b, w)
    fsync_tests(b, w)
    signal_tests(b, w)
    deform_step_signal_test(b, w)
    stale_sweep_tests(b, w)
    return finish("cli harden write", a.workdir)


if __name__ == "__main__":
    sys.exit(main())
