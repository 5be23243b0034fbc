#!/usr/bin/env python3
"""drdm_deform on a cluster (issue 13): --shard auto and drdm_deform merge.

- A folder of images with labels (augment, previews on) and an nnU-Net v2 dataset (2 channels, test set,
  with and without its own splits_final.json) are deformed once unsharded and again in shards: into one
  shared folder (merged in place) and into one folder per shard (merged into -o MERGED), with --shard i/n
  and with --shard auto from RANK/WORLD_SIZE and from SLURM_ARRAY_TASK_* (MIN = 1).
- Every merge gives what the unsharded run wrote: the same files and folders (the shard records aside),
  byte-identical fields, images, labels, previews, dataset.json, splits_final.json and test set, and
  manifest.json and config.json identical but for options.output (the folder's name).
- Bad cases exit 1 naming the variable or file, with nothing written: --shard auto without or with bad
  variables, a missing shard, shards of different jobs or counts, a shard twice, a merged folder that
  holds another run, several folders without -o.
"""
import json
import os
import re
import shutil
import sys

import SimpleITK as sitk

from cli_util import (check, files_under, finish, label_map, load, make_nnunet_dataset, run,  # noqa: E402
                      same_bytes, smooth_image, start)

COMMON = ["--threads", "1", "--no-progress", "-q"]
SHARD_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX",
              "SLURM_ARRAY_TASK_STEP", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def env_with(**variables):
    """The environment without any shard variable of ours, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k not in SHARD_VARS}
    env.update({k: str(v) for k, v in variables.items()})
    return env


def is_shard_record(rel):
    return re.fullmatch(r"(manifest|config)-shard-[0-9]+-of-[0-9]+\.json", rel) is not None


def dirs_under(folder):
    return sorted(os.path.relpath(os.path.join(r, d), folder) for r, ds, _ in os.walk(folder) for d in ds)


def without_output(path, out_dir):
    with open(path) as f:
        return f.read().replace(f'"output": {json.dumps(out_dir)}', '"output": "OUT"')


def compare(what, ref, merged):
    """`merged` holds what the unsharded run wrote into `ref` (the shard records aside)."""
    a = files_under(ref)
    b = [f for f in files_under(merged) if not is_shard_record(f)]
    check(a == b and dirs_under(ref) == dirs_under(merged),
          f"{what}: the same files and folders as the unsharded run (only unsharded: {sorted(set(a) - set(b))[:4]}, "
          f"only merged: {sorted(set(b) - set(a))[:4]})")
    both = [f for f in a if f in b and f not in ("manifest.json", "config.json")]
    differ = [f for f in both if not same_bytes(os.path.join(ref, f), os.path.join(merged, f))]
    check(both and not differ, f"{what}: {len(both)} files byte-identical to the unsharded run's {differ[:4]}")
    for name in ("manifest.json", "config.json"):
        if not os.path.isfile(os.path.join(merged, name)):
            check(False, f"{what}: {name} written")
            continue
        ta, tb = without_output(os.path.join(ref, name), ref), without_output(os.path.join(merged, name), merged)
        first = next((i for i, (x, y) in enumerate(zip(ta.splitlines(), tb.splitlines())) if x != y), None)
        check(ta == tb, f"{what}: {name} identical to the unsharded run's but options.output"
                        + ("" if ta == tb else f" (first difference at line {first})"))
    m = load(os.path.join(merged, "manifest.json")) if os.path.isfile(os.path.join(merged, "manifest.json")) else {}
    check(m.get("options", {}).get("shard") == "0/1", f"{what}: options.shard reads 0/1")


def deform(deform_bin, args, what, env=None, quiet=True):
    rc, out, err = run([deform_bin] + args + (COMMON if quiet else COMMON[:-1]), env=env or env_with())
    check(rc == 0, f"drdm_deform {what} (rc {rc}: {err.strip()[-300:]})")
    return rc, err


def merge(deform_bin, args, what):
    rc, out, err = run([deform_bin, "merge", "-q"] + args, env=env_with())
    check(rc == 0, f"drdm_deform merge {what} (rc {rc}: {err.strip()[-300:]})")
    return json.loads(out) if rc == 0 else {}


def expect_fail(deform_bin, args, names, what, untouched, env=None):
    """Exit 1, stderr naming every one of `names`, and `untouched` ({path: files before, or None: absent})
    as it was."""
    rc, _, err = run([deform_bin] + args, env=env or env_with())
    same = all((not os.path.exists(p)) if before is None else files_under(p) == before
               for p, before in untouched.items())
    check(rc == 1 and all(n in err for n in names) and same,
          f"{what} -> exit {rc}, names {names}, nothing written ({err.strip()[-220:]})")


def folder_tests(d, root):
    """A folder of 3 images with labels, augment mode, previews on."""
    p = lambda *names: os.path.join(root, *names)  # noqa: E731
    for sub in ("imgs", "labs"):
        os.makedirs(p(sub))
    for i, n in enumerate("abc"):
        im = smooth_image((32, 28), 60 + i)
        sitk.WriteImage(im, p("imgs", n + ".nii.gz"))
        sitk.WriteImage(label_map(im), p("labs", n + ".nii.gz"))
    job = ["-i", p("imgs"), "-l", p("labs"), "--mode", "augment", "--levels", "2,3", "--samples", "1"]
    ref = p("ref")
    deform(d, job + ["-o", ref], "unsharded on a folder")

    # One shared folder, --shard auto as torchrun's 2 workers, merged in place (twice: it can be repeated).
    shared = p("shared")
    for k in (0, 1):
        deform(d, job + ["-o", shared, "--shard", "auto"], f"--shard auto as RANK={k} of WORLD_SIZE=2 into a "
               "shared folder", env=env_with(RANK=k, WORLD_SIZE=2))
    check(not os.path.exists(os.path.join(shared, "manifest.json")), "shards alone write no manifest.json")
    s = merge(d, [shared], "of a shared folder, in place")
    check(s.get("shards") == 2 and s.get("cases") == 3 and s.get("samples") == 6 and s.get("files") == 0,
          f"merge in place: 2 shards, 3 cases, 6 samples, no file copied ({s})")
    compare("folder, shared folder, --shard auto (RANK/WORLD_SIZE)", ref, shared)
    shard0 = load(os.path.join(shared, "manifest-shard-0-of-2.json"))
    check(load(os.path.join(shared, "manifest.json"))["summary"] != shard0["summary"],
          "the merged summary is over all samples, not shard 0's")
    merge(d, [shared], "in place again")
    compare("folder, shared folder merged twice", ref, shared)

    # One folder per Slurm array task (--array=1-3): SLURM_* wins over RANK/WORLD_SIZE.
    tasks = [p("slurm", f"t{k}") for k in (1, 2, 3)]
    for k, out in zip((1, 2, 3), tasks):
        env = env_with(SLURM_ARRAY_TASK_ID=k, SLURM_ARRAY_TASK_COUNT=3, SLURM_ARRAY_TASK_MIN=1,
                       SLURM_ARRAY_TASK_MAX=3, RANK=0, WORLD_SIZE=5)
        _, err = deform(d, job + ["-o", out, "--shard", "auto"], f"--shard auto as Slurm task {k} of 1-3", env=env,
                        quiet=False)
        check(f"SLURM_ARRAY_TASK_ID={k}" in err and "SLURM_ARRAY_TASK_MIN=1" in err and f"shard {k - 1}/3" in err,
              f"--shard auto logs the variables it used (task {k}: shard {k - 1}/3)")
        check(os.path.isfile(os.path.join(out, f"manifest-shard-{k - 1}-of-3.json")),
              f"Slurm task {k} of 1-3 is shard {k - 1}/3 (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN)")
    merged = p("slurm", "merged")
    s = merge(d, tasks + ["-o", merged], "of 3 Slurm task folders into -o")
    compare("folder, 3 folders, --shard auto (Slurm)", ref, merged)
    img = load(os.path.join(ref, "manifest.json"))["samples"][0]["outputs"]["image"]
    src = next((t for t in tasks if os.path.isfile(os.path.join(t, img))), tasks[0])
    check(s.get("files", 0) > 0 and os.path.samefile(os.path.join(src, img), os.path.join(merged, img)),
          f"the shards' files are hard-linked into the merged folder ({s.get('files')} files)")

    # --- bad --shard auto: exit 1 naming the variables, nothing written.
    bad = p("bad_auto")
    for env, names, what in [
            ({}, ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE"], "without variables"),
            ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": 2}, ["SLURM_ARRAY_TASK_ID", "'x'"], "ID x"),
            ({"SLURM_ARRAY_TASK_ID": 2, "SLURM_ARRAY_TASK_COUNT": 2}, ["SLURM_ARRAY_TASK_ID=2", "2/2"], "ID = COUNT"),
            ({"SLURM_ARRAY_TASK_ID": 0, "SLURM_ARRAY_TASK_COUNT": 2, "SLURM_ARRAY_TASK_MIN": 1},
             ["SLURM_ARRAY_TASK_MIN=1", "-1/2"], "ID < MIN"),
            ({"SLURM_ARRAY_TASK_ID": 1}, ["SLURM_ARRAY_TASK_COUNT"], "ID without COUNT"),
            ({"RANK": 1}, ["WORLD_SIZE"], "RANK without WORLD_SIZE"),
            ({"RANK": 2, "WORLD_SIZE": 2}, ["RANK=2", "WORLD_SIZE=2"], "RANK = WORLD_SIZE"),
            ({"RANK": 0, "WORLD_SIZE": "2.5"}, ["WORLD_SIZE", "'2.5'"], "WORLD_SIZE 2.5")]:
        expect_fail(d, job + ["-o", bad, "--shard", "auto"], names, f"--shard auto, {what}", {bad: None},
                    env=env_with(**env))

    # --- bad merges: exit 1 naming the file, nothing written.
    half = p("half")  # a shared folder whose shard 1/2 has not finished
    shutil.copytree(shared, half)
    for f in ("manifest.json", "config.json", "manifest-shard-1-of-2.json"):
        os.remove(os.path.join(half, f))
    before = files_under(half)
    expect_fail(d, ["merge", half], ["manifest-shard-1-of-2.json", "missing"], "merge in place, shard 1/2 missing",
                {half: before})
    expect_fail(d, ["merge", tasks[0], tasks[1], "-o", p("m_missing")], ["manifest-shard-2-of-3.json", "missing"],
                "merge of Slurm tasks 1 and 2 of 3", {p("m_missing"): None})
    other = p("other_seed")
    deform(d, job + ["-o", other, "--shard", "1/3", "--seed", "1"], "--shard 1/3 --seed 1 (another job)")
    expect_fail(d, ["merge", tasks[0], other, tasks[2], "-o", p("m_jobs")],
                ["options.seed", "manifest-shard-1-of-3.json"], "merge of shards of different jobs (seed)",
                {p("m_jobs"): None})
    expect_fail(d, ["merge", half, tasks[1], "-o", p("m_count")], ["manifest-shard-1-of-3.json",
                "manifest-shard-0-of-2.json"], "merge of shard 0/2 and shard 1/3", {p("m_count"): None})
    again = p("t1_again")
    shutil.copytree(tasks[0], again)
    expect_fail(d, ["merge"] + tasks + [again, "-o", p("m_twice")], ["twice", "manifest-shard-0-of-3.json"],
                "merge with a shard twice", {p("m_twice"): None})
    expect_fail(d, ["merge", tasks[0], tasks[1]], ["-o"], "merge of 2 folders without -o", {})
    expect_fail(d, ["merge", ref], ["no shard manifest", ref], "merge of an unsharded run", {ref: files_under(ref)})
    expect_fail(d, ["merge"] + tasks + ["-o", os.path.join(tasks[1], "m")], ["inside", tasks[1]],
                "merge into a folder inside a shard folder", {os.path.join(tasks[1], "m"): None})
    before = files_under(other)
    expect_fail(d, ["merge"] + tasks + ["-o", other], ["options.seed", other],
                "merge into a folder that holds another run", {other: before})
    clash = p("m_clash")
    os.makedirs(os.path.join(clash, "images"))
    with open(os.path.join(clash, img), "wb") as f:
        f.write(b"not this run")
    expect_fail(d, ["merge"] + tasks + ["-o", clash], [os.path.join(clash, img)],
                "merge into a folder holding one of its files with other bytes", {clash: files_under(clash)})
    with open(os.path.join(clash, img), "rb") as f:
        check(f.read() == b"not this run", "the clashing file is left as it was")


def dataset_tests(d, root):
    """An nnU-Net v2 dataset (2 channels, imagesTs/), with and without its own splits_final.json."""
    p = lambda *names: os.path.join(root, *names)  # noqa: E731
    src = p("Dataset910_Toy")
    make_nnunet_dataset(src, [f"pat{i}" for i in range(4)])
    job = ["-i", src, "--levels", "2", "--samples", "1", "--no-preview"]
    deform(d, job + ["-o", p("ref")], "unsharded on an nnU-Net dataset")
    ranks = [p("rank", f"r{k}") for k in range(3)]
    for k, out in enumerate(ranks):
        deform(d, job + ["-o", out, "--shard", "auto"], f"dataset, --shard auto as RANK={k} of 3",
               env=env_with(RANK=k, WORLD_SIZE=3))
    merge(d, ranks + ["-o", p("rank", "merged")], "of 3 dataset folders into -o")
    compare("dataset (own splits), 3 folders, --shard auto", p("ref"), p("rank", "merged"))
    for i in (0, 1):
        deform(d, job + ["-o", p("shared"), "--shard", f"{i}/2"], f"dataset, --shard {i}/2 into a shared folder")
    merge(d, [p("shared")], "of a shared dataset folder, in place")
    compare("dataset (own splits), shared folder, --shard i/2", p("ref"), p("shared"))

    # Without splits_final.json: nnU-Net's default folds of the input's cases.
    src2 = p("Dataset911_Toy")
    shutil.copytree(src, src2)
    os.remove(os.path.join(src2, "splits_final.json"))
    job2 = ["-i", src2, "--levels", "2", "--samples", "1", "--no-preview"]
    deform(d, job2 + ["-o", p("ref2")], "unsharded on a dataset without splits_final.json")
    parts = [p("parts2", f"s{k}") for k in (0, 1)]
    for k, out in enumerate(parts):
        deform(d, job2 + ["-o", out, "--shard", f"{k}/2"], f"dataset without splits, --shard {k}/2")
    merge(d, parts + ["-o", p("parts2", "merged")], "of 2 dataset folders (default splits) into -o")
    compare("dataset (default splits), 2 folders, --shard i/n", p("ref2"), p("parts2", "merged"))


def main():
    a = start()
    d = os.path.join(a.bin_dir, "drdm_deform")
    rc, out, _ = run([d, "--help"])
    check(rc == 0 and "auto" in out and "merge" in out, "drdm_deform --help tells of --shard auto and merge")
    rc, out, _ = run([d, "merge", "--help"])
    check(rc == 0 and "OUT_DIR" in out and "-o" in out, "drdm_deform merge --help")
    folder_tests(d, os.path.join(a.workdir, "folder"))
    dataset_tests(d, os.path.join(a.workdir, "dataset"))
    return finish("cli shard merge", a.workdir)


if __name__ == "__main__":
    sys.exit(main())
