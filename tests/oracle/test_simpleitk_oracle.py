#!/usr/bin/env python3
"""SimpleITK oracle for libdrdm's displacement fields.

A field written by libdrdm (drdm_random_field -> drdm::write_field) is an
ITK vector image of physical displacements (mm, LPS). Applied by SimpleITK
(DisplacementFieldTransform + Resample on the original image) it must give
what libdrdm's own warp gives (drdm_warp -> drdm::read_field + drdm::warp).
Images have anisotropic spacing, a non-zero origin and a rotated direction,
so a mistake in units, axis order or direction shows up. Negative controls
(the same field with its components reversed, its sign flipped, or left in
voxel units) must disagree, proving the comparison can fail.

usage: test_simpleitk_oracle.py --warp DRDM_WARP --make-field MAKE_FIELD --workdir DIR
"""
import argparse
import os
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

MARGIN = 4          # interior mask: voxels at least this far from the border
TOLERANCE = 1e-3    # max |drdm - SimpleITK| over the interior, x image range
NEGATIVE_MIN = 10 * TOLERANCE  # a negative control must err by at least this x range
LABEL_AGREEMENT = 0.995


def rotation(d):
    """A proper rotation, far from axis-aligned, row-major."""
    if d == 2:
        a = 0.45
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    a, b, c = 0.5, -0.35, 0.8
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


def synthetic_image(size_xyz, spacing, origin, seed):
    """Smooth image: Gaussian blobs plus a gentle sinusoid, float32."""
    rng = np.random.default_rng(seed)
    d = len(size_xyz)
    shape = tuple(reversed(size_xyz))  # numpy order (z,) y, x
    coords = np.meshgrid(*[np.linspace(0.0, 1.0, n) for n in shape], indexing="ij")
    values = np.zeros(shape)
    for _ in range(8):
        centre = rng.uniform(0.15, 0.85, d)
        width = rng.uniform(0.08, 0.2)
        r2 = sum((c - m) ** 2 for c, m in zip(coords, centre))
        values += rng.uniform(30.0, 100.0) * np.exp(-r2 / (2 * width ** 2))
    freq = rng.uniform(1.0, 2.5, d)
    values += 15.0 * np.sin(2 * np.pi * sum(f * c for f, c in zip(freq, coords)))
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(rotation(d).ravel()))
    return image


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s%s" % (
            proc.returncode, " ".join(cmd), proc.stdout, proc.stderr))


def same_geometry(a, b, tol=1e-5):
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def interior(shape):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(MARGIN, n - MARGIN) for n in shape)] = True
    return mask


def vector_image(array, reference):
    """Vector image (components last) on the grid of `reference`."""
    image = sitk.GetImageFromArray(array.astype(np.float64), isVector=True)
    image.CopyInformation(reference)
    return image


def sitk_warp(image, field, interpolator):
    """ITK's pull-back: out(p) = image(p + field(p)), field in mm."""
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.Resample(image, image, transform, interpolator, 0.0, image.GetPixelID())


class Checks:
    def __init__(self):
        self.failures = []

    def expect(self, ok, what):
        print("  [%s] %s" % ("ok" if ok else "FAIL", what))
        if not ok:
            self.failures.append(what)

    def run(self, name, fn, *args):
        """fn(*args) -> a result; a crash is a failure, with its reason."""
        try:
            return fn(*args)
        except Exception as e:
            self.expect(False, "%s: %s" % (name, e))
            return None

    def finish(self, summary, results):
        """Prints the summary of per-case results and the verdict; the exit status."""
        print("%s: %s" % (summary, ", ".join("%s %.3g" % kv for kv in results.items() if kv[1] is not None)))
        if self.failures:
            print("FAILED %d check(s):\n  %s" % (len(self.failures), "\n  ".join(self.failures)))
            return 1
        print("all checks passed")
        return 0


