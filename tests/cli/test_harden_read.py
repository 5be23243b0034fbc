#!/usr/bin/env python3
"""Reading hostile or unusual image files (issue 12, items 4, 5, 12, 16, 17), through
drdm_warp, drdm_field_stats, drdm_random_field and drdm_deform:

- gzip integrity: a .nii.gz with a flipped bit (CRC-32 mismatch) or without its 8-byte
  trailer is refused, naming the file, with nothing written;
- NaN/Inf in NIfTI float data (float32, float64, big-endian) are refused like .mha's;
- degenerate grids (1x1x1, 1x1x2, 1x16) are refused with the size rule in the message;
- 5D NIfTI fields with intent DISPVECT (nibabel, ANTs style) are read, and warp exactly
  as the same field written by SimpleITK as a vector image;
- NIfTI qform/sform codes of the input are kept on output (read back with nibabel).

Files are made with Python's gzip/zlib, nibabel, SimpleITK and numpy, independently of drdm.
"""
import gzip
import json
import os
import struct
import sys
import zlib

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from cli_util import check, finish, run, start

QFORM_CODE, SFORM_CODE = 252, 254  # byte offsets in the NIfTI-1 header (int16)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def sitk_image(shape, seed=0, spacing=None, origin=None, angle=0.0, dtype=np.float32):
    """Smooth random image, numpy `shape` ([z,] y, x), with a rotated direction."""
    rng = np.random.default_rng(seed)
    arr = (rng.random(shape) * 100).astype(dtype)
    img = sitk.GetImageFromArray(arr)
    d = len(shape)
    img.SetSpacing(spacing or (0.9, 1.3, 2.0)[:d])
    img.SetOrigin(origin or (4.0, -7.5, 12.25)[:d])
    r = np.eye(d)
    c, s = np.cos(angle), np.sin(angle)
    r[:2, :2] = [[c, -s], [s, c]]
    img.SetDirection(tuple(r.ravel()))
    return img


def ras_affine(img):
    """nibabel's affine (RAS) of a 3D SimpleITK image's grid (LPS)."""
    m = np.array(img.GetDirection()).reshape(3, 3) @ np.diag(img.GetSpacing())
    a = np.eye(4)
    a[:3, :3] = LPS_TO_RAS @ m
    a[:3, 3] = LPS_TO_RAS @ np.array(img.GetOrigin())
    return a


def gunzip_ok(data):
    """Python's own verdict on a gzip stream (the independent truth)."""
    try:
        gzip.decompress(data)
        return True
    except (OSError, EOFError, zlib.error):
        return False


def refused(cmd, path, what, outputs=(), words=()):
    """cmd fails, names `path`, says each of `words`, and leaves no `outputs`."""
    rc, _, err = run(cmd)
    err = err.strip()
    check(rc != 0, f"{what}: non-zero exit (rc {rc})")
    check(path in err, f"{what}: message names {os.path.basename(path)}: {err[-300:]}")
    for w in words:
        check(w in err, f"{what}: message says '{w}'")
    for o in outputs:
        left = os.path.exists(o) and (not os.path.isdir(o) or any(
            f for _, _, fs in os.walk(o) for f in fs if not f.endswith(".json")))
        check(not left, f"{what}: nothing written at {os.path.basename(o)}")
    return err


