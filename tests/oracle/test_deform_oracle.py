#!/usr/bin/env python3
"""SimpleITK oracle for drdm_deform's outputs.

drdm_deform writes, per sample, the generated field (an ITK displacement
field in mm, LPS) beside the image and labels it warped with that field. An
independent implementation, SimpleITK (DisplacementFieldTransform + Resample
of the ORIGINAL input, linear for images, nearest neighbour for labels,
default value 0), applied to the written field must reproduce the written
image and labels. Cases: a 2D image with anisotropic spacing, an origin and a
rotated direction; a 3D volume deformed slice by slice by the 2D default
model (rotated direction too); and pairs mode, where resampling `moving` with
the written target field phi_syn must give `fixed` (approximately: two
resamplings against drdm's one resampling by the composed field), and
resampling the input through SimpleITK's CompositeTransform of the written
phi_aug (moving_fields/) and phi_syn must give `fixed` exactly, since
fixed(x) = I(x + phi(x)) with phi = compose(phi_syn, phi_aug).
Negative controls (the field's components reversed, or no warp at all) must
fail the same comparisons, so the checks can fail.

usage: test_deform_oracle.py --deform DRDM_DEFORM --workdir DIR
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_simpleitk_oracle import Checks, rotation, same_geometry, sitk_warp, synthetic_image  # noqa: E402

# Same warp, two implementations: linear interpolation of the same image at the
# same points, so they differ only by float32 rounding of the sample
# coordinates (drdm: float32 grid_sample; ITK: double) times the image
# gradient. For these smooth images (|grad| < 0.2 x range per voxel) a 1e-4
# voxel coordinate error is < 2e-5 x range; 1e-3 x range leaves a wide margin
# and is the tolerance the drdm_warp oracle uses.
TOLERANCE = 1e-3
# A negative control must err by at least this much (x image range).
NEGATIVE_MIN = 10 * TOLERANCE
# Nearest neighbour disagrees only where a sample point lies (within float
# rounding) half-way between two voxels of different classes.
LABEL_AGREEMENT = 0.99
# Pairs: drdm computes fixed = I(x + phi(x)) with phi = compose(syn, aug),
# one linear resampling of I (and the composition itself linearly samples the
# smooth field aug at x + syn(x)); the oracle resamples `moving` (already
# resampled once) at x + syn(x). Linear interpolation of a function with
# second derivative f'' errs by at most |f''| h^2 / 8 per axis, here h <= 1
# voxel, with |f''| of these images a few % of the range per voxel^2, so the
# two routes differ by ~1e-2 x range at worst and much less on average.
# The negative controls (fixed vs moving; the target field negated) err by
# 3e-2 and 6e-2 on average, ten times PAIR_MEAN.
PAIR_MAX = 0.02      # max |diff| over the interior, x range (seen: 5e-3)
PAIR_MEAN = 0.003    # mean |diff| over the interior, x range (seen: 6e-4)
# Labels, nearest twice vs once: class boundaries may move by a voxel, so
# disagreement is bounded by the fraction of voxels near a boundary (~15 %
# for these 4-class maps); what must hold exactly is that every disagreement
# lies within 2 voxels of a class boundary.
PAIR_LABEL_AGREEMENT = 0.9


def run(cmd):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s%s" % (
            proc.returncode, " ".join(map(str, cmd)), proc.stdout, proc.stderr))
    return proc.stdout


def make_case(work, size_xyz, spacing, origin, seed):
    """A smooth image and a 4-class label map (quantiles of the image)."""
    image_path = os.path.join(work, "image.nii.gz")
    labels_path = os.path.join(work, "labels.nii.gz")
    sitk.WriteImage(synthetic_image(size_xyz, spacing, origin, seed), image_path)
    image = sitk.ReadImage(image_path)  # geometry exactly as stored
    values = sitk.GetArrayFromImage(image)
    labels = sitk.GetImageFromArray(np.digitize(values, np.quantile(values, [0.4, 0.7, 0.9])).astype(np.uint8))
    labels.CopyInformation(image)
    sitk.WriteImage(labels, labels_path)
    return image_path, labels_path, image, sitk.ReadImage(labels_path)


def voxel_field(field):
    """Written field (mm, ITK order, components last) -> voxel displacements per ITK axis."""
    d = field.GetDimension()
    phys = sitk.GetArrayFromImage(field).astype(np.float64)
    m = np.array(field.GetDirection()).reshape(d, d) @ np.diag(field.GetSpacing())
    return phys, phys @ np.linalg.inv(m).T


def sample_mask(vox, margin, in_plane=None):
    """Voxels at least `margin` from the border (along the axes in `in_plane`,
    numpy order) whose sample point x + u(x) lies at least one voxel inside the
    grid, where zero padding (drdm) and ITK's buffer test cannot differ."""
    shape = vox.shape[:-1]
    d = len(shape)
    axes = range(d) if in_plane is None else in_plane
    mask = np.ones(shape, dtype=bool)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    for a in axes:
        n = shape[a]
        idx = np.arange(n)
        keep = (idx >= margin) & (idx < n - margin)
        mask &= keep.reshape([-1 if k == a else 1 for k in range(d)])
        pos = grids[a] + vox[..., d - 1 - a]  # vox is in ITK (x first) order
        mask &= (pos >= 1.0) & (pos <= n - 2.0)
    return mask


