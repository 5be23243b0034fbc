#!/usr/bin/env python3
"""Command-line behaviour of seg_fewshot: a tiny grid run, predict keeping the
input's geometry (read back with SimpleITK), evaluate against labels, and the
errors a user meets (unknown augmentation, missing files, labels on another grid).
Inputs are written with SimpleITK, an implementation of the formats nobody here wrote."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from cli_util import FAILURES, check, run  # noqa: E402


def write_case(folder, name, shift, slices=2, direction=None):
    """A disc (3) in a ring (2) and a blob (1), 40 x 48 x slices, on a rotated, shifted grid."""
    yy, xx = np.mgrid[0:40, 0:48]
    r = np.sqrt((yy - 20 - shift) ** 2 + (xx - 24 - shift) ** 2)
    lab = np.zeros((40, 48), np.uint8)
    lab[r < 11] = 2
    lab[r < 7] = 3
    lab[(abs(yy - 20) < 4) & (abs(xx - 38) < 3)] = 1
    lab = np.repeat(lab[None], slices, 0)
    img = (lab * 60 + 20 + np.random.default_rng(shift + 5).random(lab.shape) * 10).astype(np.uint16)
    for arr, sub in ((img, "images"), (lab, "labels")):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((1.4, 1.3, 7.5))
        im.SetOrigin((-12.0, 30.5, 4.0))
        if direction is not None:
            im.SetDirection(direction)
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        sitk.WriteImage(im, os.path.join(folder, sub, name + ".nii.gz"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="the seg_fewshot executable")
    ap.add_argument("--config", required=True, help="configs/seg-acdc-cpu.json")
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    data = os.path.join(a.workdir, "data")
    rot = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    for s in (1, 2, 21, 10, 30):
        for f in (1, 2):
            write_case(data, f"patient{s:03d}_frame0{f}", s % 5 - 2, direction=rot if s == 10 else None)

    rc, out, err = run([a.bin, "--help"])
    check(rc == 0 and "predict" in out and "evaluate" in out, "--help lists the subcommands")
    tiny = ["--set", f"data.images={data}/images", f"data.labels={data}/labels", "data.size=[32,32]",
            "unet.widths=[4,8]", "train.steps=3", "train.warmup_steps=0", "train.batch_size=4",
            "train.device=cpu", "grid.subjects=[1]", 'grid.augmentations=["none","bigaug"]']
    rc, out, err = run([a.bin, "run", "--config", a.config, "--output", f"{a.workdir}/bad"] + tiny[:-1] +
                       ['grid.augmentations=["mixup"]'])
    check(rc == 1 and "mixup" in err and "grid.augmentations" in err, "an unknown augmentation is named")
    check(not os.path.exists(f"{a.workdir}/bad"), "a refused config writes nothing")
    rc, out, err = run([a.bin, "run", "--config", a.config, "--output", f"{a.workdir}/bad"] + tiny[:-2] +
                       ["grid.subjects=[0]"])
    check(rc == 1 and "grid.subjects" in err, "an empty subset is refused, naming the key")

    grid = f"{a.workdir}/grid"
    rc, out, err = run([a.bin, "run", "--config", a.config, "--output", grid, "--no-progress"] + tiny)
    check(rc == 0, "a tiny grid runs" + ("" if rc == 0 else ": " + err[-400:]))
    for f in ("results.md", "results.json", "predictions.png", "runs/none-n1-s0/model.pt"):
        check(os.path.exists(os.path.join(grid, f)), f"the grid wrote {f}")
    if not os.path.exists(os.path.join(grid, "results.json")):
        print(f"{len(FAILURES)} failure(s): the grid did not run; nothing more to check")
        sys.exit(1)
    res = json.load(open(os.path.join(grid, "results.json")))
    check(len(res["runs"]) == 2 and res["test_subjects"] == 2, "results.json holds both runs over 2 test subjects")

    model = os.path.join(grid, "runs/none-n1-s0/model.pt")
    pred = f"{a.workdir}/pred"
    rc, out, err = run([a.bin, "predict", "--model", model, "--input", f"{data}/images", "--output", pred])
    check(rc == 0, "predict segments a folder")
    src = sitk.ReadImage(f"{data}/images/patient010_frame01.nii.gz")
    got = sitk.ReadImage(f"{pred}/patient010_frame01.nii.gz")
    check(got.GetSize() == src.GetSize(), "predicted labels have the input's size")
    check(np.allclose(got.GetSpacing(), src.GetSpacing()) and np.allclose(got.GetOrigin(), src.GetOrigin())
          and np.allclose(got.GetDirection(), src.GetDirection()), "... and its spacing, origin and rotated direction")
    values = set(np.unique(sitk.GetArrayFromImage(got)).tolist())
    check(values <= {0, 1, 2, 3}, f"predicted values are classes ({sorted(values)})")
    rc, out, err = run([a.bin, "predict", "--model", model, "--input", f"{data}/missing.nii.gz", "--output",
                        f"{a.workdir}/pred2"])
    check(rc == 1 and "missing.nii.gz" in err, "a missing input is named")
    rc, out, err = run([a.bin, "predict", "--model", f"{a.workdir}/nope.pt", "--input", f"{data}/images",
                        "--output", f"{a.workdir}/pred3"])
    check(rc == 1 and "nope.pt" in err and not os.path.exists(f"{a.workdir}/pred3"),
          "a missing model is named, nothing is written")

    rc, out, err = run([a.bin, "evaluate", "--pred", f"{data}/labels", "--truth", f"{data}/labels", "--json",
                        f"{a.workdir}/self.json"])
    check(rc == 0 and "| 3 | 3 | 100.0 ± 0.0" in out, "labels against themselves score 100 % DSC")
    check(len(json.load(open(f"{a.workdir}/self.json"))) == 10, "--json writes one entry per case")
    odd = f"{a.workdir}/odd"
    write_case(odd, "patient001_frame01", 0, slices=3)
    os.makedirs(f"{odd}/pred", exist_ok=True)
    shutil.copy(f"{data}/labels/patient001_frame01.nii.gz", f"{odd}/pred/")
    rc, out, err = run([a.bin, "evaluate", "--pred", f"{odd}/pred", "--truth", f"{odd}/labels"])
    check(rc == 1 and "different grids" in err and "patient001_frame01" in err, "labels on another grid are refused")
    os.remove(f"{odd}/labels/patient001_frame01.nii.gz")
    rc, out, err = run([a.bin, "evaluate", "--pred", f"{odd}/pred", "--truth", f"{odd}/labels"])
    check(rc == 1 and "no label map" in err, "a missing truth file is named")

    print(f"{len(FAILURES)} failure(s)")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
