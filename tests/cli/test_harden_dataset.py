#!/usr/bin/env python3
"""drdm_deform's dataset output as nnU-Net v2 (from PyPI) sees it (issue 12, items 14 and 15).

- An MSD dataset with a test set (imagesTs/, labelsTs/, a "test" list): the output carries the test
  set over unchanged (byte copies, not links), and nnU-Net v2's convert_msd_dataset and
  verify_dataset_integrity accept it.
- splits_final.json keeps every source case and its deformed copies in one fold (no patient in
  training and validation at once): checked against the manifest's case of every sample, against
  the identifiers nnU-Net finds in the dataset, and against nnU-Net's own default split
  (generate_crossval_split) of the input's cases, whose validation cases ours keeps.
- An nnU-Net v2 dataset (2 channels, imagesTs/, its own splits_final.json) deformed in two shards:
  after each shard, dataset.json and splits_final.json list the same cases, those present; the
  input's folds are kept and extended by the copies; verify_dataset_integrity accepts the result.
- A malformed input splits_final.json fails naming the file, with nothing written.

Inputs are made with SimpleITK; the truth comes from nnU-Net v2 and the manifest. nnU-Net's
folders (nnUNet_raw, nnUNet_preprocessed, nnUNet_results) point into the work folder.
"""
import json
import os
import shutil
import sys

from cli_util import (check, files_under, finish, load, make_msd_dataset, make_nnunet_dataset, run,  # noqa: E402
                      same_bytes, start)

COMMON = ["--threads", "1", "--no-progress", "-q", "--no-preview"]


def sample_sources(out_dir, manifests):
    """nnU-Net identifier of every deformed copy -> its source case, from the manifests' "case"."""
    src = {}
    for name in manifests:
        for s in load(os.path.join(out_dir, name))["samples"]:
            image = s["outputs"]["image"]
            stem = os.path.basename(image[0] if isinstance(image, list) else image)[: -len(".nii.gz")]
            src[stem[:-5] if isinstance(image, list) else stem] = s["case"]
    return src


def check_grouping(what, splits, source_of, identifiers):
    """Every fold: train and val disjoint, together all identifiers; the val folds partition them;
    a source case and all its copies share their fold."""
    ok = isinstance(splits, list) and all(set(f) == {"train", "val"} for f in splits)
    check(ok, f"{what}: splits_final.json is a list of {{train, val}} ({len(splits)} folds)")
    if not ok:
        return
    ids = set(identifiers)
    for k, f in enumerate(splits):
        tr, va = set(f["train"]), set(f["val"])
        check(not (tr & va) and tr | va == ids and len(tr) == len(f["train"]) and len(va) == len(f["val"]),
              f"{what}: fold {k}: train ({len(tr)}) and val ({len(va)}) disjoint, together the "
              f"{len(ids)} cases nnU-Net finds")
        leaks = sorted({source_of[i] for i in va} & {source_of[i] for i in tr})
        check(not leaks, f"{what}: fold {k}: no source case in both train and val {leaks}")
    vals = [i for f in splits for i in f["val"]]
    check(sorted(vals) == sorted(ids), f"{what}: every case is validated exactly once over the folds")