def boundary(labels, radius):
    """Voxels with another class within `radius` voxels (chessboard distance)."""
    d = labels.ndim
    padded = np.pad(labels, radius, mode="edge")
    out = np.zeros(labels.shape, dtype=bool)
    for offset in np.ndindex(*([2 * radius + 1] * d)):
        window = padded[tuple(slice(o, o + n) for o, n in zip(offset, labels.shape))]
        out |= window != labels
    return out


def vector_image(array, reference):
    image = sitk.GetImageFromArray(array.astype(np.float64), isVector=True)
    image.CopyInformation(reference)
    return image


def compare_deform(checks, name, out, sample, image, labels, in_plane=None):
    """The written image / labels against SimpleITK applying the written field."""
    d = image.GetDimension()
    field = sitk.ReadImage(os.path.join(out, sample["outputs"]["field"]))
    checks.expect(field.GetNumberOfComponentsPerPixel() == d and same_geometry(field, image),
                  "%s: field is a %d-vector image on the input's grid" % (name, d))
    phys, vox = voxel_field(field)
    if in_plane is not None:
        through = [a for a in range(d) if a not in in_plane][0]
        checks.expect(np.abs(vox[..., d - 1 - through]).max() < 1e-4,
                      "%s: slice-wise field has no through-plane displacement (max %.2g voxels)"
                      % (name, np.abs(vox[..., d - 1 - through]).max()))
    peak = np.linalg.norm(vox, axis=-1).max()
    checks.expect(peak > 1.0, "%s: the field moves voxels (max %.2f voxels)" % (name, peak))
    warped = sitk.ReadImage(os.path.join(out, sample["outputs"]["image"]))
    checks.expect(same_geometry(warped, image), "%s: warped image keeps the geometry" % name)
    ours = sitk.GetArrayFromImage(warped).astype(np.float64)
    values = sitk.GetArrayFromImage(image).astype(np.float64)
    value_range = float(values.max() - values.min())
    mask = sample_mask(vox, 2, in_plane)
    checks.expect(mask.mean() > 0.5, "%s: %.2f of the voxels are in the comparison mask" % (name, mask.mean()))

    def error(f):
        theirs = sitk.GetArrayFromImage(sitk_warp(image, f, sitk.sitkLinear)).astype(np.float64)
        return np.abs(ours - theirs)[mask].max() / value_range

    err = error(field)
    checks.expect(err < TOLERANCE, "%s: drdm_deform image vs SimpleITK linear resampling: max |diff| = %.3g x "
                  "range (tolerance %.0e)" % (name, err, TOLERANCE))
    moved = np.abs(ours - values)[mask].max() / value_range
    checks.expect(moved > NEGATIVE_MIN, "%s: negative control, no warp: %.3g x range" % (name, moved))
    bad = error(vector_image(phys[..., ::-1], field))
    checks.expect(bad > NEGATIVE_MIN, "%s: negative control, components reversed: %.3g x range" % (name, bad))

    ours_l = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, sample["outputs"]["labels"])))
    theirs_l = sitk.GetArrayFromImage(sitk_warp(labels, field, sitk.sitkNearestNeighbor))
    agree = (ours_l == theirs_l)[mask].mean()
    checks.expect(agree >= LABEL_AGREEMENT, "%s: labels vs SimpleITK nearest neighbour: %.4f agree (need %.2f)"
                  % (name, agree, LABEL_AGREEMENT))
    classes = set(np.unique(sitk.GetArrayFromImage(labels)).tolist())
    checks.expect(set(np.unique(ours_l).tolist()) <= classes, "%s: no class absent from the input labels" % name)
    unmoved = (sitk.GetArrayFromImage(labels) == ours_l)[mask].mean()
    checks.expect(unmoved < agree, "%s: negative control, unwarped labels agree less (%.4f)" % (name, unmoved))
    return err


