"""Helpers the command-line test scripts share: checks that collect failures, and running a program."""

import os
import subprocess

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def run(cmd, timeout=600, env=None):
    """Runs `cmd`; `env` replaces the environment when given. Returns (exit code, stdout, stderr)."""
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr


def unmount_under(folder):
    """Unmounts what is mounted under `folder`: a test killed at its time limit
    (cli_harden_write's full-disk tmpfs) would otherwise block its next run."""
    folder = os.path.realpath(folder)
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f]
    except OSError:
        return
    for m in sorted(mounts, reverse=True):
        if m == folder or m.startswith(folder + "/"):
            subprocess.run(["umount", m], capture_output=True)


def start(extra=()):
    """Parses --bin-dir, --workdir and the `extra` (name, help) options; empties the workdir."""
    import argparse
    import shutil
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--workdir", required=True)
    for name, help_text in extra:
        ap.add_argument(name, required=True, help=help_text)
    args = ap.parse_args()
    unmount_under(args.workdir)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    return args


def finish(name, workdir):
    """Checks that no temporary folder is left anywhere under `workdir`; prints and returns the exit code."""
    left = [os.path.join(r, d) for r, ds, _ in os.walk(workdir) for d in ds if d.startswith(".drdm-tmp")]
    check(not left, f"no temporary folders left behind {left}")
    print(f"{name}: {len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


# ---------------------------------------------------------------------------
# Files and tiny datasets the drdm_deform tests share (numpy and SimpleITK are
# imported where used, so that scripts without them can still use the above).

def files_under(folder):
    """Every file under `folder`, relative to it, sorted."""
    out = []
    for root, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, n), folder) for n in names]
    return sorted(out)


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def load(path):
    import json
    with open(path) as f:
        return json.load(f)


def smooth_image(shape, seed):
    """Blocky random image (numpy `shape`: 2D, or 3D with a few slices), float32."""
    import numpy as np
    import SimpleITK as sitk
    rng = np.random.default_rng(seed)
    coarse = rng.random(tuple(n // 4 + 1 for n in shape))
    arr = np.kron(coarse, np.ones([4] * len(shape)))[tuple(slice(0, n) for n in shape)]
    img = sitk.GetImageFromArray((arr * 150 + 20 + rng.random(shape) * 5).astype(np.float32))
    img.SetSpacing((1.2, 0.8, 3.0)[: len(shape)])
    return img


def label_map(img):
    """Classes {0, 1, 2, 3} from the image's quantiles, uint8, on its grid."""
    import numpy as np
    import SimpleITK as sitk
    arr = sitk.GetArrayFromImage(img)
    lab = sitk.GetImageFromArray(np.digitize(arr, np.quantile(arr, [0.3, 0.6, 0.85])).astype(np.uint8))
    lab.CopyInformation(img)
    return lab


def make_msd_dataset(msd, names, tests, shape):
    """An MSD dataset in `msd`: cases `names` with labels, test images `tests` (the last one labelled),
    dataset.json with training and test lists. Returns the dataset.json written."""
    import json
    import SimpleITK as sitk
    for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(msd, d))
    for i, n in enumerate(names):
        im = smooth_image(shape, 20 + i)
        sitk.WriteImage(im, os.path.join(msd, "imagesTr", n + ".nii.gz"))
        sitk.WriteImage(label_map(im), os.path.join(msd, "labelsTr", n + ".nii.gz"))
    for i, n in enumerate(tests):
        im = smooth_image(shape, 90 + i)
        sitk.WriteImage(im, os.path.join(msd, "imagesTs", n + ".nii.gz"))
    sitk.WriteImage(label_map(im), os.path.join(msd, "labelsTs", tests[-1] + ".nii.gz"))
    dj = {"name": "Toy", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "a", "2": "b", "3": "c"},
          "numTraining": len(names), "numTest": len(tests),
          "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
          "test": [f"./imagesTs/{n}.nii.gz" for n in tests]}
    with open(os.path.join(msd, "dataset.json"), "w") as f:
        json.dump(dj, f)
    return dj


def make_nnunet_dataset(src, cases, shape=(36, 44)):
    """An nnU-Net v2 dataset in `src`: 2 channels per case (channel 1 = 2 channel 0 + 5), labels, a
    2-channel test case in imagesTs/, and its own splits_final.json of 3 folds validating consecutive
    thirds of `cases`. Returns those folds."""
    import json
    import SimpleITK as sitk
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(src, d))
    for i, n in enumerate(cases):
        im = smooth_image(shape, 40 + i)
        sitk.WriteImage(im, os.path.join(src, "imagesTr", n + "_0000.nii.gz"))
        sitk.WriteImage(sitk.Cast(im * 2.0 + 5.0, sitk.sitkFloat32), os.path.join(src, "imagesTr", n + "_0001.nii.gz"))
        sitk.WriteImage(label_map(im), os.path.join(src, "labelsTr", n + ".nii.gz"))
    for c in ("0000", "0001"):
        sitk.WriteImage(smooth_image(shape, 77), os.path.join(src, "imagesTs", f"new_{c}.nii.gz"))
    with open(os.path.join(src, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1, "b": 2, "c": 3},
                   "numTraining": len(cases), "file_ending": ".nii.gz"}, f)
    cut = [round(k * len(cases) / 3) for k in range(4)]
    own = [{"train": cases[:cut[k]] + cases[cut[k + 1]:], "val": cases[cut[k]:cut[k + 1]]} for k in range(3)]
    with open(os.path.join(src, "splits_final.json"), "w") as f:
        json.dump(own, f)
    return own
