#!/usr/bin/env python3
"""Peers of drdm_bench_io: reading and writing the same image files with
SimpleITK and nibabel, as a Python user would.

  peer_io.py --make DIR [--size Z Y X]   writes the input files (SimpleITK)
  peer_io.py --dir DIR [--impls simpleitk,nibabel] [common flags]

read:  SimpleITK: sitk.ReadImage + GetArrayFromImage, as float32;
       nibabel: nib.load(mmap=False) + get_fdata(dtype=float32) (NIfTI only).
write: the array read, in the file's format and pixel type, to
       DIR/out_<impl>_<file>: SimpleITK WriteImage (compressed for .nii.gz and
       .mha, as libdrdm writes them);
       nibabel Nifti1Image(array, the file's affine and header) + nib.save.
Neither checks gzip integrity or NaN, nor writes atomically or fsyncs, as
libdrdm does; bench/run.py says so beside the numbers.
"""

import argparse
import os
import sys

import numpy as np

from peer_common import JsonLines, add_common_args, apply_common_args, rounded, time_op

# (file, pixel type) per case; drdm_bench_io's kFiles.
IO_FILES = [("ct_int16.nii.gz", "int16"), ("mr_float32.nii.gz", "float32"), ("mr_float32.nii", "float32"),
            ("mr_float32.mha", "float32")]


def make_inputs(folder, size):
    """Smooth anatomy-like volumes with scanner noise (they compress about as
    real scans do), 0.8 x 0.8 x 1.5 mm, an oblique direction, as SimpleITK writes them."""
    import SimpleITK as sitk
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in size], indexing="ij")
    body = (x ** 2 + y ** 2 + 0.5 * z ** 2 < 0.8).astype(np.float32)
    tissue = 300 * np.sin(5 * x) * np.cos(4 * y) * np.sin(3 * z) + 200 * (x ** 2 + y ** 2 < 0.2)
    volume = body * (1000 + tissue) - 1000 * (1 - body) + rng.normal(0, 15, size).astype(np.float32)
    c, s = np.cos(0.2), np.sin(0.2)
    for name, pixel in IO_FILES:
        data = np.round(volume).astype(np.int16) if pixel == "int16" else volume.astype(np.float32) / 1000
        img = sitk.GetImageFromArray(data)
        img.SetSpacing((0.8, 0.8, 1.5))
        img.SetOrigin((-100.0, -90.0, 20.0))
        img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
        sitk.WriteImage(img, os.path.join(folder, name), useCompression=name.endswith(".gz"))


def simpleitk_ops(path, target):
    import SimpleITK as sitk
    img = sitk.ReadImage(path)
    pixel = img.GetPixelID()

    def read(_):
        return sitk.GetArrayFromImage(sitk.ReadImage(path)).astype(np.float32)

    def write(_):
        out = sitk.Cast(sitk.GetImageFromArray(array), pixel)
        out.CopyInformation(img)
        sitk.WriteImage(out, target, useCompression=not target.endswith(".nii"))  # as libdrdm: .mha compressed

    array = read(0)
    return read, write, array


def nibabel_ops(path, target):
    import nibabel as nib
    img = nib.load(path)
    dtype = img.get_data_dtype()

    def read(_):
        return nib.load(path, mmap=False).get_fdata(dtype=np.float32)  # read now, not mapped

    def write(_):
        out = nib.Nifti1Image(array.astype(dtype), img.affine, img.header)
        nib.save(out, target)

    array = read(0)
    return read, write, array


IMPLS = {"simpleitk": simpleitk_ops, "nibabel": nibabel_ops}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, min_time=0.5)
    p.add_argument("--make", metavar="DIR", help="write the input files to DIR and exit")
    p.add_argument("--size", type=int, nargs=3, default=[128, 256, 256], metavar=("Z", "Y", "X"))
    p.add_argument("--dir", help="the input files (from --make)")
    p.add_argument("--ops", default="read,write")
    p.add_argument("--impls", default="simpleitk,nibabel")
    args = p.parse_args()
    if args.make:
        make_inputs(args.make, tuple(args.size))
        return 0
    if not args.dir:
        p.error("--dir or --make is required")
    apply_common_args(args)
    ops = args.ops.split(",")
    with JsonLines(args.out) as out:
        for i, (name, pixel) in enumerate(IO_FILES):
            if args.case >= 0 and args.case != i:
                continue
            path = os.path.join(args.dir, name)
            for impl in args.impls.split(","):
                if impl == "nibabel" and not name.endswith((".nii", ".nii.gz")):
                    continue  # nibabel reads no MetaImage
                target = os.path.join(args.dir, f"out_{impl}_{name}")
                read, write, array = IMPLS[impl](path, target)
                base = {"impl": impl, "dims": 3, "size": "x".join(str(n) for n in array.shape[::-1]),
                        "batch": 1, "device": "cpu", "threads": args.threads, "file": name, "pixel": pixel,
                        "file_mb": round(os.path.getsize(path) / 2 ** 20, 3)}
                if "read" in ops:
                    t = time_op(read, args)
                    out.emit(rounded({**base, "op": "read", "ms": t["median_ms"], **t,
                                      "sum": float(array.astype(np.float64).sum())}, 6))
                if "write" in ops:
                    t = time_op(write, args)
                    out.emit(rounded({**base, "op": "write", "ms": t["median_ms"], **t,
                                      "file_mb": round(os.path.getsize(target) / 2 ** 20, 3)}, 6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
