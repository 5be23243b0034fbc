#!/usr/bin/env python3
"""Command-line behaviour of drdm_warp, drdm_field_stats, drdm_random_field, drdm_train and
drdm_check_recovery (--section tools), of drdm_deform (--section deform), and of all of them on
single-slice (256x256x1) images, whose fields are 2D (--section single-slice).

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

from cli_util import FAILURES, check, run  # noqa: E402


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


# ---------------------------------------------------------------------------
# drdm_deform (--section deform): small synthetic inputs, the shipped default
# model, levels 3 and 5 so that each run takes a second or two.

def rotated(img, angle):
    d = img.GetDimension()
    c, s = math.cos(angle), math.sin(angle)
    r = np.eye(d)
    r[:2, :2] = [[c, -s], [s, c]]
    img.SetDirection(tuple(r.ravel()))
    return img


def smooth_image(shape, spacing, origin, seed, angle=0.0):
    """Blocky random image (numpy `shape`), float32, with the given geometry."""
    rng = np.random.default_rng(seed)
    coarse = rng.random(tuple(max(1, n // 4) + 1 for n in shape))
    arr = np.kron(coarse, np.ones([4] * len(shape)))[tuple(slice(0, n) for n in shape)]
    arr = (arr * 150 + 20 + rng.random(shape) * 5).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return rotated(img, angle)


def label_map(img):
    """Classes {0, 1, 2, 3} from the image's quantiles, uint8, on its grid."""
    arr = sitk.GetArrayFromImage(img)
    lab = sitk.GetImageFromArray(np.digitize(arr, np.quantile(arr, [0.3, 0.6, 0.85])).astype(np.uint8))
    lab.CopyInformation(img)
    return lab


def voxel_displacements(field):
    """ITK displacement field (mm) -> [d, ...S] voxel displacements in tensor
    (numpy) axis order: u_vox = (direction * diag(spacing))^-1 u_mm."""
    d = field.GetDimension()
    phys = sitk.GetArrayFromImage(field).astype(np.float64)  # [...S, d], ITK (x first) components
    m = np.array(field.GetDirection()).reshape(d, d) @ np.diag(field.GetSpacing())
    vox = phys @ np.linalg.inv(m).T
    return np.moveaxis(vox[..., ::-1], -1, 0)  # component i moves along numpy axis i


def field_metrics(field):
    """DESIGN.md's Table 1 metrics, computed here independently of libdrdm."""
    u = voxel_displacements(field)
    d = u.shape[0]
    shape = u.shape[1:]
    mag = np.sqrt(sum((u[i] / shape[i]) ** 2 for i in range(d))) * 100
    # det(I + grad u): np.gradient is central inside, one-sided at the border.
    jac = np.empty(shape + (d, d))
    for i in range(d):
        grads = np.gradient(u[i], axis=tuple(range(d)))
        for j in range(d):
            jac[..., i, j] = grads[j] + (1.0 if i == j else 0.0)
    det = np.linalg.det(jac)
    return {"max_magnitude_pct": float(mag.max()), "mean_magnitude_pct": float(mag.mean()),
            "folding_ratio": float((det <= 0).mean())}, u


def same_grid(a, b, tol=1e-5):
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tol))


def files_under(folder):
    out = []
    for root, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, n), folder) for n in names]
    return sorted(out)


def flat(value):
    return value if isinstance(value, list) else [value]