def msd_tests(deform, root, nn):
    """Item 14 (test set carried over) and item 15 (nnU-Net's default split, grouped) on MSD."""
    msd = os.path.join(root, "Task05_Toy")
    names = [f"toy_{i:03d}" for i in range(1, 8)]  # 7 source cases: folds of 2, 2, 1, 1, 1
    tests = ["toy_101", "toy_102"]
    # MSD images are 3D (convert_msd_dataset refuses 2D); 3 slices through the 2D model
    dj = make_msd_dataset(msd, names, tests, (3, 40, 36))

    out = os.path.join(root, "Task06_ToyDrdm")  # convert_msd_dataset wants TaskNN_Name
    rc, _, err = run([deform, "-i", msd, "-o", out, "--mode", "augment", "--levels", "3,5", "--samples", "1"] + COMMON)
    check(rc == 0, f"drdm_deform on an MSD dataset with imagesTs/ and labelsTs/ (rc {rc}: {err.strip()[-300:]})")
    if rc != 0:
        return

    # Item 14: the test set is there, unchanged, and not linked to the input.
    carried = [f for f in files_under(msd) if f.split("/")[0] in ("imagesTs", "labelsTs")]
    check(all(os.path.isfile(os.path.join(out, f)) and same_bytes(os.path.join(msd, f), os.path.join(out, f))
              for f in carried) and len(carried) == 3,
          f"MSD: imagesTs/ and labelsTs/ carried over byte for byte {carried}")
    check(sorted(f for f in files_under(out) if f.split("/")[0] in ("imagesTs", "labelsTs")) == carried,
          "MSD: nothing else in the output's imagesTs/ and labelsTs/")
    check(all(os.path.isfile(os.path.join(out, f)) and
              os.stat(os.path.join(out, f)).st_ino != os.stat(os.path.join(msd, f)).st_ino for f in carried),
          "MSD: the test files are copies, not hard links to the input")
    odj = load(os.path.join(out, "dataset.json"))
    check(odj.get("test") == dj["test"] and all(os.path.isfile(os.path.join(out, t)) for t in odj["test"]),
          "MSD: every image of dataset.json's test list exists in the output")

    # nnU-Net v2: convert the MSD output, then verify the converted dataset.
    try:
        nn["convert_msd_dataset"](out, overwrite_target_id=106, num_processes=1)
        converted = os.path.join(os.environ["nnUNet_raw"], "Dataset106_ToyDrdm")
        ok = files_under(os.path.join(converted, "imagesTs")) == [t + "_0000.nii.gz" for t in tests]
        check(ok, "nnU-Net convert_msd_dataset accepts the output; its imagesTs holds the test images")
    except Exception as e:  # noqa: BLE001
        check(False, f"nnU-Net convert_msd_dataset on the output: {type(e).__name__}: {e}")
        return
    try:
        nn["verify_dataset_integrity"](converted, num_processes=1)
        check(True, "nnU-Net verify_dataset_integrity accepts the converted output")
    except BaseException as e:  # noqa: BLE001 (it raises AssertionError or RuntimeError)
        check(False, f"nnU-Net verify_dataset_integrity on the converted output: {type(e).__name__}: {e}")

    # Item 15: splits_final.json, grouped, nnU-Net's default folds of the input's cases.
    path = os.path.join(out, "splits_final.json")
    check(os.path.isfile(path), "MSD: splits_final.json written into the output dataset")
    if not os.path.isfile(path):
        return
    splits = load(path)
    identifiers = sorted(nn["get_filenames_of_train_images_and_targets"](converted))
    source_of = {n: n for n in names}
    source_of.update(sample_sources(out, ["manifest.json"]))
    check(sorted(source_of) == identifiers and len(identifiers) == 3 * len(names),
          f"MSD: nnU-Net finds the originals and 2 copies of each ({len(identifiers)} cases)")
    check_grouping("MSD", splits, source_of, identifiers)
    default = nn["generate_crossval_split"](sorted(names), seed=12345, n_splits=5)
    check(len(splits) == 5 and all({source_of[i] for i in f["val"]} == set(d["val"])
                                   for f, d in zip(splits, default)),
          "MSD: fold k validates the source cases nnU-Net's default split of the input validates")
    leaky = nn["generate_crossval_split"](identifiers, seed=12345, n_splits=5)
    n_leaks = sum(len({source_of[i] for i in f["val"]} & {source_of[i] for i in f["train"]}) for f in leaky)
    print(f"info: nnU-Net's own split of the output would put {n_leaks} source cases in train and val")


