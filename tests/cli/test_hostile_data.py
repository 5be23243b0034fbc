#!/usr/bin/env python3
"""Hostile data and folders for seg_fewshot run, reg_synth run / register and
drdm_deform (issue 26, items 2-8): reruns with another config, another
program's output folder, labels outside the classes or on another spacing,
dangling links, file names that are not UTF-8, and a bank that lost its
manifest. Tiny images written by SimpleITK, the shipped models, a few training
steps. Each section names the item of issue 26 it holds."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from cli_util import check, finish, start  # noqa: E402

ARGS = None


def exe(name):
    return os.path.abspath(os.path.join(ARGS.bin_dir, name))


def w(*parts):
    return os.path.join(ARGS.workdir, *parts)


def run(cmd, timeout=300):
    """Runs `cmd`: (exit code, stdout, stderr); bytes that are not UTF-8 read as U+FFFD."""
    p = subprocess.run(cmd, capture_output=True, timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def digest(folder):
    """sha256 of every file under `folder`, by relative name."""
    paths = sorted(os.path.join(r, n) for r, _, ns in os.walk(folder) for n in ns)
    return {os.path.relpath(p, folder): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def write_pair(folder, name, shift, slices=2, spacing=(1.4, 1.3, 7.5), label_spacing=None, value=None):
    """A disc (3) in a ring (2) and a blob (1) on 48 x 40 (x slices): folder/images/NAME.nii.gz and
    folder/labels/NAME.nii.gz. slices=0 writes 2D images; `value` is written into one label voxel."""
    yy, xx = np.mgrid[0:40, 0:48]
    r = np.sqrt((yy - 20 - shift) ** 2 + (xx - 24 - shift) ** 2)
    lab = np.zeros((40, 48), np.uint8)
    lab[r < 10] = 2
    lab[r < 7] = 3
    lab[(abs(yy - 20) < 4) & (abs(xx - 38) < 3)] = 1
    if slices:
        lab = np.repeat(lab[None], slices, 0)
    img = (lab * 60 + 20 + np.random.default_rng(shift + 5).random(lab.shape) * 10).astype(np.float32)
    if value is not None:
        lab[(0,) * lab.ndim] = value
    dims = 3 if slices else 2
    for arr, sub, sp in ((img, "images", spacing), (lab, "labels", label_spacing or spacing)):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(sp[:dims])
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        sitk.WriteImage(im, os.path.join(folder, sub, name + ".nii.gz"))
    return os.path.join(folder, "images", name + ".nii.gz"), os.path.join(folder, "labels", name + ".nii.gz")


def seg_data(folder, **last):
    """Subjects 1, 2 (the pool) and 10, 20 (the test set of seg_cmd); `last` goes to subject 20."""
    for i, s in enumerate((1, 2, 10)):
        write_pair(folder, f"patient{s:03d}_frame01", i)
    write_pair(folder, "patient020_frame01", 3, **last)
    return folder


def seg_cmd(data, out, *sets):
    """A seg_fewshot grid of one 2-step run on 32 x 32 slices: pool {1, 2}, test {10, 20}."""
    return [exe("seg_fewshot"), "run", "--config", os.path.join(ARGS.configs, "seg-acdc-cpu.json"), "--output",
            out, "--no-progress", "--set", f"data.images={data}/images", f"data.labels={data}/labels",
            "data.size=[32,32]", "unet.widths=[4,8]", "train.steps=2", "train.warmup_steps=0",
            "train.batch_size=2", "train.device=cpu", "grid.subjects=[1]", 'grid.augmentations=["none"]',
            "data.group_size=10", "data.pool_mod=[1,5]", "data.test_mod=[0,0]", "drdm.fields_per_slice=1",
            "drdm.levels=[2]", "drdm.batch=4"] + list(sets)


def reg_data(folder, **last):
    """Six 2D cases (4 train, 2 test with train_fraction 0.7); `last` goes to the last one."""
    for i in range(5):
        write_pair(folder, f"case{i}", i % 4, slices=0)
    write_pair(folder, "case5", 1, slices=0, **last)
    return folder


def reg_cmd(data, out, *sets):
    """A reg_synth grid: no pretraining and 2 steps of MRBS pretraining, on 32 x 32."""
    return [exe("reg_synth"), "run", "--config", os.path.join(ARGS.configs, "reg-jsrt-cpu.json"), "--output", out,
            "--no-progress", "--set", f"data.images={data}/images", f"data.labels={data}/labels",
            "data.size=[32,32]", "data.test_pairs=2", "synthetic.pairs_per_image=1",
            "synthetic.mrbs=[[4,3.2]]", 'grid.pretrain=["none","mrbs"]', "grid.finetune=[false]",
            "pretrain.steps=2", "pretrain.batch_size=1", "pretrain.warmup_steps=0", "pretrain.log_every=1",
            "pretrain.device=cpu", "finetune.device=cpu"] + list(sets)


def refused(cmd, what, names, untouched=(), absent=()):
    """cmd exits 1 naming every string of `names`; the folders `untouched` keep their files byte for
    byte, and the paths `absent` are not made."""
    before = {p: digest(p) for p in untouched}
    rc, _, err = run(cmd, timeout=300)
    same = all(digest(p) == d for p, d in before.items())
    made = [p for p in absent if os.path.exists(p)]
    missing = [n for n in names if n not in err]
    check(rc == 1 and not missing and same and not made,
          f"{what}: refused (rc {rc}), names {names} (missing {missing}), untouched ({same}), nothing made "
          f"({made}) ({err.strip()[-260:]})")
    return err


# -- item 2: a rerun with another config does not mix results -------------------------------------------

def changed_config_refused():
    data = seg_data(w("seg2"))
    out = w("out2")
    rc, _, err = run(seg_cmd(data, out), timeout=300)
    check(rc == 0, f"a tiny seg grid runs ({err.strip()[-300:]})")
    for setting, key in (("train.steps=3", "train.steps"), ("unet.widths=[4,16]", "unet.widths"),
                         ("data.size=[40,40]", "data.size")):
        refused(seg_cmd(data, out, setting), f"seg rerun on a finished folder with {setting}", [key, out],
                untouched=[out])
    rc, _, err = run(seg_cmd(data, out, 'grid.augmentations=["none","bigaug"]'), timeout=300)
    res = json.load(open(os.path.join(out, "results.json"))) if rc == 0 else {"runs": []}
    check(rc == 0 and "none-n1-s0 is finished; skipping" in err and len(res["runs"]) == 2,
          f"... a grid that grows keeps the finished run and adds the new one (rc {rc}, {err.strip()[-200:]})")


# -- item 3: one program's output folder is not another's --------------------------------------------------

def other_kind_refused():
    seg, reg = seg_data(w("seg3")), reg_data(w("reg3"))
    seg_out, reg_out = w("out3-seg"), w("out3-reg")
    rc, _, err = run(reg_cmd(reg, reg_out), timeout=300)
    check(rc == 0, f"a tiny reg grid runs ({err.strip()[-300:]})")
    rc, _, err = run(seg_cmd(seg, seg_out), timeout=300)
    check(rc == 0, f"a tiny seg grid runs ({err.strip()[-300:]})")
    refused(seg_cmd(seg, reg_out), "seg_fewshot run --output <a reg_synth folder>", ["reg_synth run", reg_out],
            untouched=[reg_out])
    refused(reg_cmd(reg, seg_out), "reg_synth run --output <a seg_fewshot folder>", ["seg_fewshot run", seg_out],
            untouched=[seg_out])
    refused([exe("drdm_deform"), "-i", os.path.join(reg, "images"), "-o", reg_out, "--device", "cpu", "--levels",
             "2", "--samples", "1"], "drdm_deform -o <a reg_synth folder>", ["reg_synth run", reg_out],
            untouched=[reg_out])
    refused([exe("drdm_train"), "-c", os.path.join(ARGS.configs, "cardiac2d-cpu.json"), "-o", reg_out,
             "--no-progress", "--set", f'data.folders=["{reg}/images"]', "train.device=cpu"],
            "drdm_train -o <a reg_synth folder>", ["reg_synth run", reg_out], untouched=[reg_out])
    if os.path.exists(os.path.join(reg_out, "run.json")):
        os.remove(os.path.join(reg_out, "run.json"))  # as a folder written before run.json
    refused(seg_cmd(seg, reg_out), "seg_fewshot run --output <a reg_synth folder without run.json>",
            [reg_out], untouched=[reg_out])


# -- item 4: labels outside 0..K ------------------------------------------------------------------------

def labels_outside_classes():
    seg = seg_data(w("seg4"), value=7)
    refused(seg_cmd(seg, w("out4-seg")), "seg_fewshot run: a test label map holding 7 with 3 classes",
            ["patient020_frame01.nii.gz", "7"], absent=[w("out4-seg")])
    reg = reg_data(w("reg4"), value=7)
    refused(reg_cmd(reg, w("out4-reg")), "reg_synth run: a test label map holding 7 with 3 classes",
            ["case5.nii.gz", "7"], absent=[w("out4-reg")])
    os.makedirs(w("ev4"))
    arr = np.zeros((2, 20, 20), np.uint8)
    arr[:, 5:9, 5:9] = 7
    sitk.WriteImage(sitk.GetImageFromArray(arr), w("ev4", "case1.nii.gz"))
    rc, out, err = run([exe("seg_fewshot"), "evaluate", "--pred", w("ev4"), "--truth", w("ev4")])
    check(rc == 1 and "case1.nii.gz" in err and "7" in err and "nan" not in out,
          f"evaluate: a label 7 outside --classes 1,2,3 is refused, not 'nan ± nan' ({err.strip()[-200:]})")
    rc, out, err = run([exe("seg_fewshot"), "evaluate", "--pred", w("ev4"), "--truth", w("ev4"), "--classes",
                        "1,7"])
    check(rc == 0 and "nan" not in out, f"... and scored with --classes 1,7 ({err.strip()[-200:]})")


# -- item 5: labels on another spacing than their image ----------------------------------------------------

def labels_on_another_spacing():
    seg = seg_data(w("seg5"), label_spacing=(2.0, 2.0, 7.5))
    refused(seg_cmd(seg, w("out5-seg")), "seg_fewshot run: labels at 2.0 mm for an image at 1.4 mm",
            ["patient020_frame01.nii.gz", "spacing"], absent=[w("out5-seg")])
    reg = reg_data(w("reg5"), label_spacing=(2.0, 2.0))
    refused(reg_cmd(reg, w("out5-reg")), "reg_synth run: labels at 2.0 mm for an image at 1.4 mm",
            ["case5.nii.gz", "spacing"], absent=[w("out5-reg")])
    moving, mlab = os.path.join(reg, "images", "case0.nii.gz"), os.path.join(reg, "labels", "case0.nii.gz")
    fixed, flab = os.path.join(reg, "images", "case4.nii.gz"), os.path.join(reg, "labels", "case5.nii.gz")
    register = [exe("reg_synth"), "register", "--model", "reg-chest2d", "--device", "cpu", "--moving", moving,
                "--fixed", fixed, "--output", w("out5-register")]
    refused(register + ["--moving-labels", flab], "register --moving-labels at another spacing",
            ["case5.nii.gz", "spacing"], absent=[w("out5-register")])
    refused(register + ["--moving-labels", mlab, "--fixed-labels", flab],
            "register --fixed-labels at another spacing", ["case5.nii.gz", "spacing"], absent=[w("out5-register")])


# -- item 6: a dangling link is named, not dropped ----------------------------------------------------------

def dangling_links_named():
    seg = seg_data(w("seg6"))
    link = os.path.join(seg, "images", "patient030_frame01.nii.gz")
    os.symlink(w("nowhere.nii.gz"), link)
    refused(seg_cmd(seg, w("out6-seg")), "seg_fewshot run: a dangling image link",
            ["patient030_frame01.nii.gz"], absent=[w("out6-seg")])
    os.remove(link)
    label = os.path.join(seg, "labels", "patient020_frame01.nii.gz")
    os.remove(label)
    os.symlink(w("nowhere.nii.gz"), label)
    refused(seg_cmd(seg, w("out6-seg")), "seg_fewshot run: a dangling label link",
            ["patient020_frame01.nii.gz", "link"], absent=[w("out6-seg")])
    reg = reg_data(w("reg6"))
    os.symlink(w("nowhere.nii.gz"), os.path.join(reg, "images", "case6.nii.gz"))
    refused(reg_cmd(reg, w("out6-reg")), "reg_synth run: a dangling image link", ["case6.nii.gz"],
            absent=[w("out6-reg")])
    refused([exe("drdm_deform"), "-i", os.path.join(reg, "images"), "-o", w("out6-deform"), "--device", "cpu",
             "--levels", "2", "--samples", "1"], "drdm_deform: a dangling image link", ["case6.nii.gz"],
            absent=[w("out6-deform")])


# -- item 7: names that are not UTF-8 are refused before any work ------------------------------------------

def non_utf8_names():
    seg = seg_data(w("seg7"))
    bad = b"patient030_\xff.nii.gz"
    for sub in ("images", "labels"):
        shutil.copy(os.path.join(seg, sub, "patient010_frame01.nii.gz"), os.fsencode(os.path.join(seg, sub)) +
                    b"/" + bad)
    err = refused(seg_cmd(seg, w("out7-seg")), "seg_fewshot run: a file name that is not UTF-8",
                  ["patient030_\\xff.nii.gz", "UTF-8"], absent=[w("out7-seg")])
    check("trained" not in err, "... before any training")
    images = os.path.join(seg, "images")
    refused([exe("drdm_deform"), "-i", images, "-o", w("out7-deform"), "--device", "cpu", "--levels", "2",
             "--samples", "1"], "drdm_deform: a file name that is not UTF-8", ["patient030_\\xff.nii.gz", "UTF-8"],
            absent=[w("out7-deform")])
    reg = reg_data(w("reg7"))
    for sub in ("images", "labels"):
        shutil.copy(os.path.join(reg, sub, "case5.nii.gz"), os.fsencode(os.path.join(reg, sub)) + b"/case6\xe9.nii.gz")
    refused(reg_cmd(reg, w("out7-reg")), "reg_synth run: a file name that is not UTF-8",
            ["case6\\xe9.nii.gz", "UTF-8"], absent=[w("out7-reg")])


# -- item 8: a bank without its manifest is rebuilt --------------------------------------------------------

def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def bank_without_manifest():
    for tool, data, out, bank, cmd in (
            ("seg_fewshot", seg_data(w("seg8")), w("out8-seg"), "banks/n1-s0", seg_cmd),
            ("reg_synth", reg_data(w("reg8")), w("out8-reg"), "bank-mrbs", reg_cmd)):
        sets = ['grid.augmentations=["drdm"]'] if tool == "seg_fewshot" else []
        rc, _, err = run(cmd(data, out, *sets), timeout=300)
        folder = os.path.join(out, bank)
        manifest = os.path.join(folder, "manifest.json")
        check(rc == 0 and os.path.exists(manifest), f"{tool}: the grid writes {bank}/manifest.json ({err[-300:]})")
        if rc != 0:
            continue
        expected = json.load(open(manifest))["identity"]
        os.remove(manifest)  # as a kill between writing bank.pt and manifest.json leaves it
        stale = os.path.join(folder, f".drdm-tmp-{socket.gethostname().replace('/', '_')}-{dead_pid()}-2")
        os.makedirs(stale)
        again = cmd(data, out, *sets)
        if tool == "seg_fewshot":  # a finished run does not look at its bank: as if killed before training
            again = ["sh", "-c", 'rm -rf "$0/runs" && exec "$@"', out] + again
        rc, _, err = run(again)
        check(rc == 0 and "reusing" not in err and "rebuilding" in err,
              f"{tool}: a bank.pt without manifest.json is rebuilt, not reused ({err.strip()[-300:]})")
        got = json.load(open(manifest))["identity"] if os.path.exists(manifest) else None
        check(got == expected, f"{tool}: ... and its manifest written")
        check(not os.path.exists(stale), f"{tool}: ... and the empty temporary folder of a dead process swept")
        rc, _, err = run(again)
        check(rc == 0 and "reusing" in err, f"{tool}: ... a complete bank is reused ({err.strip()[-200:]})")


def main():
    global ARGS
    ARGS = start([("--configs", "the repository's configs/")])
    changed_config_refused()
    other_kind_refused()
    labels_outside_classes()
    labels_on_another_spacing()
    dangling_links_named()
    non_utf8_names()
    bank_without_manifest()
    sys.exit(finish("cli_hostile_data", ARGS.workdir))


if __name__ == "__main__":
    main()
