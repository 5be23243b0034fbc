#!/usr/bin/env python3
"""Command-line behaviour of drdm_warp, drdm_field_stats, drdm_random_field, drdm_train and
drdm_check_recovery.

Inputs are made with SimpleITK (an independent implementation of the file
formats); expected statistics come from analytic fields.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def run(cmd):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def image(shape_xy, spacing, origin=None, pixel=sitk.sitkFloat32):
    arr = np.random.default_rng(0).random(shape_xy[::-1]).astype(np.float32) * 100
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    if origin:
        img.SetOrigin(origin)
    return sitk.Cast(img, pixel)


def constant_field(reference, vector_mm):
    """ITK displacement field (mm) equal to `vector_mm` everywhere."""
    shape = reference.GetSize()[::-1] + (len(vector_mm),)
    arr = np.broadcast_to(np.asarray(vector_mm, np.float32), shape).copy()
    f = sitk.GetImageFromArray(arr, isVector=True)
    f.CopyInformation(reference)
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--make-field", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    warp = os.path.join(a.bin_dir, "drdm_warp")
    stats = os.path.join(a.bin_dir, "drdm_field_stats")
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = lambda name: os.path.join(a.workdir, name)  # noqa: E731

    for tool in (warp, stats, a.make_field):
        rc, out, _ = run([tool, "--help"])
        check(rc == 0 and "Usage:" in out, f"{os.path.basename(tool)} --help")
        rc, _, err = run([tool])
        check(rc != 0 and "required" in err.lower(), f"{os.path.basename(tool)} without arguments fails")

    # Analytic statistics: 2 voxels along x on a 50 (x) by 40 (y) grid with
    # 0.5 mm spacing = 1 mm; magnitude 2 / 50 = 4 % of the image size.
    img = image((50, 40), (0.5, 0.7), (3.0, -2.0))
    sitk.WriteImage(img, w("img.nii.gz"))
    sitk.WriteImage(constant_field(img, (1.0, 0.0)), w("shift.nii.gz"))
    rc, out, err = run([stats, "--field", w("shift.nii.gz"), "--json", w("stats.json"),
                        "--jacobian-map", w("jac.nii.gz")])
    check(rc == 0, "field_stats on a constant field: " + err.strip())
    if rc == 0:
        s = json.loads(out)
        check(abs(s["max_magnitude_pct"] - 4.0) < 1e-4, f"max_magnitude_pct = 4 (got {s['max_magnitude_pct']})")
        check(abs(s["mean_magnitude_pct"] - 4.0) < 1e-4, "mean_magnitude_pct = 4")
        check(s["folding_ratio"] == 0.0, "folding_ratio = 0")
        check(abs(s["min_jacobian"] - 1) < 1e-6 and abs(s["max_jacobian"] - 1) < 1e-6, "Jacobian = 1")
        check(json.load(open(w("stats.json"))) == s, "--json file equals stdout")
        jac = sitk.GetArrayFromImage(sitk.ReadImage(w("jac.nii.gz")))
        check(jac.shape == (40, 50) and np.allclose(jac, 1.0), "--jacobian-map readable, all ones")

    # A field that flips x: det = -1 everywhere -> folding ratio 1.
    arr = np.zeros((40, 50, 2), np.float32)
    xs = np.arange(50, dtype=np.float32)
    arr[..., 0] = (49 - 2 * xs)[None, :] * 0.5  # mm along x
    flip = sitk.GetImageFromArray(arr, isVector=True)
    flip.CopyInformation(img)
    sitk.WriteImage(flip, w("flip.nii.gz"))
    rc, out, _ = run([stats, "--field", w("flip.nii.gz")])
    check(rc == 0 and json.loads(out)["folding_ratio"] == 1.0, "reflection has folding_ratio 1")

    # Warping by the constant shift reads the voxel 2 further along x.
    rc, _, err = run([warp, "-i", w("img.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("warped.nii.gz")])
    check(rc == 0, "drdm_warp on an image: " + err.strip())
    if rc == 0:
        src = sitk.GetArrayFromImage(img)
        out_arr = sitk.GetArrayFromImage(sitk.ReadImage(w("warped.nii.gz")))
        check(np.allclose(out_arr[:, :48], src[:, 2:], atol=1e-3) and np.all(out_arr[:, 48:] == 0),
              "constant field shifts by 2 voxels along x, zeros beyond")
    rc, _, _ = run([warp, "-i", w("img.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("warped_b.nii.gz"),
                    "--padding", "border"])
    out_b = sitk.GetArrayFromImage(sitk.ReadImage(w("warped_b.nii.gz")))
    check(rc == 0 and np.allclose(out_b[:, 48:], sitk.GetArrayFromImage(img)[:, 49:50]), "--padding border")

    labels = sitk.GetImageFromArray((np.arange(40 * 50).reshape(40, 50) % 7).astype(np.uint8) * 3)
    labels.CopyInformation(img)
    sitk.WriteImage(labels, w("labels.nii.gz"))
    rc, _, err = run([warp, "-i", w("labels.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("wl.nii.gz"),
                      "--labels", "--label-mode", "soft"])
    check(rc == 0, "drdm_warp --labels: " + err.strip())
    if rc == 0:
        wl = sitk.ReadImage(w("wl.nii.gz"))
        vals = set(np.unique(sitk.GetArrayFromImage(wl)).tolist())
        check(vals <= {0, 3, 6, 9, 12, 15, 18}, f"label classes preserved {sorted(vals)}")
        check(wl.GetPixelID() == sitk.sitkUInt8, "labels written as uint8")

    # drdm_random_field: reproducible per seed, invertible, stats agree.
    rnd = a.make_field
    rc, out1, err = run([rnd, "-r", w("img.nii.gz"), "-o", w("r1.nii.gz"), "--amplitude", "4", "--seed", "7"])
    check(rc == 0, "drdm_random_field: " + err.strip())
    if rc == 0:
        run([rnd, "-r", w("img.nii.gz"), "-o", w("r2.nii.gz"), "--amplitude", "4", "--seed", "7"])
        run([rnd, "-r", w("img.nii.gz"), "-o", w("r3.nii.gz"), "--amplitude", "4", "--seed", "8"])
        f1, f2, f3 = (sitk.GetArrayFromImage(sitk.ReadImage(w(n))) for n in ("r1.nii.gz", "r2.nii.gz", "r3.nii.gz"))
        check(np.array_equal(f1, f2), "same seed -> identical field")
        check(np.abs(f1 - f3).max() > 0.1, "different seed -> different field")
        s_rnd = json.loads(out1)
        rc, out, _ = run([stats, "--field", w("r1.nii.gz")])
        s_file = json.loads(out)
        check(s_rnd["folding_ratio"] == 0.0, "random field is invertible (no folding)")
        check(abs(s_rnd["max_magnitude_pct"] - s_file["max_magnitude_pct"]) < 1e-3,
              "stats printed by drdm_random_field match drdm_field_stats on the written file")
        # Physical units: largest displacement about 4 voxels of 0.5 / 0.7 mm.
        vox = np.linalg.norm(f1 / np.array([0.5, 0.7], np.float32), axis=-1).max()
        check(2.0 < vox < 8.0, f"largest displacement {vox:.2f} voxels for --amplitude 4")
    rc, _, err = run([rnd, "-r", w("img.nii.gz"), "-o", w("r4.nii.gz"), "--control", "1"])
    check(rc != 0 and "--control" in err and not os.path.exists(w("r4.nii.gz")), "drdm_random_field rejects --control 1")

    # --- bad input: clear message naming the file, non-zero exit, no output.
    def expect_error(cmd, name_in_msg, what, output=None):
        rc, _, err = run(cmd)
        ok = rc != 0 and name_in_msg in err
        if output:
            ok = ok and not os.path.exists(output)
        check(ok, f"{what} -> exit {rc}, stderr: {err.strip()[:160]}")

    with open(w("corrupt.nii.gz"), "wb") as f:
        f.write(os.urandom(3000))
    expect_error([warp, "-i", w("img.nii.gz"), "-f", w("corrupt.nii.gz"), "-o", w("o1.nii.gz")],
                 "corrupt.nii.gz", "corrupt field", w("o1.nii.gz"))
    expect_error([warp, "-i", w("corrupt.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("o2.nii.gz")],
                 "corrupt.nii.gz", "corrupt image", w("o2.nii.gz"))
    expect_error([warp, "-i", w("missing.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("o3.nii.gz")],
                 "missing.nii.gz", "missing input", w("o3.nii.gz"))
    expect_error([warp, "-i", w("img.nii.gz"), "-f", w("img.nii.gz"), "-o", w("o4.nii.gz")],
                 "img.nii.gz", "scalar image given as field", w("o4.nii.gz"))
    expect_error([stats, "--field", w("img.nii.gz")], "img.nii.gz", "field_stats on a scalar image")
    other = image((51, 40), (0.5, 0.7))
    sitk.WriteImage(other, w("other.nii.gz"))
    expect_error([warp, "-i", w("other.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("o5.nii.gz")],
                 "does not lie on the grid", "field on another grid", w("o5.nii.gz"))
    nan = sitk.GetArrayFromImage(constant_field(img, (1.0, 0.0)))
    nan[3, 4, 0] = np.nan
    nanf = sitk.GetImageFromArray(nan, isVector=True)
    nanf.CopyInformation(img)
    sitk.WriteImage(nanf, w("nan.mha"))  # SimpleITK's NIfTI writer drops NaNs in vector images
    expect_error([warp, "-i", w("img.nii.gz"), "-f", w("nan.mha"), "-o", w("o6.nii.gz")],
                 "NaN", "NaN in field", w("o6.nii.gz"))
    flt = sitk.GetImageFromArray(sitk.GetArrayFromImage(img) + 0.5)
    flt.CopyInformation(img)
    sitk.WriteImage(flt, w("float_labels.nii.gz"))
    expect_error([warp, "-i", w("float_labels.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("o7.nii.gz"), "--labels"],
                 "non-integer", "non-integer label map", w("o7.nii.gz"))
    expect_error([warp, "-i", w("img.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("o8.png")],
                 "o8.png", "float image into PNG without a PNG type", None)
    expect_error([warp, "-i", w("img.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("no_such_dir/o9.nii.gz")],
                 "no_such_dir", "output folder missing", None)
    expect_error([warp, "-i", w("img.nii.gz"), "-f", w("shift.nii.gz"), "-o", w("o10.nii.gz"), "--padding", "mirror"],
                 "mirror", "invalid --padding value", w("o10.nii.gz"))

    # --- drdm_train / drdm_check_recovery: a real two-step run on a tiny folder.
    train = os.path.join(a.bin_dir, "drdm_train")
    check_rec = os.path.join(a.bin_dir, "drdm_check_recovery")
    data_dir = w("train_data")
    os.makedirs(data_dir, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(4):
        arr = np.kron(rng.random((4, 4)), np.ones((6, 6))).astype(np.float32) * 200 + 10
        sitk.WriteImage(sitk.GetImageFromArray(arr), os.path.join(data_dir, f"case{i}.nii.gz"))
    cfg = w("tiny.json")
    with open(cfg, "w") as f:
        json.dump({"name": "tiny", "data": {"folders": [data_dir], "size": [16, 16], "min_foreground": 0},
                   "sampler": {"control": 16, "levels": 2, "integrated_max": 10},
                   "train": {"batch_size": 2, "steps": 2, "checkpoint_every": 1, "preview_every": 1,
                             "log_every": 1, "device": "cpu", "threads": 1}}, f)
    run_dir = w("tiny_run")
    rc, out, err = run([train, "--config", cfg, "--output", run_dir, "--no-progress"])
    summary = json.loads(out) if rc == 0 else {}
    check(rc == 0 and summary.get("steps") == 2, f"drdm_train runs 2 steps (rc {rc}, {err.strip()[-200:]})")
    for name in ["config.json", "checkpoint.pt", "model.pt", "metrics.jsonl", "previews/step_000002.png"]:
        check(os.path.exists(os.path.join(run_dir, name)), f"drdm_train wrote {name}")
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    check([r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows),
          "metrics.jsonl has one finite row per step")
    rc, out, err = run([train, "--config", cfg, "--output", run_dir, "--resume", "--set", "train.steps=3",
                        "--no-progress"])
    check(rc == 0 and json.loads(out).get("first_step") == 2, f"--resume continues at step 2 ({err.strip()[-160:]})")
    rc, out, err = run([check_rec, "--model", os.path.join(run_dir, "model.pt"), "--data", data_dir,
                        "--levels", "5,40", "--repeats", "1", "--device", "cpu"])
    res = json.loads(out) if rc == 0 else {}
    check(rc == 0 and [l["t"] for l in res.get("levels", [])] == [5, 40]
          and all(l["no_step_error_voxels"] > 0 for l in res["levels"]),
          f"drdm_check_recovery reports both levels ({err.strip()[-160:]})")

    with open(w("typo.json"), "w") as f:
        json.dump({"train": {"batchsize": 2}}, f)
    expect_error([train, "--config", w("typo.json"), "--output", w("typo_run")],
                 "train.batchsize", "mistyped config key", w("typo_run"))
    expect_error([train, "--config", cfg, "--output", w("set_run"), "--set", "sampler.sigmaa=1"],
                 "sampler.sigmaa", "mistyped --set key", w("set_run"))
    expect_error([train, "--config", cfg, "--output", w("res_run"), "--resume"],
                 "checkpoint", "--resume without a checkpoint", None)
    expect_error([check_rec, "--model", w("corrupt.nii.gz"), "--data", data_dir],
                 "corrupt.nii.gz", "check_recovery with a file that is no model", None)

    leftovers = [n for n in os.listdir(a.workdir) if n.startswith(".drdm-tmp")]
    check(not leftovers, f"no temporary files left behind {leftovers}")

    print(f"cli: {len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