def gzip_cases(exe, p):
    # Large enough (~400 kB) that ITK reads the header before meeting the damage:
    # zlib checks a small file's trailer as soon as its header is read.
    shape = (32, 48, 64)
    img = sitk_image(shape, seed=1, angle=0.3)
    sitk.WriteImage(img, p("img.nii.gz"))
    rng = np.random.default_rng(5)
    field = sitk.GetImageFromArray((rng.random(shape + (3,)) * 0.5).astype(np.float32), isVector=True)
    field.CopyInformation(img)
    sitk.WriteImage(field, p("field.nii.gz"))
    raw_img = gzip.decompress(open(p("img.nii.gz"), "rb").read())
    raw_field = gzip.decompress(open(p("field.nii.gz"), "rb").read())

    def stored_flip(raw):  # level 0: stored blocks, so only the CRC-32 sees the flipped bit
        gz = bytearray(gzip.compress(raw, compresslevel=0))
        gz[len(gz) - 8 - 100] ^= 0x10
        return bytes(gz)

    def deflated_flip(raw):  # one bit in the middle of deflated data
        gz = bytearray(gzip.compress(raw, compresslevel=6))
        gz[len(gz) // 2] ^= 0x01
        return bytes(gz)

    def no_trailer(raw):
        return gzip.compress(raw)[:-8]

    for damage in (stored_flip, deflated_flip, no_trailer):
        name = damage.__name__
        bad_img, bad_field = p(f"img_{name}.nii.gz"), p(f"field_{name}.nii.gz")
        open(bad_img, "wb").write(damage(raw_img))
        open(bad_field, "wb").write(damage(raw_field))
        check(not gunzip_ok(open(bad_img, "rb").read()), f"{name}: Python's gzip refuses the file too")
        out = p(f"warped_{name}.nii.gz")
        refused([exe("drdm_warp"), "-i", bad_img, "-f", p("field.nii.gz"), "-o", out], bad_img,
                f"drdm_warp -i {name}", [out])
        refused([exe("drdm_warp"), "-i", p("img.nii.gz"), "-f", bad_field, "-o", out], bad_field,
                f"drdm_warp -f {name}", [out])
        jac = p(f"jac_{name}.nii.gz")
        refused([exe("drdm_field_stats"), "-f", bad_field, "--jacobian-map", jac], bad_field,
                f"drdm_field_stats {name}", [jac])
    # Compressed NRRD (gzip encoding): ITK's NRRD reader checks the stream itself.
    sitk.WriteImage(img, p("img.nrrd"), True)
    nrrd = bytearray(open(p("img.nrrd"), "rb").read())
    nrrd[-6] ^= 0x01  # the CRC-32 in the gzip trailer
    open(p("img_crc.nrrd"), "wb").write(bytes(nrrd))
    out = p("warped_nrrd.nii.gz")
    refused([exe("drdm_warp"), "-i", p("img_crc.nrrd"), "-f", p("field.nii.gz"), "-o", out], p("img_crc.nrrd"),
            "drdm_warp -i .nrrd with a damaged CRC-32", [out])
    # Labels through drdm_deform (a 2D model on 3D input slices it).
    lab = sitk.GetImageFromArray((sitk.GetArrayFromImage(img) > 50).astype(np.uint8))
    lab.CopyInformation(img)
    sitk.WriteImage(lab, p("lab.nii.gz"))
    bad_lab = p("lab_no_trailer.nii.gz")
    open(bad_lab, "wb").write(open(p("lab.nii.gz"), "rb").read()[:-8])
    out = p("deform_bad_labels")
    refused([exe("drdm_deform"), "-i", p("img.nii.gz"), "-l", bad_lab, "-o", out, "--levels", "3",
             "-n", "1", "--mode", "augment", "--no-progress", "-q", "--threads", "1"], bad_lab,
            "drdm_deform -l without gzip trailer", [os.path.join(out, "images"), os.path.join(out, "labels")])


def nan_cases(exe, p):
    ref = sitk_image((6, 7, 8), seed=2)
    sitk.WriteImage(ref, p("nan_ref.nii.gz"))
    affine = ras_affine(ref)
    field = sitk.GetImageFromArray(np.zeros((6, 7, 8, 3), np.float32), isVector=True)
    field.CopyInformation(ref)
    sitk.WriteImage(field, p("zero_field.nii.gz"))
    arr = sitk.GetArrayFromImage(ref).transpose(2, 1, 0)  # nibabel: x fastest
    cases = [("float32_nan", np.float32, np.nan, "<"), ("float64_inf", np.float64, np.inf, "<"),
             ("bigendian_nan", np.float32, np.nan, ">"), ("float32_minus_inf", np.float32, -np.inf, "<")]
    for name, dtype, bad, order in cases:
        a = arr.astype(dtype).copy()
        a[3, 2, 1] = bad
        hdr = nib.Nifti1Header(endianness=order)
        hdr.set_data_dtype(np.dtype(dtype).newbyteorder(order))
        path = p(f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(a, affine, header=hdr), path)
        back = np.asanyarray(nib.load(path).dataobj)
        check(not np.isfinite(back).all(), f"{name}: nibabel reads the non-finite value back")
        out = p(f"warped_{name}.nii.gz")
        refused([exe("drdm_warp"), "-i", path, "-f", p("zero_field.nii.gz"), "-o", out], path,
                f"drdm_warp on {name}", [out], ["NaN or Inf"])
    # A field with NaN, stored as nibabel's 5D DISPVECT and as SimpleITK's vector NIfTI.
    vec = np.zeros((6, 7, 8, 3), np.float32)
    vec[2, 3, 4, 1] = np.nan
    f = sitk.GetImageFromArray(vec, isVector=True)
    f.CopyInformation(ref)
    sitk.WriteImage(f, p("nan_field_sitk.nii.gz"))
    refused([exe("drdm_field_stats"), "-f", p("nan_field_sitk.nii.gz")], p("nan_field_sitk.nii.gz"),
            "drdm_field_stats on a SimpleITK field with NaN", [], ["NaN or Inf"])


def degenerate_cases(exe, p):
    for name, shape in (("1x1x1", (1, 1, 1)), ("1x1x2", (2, 1, 1)), ("16x1", (1, 16))):
        path = p(f"degenerate_{name}.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(np.ones(shape, np.float32)), path)
        field = p(f"field_{name}.nii.gz")
        refused([exe("drdm_random_field"), "-r", path, "-o", field], path,
                f"drdm_random_field on a {name} image", [field], [name, "at least 2 voxels"])
        out = p(f"deform_{name}")
        refused([exe("drdm_deform"), "-i", path, "-o", out, "--levels", "3", "-n", "1", "--no-progress",
                 "-q", "--threads", "1"], path, f"drdm_deform on a {name} image",
                [os.path.join(out, "images"), os.path.join(out, "fields")], [name])
    # The smallest grids that work: 2 voxels per axis, and a single slice.
    for name, shape in (("2x2x2", (2, 2, 2)), ("5x4x1", (1, 4, 5))):
        path = p(f"small_{name}.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(np.arange(np.prod(shape), dtype=np.float32).reshape(shape)), path)
        field = p(f"field_{name}.nii.gz")
        rc, _, err = run([exe("drdm_random_field"), "-r", path, "-o", field, "--amplitude", "0.2"])
        check(rc == 0, f"drdm_random_field on a {name} image works: {err.strip()[-200:]}")
        rc, _, err = run([exe("drdm_field_stats"), "-f", field])
        check(rc == 0, f"drdm_field_stats reads the field of a {name} image back: {err.strip()[-200:]}")


def nib_dispvect(path, vec_lps, ref, two_d=False):
    """Write `vec_lps` (numpy [z, y, x, 3] or [y, x, 2], ITK components, mm) as nibabel's 5D
    NIfTI [x, y, z, 1, d] with intent DISPVECT on the grid of `ref` (3D; 2D: its z = 1)."""
    if two_d:
        data = vec_lps.transpose(1, 0, 2)[:, :, None, None, :]  # [x, y, 1, 1, 2]
    else:
        data = vec_lps.transpose(2, 1, 0, 3)[:, :, :, None, :]  # [x, y, z, 1, 3]
    img = nib.Nifti1Image(data.astype(np.float32), ras_affine(ref))
    img.header.set_intent(1006)  # NIFTI_INTENT_DISPVECT
    img.header.set_qform(ras_affine(ref), code=1)
    img.header.set_sform(ras_affine(ref), code=1)
    nib.save(img, path)
    h = nib.load(path).header
    check(int(h["intent_code"]) == 1006 and int(h["dim"][0]) == 5,
          f"{os.path.basename(path)}: nibabel wrote intent {int(h['intent_code'])}, dim {list(h['dim'][:6])}")


def dispvect_cases(exe, p):
    for two_d in (False, True):
        tag = "2d" if two_d else "3d"
        shape = (14, 12) if two_d else (8, 14, 12)
        ref = sitk_image(shape, seed=3, angle=0.4)
        ref_nib = ref if not two_d else sitk.JoinSeries(ref)  # the 3D grid nibabel's affine needs
        if two_d:
            ref_nib.SetSpacing(ref.GetSpacing() + (1.0,))
            ref_nib.SetOrigin(ref.GetOrigin() + (0.0,))
            d2 = np.array(ref.GetDirection()).reshape(2, 2)
            d3 = np.eye(3)
            d3[:2, :2] = d2
            ref_nib.SetDirection(tuple(d3.ravel()))
        sitk.WriteImage(ref, p(f"ref_{tag}.nii.gz"))
        d = len(shape)
        grids = np.meshgrid(*[np.linspace(0, np.pi, n) for n in shape], indexing="ij")
        vec = np.stack([1.5 * np.sin(grids[-1 - k] + k) for k in range(d)], axis=-1).astype(np.float32)
        f = sitk.GetImageFromArray(vec, isVector=True)
        f.CopyInformation(ref)
        sitk.WriteImage(f, p(f"field_sitk_{tag}.nii.gz"))
        nib_dispvect(p(f"field_nib_{tag}.nii.gz"), vec, ref_nib, two_d)
        outs = {}
        for src in ("sitk", "nib"):
            out = p(f"warped_{src}_{tag}.nii.gz")
            rc, _, err = run([exe("drdm_warp"), "-i", p(f"ref_{tag}.nii.gz"), "-f", p(f"field_{src}_{tag}.nii.gz"),
                              "-o", out])
            check(rc == 0, f"drdm_warp with the {src} {tag} field: {err.strip()[-300:]}")
            outs[src] = sitk.GetArrayFromImage(sitk.ReadImage(out)) if rc == 0 else None
        if outs["nib"] is not None and outs["sitk"] is not None:
            diff = np.abs(outs["nib"] - outs["sitk"]).max()
            moved = np.abs(outs["sitk"] - sitk.GetArrayFromImage(ref)).max()
            check(diff < 1e-3 and moved > 1.0,
                  f"{tag}: DISPVECT field warps as the SimpleITK field (max diff {diff:.2g}, moved {moved:.3g})")
        stats = {}
        for src in ("sitk", "nib"):
            rc, out, err = run([exe("drdm_field_stats"), "-f", p(f"field_{src}_{tag}.nii.gz")])
            check(rc == 0, f"drdm_field_stats on the {src} {tag} field: {err.strip()[-200:]}")
            stats[src] = out
        if all(stats.values()):
            a, b = json.loads(stats["sitk"]), json.loads(stats["nib"])
            check(abs(a["mean_magnitude_pct"] - b["mean_magnitude_pct"]) < 1e-4 and a["axis_order"] == b["axis_order"],
                  f"{tag}: field statistics agree ({a['mean_magnitude_pct']:.5f} vs {b['mean_magnitude_pct']:.5f})")


def with_codes(src, dst, qform, sform):
    """Copy the .nii.gz `src` with its qform/sform codes set (raw header bytes, Python gzip)."""
    raw = bytearray(gzip.decompress(open(src, "rb").read()))
    struct.pack_into("<hh", raw, QFORM_CODE, qform, sform)
    open(dst, "wb").write(gzip.compress(bytes(raw)))


def codes_of(path):
    h = nib.load(path).header
    return int(h["qform_code"]), int(h["sform_code"])


def codes_cases(exe, p):
    ref = sitk_image((6, 9, 10), seed=4, angle=0.2)
    sitk.WriteImage(ref, p("codes_src.nii.gz"))
    field = sitk.GetImageFromArray(np.full((6, 9, 10, 3), 0.25, np.float32), isVector=True)
    field.CopyInformation(ref)
    # 0/0 (no orientation stored) becomes ITK's 1/1: see docs/conventions.md.
    for (q, s), want in (((0, 2), (0, 2)), ((2, 0), (2, 0)), ((1, 4), (1, 4)), ((0, 0), (1, 1))):
        tag = f"{q}{s}"
        src = p(f"codes_{tag}.nii.gz")
        with_codes(p("codes_src.nii.gz"), src, q, s)
        check(codes_of(src) == (q, s), f"input {tag}: nibabel reads codes {codes_of(src)}")
        fpath = p(f"codes_field_{tag}.nii.gz")
        sitk.WriteImage(field, fpath)
        with_codes(fpath, fpath, q, s)
        out, rand, jac = p(f"codes_warped_{tag}.nii.gz"), p(f"codes_rand_{tag}.nii.gz"), p(f"codes_jac_{tag}.nii.gz")
        for cmd in ([exe("drdm_warp"), "-i", src, "-f", fpath, "-o", out],
                    [exe("drdm_random_field"), "-r", src, "-o", rand],
                    [exe("drdm_field_stats"), "-f", fpath, "--jacobian-map", jac]):
            rc, _, err = run(cmd)
            check(rc == 0, f"{os.path.basename(cmd[0])} on codes {tag}: {err.strip()[-200:]}")
        for path in (out, rand, jac):
            if not os.path.exists(path):
                continue
            name = os.path.basename(path)
            check(codes_of(path) == want, f"{name}: codes {codes_of(path)}, expected {want}")
            a, b = sitk.ReadImage(path), sitk.ReadImage(src)
            check(np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
                  and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
                  and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5),
                  f"{name}: SimpleITK reads the input's geometry")
            if (q, s) != (0, 0):  # with no code, nibabel reads pixdim only (NIfTI method 1)
                check(np.allclose(nib.load(path).affine, nib.load(src).affine, atol=1e-4),
                      f"{name}: nibabel's affine is the input's")
    # drdm_deform: warped images and labels keep the codes too.
    src = p("codes_02.nii.gz")
    out = p("codes_deform")
    rc, _, err = run([exe("drdm_deform"), "-i", src, "-o", out, "--levels", "3", "-n", "1", "--no-progress",
                      "-q", "--threads", "1", "--no-preview"])
    check(rc == 0, f"drdm_deform on codes 0/2: {err.strip()[-200:]}")
    written = [os.path.join(r, f) for r, _, fs in os.walk(out) for f in fs if f.endswith(".nii.gz")]
    check(len(written) >= 2 and all(codes_of(f) == (0, 2) for f in written),
          f"drdm_deform outputs keep codes 0/2: {[codes_of(f) for f in written]}")


def oversized_cases(exe, p):
    """A header claiming 32767^3 voxels is refused before anything is allocated (issue 26, item 13)."""
    sitk.WriteImage(sitk_image((8, 8, 8), seed=3), p("small.nii"))
    raw = bytearray(open(p("small.nii"), "rb").read())
    struct.pack_into("<hhhh", raw, 40, 3, 32767, 32767, 32767)  # dim[0..3]
    open(p("huge.nii"), "wb").write(raw)
    open(p("huge.nii.gz"), "wb").write(gzip.compress(bytes(raw)))
    for name in ("huge.nii", "huge.nii.gz"):
        out = p(name + "-out.nii.gz")
        err = refused([exe("drdm_warp"), "-i", p(name), "-f", p(name), "-o", out], p(name),
                      f"{name} with a 32767^3 header", outputs=[out], words=["32767 x 32767 x 32767", "claims"])
        check("allocate" not in err, f"{name}: no allocator message ({err[-120:]})")
    # The bound is not too tight: all-zero volumes, gzip's best case (about 1000:1), still read.
    zeros = sitk.Image([64, 64, 64], sitk.sitkFloat32)
    sitk.WriteImage(zeros, p("zeros.nii.gz"), True, 9)
    field = sitk.Image([64, 64, 64], sitk.sitkVectorFloat32, 3)
    sitk.WriteImage(field, p("zero_field.nii.gz"), True, 9)
    ratio = 64 ** 3 * 4 / os.path.getsize(p("zeros.nii.gz"))
    rc, _, err = run([exe("drdm_warp"), "-i", p("zeros.nii.gz"), "-f", p("zero_field.nii.gz"), "-o", p("z-out.nii")])
    check(rc == 0, f"an all-zero .nii.gz (compressed {ratio:.0f}:1) is read (rc {rc}) {err[-200:]}")


def main():
    a = start()
    exe = lambda name: os.path.join(a.bin_dir, name)  # noqa: E731
    p = lambda name: os.path.join(a.workdir, name)  # noqa: E731
    for section in (gzip_cases, nan_cases, degenerate_cases, dispvect_cases, codes_cases, oversized_cases):
        print(f"--- {section.__name__}")
        section(exe, p)
    return finish("cli harden read", a.workdir)


if __name__ == "__main__":
    sys.exit(main())