def nnunet_tests(deform, root, nn):
    """Item 15 on an nnU-Net v2 dataset with its own split, run in two shards."""
    src = os.path.join(root, "Dataset903_Toy")
    cases = [f"pat{i}" for i in range(6)]
    own = make_nnunet_dataset(src, cases)  # 3 folds of the user's own

    out = os.path.join(root, "Dataset904_ToyDrdm")
    for shard in (0, 1):
        rc, _, err = run([deform, "-i", src, "-o", out, "--levels", "3", "--samples", "2", "--shard", f"{shard}/2"]
                         + COMMON)
        check(rc == 0, f"drdm_deform --shard {shard}/2 on an nnU-Net v2 dataset (rc {rc}: {err.strip()[-300:]})")
        if rc != 0:
            return
        check(files_under(os.path.join(out, "imagesTs")) == ["new_0000.nii.gz", "new_0001.nii.gz"],
              f"nnU-Net shard {shard}/2: imagesTs/ carried over")
        path = os.path.join(out, "splits_final.json")
        if not os.path.isfile(path):
            check(False, f"nnU-Net shard {shard}/2: splits_final.json written")
            return
        splits = load(path)
        identifiers = sorted(nn["get_filenames_of_train_images_and_targets"](out))
        numtr = load(os.path.join(out, "dataset.json"))["numTraining"]
        manifests = [f"manifest-shard-{s}-of-2.json" for s in range(shard + 1)]
        source_of = {n: n for n in cases}
        source_of.update(sample_sources(out, manifests))
        done = {source_of[i] for i in identifiers}
        check(numtr == len(identifiers) == 3 * len(done) and len(done) == (3 if shard == 0 else 6),
              f"nnU-Net shard {shard}/2: dataset.json counts the {len(identifiers)} cases present "
              f"(originals + 2 copies of {len(done)} sources)")
        check(len(splits) == len(own) and all(
            {source_of[i] for i in f["val"]} == set(o["val"]) & done and
            {source_of[i] for i in f["train"]} == set(o["train"]) & done for f, o in zip(splits, own)),
            f"nnU-Net shard {shard}/2: the input's own folds kept, each with the copies of its cases")
        check_grouping(f"nnU-Net shard {shard}/2", splits, source_of, identifiers)
    try:
        nn["verify_dataset_integrity"](out, num_processes=1)
        check(True, "nnU-Net verify_dataset_integrity accepts the 2-channel output of both shards")
    except BaseException as e:  # noqa: BLE001
        check(False, f"nnU-Net verify_dataset_integrity on the 2-channel output: {type(e).__name__}: {e}")

    # A malformed splits_final.json in the input: refused before anything is written.
    bad = os.path.join(root, "Dataset905_Bad")
    shutil.copytree(src, bad)
    with open(os.path.join(bad, "splits_final.json"), "w") as f:
        json.dump([{"train": cases, "validation": []}], f)
    out_bad = os.path.join(root, "Dataset906_Bad")
    rc, _, err = run([deform, "-i", bad, "-o", out_bad, "--levels", "3", "--samples", "1"] + COMMON)
    check(rc != 0 and "splits_final.json" in err and not os.path.exists(out_bad),
          f"malformed input splits_final.json -> exit {rc}, names the file, nothing written ({err.strip()[-160:]})")


def main():
    a = start()
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[var] = os.path.join(a.workdir, var)
        os.makedirs(os.environ[var])
    try:
        from nnunetv2.dataset_conversion.convert_MSD_dataset import convert_msd_dataset
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
        from nnunetv2.utilities.crossval_split import generate_crossval_split
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    except ImportError as e:
        print(f"FAIL nnU-Net v2 is not importable ({e}); scripts/setup.sh installs it")
        return 1
    nn = {"convert_msd_dataset": convert_msd_dataset, "verify_dataset_integrity": verify_dataset_integrity,
          "generate_crossval_split": generate_crossval_split,
          "get_filenames_of_train_images_and_targets": get_filenames_of_train_images_and_targets}
    deform = os.path.join(a.bin_dir, "drdm_deform")
    msd_tests(deform, a.workdir, nn)
    nnunet_tests(deform, a.workdir, nn)
    return finish("cli harden dataset", a.workdir)


if __name__ == "__main__":
    sys.exit(main())