def deform_case(args, checks, name, size_xyz, spacing, origin, level, seed, in_plane=None):
    work = os.path.join(args.workdir, name)
    os.makedirs(work)
    image_path, labels_path, image, labels = make_case(work, size_xyz, spacing, origin, seed)
    out = os.path.join(work, "out")
    run([args.deform, "-i", image_path, "-l", labels_path, "-o", out, "--levels", str(level), "--samples", "1",
         "--seed", str(seed), "--threads", "1", "--no-preview", "--no-progress", "-q"])
    with open(os.path.join(out, "manifest.json")) as f:
        samples = json.load(f)["samples"]
    checks.expect(len(samples) == 1, "%s: one sample in the manifest" % name)
    return compare_deform(checks, name, out, samples[0], image, labels, in_plane)


def pairs_case(args, checks, name, size_xyz, spacing, origin, level, seed):
    work = os.path.join(args.workdir, name)
    os.makedirs(work)
    image_path, labels_path, image, labels = make_case(work, size_xyz, spacing, origin, seed)
    out = os.path.join(work, "out")
    run([args.deform, "-i", image_path, "-l", labels_path, "-o", out, "--mode", "pairs", "--levels", level,
         "--samples", "1", "--seed", str(seed), "--threads", "1", "--no-preview", "--no-progress", "-q"])
    with open(os.path.join(out, "manifest.json")) as f:
        s = json.load(f)["samples"][0]
    o = s["outputs"]
    # moving = the input warped by moving_field: the exact oracle as above.
    moving_sample = {"outputs": {"field": o["moving_field"], "image": o["moving"], "labels": o["moving_labels"]}}
    compare_deform(checks, name + " moving", out, moving_sample, image, labels)

    # fixed ~ moving resampled with the target field phi_syn.
    moving = sitk.ReadImage(os.path.join(out, o["moving"]))
    field = sitk.ReadImage(os.path.join(out, o["field"]))
    checks.expect(same_geometry(field, image) and same_geometry(moving, image),
                  "%s: target field and moving on the input's grid" % name)
    phys, vox = voxel_field(field)
    aug = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(os.path.join(out, o["moving_field"])),
                                                    sitk.sitkVectorFloat64))
    syn = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    # The total displacement x -> x + syn(x) + aug(x + syn(x)), by SimpleITK,
    # for the mask: both x + syn(x) and the total sample point inside the grid.
    total = sitk.TransformToDisplacementField(sitk.CompositeTransform([aug, syn]), sitk.sitkVectorFloat64,
                                              image.GetSize(), image.GetOrigin(), image.GetSpacing(),
                                              image.GetDirection())
    mask = sample_mask(vox, 2) & sample_mask(voxel_field(total)[1], 2)
    checks.expect(mask.mean() > 0.5, "%s: %.2f of the voxels are in the comparison mask" % (name, mask.mean()))
    fixed = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, o["fixed"]))).astype(np.float64)
    value_range = float(np.ptp(sitk.GetArrayFromImage(image)))

    def errors(f):
        theirs = sitk.GetArrayFromImage(sitk_warp(moving, f, sitk.sitkLinear)).astype(np.float64)
        diff = np.abs(fixed - theirs)[mask] / value_range
        return diff.max(), diff.mean()

    emax, emean = errors(field)
    checks.expect(emax < PAIR_MAX and emean < PAIR_MEAN,
                  "%s: fixed vs SimpleITK(moving, target field): max %.3g, mean %.3g x range (tolerance %.0e, %.0e)"
                  % (name, emax, emean, PAIR_MAX, PAIR_MEAN))
    moving_arr = sitk.GetArrayFromImage(moving).astype(np.float64)
    still = np.abs(fixed - moving_arr)[mask] / value_range
    checks.expect(still.mean() > 3 * PAIR_MEAN, "%s: negative control, fixed vs moving: mean %.3g x range"
                  % (name, still.mean()))
    bmax, bmean = errors(vector_image(-phys, field))
    checks.expect(bmean > 3 * PAIR_MEAN, "%s: negative control, target field negated: mean %.3g x range"
                  % (name, bmean))

    moving_l = sitk.ReadImage(os.path.join(out, o["moving_labels"]))
    fixed_l = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, o["fixed_labels"])))
    theirs_l = sitk.GetArrayFromImage(sitk_warp(moving_l, field, sitk.sitkNearestNeighbor))
    agree = (fixed_l == theirs_l)[mask].mean()
    # Nearest neighbour twice: the sample point is rounded to the grid of
    # `moving` first (up to 0.5 voxel per axis, then moved by phi_aug), so the
    # two routes can differ only within a voxel or two of a class boundary.
    near_boundary = boundary(fixed_l, 2)
    off_boundary = ((fixed_l != theirs_l) & mask & ~near_boundary).sum()
    checks.expect(agree >= PAIR_LABEL_AGREEMENT and off_boundary == 0,
                  "%s: fixed labels vs SimpleITK(moving labels, target field, nearest): %.4f agree (need %.2f), "
                  "%d disagreements farther than 2 voxels from a class boundary (need 0)"
                  % (name, agree, PAIR_LABEL_AGREEMENT, off_boundary))
    classes = set(np.unique(sitk.GetArrayFromImage(labels)).tolist())
    checks.expect(set(np.unique(fixed_l).tolist()) <= classes, "%s: fixed labels: no new class" % name)

    # Exact route: fixed = I(x + phi(x)), phi = compose(syn, aug): one
    # resampling of the input through ITK's composite transform (the last
    # transform added acts first on the point: syn, then aug) reproduces
    # fixed to float rounding, like the deform cases.
    def composite_error(transforms):
        t = sitk.CompositeTransform(transforms)
        theirs = sitk.GetArrayFromImage(sitk.Resample(image, image, t, sitk.sitkLinear, 0.0)).astype(np.float64)
        return np.abs(fixed - theirs)[mask].max() / value_range, t

    cerr, t = composite_error([aug, syn])
    checks.expect(cerr < TOLERANCE, "%s: fixed vs SimpleITK(input, composite [aug, syn]): max %.3g x range "
                  "(tolerance %.0e)" % (name, cerr, TOLERANCE))
    theirs_l = sitk.GetArrayFromImage(sitk.Resample(labels, labels, t, sitk.sitkNearestNeighbor, 0))
    agree = (fixed_l == theirs_l)[mask].mean()
    checks.expect(agree >= LABEL_AGREEMENT, "%s: fixed labels vs SimpleITK(labels, composite, nearest): %.4f "
                  "agree (need %.2f)" % (name, agree, LABEL_AGREEMENT))
    rerr, _ = composite_error([syn, aug])
    checks.expect(rerr > NEGATIVE_MIN, "%s: negative control, composition in the other order: %.3g x range"
                  % (name, rerr))
    return cerr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deform", required=True, help="drdm_deform program")
    parser.add_argument("--workdir", required=True, help="scratch folder (recreated)")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    checks = Checks()
    results = {}
    cases = [
        (deform_case, "deform-2d", (56, 48), (0.8, 1.3), (-20.5, 13.25), 20, 21),
        # 6 slices along D (tensor axis 0, the model's slice axis): in-plane
        # axes are numpy axes 1 and 2.
        (deform_case, "deform-3d-slices", (40, 36, 6), (0.9, 1.2, 2.5), (10.5, -20.25, 35.0), 20, 22, [1, 2]),
        (pairs_case, "pairs-2d", (56, 48), (1.1, 0.7), (5.0, 2.5), "15:15", 23),
    ]
    for fn, *case in cases:
        print("%s: %s voxels, spacing %s, origin %s, rotated direction" % (case[0], "x".join(map(str, case[1])),
                                                                           case[2], case[3]))
        results[case[0]] = checks.run(case[0], fn, args, checks, *case)
    return checks.finish("summary: max |drdm_deform - SimpleITK| / range", results)


if __name__ == "__main__":
    sys.exit(main())