def run_case(args, checks, name, size_xyz, spacing, origin, image_ext, field_ext, seed):
    d = len(size_xyz)
    amplitude = 2.5
    print("%s: %s voxels, spacing %s, origin %s, rotated direction; image %s, field %s" % (
        name, "x".join(map(str, size_xyz)), spacing, origin, image_ext, field_ext))
    work = os.path.join(args.workdir, name)
    os.makedirs(work)
    image_path = os.path.join(work, "image" + image_ext)
    labels_path = os.path.join(work, "labels" + image_ext)
    field_path = os.path.join(work, "field" + field_ext)
    warped_path = os.path.join(work, "warped" + image_ext)
    warped_labels_path = os.path.join(work, "warped_labels" + image_ext)

    sitk.WriteImage(synthetic_image(size_xyz, spacing, origin, seed), image_path)
    image = sitk.ReadImage(image_path)  # the geometry exactly as stored
    values = sitk.GetArrayFromImage(image)
    levels = np.quantile(values, [0.4, 0.7, 0.9])
    labels = sitk.GetImageFromArray(np.digitize(values, levels).astype(np.uint8))
    labels.CopyInformation(image)
    sitk.WriteImage(labels, labels_path)
    labels = sitk.ReadImage(labels_path)

    # One smooth level, no integration: the displacement's largest vector is
    # exactly `amplitude` voxels, which the mm check below relies on.
    run([args.make_field, "--reference", image_path, "--output", field_path,
         "--amplitude", str(amplitude), "--seed", str(seed),
         "--control", "6", "--levels", "1", "--squarings", "0"])
    run([args.warp, "--input", image_path, "--field", field_path, "--output", warped_path])
    run([args.warp, "--input", labels_path, "--field", field_path, "--output",
         warped_labels_path, "--labels"])

    # The field: a d-vector image on the image's grid, in mm.
    field = sitk.ReadImage(field_path)
    checks.expect(field.GetNumberOfComponentsPerPixel() == d and field.GetDimension() == d,
                  "field holds %d-vectors on a %dD grid" % (d, d))
    checks.expect(same_geometry(field, image), "field geometry equals the image's")
    phys = sitk.GetArrayFromImage(field).astype(np.float64)  # [...S, d], ITK order
    m = np.array(field.GetDirection()).reshape(d, d) @ np.diag(field.GetSpacing())
    voxels = phys @ np.linalg.inv(m).T
    peak = np.linalg.norm(voxels, axis=-1).max()
    checks.expect(abs(peak - amplitude) < 1e-3 * amplitude,
                  "field is in mm: max |M^-1 u| = %.5f voxels (asked %.1f)" % (peak, amplitude))

    # Images: drdm_warp against SimpleITK's linear resampling.
    warped = sitk.ReadImage(warped_path)
    checks.expect(same_geometry(warped, image), "drdm_warp output keeps the geometry")
    checks.expect(warped.GetPixelID() == sitk.sitkFloat32, "drdm_warp output is float32")
    ours = sitk.GetArrayFromImage(warped).astype(np.float64)
    mask = interior(ours.shape)
    value_range = float(values.max() - values.min())

    def error(field_image):
        theirs = sitk.GetArrayFromImage(sitk_warp(image, field_image, sitk.sitkLinear))
        return np.abs(ours - theirs)[mask].max() / value_range

    err = error(field)
    moved = np.abs(ours - values)[mask].max() / value_range
    checks.expect(moved > NEGATIVE_MIN, "the warp moves values by %.3g x range" % moved)
    checks.expect(err < TOLERANCE, "drdm vs SimpleITK (linear): max |diff| = %.3g x range = %.3g "
                  "(range %.1f, tolerance %.0e)" % (err, err * value_range, value_range, TOLERANCE))
    negatives = {
        "components reversed": vector_image(phys[..., ::-1], field),
        "sign flipped": vector_image(-phys, field),
        "left in voxel units": vector_image(voxels, field),
    }
    for what, wrong in negatives.items():
        bad = error(wrong)
        checks.expect(bad > NEGATIVE_MIN, "negative control, field %s: max |diff| = %.3g x range "
                      "(must exceed %.0e)" % (what, bad, NEGATIVE_MIN))

    # Labels: drdm_warp --labels against SimpleITK's nearest neighbour.
    warped_labels = sitk.ReadImage(warped_labels_path)
    checks.expect(warped_labels.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16,
                                                 sitk.sitkInt16),
                  "drdm_warp --labels writes a small integer type (%s)"
                  % warped_labels.GetPixelIDTypeAsString())
    checks.expect(same_geometry(warped_labels, labels), "label output keeps the geometry")
    ours_labels = sitk.GetArrayFromImage(warped_labels)
    theirs_labels = sitk.GetArrayFromImage(sitk_warp(labels, field, sitk.sitkNearestNeighbor))
    agreement = (ours_labels == theirs_labels)[mask].mean()
    checks.expect(agreement >= LABEL_AGREEMENT,
                  "drdm vs SimpleITK (nearest labels): %.4f of interior voxels agree (need %.3f)"
                  % (agreement, LABEL_AGREEMENT))
    checks.expect(set(np.unique(ours_labels)) <= set(np.unique(sitk.GetArrayFromImage(labels))),
                  "no new label values")
    return err


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warp", required=True, help="drdm_warp program")
    parser.add_argument("--make-field", required=True, help="drdm_random_field program")
    parser.add_argument("--workdir", required=True, help="scratch folder (recreated)")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)

    checks = Checks()
    results = {}
    cases = [
        ("2d", (80, 72), (0.8, 1.3), (-20.5, 13.25), ".mha", ".nrrd", 11),
        ("3d", (48, 56, 40), (0.8, 1.3, 2.1), (10.5, -20.25, 35.0), ".nii.gz", ".nii.gz", 12),
    ]
    for case in cases:
        results[case[0]] = checks.run(case[0], run_case, args, checks, *case)
    return checks.finish("summary: max |drdm - SimpleITK| / range", results)


if __name__ == "__main__":
    sys.exit(main())
