#!/usr/bin/env python3
"""scripts/gpu_campaign.sh's dry run on the CPU with a tiny budget.

A tiny committed run (16x16 images, checkpoint at step 2) stands in for
training/; the campaign must continue it past its checkpoint under the time
limit, check it on the held-out images, write its ledger row, and leave the
committed run untouched. A run without a held-out set is reported and makes
the exit code non-zero while the others go on.
"""
import hashlib
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cli_util import check, finish, run, start  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tiny_run(bin_dir, data, training):
    """training/cardiac-tiny: drdm_train's output at step 2 of a 16x16 run."""
    import SimpleITK as sitk
    from cli_util import smooth_image
    images = os.path.join(data, "acdc", "images")
    os.makedirs(images)
    for i in range(4):
        sitk.WriteImage(smooth_image((20, 24), 60 + i), os.path.join(images, f"case{i}.nii.gz"))
    out = os.path.join(training, "cardiac-tiny")
    sets = [f'data.folders=["{images}"]', "data.size=[16,16]", "data.min_foreground=0",
            "sampler.control=16", "sampler.levels=2", "train.batch_size=2", "train.steps=2",
            "train.log_every=1", "train.checkpoint_every=2", "train.preview_every=0",
            "train.warmup_steps=0", "train.threads=1", "train.device=cpu", 'train.init_from=""']
    rc, _, err = run([os.path.join(bin_dir, "drdm_train"), "--config",
                      os.path.join(ROOT, "configs", "cardiac2d-cpu.json"), "--output", out,
                      "--no-progress", "-q", "--set"] + sets)
    check(rc == 0, f"the tiny committed run trains (rc {rc}) {err[-300:]}")
    return out


def main():
    args = start()
    work = args.workdir
    data, training, out = (os.path.join(work, d) for d in ("data", "training", "out"))
    committed = tiny_run(args.bin_dir, data, training)
    os.makedirs(os.path.join(training, "mystery-run"))  # no checkpoint: not picked by default
    before = {f: digest(os.path.join(committed, f)) for f in os.listdir(committed)}
    env = dict(os.environ, DRDM_BUILD_DIR=os.path.dirname(args.bin_dir), DATA=data,
               PYTHON=sys.executable, CAMPAIGN_TRAINING=training, CAMPAIGN_DEVICE="cpu",
               CAMPAIGN_MINUTES="0.00001", CAMPAIGN_SET="train.steps=1000")
    script = os.path.join(ROOT, "scripts", "gpu_campaign.sh")
    rc, _, err = run(["bash", script, out], env=env)
    check(rc == 0, f"the dry run succeeds (rc {rc}) {err[-300:]}")
    summary = open(os.path.join(out, "summary.txt")).read()
    check(summary.count("rc=0") == 3, f"train, check and ledger steps all pass:\n{summary}")
    stretch = json.load(open(os.path.join(out, "cardiac-tiny", "train.json")))
    check(stretch["first_step"] == 2 and stretch["steps"] == 3,
          f"resumed at the committed step 2 and stopped at the time limit's step 3: {stretch}")
    rec = json.load(open(os.path.join(out, "cardiac-tiny", "recovery_check.json")))
    check(rec["model_step"] == 3 and len(rec["levels"]) == 4,
          f"the held-out check measured the new model at 4 levels: {rec['model_step']}")
    rows = open(os.path.join(out, "ledger-rows.md")).read().splitlines()
    check(len(rows) == 1 and rows[0].startswith("| cardiac-tiny |") and "| 2-3 |" in rows[0],
          f"one ledger row for the stretch 2-3: {rows}")
    after = {f: digest(os.path.join(committed, f)) for f in os.listdir(committed)}
    check(before == after, "the committed run is left untouched")
    # A run named on purpose but without a held-out set: reported, the rest goes on.
    shutil.copytree(committed, os.path.join(training, "mystery-run"), dirs_exist_ok=True)
    env["CAMPAIGN_RUNS"] = "mystery-run cardiac-tiny"
    rc, _, err = run(["bash", script, out + "2"], env=env)
    summary = open(os.path.join(out + "2", "summary.txt")).read()
    check(rc == 1 and "mystery-run" in summary and summary.count("rc=0") == 3,
          f"an unknown run fails alone (rc {rc}):\n{summary}")
    rc, _, err = run(["bash", script], env=env)
    check(rc == 2 and "usage" in err, f"no OUT_DIR is a usage error (rc {rc})")
    return finish("test_gpu_campaign", work)


if __name__ == "__main__":
    sys.exit(main())
