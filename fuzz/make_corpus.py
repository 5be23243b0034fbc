#!/usr/bin/env python3
"""Writes the tiny seed corpus of the fuzz targets (fuzz/corpus/<target>/):
images, label maps and displacement fields written by SimpleITK and nibabel,
and small configs. Deterministic; rerun it to regenerate the committed files.
    python fuzz/make_corpus.py [--out fuzz/corpus]
"""
import argparse
import gzip
import os

import nibabel as nib
import numpy as np
import SimpleITK as sitk


def image(array, spacing=None, origin=None, vector=False):
    img = sitk.GetImageFromArray(array, isVector=vector)
    dim = img.GetDimension()
    img.SetSpacing(spacing or [0.5 + k for k in range(dim)])
    img.SetOrigin(origin or [-1.0 - k for k in range(dim)])
    return img


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus"))
    out = ap.parse_args().out
    rng = np.random.default_rng(7)
    samples = {
        "img2d_f32": image(rng.normal(size=(3, 4)).astype(np.float32)),
        "img3d_i16": image(rng.integers(-50, 50, size=(2, 3, 4)).astype(np.int16)),
        "lab3d_u8": image(rng.integers(0, 3, size=(2, 2, 3)).astype(np.uint8)),
        "field2d": image(rng.normal(size=(3, 4, 2)).astype(np.float32), vector=True),
        "field3d": image(rng.normal(size=(2, 2, 3, 3)).astype(np.float64), vector=True),
    }
    rotated = image(rng.normal(size=(2, 3, 3)).astype(np.float32))
    c, s = np.cos(0.3), np.sin(0.3)
    rotated.SetDirection([c, -s, 0, s, c, 0, 0, 0, 1])
    samples["img3d_rot"] = rotated
    for target, ext, compress in [("nii", ".nii", False), ("gz", ".nii.gz", True),
                                  ("mha", ".mha", False), ("nrrd", ".nrrd", False)]:
        os.makedirs(os.path.join(out, target), exist_ok=True)
        for name, img in samples.items():
            sitk.WriteImage(img, os.path.join(out, target, name + ext), compress)
    for name in ("img2d_f32", "field2d"):  # compressed MetaImage and NRRD (gzip encoding)
        sitk.WriteImage(samples[name], os.path.join(out, "mha", name + "_z.mha"), True)
        sitk.WriteImage(samples[name], os.path.join(out, "nrrd", name + "_gz.nrrd"), True)
    # nibabel: a 5D DISPVECT field (x, y, z, t=1, 3), NIfTI-2, big-endian NIfTI-1.
    affine = np.diag([1.5, 1.0, 2.0, 1.0])
    disp = nib.Nifti1Image(rng.normal(size=(2, 3, 2, 1, 3)).astype(np.float32), affine)
    disp.header.set_intent(1006)
    nib.save(disp, os.path.join(out, "nii", "dispvect5d.nii"))
    nib.save(nib.Nifti2Image(rng.normal(size=(3, 2, 2)).astype(np.float32), affine),
             os.path.join(out, "nii", "nifti2.nii"))
    big = nib.Nifti1Image(rng.integers(0, 9, size=(3, 2, 2)).astype(">i2"), affine)
    nib.save(big, os.path.join(out, "nii", "bigendian.nii"))
    for name in ("dispvect5d", "bigendian"):
        with open(os.path.join(out, "nii", name + ".nii"), "rb") as f:
            data = f.read()
        with open(os.path.join(out, "gz", name + ".nii.gz"), "wb") as f:
            f.write(gzip.compress(data, mtime=0))
    configs = {
        "empty.json": b"{}",
        "train.json": b'{"train": {"steps": 3, "lr": 0.001}, "data": {"dims": 2}}',
        "comments.json": b'// a comment\n{"train": {"steps": 2 /* two */}}',
        "overrides.json": b'{}\0train.steps=5\0train.device=cpu',
        "seg.json": b'{"grid": {"finetune": [false, true]}}',
        "reg.json": b'{"data": {"include": ["a", "b"]}}',
    }
    os.makedirs(os.path.join(out, "config"), exist_ok=True)
    for name, text in configs.items():
        with open(os.path.join(out, "config", name), "wb") as f:
            f.write(text)


if __name__ == "__main__":
    main()
