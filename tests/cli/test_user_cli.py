#!/usr/bin/env python3
"""seg_fewshot and reg_synth used as a new user would (issue 23), with the
shipped models on small images written by SimpleITK: outputs that are inputs,
part-written outputs, wrong dimensions and grids, absent classes, exit codes,
options after the subcommand, --set blame, data paths, the evaluate and
register reports, --help. Each section names the item of issue 23 it holds."""
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import SimpleITK as sitk

from cli_util import FAILURES, check, finish, run, start  # noqa: E402

ARGS = None


def exe(name):
    return os.path.abspath(os.path.join(ARGS.bin_dir, name))


def w(*parts):
    return os.path.join(ARGS.workdir, *parts)


def digest(folder_or_file):
    """sha256 of every file under a folder (or of one file), by relative name."""
    paths = [folder_or_file] if os.path.isfile(folder_or_file) else sorted(
        os.path.join(r, n) for r, _, ns in os.walk(folder_or_file) for n in ns)
    return {os.path.relpath(p, folder_or_file): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def write_pair(folder, name, shift, size=(48, 40), slices=2, spacing=(1.4, 1.3, 7.5), origin=(-12.0, 30.5, 4.0)):
    """A disc (3) in a ring (2) and a blob (1): folder/images/name.nii.gz and folder/labels/name.nii.gz.
    slices=0 writes 2D images; slices=1 single-slice volumes (as JSRT)."""
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    r = np.sqrt((yy - size[1] / 2 - shift) ** 2 + (xx - size[0] / 2 - shift) ** 2)
    lab = np.zeros((size[1], size[0]), np.uint8)
    lab[r < size[1] / 4] = 2
    lab[r < size[1] / 6] = 3
    lab[(abs(yy - size[1] / 2) < 4) & (abs(xx - size[0] * 0.8) < 3)] = 1
    if slices:
        lab = np.repeat(lab[None], slices, 0)
    img = (lab * 60 + 20 + np.random.default_rng(shift + 5).random(lab.shape) * 10).astype(np.float32)
    dims = 3 if slices else 2
    for arr, sub in ((img, "images"), (lab, "labels")):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(spacing[:dims])
        im.SetOrigin(origin[:dims])
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        sitk.WriteImage(im, os.path.join(folder, sub, name + ".nii.gz"))
    return os.path.join(folder, "images", name + ".nii.gz"), os.path.join(folder, "labels", name + ".nii.gz")


def refused(cmd, what, names, untouched):
    """cmd exits 1, its message holds every string in `names`, and every file under `untouched` is unchanged."""
    before = {p: digest(p) for p in untouched}
    rc, out, err = run(cmd)
    same = all(digest(p) == d for p, d in before.items())
    missing = [n for n in names if n not in err]
    check(rc == 1 and not missing and same,
          f"{what}: refused (rc {rc}), inputs unchanged ({same}), message names {names} ({err.strip()[-220:]})")


# -- item 1 (and issue 26 item 1): an output that resolves to an input ---------------------------------

def outputs_are_not_inputs():
    d = w("in1")
    for i in range(2):
        write_pair(d, f"patient00{i + 1}_frame01", i)
    images, labels = f"{d}/images", f"{d}/labels"
    predict = [exe("seg_fewshot"), "predict", "--device", "cpu", "--input", images, "--output"]
    refused(predict + [images], "predict --output = --input", ["patient001_frame01.nii.gz", "input"], [d])
    refused(predict + [f"{d}/./images/"], "predict --output = --input through ./", ["input"], [d])
    os.symlink(images, w("link1"))
    refused(predict + [w("link1")], "predict --output = a symlink to --input", ["input"], [d])
    os.makedirs(w("hard1"))
    os.link(f"{images}/patient002_frame01.nii.gz", w("hard1", "patient002_frame01.nii.gz"))
    refused(predict + [w("hard1")], "predict into a folder holding a hard link of an input",
            ["patient002_frame01.nii.gz", "input"], [d])
    check(sorted(os.listdir(w("hard1"))) == ["patient002_frame01.nii.gz"], "... and nothing else is written there")

    reg = w("reg1")
    moving, mlab = write_pair(reg, "a", 0, size=(64, 64), slices=1, spacing=(1.4, 1.4, 1.0))
    fixed, flab = write_pair(reg, "b", 2, size=(64, 64), slices=1, spacing=(1.4, 1.4, 1.0))
    os.makedirs(w("reg1out"))
    shutil.copy(moving, w("reg1out", "warped.nii.gz"))
    register = [exe("reg_synth"), "register", "--model", "reg-chest2d", "--device", "cpu", "--fixed", fixed]
    refused(register + ["--moving", w("reg1out", "warped.nii.gz"), "--output", w("reg1out")],
            "register: the moving image is OUTPUT/warped.nii.gz", ["warped.nii.gz", "input"], [w("reg1out")])
    os.symlink(flab, w("reg1out", "metrics.json"))
    refused(register + ["--moving", moving, "--moving-labels", mlab, "--fixed-labels", w("reg1out", "metrics.json"),
                        "--output", w("reg1out")],
            "register: --fixed-labels is a symlink named OUTPUT/metrics.json", ["metrics.json", "input"], [reg])

    evaluate = [exe("seg_fewshot"), "evaluate", "--pred", labels, "--truth", labels, "--json"]
    refused(evaluate + [f"{labels}/patient001_frame01.nii.gz"], "evaluate --json = a truth label map (issue 26.1)",
            ["patient001_frame01.nii.gz", "input"], [d])
    refused(evaluate + [f"{d}/./labels/patient002_frame01.nii.gz"], "evaluate --json = a label map through ./",
            ["input"], [d])

    os.makedirs(w("model1"))
    shutil.copy(os.path.join(ARGS.models, "cardiac2d", "model.pt"), w("model1", "model.pt"))
    refused([exe("drdm_check_recovery"), "-m", w("model1", "model.pt"), "-d", images, "--levels", "5",
             "--repeats", "1", "--max-images", "1", "--device", "cpu", "-o", w("model1", "model.pt")],
            "drdm_check_recovery -o = -m", ["model.pt", "input"], [w("model1")])
    os.makedirs(w("import1"))
    shutil.copy(os.path.join(ARGS.configs, "cardiac2d-paper-import.json"), w("import1", "config.json"))
    with open(w("import1", "weights.pth"), "wb") as f:
        f.write(b"not a state dict")
    refused([exe("drdm_import"), "--from", w("import1", "weights.pth"), "-c", w("import1", "config.json"),
             "-o", w("import1")], "drdm_import -o holding the -c config.json", ["config.json", "input"], [w("import1")])


# -- item 2: nothing part-written when an input is bad --------------------------------------------------

def nothing_part_written():
    d = w("in2")
    write_pair(d, "case1", 0)
    second, _ = write_pair(d, "case2", 1)
    data = open(second, "rb").read()
    with open(second, "wb") as f:
        f.write(data[: len(data) // 2])
    rc, _, err = run([exe("seg_fewshot"), "predict", "--device", "cpu", "--input", f"{d}/images", "--output",
                      w("out2")])
    check(rc == 1 and "case2.nii.gz" in err and not os.path.exists(w("out2")),
          f"predict over a folder whose second file is truncated: names it, writes nothing ({err.strip()[-160:]})")


# -- item 3: the model's dimension against the image's ------------------------------------------------

def dimension_checked():
    d = w("in3")
    moving, _ = write_pair(d, "a", 0, size=(64, 64), slices=1, spacing=(1.4, 1.4, 1.0))
    fixed, _ = write_pair(d, "b", 2, size=(64, 64), slices=1, spacing=(1.4, 1.4, 1.0))
    rc, _, err = run([exe("reg_synth"), "register", "--model", "reg-hippocampus3d", "--device", "cpu", "--moving",
                      moving, "--fixed", fixed, "--output", w("out3")])
    check(rc == 1 and "a.nii.gz" in err and "3D" in err and not os.path.exists(w("out3")),
          f"register: a 3D model refuses a single-slice radiograph, naming it ({err.strip()[-160:]})")


# -- item 4: grids compared by size, spacing, origin and direction ---------------------------------------

def grids_compared():
    d = w("in4")
    sp = (1.4, 1.4, 1.0)
    moving, mlab = write_pair(d, "a", 0, size=(64, 64), slices=1, spacing=sp)
    fixed, flab = write_pair(d, "b", 2, size=(64, 64), slices=1, spacing=sp)
    shifted = w("in4", "shifted_labels.nii.gz")
    im = sitk.ReadImage(mlab)
    im.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(im, shifted)
    other, _ = write_pair(w("in4other"), "b", 2, size=(64, 64), slices=1, spacing=(2.0, 2.0, 1.0),
                          origin=(3.0, 1.0, 0.0))
    reg = [exe("reg_synth"), "register", "--model", "reg-chest2d", "--device", "cpu", "--output", w("out4")]
    rc, _, err = run(reg + ["--moving", moving, "--fixed", fixed, "--moving-labels", shifted])
    check(rc == 1 and "shifted_labels.nii.gz" in err and "origin" in err and not os.path.exists(w("out4")),
          f"register: moving labels with a shifted origin are refused ({err.strip()[-160:]})")
    rc, _, err = run(reg + ["--moving", moving, "--fixed", other])
    check(rc == 1 and "different grids" in err and "spacing" in err and not os.path.exists(w("out4")),
          f"register: a fixed image with another spacing and origin is refused ({err.strip()[-160:]})")
    os.makedirs(w("pred4"))
    im = sitk.ReadImage(flab)
    im.SetSpacing((2.0, 2.0, 1.0))
    im.SetOrigin((3.0, 1.0, 0.0))
    sitk.WriteImage(im, w("pred4", "b.nii.gz"))
    rc, out, err = run([exe("seg_fewshot"), "evaluate", "--pred", w("pred4"), "--truth", f"{d}/labels"])
    check(rc == 1 and "different grids" in err and "b.nii.gz" in err and "spacing" in err,
          f"evaluate: a prediction with another spacing and origin is refused ({err.strip()[-160:]})")


# -- items 6 and 7: exit codes, options after the subcommand ---------------------------------------------

def exit_codes_and_options():
    d = w("in6")
    moving, _ = write_pair(d, "a", 0, size=(64, 64), slices=1, spacing=(1.4, 1.4, 1.0))
    fixed, _ = write_pair(d, "b", 2, size=(64, 64), slices=1, spacing=(1.4, 1.4, 1.0))
    usage = [
        ([exe("seg_fewshot")], "seg_fewshot without a subcommand"),
        ([exe("seg_fewshot"), "evaluate", "--bogus"], "seg_fewshot: an unknown option"),
        ([exe("reg_synth")], "reg_synth without a subcommand"),
        ([exe("reg_synth"), "register", "--moving", w("missing.nii.gz"), "--fixed", fixed, "--output", w("o6")],
         "reg_synth register: a --moving file that does not exist"),
        ([exe("reg_synth"), "register", "--moving", moving, "--fixed", fixed, "--output", w("o6"), "extra"],
         "reg_synth register: an unexpected argument"),
        ([exe("drdm_warp"), "-i", moving], "drdm_warp: a required option missing"),
        ([exe("drdm_train"), "--config"], "drdm_train: an option without its value"),
        ([exe("drdm_deform"), "--samples", "x", "-i", moving, "-o", w("o6")], "drdm_deform: a bad number"),
    ]
    for cmd, what in usage:
        rc, _, err = run(cmd)
        check(rc == 2 and err.strip() != "", f"{what}: usage error, exit 2 (rc {rc})")
    for tool in ("seg_fewshot", "reg_synth", "drdm_deform", "drdm_check_recovery"):
        rc, out, _ = run([exe(tool), "--help"])
        check(rc == 0 and "Usage" in out, f"{tool} --help: exit 0")
    rc, _, err = run([exe("reg_synth"), "register", "--moving", moving, "--fixed", fixed, "--output", w("o7"),
                      "--device", "cpu", "-q"])
    check(rc == 0 and "[info]" not in err and os.path.exists(w("o7", "field.nii.gz")),
          f"reg_synth register ... -q: -q after the subcommand works (rc {rc}, {err.strip()[-120:]})")
    rc, out, err = run([exe("seg_fewshot"), "evaluate", "--pred", f"{d}/labels", "--truth", f"{d}/labels",
                        "--quiet"])
    check(rc == 0 and "cases" in out, f"seg_fewshot evaluate ... --quiet works (rc {rc})")


# -- item 10: evaluate checks --json before any work ---------------------------------------------------

def evaluate_json_checked_first():
    d = w("in10")
    write_pair(d, "case1", 0)
    rc, out, err = run([exe("seg_fewshot"), "evaluate", "--pred", f"{d}/labels", "--truth", f"{d}/labels",
                        "--json", w("nodir", "x.json")])
    check(rc == 1 and out == "" and "nodir" in err and "--json" in err,
          f"evaluate --json into a missing folder: refused before the table ({err.strip()[-120:]})")


# -- item 5: a class in neither label map ---------------------------------------------------------------

def absent_classes_reported():
    d = w("in5")
    write_pair(d, "patient001_frame01", 0)
    rc, out, err = run([exe("seg_fewshot"), "evaluate", "--pred", f"{d}/labels", "--truth", f"{d}/labels",
                        "--classes", "3,7", "--json", w("eval5.json")])
    row7 = [line for line in out.splitlines() if line.startswith("| 7 |")]
    check(rc == 0 and row7 and "absent in both" in row7[0] and "100.0" not in row7[0],
          f"evaluate --classes 3,7: label 7 shows as absent in both ({row7})")
    check("label 7" in err and "absent in both" in err, f"... with a warning ({err.strip()[-160:]})")
    entry = json.load(open(w("eval5.json")))[0]["classes"][1] if rc == 0 else {}
    check(entry.get("label") == 7 and entry.get("absent_in_both") is True and entry.get("dice") is None,
          f"... and in the JSON ({entry})")


# -- item 8: a --set that makes another key invalid is named ----------------------------------------------

def set_blamed():
    for tool, config, setting in (("seg_fewshot", "seg-acdc-cpu.json", "train.steps=10"),
                                  ("reg_synth", "reg-jsrt-cpu.json", "finetune.steps=5")):
        out = w("out8-" + tool)
        rc, _, err = run([exe(tool), "run", "--config", os.path.join(ARGS.configs, config), "--output", out,
                          "--set", setting])
        check(rc == 1 and f"--set {setting}" in err and "warmup_steps" in err and not os.path.exists(out),
              f"{tool} run --set {setting}: the --set is named, not only the file ({err.strip()[-200:]})")


# -- item 9: data paths of a config run from another folder ---------------------------------------------

def data_paths_named():
    import subprocess
    for tool, config in (("seg_fewshot", "seg-acdc-cpu.json"), ("reg_synth", "reg-jsrt-cpu.json")):
        p = subprocess.run([exe(tool), "run", "--config", os.path.abspath(os.path.join(ARGS.configs, config)), "--output", "out9"],
                           capture_output=True, text=True, cwd=ARGS.workdir, timeout=300)
        check(p.returncode == 1 and "data.images" in p.stderr and "working folder" in p.stderr
              and not os.path.exists(w("out9")),
              f"{tool} run from another folder: the data key is named, nothing written ({p.stderr.strip()[-200:]})")


# -- item 11: evaluate's report: names, labels, a mean row, subjects ---------------------------------------

def evaluate_report():
    d = w("in11")
    for s, f in ((1, 1), (1, 2), (2, 1), (2, 2)):
        write_pair(d, f"patient00{s}_frame0{f}", s + f)
    os.makedirs(w("pred11"))
    for name in os.listdir(f"{d}/labels"):
        lab = sitk.ReadImage(f"{d}/labels/{name}")
        arr = sitk.GetArrayFromImage(lab)
        arr[:, :, : 3 + len(name) % 4] = 0  # a different error per case
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(lab)
        sitk.WriteImage(out, w("pred11", name))
    base = [exe("seg_fewshot"), "evaluate", "--pred", w("pred11"), "--truth", f"{d}/labels"]
    rc, out, err = run(base + ["--class-names", "RV,MYO,LV", "--json", w("eval11.json")])
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    check(rc == 0 and {"RV", "MYO", "LV", "mean"} <= set(rows) and "| 1 |" in rows.get("RV", ""),
          f"evaluate --class-names: rows by name with their label, and a mean row ({sorted(rows)})")
    check("4 cases of 2 subjects" in out and "over subjects" in out, "... the spread is over subjects")
    cases = json.load(open(w("eval11.json"))) if rc == 0 else []
    check(cases and [c["label"] for c in cases[0]["classes"]] == [1, 2, 3]
          and [c["name"] for c in cases[0]["classes"]] == ["RV", "MYO", "LV"], "... the JSON has labels and names")
    rc, out, err = run(base + ["--model", "seg-cardiac2d"])
    check(rc == 0 and "| MYO | 2 |" in out, f"evaluate --model: class names from the model ({err.strip()[-120:]})")
    rc, out, err = run(base + ["--class-names", "RV,MYO"])
    check(rc == 1 and "--class-names" in err, "evaluate: --class-names must match --classes")


# -- item 12: register reports its metrics ------------------------------------------------------------------

def register_report():
    d = w("in12")
    moving, mlab = write_pair(d, "a", 0, size=(64, 64), slices=1, spacing=(1.4, 1.4, 1.0))
    fixed, flab = write_pair(d, "b", 3, size=(64, 64), slices=1, spacing=(1.4, 1.4, 1.0))
    rc, out, err = run([exe("reg_synth"), "register", "--device", "cpu", "--moving", moving, "--fixed", fixed,
                        "--moving-labels", mlab, "--fixed-labels", flab, "--output", w("out12")])
    check(rc == 0 and "DSC % before" in out and "right lung" in out and "| mean |" in out,
          f"register prints the metrics before and after ({out.strip()[-200:]}{err.strip()[-200:]})")
    m = json.load(open(w("out12", "metrics.json"))) if rc == 0 else {"classes": {}}
    lung = m["classes"].get("right lung", {})
    check(lung.get("label") == 1 and "dice" in lung.get("before", {}) and "mean_dice_before" in m,
          f"metrics.json: label values and the DSC before registration ({sorted(lung)})")


# -- item 13: --help shows whole model descriptions and plain types ---------------------------------------

def help_texts():
    rc, out, _ = run([exe("seg_fewshot"), "predict", "--help"])
    flat = " ".join(out.split())
    check(rc == 0 and "left-ventricle cavity (3)" in flat, "predict --help: the model's description is whole")
    rc, out, _ = run([exe("reg_synth"), "register", "--help"])
    flat = " ".join(out.split())
    check(rc == 0 and "Balakrishnan et al. 2019" in flat and "task 4 data)" in flat,
          "register --help: the descriptions are whole")
    check(all(len(line) <= 120 for line in out.splitlines()), "... in lines of readable length")
    rc, out, _ = run([exe("seg_fewshot"), "evaluate", "--help"])
    line = [x for x in out.splitlines() if "--classes" in x]
    check(rc == 0 and line and "UINT" not in line[0] and "1,2,3" in line[0], f"evaluate --help: --classes ({line})")


def main():
    global ARGS
    ARGS = start([("--models", "the repository's models/ folder"), ("--configs", "the repository's configs/")])
    outputs_are_not_inputs()
    nothing_part_written()
    dimension_checked()
    grids_compared()
    exit_codes_and_options()
    evaluate_json_checked_first()
    absent_classes_reported()
    set_blamed()
    data_paths_named()
    evaluate_report()
    register_report()
    help_texts()
    sys.exit(finish("cli_user", ARGS.workdir))


if __name__ == "__main__":
    main()
