#!/usr/bin/env python3
"""SimpleITK / scipy oracle for drdm::seg::label_metrics (docs/metrics.md).

Real ACDC label volumes are compared with perturbed copies of themselves
(shifted by a few voxels, eroded with scipy, a class removed from the
prediction or from the truth), written as NIfTI with the original spacing and
with non-unit anisotropic spacings. libdrdm's numbers (seg_metrics_tool, which
reads both files with drdm's image IO and prints JSON) must match:
  * Dice: SimpleITK's LabelOverlapMeasuresImageFilter;
  * sensitivity: 1 - its false negative error; precision: from its Dice and
    sensitivity (1/p = 2/dice - 1/sens), and both also counted with numpy;
  * ASD / HD95: surfaces from scipy.ndimage.binary_erosion (cross structuring
    element, border_value=0), distances from
    scipy.ndimage.distance_transform_edt(sampling=spacing), HD95 with
    numpy.percentile (linear).
Negative controls (the oracle with the spacing in the wrong axis order, or
with 26-connected surfaces) must disagree, proving the comparison can fail.

usage: test_seg_metrics_oracle.py --tool SEG_METRICS_TOOL --data ACDC_LABEL_DIR --workdir DIR
Exits 77 (skipped) when the data folder is missing.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as nd

CLASSES = (1, 2, 3)
OVERLAP_TOL = 1e-9
DISTANCE_TOL = 1e-4  # mm
NEGATIVE_MIN = 100 * DISTANCE_TOL
PATIENTS = ("patient001_frame01", "patient002_frame02", "patient010_frame01", "patient050_frame02")
SPACINGS = [None, (1.5, 1.5, 8.0), (1.25, 1.75, 6.5)]  # ITK order (x, y, z); None = as stored


# ---- the oracle ---------------------------------------------------------------

def surface(mask, connectivity=1):
    structure = nd.generate_binary_structure(mask.ndim, connectivity)
    return mask & ~nd.binary_erosion(mask, structure=structure, border_value=0)


def directed(from_mask, to_mask, sampling, connectivity=1):
    dist = nd.distance_transform_edt(~surface(to_mask, connectivity), sampling=sampling)
    return dist[surface(from_mask, connectivity)]


def distance_oracle(pred, truth, sampling, connectivity=1):
    """(asd, hd95) for non-empty boolean masks, numpy axis order sampling."""
    pt = directed(pred, truth, sampling, connectivity)
    tp = directed(truth, pred, sampling, connectivity)
    return float(np.mean(np.concatenate([pt, tp]))), float(max(np.percentile(pt, 95), np.percentile(tp, 95)))


def oracle(pred_img, truth_img):
    """Expected metrics per class from SimpleITK, numpy and scipy."""
    pred, truth = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(truth_img)
    sampling = truth_img.GetSpacing()[::-1]  # numpy order (z, y, x)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(pred_img, truth_img)
    out = {}
    for c in CLASSES:
        p, t = pred == c, truth == c
        n_p, n_t, tp = int(p.sum()), int(t.sum()), int((p & t).sum())
        e = {"pred_voxels": n_p, "truth_voxels": n_t}
        if n_p == 0 and n_t == 0:
            e.update(dice=1.0, sensitivity=1.0, precision=1.0, asd=0.0, hd95=0.0)
        elif n_p == 0 or n_t == 0:
            e.update(dice=0.0, sensitivity=tp / n_t if n_t else None,
                     precision=tp / n_p if n_p else None, asd=None, hd95=None)
        else:
            dice = overlap.GetDiceCoefficient(c)
            sens = 1.0 - overlap.GetFalseNegativeError(c)
            numpy_sens, numpy_prec = tp / n_t, tp / n_p
            if abs(sens - numpy_sens) > OVERLAP_TOL:
                raise AssertionError("oracle self-check: SimpleITK sensitivity %r != numpy %r" % (sens, numpy_sens))
            prec = 1.0 / (2.0 / dice - 1.0 / sens) if tp else 0.0
            if abs(prec - numpy_prec) > OVERLAP_TOL:
                raise AssertionError("oracle self-check: SimpleITK precision %r != numpy %r" % (prec, numpy_prec))
            asd, hd95 = distance_oracle(p, t, sampling)
            e.update(dice=dice, sensitivity=sens, precision=prec, asd=asd, hd95=hd95)
        out[c] = e
    return out


# ---- cases ----------------------------------------------------------------------

def shifted(a, shift):
    """a moved by `shift` voxels per numpy axis, zero filled."""
    out = np.zeros_like(a)
    src = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(shift, a.shape))
    dst = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(shift, a.shape))
    out[dst] = a[src]
    return out


def eroded(a, iterations):
    """Each class eroded in-plane (2D cross per slice) `iterations` times."""
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = nd.generate_binary_structure(2, 1)
    out = np.zeros_like(a)
    for c in CLASSES:
        out[nd.binary_erosion(a == c, structure=structure, iterations=iterations, border_value=0)] = c
    return out


def without(a, c):
    out = a.copy()
    out[out == c] = 0
    return out


def perturbations(truth):
    """(name, pred, truth) triples."""
    return [
        ("shift(0,2,-3)", shifted(truth, (0, 2, -3)), truth),
        ("shift(1,0,1)", shifted(truth, (1, 0, 1)), truth),
        ("erode2", eroded(truth, 2), truth),
        ("pred-without-2", without(truth, 2), truth),
        ("truth-without-3", shifted(truth, (0, -1, 0)), without(truth, 3)),
    ]


def as_image(array, reference, spacing):
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.CopyInformation(reference)
    if spacing is not None:
        img.SetSpacing(spacing)
    return img


# ---- comparing ---------------------------------------------------------------------

def run_tool(tool, pred_path, truth_path):
    proc = subprocess.run([tool, pred_path, truth_path] + [str(c) for c in CLASSES],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("seg_metrics_tool failed (%d): %s%s" % (proc.returncode, proc.stdout, proc.stderr))
    result = json.loads(proc.stdout)
    return result, {e["label"]: e for e in result["classes"]}


MAX_ERROR = {}  # largest |ours - oracle| per metric, for the log


def mismatches(ours, expected, where):
    errors = []
    for c in CLASSES:
        o, e = ours[c], expected[c]
        for key in ("pred_voxels", "truth_voxels"):
            if o[key] != e[key]:
                errors.append("%s class %d %s: ours %r, oracle %r" % (where, c, key, o[key], e[key]))
        for key, tol in (("dice", OVERLAP_TOL), ("sensitivity", OVERLAP_TOL), ("precision", OVERLAP_TOL),
                         ("asd", DISTANCE_TOL), ("hd95", DISTANCE_TOL)):
            a, b = o[key], e[key]
            if a is not None and b is not None:
                MAX_ERROR[key] = max(MAX_ERROR.get(key, 0.0), abs(a - b))
            if (a is None) != (b is None) or (a is not None and not abs(a - b) <= tol):
                errors.append("%s class %d %s: ours %r, oracle %r" % (where, c, key, a, b))
    return errors


def negative_controls(ours, pred_img, truth_img):
    """Largest |ours - oracle| over the distances when the oracle is wrong on purpose."""
    pred, truth = sitk.GetArrayFromImage(pred_img), sitk.GetArrayFromImage(truth_img)
    sampling = truth_img.GetSpacing()[::-1]
    worst = {"spacing in ITK order": 0.0, "26-connected surfaces": 0.0}
    for c in CLASSES:
        p, t = pred == c, truth == c
        if not p.any() or not t.any():
            continue
        for name, args in (("spacing in ITK order", (sampling[::-1], 1)), ("26-connected surfaces", (sampling, 3))):
            asd, hd95 = distance_oracle(p, t, *args)
            worst[name] = max(worst[name], abs(asd - ours[c]["asd"]), abs(hd95 - ours[c]["hd95"]))
    return worst


def check_bad_input(tool, workdir, truth_path):
    """Different grids: the tool fails and names both shapes."""
    truth = sitk.ReadImage(truth_path)
    cropped = truth[:-3, :, :]
    path = os.path.join(workdir, "cropped.nii.gz")
    sitk.WriteImage(cropped, path)
    proc = subprocess.run([tool, path, truth_path], capture_output=True, text=True)
    z, y, x = sitk.GetArrayFromImage(truth).shape
    want = ["[1, 1, %d, %d, %d]" % (z, y, x - 3), "[1, 1, %d, %d, %d]" % (z, y, x)]
    if proc.returncode == 0 or not all(w in proc.stderr for w in want):
        return ["bad input: expected a failure naming %s, got rc %d: %s" % (want, proc.returncode, proc.stderr)]
    return []


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tool", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    files = [os.path.join(args.data, p + ".nii.gz") for p in PATIENTS]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
        print("SKIP: no ACDC labels at %s" % missing)
        return 77
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)

    errors, compared = [], 0
    worst_negative = {}
    for i, path in enumerate(files):
        reference = sitk.ReadImage(path)
        original = sitk.GetArrayFromImage(reference)
        for j, (name, pred, truth) in enumerate(perturbations(original)):
            spacing = SPACINGS[(i + j) % len(SPACINGS)]
            pred_img, truth_img = as_image(pred, reference, spacing), as_image(truth, reference, spacing)
            stem = os.path.join(args.workdir, "%s_%d" % (PATIENTS[i], j))
            sitk.WriteImage(pred_img, stem + "_pred.nii.gz")
            sitk.WriteImage(truth_img, stem + "_truth.nii.gz")
            result, ours = run_tool(args.tool, stem + "_pred.nii.gz", stem + "_truth.nii.gz")
            where = "%s %s spacing %s" % (PATIENTS[i], name, truth_img.GetSpacing())
            if not np.allclose(result["spacing"], truth_img.GetSpacing()[::-1]):
                errors.append("%s: tool used spacing %r" % (where, result["spacing"]))
            expected = oracle(pred_img, truth_img)
            errors += mismatches(ours, expected, where)
            compared += 1
            for k, v in negative_controls(ours, pred_img, truth_img).items():
                worst_negative[k] = max(worst_negative.get(k, 0.0), v)
            print("%-45s %s" % (where, "  ".join(
                "c%d dice %.4f asd %s hd95 %s" % (c, ours[c]["dice"],
                                                  "nan" if ours[c]["asd"] is None else "%.3f" % ours[c]["asd"],
                                                  "nan" if ours[c]["hd95"] is None else "%.3f" % ours[c]["hd95"])
                for c in CLASSES)))
    errors += check_bad_input(args.tool, args.workdir, files[0])
    print("largest |ours - oracle|: " + ", ".join("%s %.3g" % kv for kv in sorted(MAX_ERROR.items())))
    for name, worst in worst_negative.items():
        print("negative control (%s): largest disagreement %.4f mm" % (name, worst))
        if not worst > NEGATIVE_MIN:
            errors.append("negative control '%s' agreed with ours (%.2g mm): the comparison cannot fail" % (name, worst))
    if errors:
        print("FAILED:\n  " + "\n  ".join(errors))
        return 1
    print("OK: %d cases x %d classes agree with SimpleITK / scipy" % (compared, len(CLASSES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