def deform_tests(deform, workdir):
    root = os.path.join(workdir, "deform")
    os.makedirs(root)
    p = lambda *names: os.path.join(root, *names)  # noqa: E731
    common = ["--threads", "1", "--no-progress", "-q"]

    def deform_run(args, what):
        rc, out, err = run([deform] + args + common)
        check(rc == 0, f"drdm_deform {what} (rc {rc}: {err.strip()[-300:]})")
        return json.loads(out) if rc == 0 else None

    def load_manifest(out_dir, name="manifest.json"):
        path = os.path.join(out_dir, name)
        if not os.path.exists(path):
            check(False, f"{path} exists")
            return {"samples": []}
        with open(path) as f:
            return json.load(f)

    def check_samples(what, out_dir, manifest, expect_n, dims, pairs=False):
        """Every sample: input, labels, level, seed, outputs that exist and are
        on the input's grid, metrics that match an independent computation."""
        samples = manifest["samples"]
        check(len(samples) == expect_n, f"{what}: {expect_n} samples in the manifest (got {len(samples)})")
        worst = 0.0
        for s in samples:
            for key in ("case", "input", "labels", "level", "sample", "seed", "outputs", "metrics"):
                if key not in s:
                    check(False, f"{what}: sample has '{key}'")
                    return
            inputs = flat(s["input"])
            ref = sitk.ReadImage(inputs[0])
            in_classes = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(s["labels"]))).tolist()) \
                if s["labels"] else None
            o = s["outputs"]
            rels = [r for v in o.values() for r in flat(v)]
            missing = [r for r in rels if not os.path.exists(os.path.join(out_dir, r))]
            check(not missing, f"{what} {s['case']}: outputs exist {missing}")
            if missing:
                continue
            for key in ("image", "moving", "fixed"):
                for r in flat(o.get(key, [])):
                    img = sitk.ReadImage(os.path.join(out_dir, r))
                    check(same_grid(img, ref) and img.GetPixelID() == ref.GetPixelID(),
                          f"{what}: {r} on the input's grid, input pixel type")
            for key in ("labels", "moving_labels", "fixed_labels"):
                if key in o:
                    lab = sitk.ReadImage(os.path.join(out_dir, o[key]))
                    got = set(np.unique(sitk.GetArrayFromImage(lab)).tolist())
                    check(same_grid(lab, ref) and got <= in_classes,
                          f"{what}: {o[key]} on the grid, classes {sorted(got)} within {sorted(in_classes)}")
            field = sitk.ReadImage(os.path.join(out_dir, o["field"]))
            check(same_grid(field, ref) and field.GetNumberOfComponentsPerPixel() == dims,
                  f"{what}: {o['field']} is a {dims}-vector field on the input's grid")
            mine, _ = field_metrics(field)
            for k, v in mine.items():
                err = abs(s["metrics"][k] - v)
                worst = max(worst, err)
                if err > 1e-5 * max(1.0, abs(v)):
                    check(False, f"{what} {o['field']}: {k} {s['metrics'][k]} vs numpy {v}")
            if pairs:
                check(isinstance(s["level"], dict) and set(s["level"]) == {"aug", "syn"},
                      f"{what}: pairs level is {{aug, syn}}")
        check(worst <= 1e-5, f"{what}: manifest metrics equal numpy's recomputation from the written fields "
                             f"(max |diff| {worst:.2g})")

    # --- inputs
    img2d = smooth_image((48, 40), (0.8, 1.3), (3.0, -2.0), 1, angle=0.4)  # 40 (x) by 48 (y)
    sitk.WriteImage(img2d, p("img2d.nii.gz"))
    sitk.WriteImage(label_map(img2d), p("lab2d.nii.gz"))
    vol = smooth_image((6, 40, 36), (0.9, 1.2, 2.5), (1.0, 2.0, -3.0), 2, angle=0.3)
    sitk.WriteImage(vol, p("vol3d.nii.gz"))
    sitk.WriteImage(label_map(vol), p("lab3d.nii.gz"))
    os.makedirs(p("imgs"))
    os.makedirs(p("labs"))
    for i, (name, shape, lab_ext) in enumerate([("a", (48, 40), ".nii.gz"), ("b", (44, 36), ".nii.gz"),
                                                ("c", (40, 40), ".mha")]):
        im = smooth_image(shape, (1.0, 0.9), (0.0, 5.0), 10 + i)
        sitk.WriteImage(im, p("imgs", name + ".nii.gz"))
        sitk.WriteImage(label_map(im), p("labs", name + lab_ext))  # matched by name, any extension

    # --- single 2D file with labels: layout, manifest, metrics.
    out1 = p("single2d")
    s = deform_run(["-i", p("img2d.nii.gz"), "-l", p("lab2d.nii.gz"), "-o", out1, "--levels", "3,5",
                    "--samples", "2"], "on one 2D file")
    if s:
        check(s["samples"] == 4 and s["cases"] == 1, "stdout summary: 1 case, 4 samples")
        for d in ("images", "labels", "fields", "previews"):
            check(os.path.isdir(os.path.join(out1, d)) and len(os.listdir(os.path.join(out1, d))) == 4,
                  f"single 2D: {d}/ holds 4 files")
        m = load_manifest(out1)
        check(m.get("program") == "drdm_deform" and m.get("mode") == "deform", "manifest names program and mode")
        check_samples("single 2D", out1, m, 4, 2)
        check(sorted((x["level"], x["sample"]) for x in m["samples"]) == [(3, 0), (3, 1), (5, 0), (5, 1)],
              "single 2D: levels 3,5 x samples 0,1")
        check(len({x["seed"] for x in m["samples"]}) == 4, "single 2D: four distinct seeds")
        check(all(x["labels"] == p("lab2d.nii.gz") and x["input"] == p("img2d.nii.gz") for x in m["samples"]),
              "single 2D: manifest names input and labels")
        check(os.path.exists(os.path.join(out1, "config.json")), "config.json written")
        prev = sitk.ReadImage(os.path.join(out1, m["samples"][0]["outputs"]["preview"]))
        check(prev.GetDimension() == 2 and min(prev.GetSize()) >= 40, f"preview is a PNG image {prev.GetSize()}")
        with open(os.path.join(out1, "config.json")) as f:
            cfg = json.load(f)
        check(cfg.get("levels") == "3,5" and cfg.get("samples") == 2 and cfg.get("seed") == 0,
              f"config.json holds the resolved options ({cfg.get('levels')}, {cfg.get('samples')})")
        mags = [x["metrics"]["max_magnitude_pct"] for x in m["samples"]]
        check(all(0 < v < 50 for v in mags), f"single 2D: fields move, moderately ({min(mags):.2f}-{max(mags):.2f} %)")

    # --- different seed -> different fields (same sample names).
    out_seed = p("seed1")
    deform_run(["-i", p("img2d.nii.gz"), "-o", out_seed, "--levels", "3", "--samples", "1", "--seed", "1",
                "--no-preview"], "--seed 1")
    f0, f1 = (os.path.join(d, "fields", "img2d_drdm_T3_s00.nii.gz") for d in (out1, out_seed))
    if os.path.exists(f0) and os.path.exists(f1):
        a0, a1 = (sitk.GetArrayFromImage(sitk.ReadImage(f)) for f in (f0, f1))
        check(np.abs(a0 - a1).max() > 0.05 * np.abs(a0).max(), "different seed -> different field")
        check(not os.path.exists(os.path.join(out_seed, "labels")) and
              not os.path.exists(os.path.join(out_seed, "previews")),
              "no labels/ without labels, no previews/ with --no-preview")

    # --- 3D volume, slice-wise through the 2D model.
    out3 = p("single3d")
    s = deform_run(["-i", p("vol3d.nii.gz"), "-l", p("lab3d.nii.gz"), "-o", out3, "--levels", "3",
                    "--samples", "1"], "on a 3D volume (slice-wise)")
    if s:
        m = load_manifest(out3)
        check_samples("3D slice-wise", out3, m, 1, 3)
        if m["samples"]:
            _, u = field_metrics(sitk.ReadImage(os.path.join(out3, m["samples"][0]["outputs"]["field"])))
            check(np.abs(u[0]).max() < 1e-4 and np.abs(u[1:]).max() > 0.05,
                  "3D slice-wise: no displacement along D (the slice axis), in-plane displacement")

    # --- folder + labels folder, augment mode; then the same as two shards.
    out_f = p("folder")
    folder_args = ["-i", p("imgs"), "-l", p("labs"), "--mode", "augment", "--levels", "3", "--samples", "1",
                   "--no-preview"]
    s = deform_run(folder_args + ["-o", out_f], "on a folder with a labels folder (augment)")
    full = {}
    if s:
        m = load_manifest(out_f)
        check_samples("folder", out_f, m, 3, 2)
        full = {x["outputs"]["image"]: x for x in m["samples"]}
        check(sorted((x["case"], os.path.basename(x["labels"])) for x in m["samples"])
              == [("a", "a.nii.gz"), ("b", "b.nii.gz"), ("c", "c.mha")], "folder: labels matched by name")
        check(m["mode"] == "augment", "folder: manifest mode augment")
    out_sh = p("shards")
    for i in (0, 1):
        deform_run(folder_args + ["-o", out_sh, "--shard", f"{i}/2"], f"--shard {i}/2")
    shards = [load_manifest(out_sh, f"manifest-shard-{i}-of-2.json") for i in (0, 1)]
    check(not os.path.exists(os.path.join(out_sh, "manifest.json")) and
          all(os.path.exists(os.path.join(out_sh, f"config-shard-{i}-of-2.json")) for i in (0, 1)),
          "shards write config-shard-I-of-2.json, no manifest.json")
    cases = [x["case"] for sh in shards for x in sh["samples"]]
    check(sorted(cases) == ["a", "b", "c"], f"shards 0/2 and 1/2 cover every case exactly once ({cases})")
    check([x["case"] for x in shards[0]["samples"]] == ["a", "c"], "shard 0/2 takes cases 0 and 2")
    same = True
    for sh in shards:
        for x in sh["samples"]:
            ref = full.get(x["outputs"]["image"])
            if ref is None or ref["seed"] != x["seed"] or ref["metrics"] != x["metrics"] \
                    or ref["outputs"] != x["outputs"]:
                same = False
                continue
            for r in ref["outputs"].values():
                with open(os.path.join(out_f, r), "rb") as fa, open(os.path.join(out_sh, r), "rb") as fb:
                    same = same and fa.read() == fb.read()
    check(same and full, "sharded samples equal the unsharded run's: seeds, metrics, byte-identical files "
                         "(same seed -> same output)")

    # --- pairs mode.
    out_p = p("pairs")
    s = deform_run(["-i", p("img2d.nii.gz"), "-l", p("lab2d.nii.gz"), "-o", out_p, "--mode", "pairs",
                    "--levels", "3:5", "--samples", "1"], "pairs mode")
    if s:
        m = load_manifest(out_p)
        check_samples("pairs", out_p, m, 1, 2, pairs=True)
        if m["samples"]:
            x = m["samples"][0]
            check(x["level"] == {"aug": 3, "syn": 5}, "pairs: level aug 3, syn 5")
            check(set(x["outputs"]) >= {"moving", "fixed", "field", "moving_field", "moving_labels",
                                        "fixed_labels", "preview"}, f"pairs: outputs {sorted(x['outputs'])}")
            for d in ("moving", "fixed", "fields", "moving_fields", "moving_labels", "fixed_labels", "previews"):
                check(len(os.listdir(os.path.join(out_p, d))) == 1 if os.path.isdir(os.path.join(out_p, d))
                      else False, f"pairs: {d}/ holds the sample")

    # --- MSD dataset (plain case names, "training" list).
    msd = p("Task01_Toy")
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(msd, d))
    names = ["toy_001", "toy_002"]
    for i, n in enumerate(names):
        im = smooth_image((40, 36), (1.2, 0.8), (0.0, 0.0), 20 + i)
        sitk.WriteImage(im, os.path.join(msd, "imagesTr", n + ".nii.gz"))
        sitk.WriteImage(label_map(im), os.path.join(msd, "labelsTr", n + ".nii.gz"))
    sitk.WriteImage(smooth_image((40, 36), (1.2, 0.8), (0.0, 0.0), 29), os.path.join(msd, "imagesTs", "toy_009.nii.gz"))
    msd_json = {"name": "Toy", "modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "a", "2": "b", "3": "c"},
                "numTraining": 2, "numTest": 1,
                "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
                "test": ["./imagesTs/toy_009.nii.gz"]}
    with open(os.path.join(msd, "dataset.json"), "w") as f:
        json.dump(msd_json, f)
    out_m = p("Task01_Toy_drdm")
    s = deform_run(["-i", msd, "-o", out_m, "--levels", "3", "--samples", "1", "--mode", "augment"],
                   "on an MSD dataset")
    if s:
        with open(os.path.join(out_m, "dataset.json")) as f:
            dj = json.load(f)
        check(dj.get("numTraining") == 4, f"MSD: numTraining = 2 originals + 2 augmented (got {dj.get('numTraining')})")
        tr = dj.get("training", [])
        check(len(tr) == 4 and all(os.path.exists(os.path.join(out_m, e["image"])) and
                                   os.path.exists(os.path.join(out_m, e["label"])) for e in tr),
              "MSD: training list has 4 entries whose image and label exist")
        check({e["image"] for e in tr} >= {f"./imagesTr/{n}.nii.gz" for n in names}
              and any("_drdm_" in e["image"] for e in tr), "MSD: originals and augmented cases listed")
        check(dj.get("name") == "Toy" and dj.get("test") == msd_json["test"] and dj.get("numTest") == 1,
              "MSD: other dataset.json keys kept")
        check(list(dj)[:3] == ["name", "modality", "labels"], f"MSD: key order kept {list(dj)[:4]}")
        for n in names:
            for d in ("imagesTr", "labelsTr"):
                with open(os.path.join(msd, d, n + ".nii.gz"), "rb") as fa, \
                        open(os.path.join(out_m, d, n + ".nii.gz"), "rb") as fb:
                    check(fa.read() == fb.read(), f"MSD: original {d}/{n}.nii.gz copied unchanged")
        check(os.path.isdir(os.path.join(out_m, "drdm_fields")) and os.path.isdir(os.path.join(out_m, "drdm_previews")),
              "MSD: drdm_fields/ and drdm_previews/")
        m = load_manifest(out_m)
        check_samples("MSD", out_m, m, 2, 2)
        check(files_under(os.path.join(msd)) == sorted(["dataset.json"] + [f"{d}/{n}.nii.gz" for d in
              ("imagesTr", "labelsTr") for n in names] + ["imagesTs/toy_009.nii.gz"]), "MSD: input dataset untouched")

    # --- nnU-Net v2 dataset: two channels (_0000, _0001) share one field.
    nn = p("Dataset901_Toy")
    for d in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(nn, d))
    cases_nn = ["case_a", "case_b"]
    for i, n in enumerate(cases_nn):
        im = smooth_image((36, 44), (0.7, 0.7), (1.0, 1.0), 30 + i)
        ch1 = sitk.Cast(im * 2.0 + 5.0, sitk.sitkFloat32)  # channel 1 = 2 * channel 0 + 5
        sitk.WriteImage(im, os.path.join(nn, "imagesTr", n + "_0000.nii.gz"))
        sitk.WriteImage(ch1, os.path.join(nn, "imagesTr", n + "_0001.nii.gz"))
        sitk.WriteImage(label_map(im), os.path.join(nn, "labelsTr", n + ".nii.gz"))
    nn_json = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1, "b": 2, "c": 3},
               "numTraining": 2, "file_ending": ".nii.gz"}
    with open(os.path.join(nn, "dataset.json"), "w") as f:
        json.dump(nn_json, f)
    out_n = p("Dataset902_Toy")
    s = deform_run(["-i", nn, "-o", out_n, "--levels", "3", "--samples", "1", "--no-preview"],
                   "on an nnU-Net v2 dataset (2 channels)")
    if s:
        with open(os.path.join(out_n, "dataset.json")) as f:
            dj = json.load(f)
        check(dj.get("numTraining") == 4 and "training" not in dj and dj.get("channel_names") == nn_json["channel_names"]
              and dj.get("file_ending") == ".nii.gz", f"nnU-Net: dataset.json numTraining 4, no training list added ({dj})")
        expect = sorted([f"{n}{t}_{c:04d}.nii.gz" for n in cases_nn for t in ("", "_drdm_T3_s00") for c in (0, 1)])
        got = sorted(os.listdir(os.path.join(out_n, "imagesTr")))
        check(got == expect, f"nnU-Net: imagesTr keeps the _0000/_0001 channel naming {got}")
        got_l = sorted(os.listdir(os.path.join(out_n, "labelsTr")))
        check(got_l == sorted([f"{n}{t}.nii.gz" for n in cases_nn for t in ("", "_drdm_T3_s00")]),
              f"nnU-Net: labelsTr/CASE.nii.gz without channel suffix {got_l}")
        m = load_manifest(out_n)
        check_samples("nnU-Net", out_n, m, 2, 2)
        for x in m["samples"]:
            check(isinstance(x["input"], list) and len(x["input"]) == 2 and isinstance(x["outputs"]["image"], list)
                  and len(x["outputs"]["image"]) == 2, f"nnU-Net {x['case']}: two channel inputs and outputs")
            if len(flat(x["outputs"]["image"])) != 2:
                continue
            w0, w1 = (sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out_n, r))) for r in x["outputs"]["image"])
            _, u = field_metrics(sitk.ReadImage(os.path.join(out_n, x["outputs"]["field"])))
            inner = np.zeros(w0.shape, bool)
            inner[4:-4, 4:-4] = True
            inner &= np.abs(u).max(axis=0) < 3  # sample points inside the image: no zero padding mixed in
            check(np.abs(w1 - (2 * w0 + 5))[inner].max() < 1e-3 * np.abs(w1).max() and
                  np.abs(w0 - sitk.GetArrayFromImage(sitk.ReadImage(flat(x["input"])[0])))[inner].max() > 1,
                  f"nnU-Net {x['case']}: both channels warped by one field (warped ch1 = 2 warped ch0 + 5)")

    # --- bad input: non-zero exit, a message naming the file or key, no manifest,
    # and nothing at all written when the problem is found before processing.
    def expect_fail(args, names_in_msg, what, out_dir, written_before_check=False):
        rc, _, err = run([deform] + args + ["-o", out_dir] + common)
        ok = rc != 0 and all(n in err for n in flat(names_in_msg))
        manifests = [f for f in files_under(out_dir) if f.startswith("manifest")] if os.path.isdir(out_dir) else []
        ok = ok and not manifests
        if not written_before_check:
            ok = ok and not os.path.exists(out_dir)
        check(ok, f"drdm_deform {what} -> exit {rc}, {'nothing written' if not written_before_check else 'no manifest'}"
                  f", stderr: {err.strip()[-200:]}")

    base = ["--levels", "3", "--samples", "1"]
    expect_fail(["-i", p("missing.nii.gz")] + base, "missing.nii.gz", "missing input file", p("e_missing"))
    with open(p("img2d.nii.gz"), "rb") as f:
        data = f.read()
    os.makedirs(p("corrupt"))
    with open(p("corrupt", "img.nii.gz"), "wb") as f:
        f.write(data[: len(data) // 2])  # truncated: the header survives, the voxels do not
    expect_fail(["-i", p("corrupt", "img.nii.gz")] + base, "img.nii.gz", "truncated .nii.gz", p("e_corrupt"))
    # The same file as the second case of a folder: documented "checks every
    # input first (readable, ...) so that bad input stops the run before
    # anything is written" -> not even case 1's outputs.
    os.makedirs(p("corrupt_dir"))
    shutil.copy(p("img2d.nii.gz"), p("corrupt_dir", "a.nii.gz"))
    shutil.copy(p("corrupt", "img.nii.gz"), p("corrupt_dir", "b.nii.gz"))
    expect_fail(["-i", p("corrupt_dir")] + base, "b.nii.gz", "folder whose second image is truncated",
                p("e_corrupt_dir"))
    with open(p("garbage.nii.gz"), "wb") as f:
        f.write(os.urandom(3000))
    expect_fail(["-i", p("garbage.nii.gz")] + base, "garbage.nii.gz", "garbage .nii.gz", p("e_garbage"))
    other = smooth_image((48, 40), (0.9, 1.3), (3.0, -2.0), 1, angle=0.4)  # spacing differs
    sitk.WriteImage(label_map(other), p("lab_other.nii.gz"))
    expect_fail(["-i", p("img2d.nii.gz"), "-l", p("lab_other.nii.gz")] + base, "lab_other.nii.gz",
                "label map on another grid", p("e_grid"))
    nan = sitk.GetArrayFromImage(img2d)
    nan[7, 9] = np.nan
    nan_img = sitk.GetImageFromArray(nan)
    nan_img.CopyInformation(img2d)
    sitk.WriteImage(nan_img, p("nan.mha"))  # SimpleITK's NIfTI writer turns NaN into 0
    expect_fail(["-i", p("nan.mha")] + base, "nan.mha", "NaN image", p("e_nan"))
    expect_fail(["-i", p("imgs"), "--mode", "augment"] + base, "labels", "augment without labels", p("e_aug"))
    os.makedirs(p("labs_partial"))
    shutil.copy(p("labs", "a.nii.gz"), p("labs_partial", "a.nii.gz"))
    expect_fail(["-i", p("imgs"), "-l", p("labs_partial")] + base, "b.nii.gz", "labels folder missing a case",
                p("e_partial"))
    expect_fail(["-i", p("img2d.nii.gz"), "--levels", "0"], "levels", "--levels 0", p("e_l0"))
    expect_fail(["-i", p("img2d.nii.gz"), "--levels", "99"], "99", "--levels 99 > T = 80", p("e_l99"))
    expect_fail(["-i", p("img2d.nii.gz"), "--shard", "3/2"] + base, "shard", "--shard 3/2", p("e_sh"))
    expect_fail(["-i", p("img2d.nii.gz"), "--shard", "x"] + base, "--shard", "--shard x", p("e_shx"))
    with open(p("bad_config.json"), "w") as f:
        json.dump({"samples": 1, "levels": "3", "sampels": 2}, f)
    expect_fail(["-i", p("img2d.nii.gz"), "--config", p("bad_config.json")], ["bad_config.json", "sampels"],
                "unknown key in --config", p("e_cfg"))
    before = files_under(msd)
    rc, _, err = run([deform, "-i", msd, "-o", msd] + base + common)
    check(rc != 0 and "Task01_Toy" in err and files_under(msd) == before,
          f"output = input dataset refused, dataset untouched (stderr: {err.strip()[-160:]})")
    leftovers = [f for f in files_under(root) if ".drdm-tmp" in f]
    check(not leftovers, f"drdm_deform leaves no temporary files {leftovers}")


# ---------------------------------------------------------------------------
# Single-slice volumes (--section single-slice): a 256 x 256 x 1 image, as
# every JSRT chest radiograph is stored, gets 2D fields (2 components on the
# in-plane grid) from drdm_random_field and drdm_deform; drdm_warp applies
# them to the volume (which keeps its 256 x 256 x 1 grid) and drdm_field_stats
# reads them; SimpleITK applies them to the 2D slice image[:, :, 0] and must
# reproduce drdm's warped slice (tolerances as in tests/oracle/).

SLICE_TOLERANCE = 1e-3          # max |drdm - SimpleITK| over the interior, x image range
SLICE_NEGATIVE_MIN = 10 * SLICE_TOLERANCE
SLICE_LABEL_AGREEMENT = 0.99


def single_slice_image(shape_xy, spacing, origin, angle, seed):
    """A 3D float32 image of one slice (ITK size x, y, 1), direction Rz(angle)
    with x and y flipped (JSRT's files have diag(-1, -1, 1))."""
    img = smooth_image((1, shape_xy[1], shape_xy[0]), spacing, origin, seed)
    c, s = math.cos(angle), math.sin(angle)
    rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([-1.0, -1.0, 1.0])
    img.SetDirection(tuple(rz.ravel()))
    return img


def sitk_apply(image2d, field, interpolator):
    """SimpleITK's DisplacementFieldTransform of `field`, resampling `image2d` on its own grid."""
    t = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.GetArrayFromImage(sitk.Resample(image2d, image2d, t, interpolator, 0.0))


def interior_mask(u, margin=2):
    """Voxels `margin` from the border whose sample point x + u(x) lies at
    least one voxel inside the grid (u: [d, ...S] voxels, numpy order)."""
    shape = u.shape[1:]
    mask = np.ones(shape, dtype=bool)
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    for a, n in enumerate(shape):
        mask &= (grids[a] >= margin) & (grids[a] < n - margin)
        pos = grids[a] + u[a]
        mask &= (pos >= 1.0) & (pos <= n - 2.0)
    return mask


def single_slice_tests(bin_dir, workdir):
    exe = lambda name: os.path.join(bin_dir, name)  # noqa: E731
    p = lambda *names: os.path.join(workdir, *names)  # noqa: E731
    vol = single_slice_image((256, 256), (1.4, 1.2, 1.0), (3.0, -2.0, 5.0), 0.3, 41)
    sitk.WriteImage(vol, p("slice.nii.gz"))
    sitk.WriteImage(label_map(vol), p("slice_labels.nii.gz"))
    vol = sitk.ReadImage(p("slice.nii.gz"))  # the geometry exactly as stored
    labels = sitk.ReadImage(p("slice_labels.nii.gz"))
    check(vol.GetSize() == (256, 256, 1), "input is a 256x256x1 volume")
    plane, plane_labels = vol[:, :, 0], labels[:, :, 0]  # SimpleITK's own 2D reduction
    values = sitk.GetArrayFromImage(plane).astype(np.float64)
    value_range = float(values.max() - values.min())

    def is_2d_field(path, what):
        """The header says 2D with 2 components, on the slice's in-plane grid."""
        if not os.path.exists(path):
            check(False, f"{what}: {path} exists")
            return None
        r = sitk.ImageFileReader()
        r.SetFileName(path)
        r.ReadImageInformation()
        field = sitk.ReadImage(path)
        check(r.GetDimension() == 2 and r.GetNumberOfComponents() == 2 and same_grid(field, plane),
              f"{what}: header is 2D with 2 components on the in-plane grid (dim {r.GetDimension()}, "
              f"{r.GetNumberOfComponents()} components, size {r.GetSize()})")
        return field if field.GetDimension() == 2 else None

    def oracle(field, warped_path, what, labels_path=None):
        """drdm's warped volume vs SimpleITK applying the 2D field to the 2D slice."""
        warped = sitk.ReadImage(warped_path)
        check(same_grid(warped, vol) and warped.GetPixelID() == vol.GetPixelID(),
              f"{what}: warped image keeps the input's 256x256x1 grid and pixel type ({warped.GetSize()})")
        if warped.GetSize() != vol.GetSize():
            return
        ours = sitk.GetArrayFromImage(warped)[0].astype(np.float64)
        _, u = field_metrics(field)
        mask = interior_mask(u)
        check(mask.mean() > 0.5 and np.abs(u).max() > 1.0,
              f"{what}: the field moves voxels (max {np.abs(u).max():.2f}), {mask.mean():.2f} in the mask")
        err = np.abs(ours - sitk_apply(plane, field, sitk.sitkLinear))[mask].max() / value_range
        check(err < SLICE_TOLERANCE, f"{what}: drdm vs SimpleITK DisplacementFieldTransform on image[:, :, 0]: "
                                     f"max |diff| {err:.3g} x range (tolerance {SLICE_TOLERANCE:.0e})")
        moved = np.abs(ours - values)[mask].max() / value_range
        check(moved > SLICE_NEGATIVE_MIN, f"{what}: negative control, no warp: {moved:.3g} x range")
        swapped = sitk.GetImageFromArray(sitk.GetArrayFromImage(field)[..., ::-1].copy(), isVector=True)
        swapped.CopyInformation(field)
        bad = np.abs(ours - sitk_apply(plane, swapped, sitk.sitkLinear))[mask].max() / value_range
        check(bad > SLICE_NEGATIVE_MIN, f"{what}: negative control, components swapped: {bad:.3g} x range")
        if labels_path:
            lab = sitk.ReadImage(labels_path)
            check(same_grid(lab, labels) and lab.GetSize() == (256, 256, 1),
                  f"{what}: warped labels keep the 256x256x1 grid")
            ours_l = sitk.GetArrayFromImage(lab)[0]
            agree = (ours_l == sitk_apply(plane_labels, field, sitk.sitkNearestNeighbor))[mask].mean()
            check(agree >= SLICE_LABEL_AGREEMENT, f"{what}: labels vs SimpleITK nearest: {agree:.4f} agree")

    def stats_of(path, what):
        rc, out, err = run([exe("drdm_field_stats"), "--field", path])
        check(rc == 0, f"{what}: drdm_field_stats on the 2D field (rc {rc}: {err.strip()[-200:]})")
        if rc != 0:
            return None
        st = json.loads(out)
        check(st["size"] == [256, 256] and st["axis_order"] == "H,W", f"{what}: stats on the 256x256 grid")
        return st

    # drdm_random_field: generated in 2D on the in-plane grid.
    rc, out, err = run([exe("drdm_random_field"), "-r", p("slice.nii.gz"), "-o", p("rf.nii.gz"),
                        "--amplitude", "6", "--seed", "3"])
    check(rc == 0, f"drdm_random_field on a 256x256x1 reference (rc {rc}: {err.strip()[-200:]})")
    rf = is_2d_field(p("rf.nii.gz"), "drdm_random_field")
    if rf is not None:
        st = stats_of(p("rf.nii.gz"), "random field")
        if st:
            printed = json.loads(out)
            check(abs(st["max_magnitude_pct"] - printed["max_magnitude_pct"]) < 1e-4 and st["folding_ratio"] == 0,
                  "random field: drdm_field_stats agrees with drdm_random_field, no folding")
            mine, _ = field_metrics(rf)
            check(abs(mine["max_magnitude_pct"] - st["max_magnitude_pct"]) < 1e-4,
                  "random field: magnitude equals numpy's recomputation from the file")
        rc, _, err = run([exe("drdm_warp"), "-i", p("slice.nii.gz"), "-f", p("rf.nii.gz"), "-o", p("w.nii.gz")])
        check(rc == 0, f"drdm_warp: 2D field on the 256x256x1 image (rc {rc}: {err.strip()[-200:]})")
        rc, _, err = run([exe("drdm_warp"), "-i", p("slice_labels.nii.gz"), "-f", p("rf.nii.gz"),
                          "-o", p("wl.nii.gz"), "--labels"])
        check(rc == 0, f"drdm_warp --labels: 2D field on the 256x256x1 label map (rc {rc}: {err.strip()[-200:]})")
        if os.path.exists(p("w.nii.gz")) and os.path.exists(p("wl.nii.gz")):
            oracle(rf, p("w.nii.gz"), "drdm_warp (random field)", p("wl.nii.gz"))

    # Grids that do not match: clear errors naming both files, nothing written.
    other = single_slice_image((256, 256), (1.4, 1.3, 1.0), (3.0, -2.0, 5.0), 0.3, 42)  # spacing differs
    sitk.WriteImage(other, p("other_slice.nii.gz"))
    two = single_slice_image((256, 256), (1.4, 1.2, 1.0), (3.0, -2.0, 5.0), 0.3, 43)
    two = sitk.JoinSeries([two[:, :, 0], two[:, :, 0]])  # 256x256x2: not a single slice
    sitk.WriteImage(two, p("two_slices.nii.gz"))
    for img_name, what in (("other_slice.nii.gz", "in-plane spacing differs"),
                           ("two_slices.nii.gz", "256x256x2 volume")):
        rc, _, err = run([exe("drdm_warp"), "-i", p(img_name), "-f", p("rf.nii.gz"), "-o", p("bad.nii.gz")])
        check(rc != 0 and img_name in err and "rf.nii.gz" in err and "does not lie on the" in err
              and not os.path.exists(p("bad.nii.gz")),
              f"drdm_warp refuses the 2D field on another grid ({what}): {err.strip()[-200:]}")

    # drdm_deform: 2D fields; images and labels keep the 256x256x1 grid.
    model = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models", "cardiac2d",
                         "model.pt")
    common = ["--model", model, "-n", "1", "--threads", "1", "--no-progress", "-q", "--no-preview"]
    out = p("deform")
    rc, _, err = run([exe("drdm_deform"), "-i", p("slice.nii.gz"), "-l", p("slice_labels.nii.gz"), "-o", out,
                      "--levels", "5"] + common)
    check(rc == 0, f"drdm_deform on a 256x256x1 image (rc {rc}: {err.strip()[-300:]})")
    if rc == 0:
        with open(os.path.join(out, "manifest.json")) as f:
            sample = json.load(f)["samples"][0]
        o = {k: os.path.join(out, v) for k, v in sample["outputs"].items()}
        field = is_2d_field(o["field"], "drdm_deform fields/")
        if field is not None:
            oracle(field, o["image"], "drdm_deform", o["labels"])
            st = stats_of(o["field"], "drdm_deform field")
            if st:
                check(all(abs(st[k] - sample["metrics"][k]) < 1e-5
                          for k in ("max_magnitude_pct", "mean_magnitude_pct", "folding_ratio")),
                      "drdm_deform field: drdm_field_stats equals the manifest's metrics")
            rc, _, err = run([exe("drdm_warp"), "-i", p("slice.nii.gz"), "-f", o["field"], "-o", p("dw.nii.gz")])
            check(rc == 0, f"drdm_warp with drdm_deform's 2D field (rc {rc}: {err.strip()[-200:]})")
            if rc == 0:
                a = sitk.GetArrayFromImage(sitk.ReadImage(p("dw.nii.gz")))
                b = sitk.GetArrayFromImage(sitk.ReadImage(o["image"]))
                diff = float(np.abs(a - b).max()) / value_range
                check(a.shape == b.shape and diff < 1e-4,
                      f"drdm_warp with the written field reproduces drdm_deform's image ({diff:.2g} x range)")

    out = p("pairs")
    rc, _, err = run([exe("drdm_deform"), "-i", p("slice.nii.gz"), "-o", out, "--mode", "pairs",
                      "--levels", "5:5"] + common)
    check(rc == 0, f"drdm_deform pairs on a 256x256x1 image (rc {rc}: {err.strip()[-300:]})")
    if rc == 0:
        with open(os.path.join(out, "manifest.json")) as f:
            o = {k: os.path.join(out, v) for k, v in json.load(f)["samples"][0]["outputs"].items()}
        is_2d_field(o["field"], "pairs fields/")
        moving_field = is_2d_field(o["moving_field"], "pairs moving_fields/")
        if moving_field is not None:
            oracle(moving_field, o["moving"], "pairs moving")
        fixed = sitk.ReadImage(o["fixed"])
        check(same_grid(fixed, vol), "pairs: fixed keeps the 256x256x1 grid")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--make-field", help="drdm_random_field (section tools)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--section", choices=["tools", "deform", "single-slice"], default="tools",
                    help="tools: drdm_warp, drdm_field_stats, drdm_random_field, drdm_train, "
                         "drdm_check_recovery; deform: drdm_deform; single-slice: 2D fields of "
                         "256x256x1 images through all of them")
    a = ap.parse_args()
    if a.section == "single-slice":
        shutil.rmtree(a.workdir, ignore_errors=True)
        os.makedirs(a.workdir)
        single_slice_tests(a.bin_dir, a.workdir)
        print(f"cli single-slice: {len(FAILURES)} failure(s)")
        return 1 if FAILURES else 0
    if a.section == "deform":
        shutil.rmtree(a.workdir, ignore_errors=True)
        os.makedirs(a.workdir)
        deform_tests(os.path.join(a.bin_dir, "drdm_deform"), a.workdir)
        print(f"cli deform: {len(FAILURES)} failure(s)")
        return 1 if FAILURES else 0
    if not a.make_field:
        ap.error("--make-field is required for --section tools")
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
