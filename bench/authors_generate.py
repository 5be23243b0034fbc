#!/usr/bin/env python3
"""Times the authors' DRDM generation (their DeformDDPM.diff_recover) on the CPU.

The peer of `drdm_bench_generate` for the generation target of issue 21: the
authors' own code (public repository jianqingzheng/def_diff_rec, Apache-2.0),
imported at run time from a bare git snapshot and never copied here. Their
RecResACNet (freshly initialised: the work of a step does not depend on the
weights' values) recovers a batch of N images from T' = --level for --steps
steps (their augmentation script runs all 80 steps whatever T' is; --steps
45 gives the same work as libdrdm's T' = 45). Their recovery loop takes one
image at a time (its time embedding is shaped for a batch of 1), and it
needs a mask, warped at every step: the image is passed as its own mask.
Sizes match drdm_bench_generate's cases (0 = 2D 128x128, 1 = 2D 256x256,
2 = 3D 64^3); each call makes one sample, and the median of --reps calls is
kept.

    git --git-dir /work/.mirror/jianqingzheng+def_diff_rec/repo ... (see --authors-git)
    .venv/bin/python bench/authors_generate.py --case 0 --threads 2 --reps 1

Prints one JSON line: impl "authors", ms per sample, samples/s.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [(2, 128), (2, 256), (3, 64)]  # (dims, size)
V_SCALE = 4e-5  # Config/config_cmr.yaml and config_lct.yaml


def import_authors(git_dir, workdir):
    """Their DeformDDPM and RecResACNet (scripts/forward_parity.py extracts their package)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from forward_parity import import_authors as extract  # noqa: E402

    DeformDDPM = extract(git_dir, workdir)
    from Diffusion.networks import RecResACNet  # noqa: E402  (their code, at run time)

    return DeformDDPM, RecResACNet


def image(dims, size, batch):
    """A smooth product of cosines in [0, 1], as drdm_bench_generate."""
    axes = torch.meshgrid(*[torch.linspace(0, 1, size)] * dims, indexing="ij")
    img = torch.ones_like(axes[0])
    for k, a in enumerate(axes):
        img = img * (0.5 + 0.5 * torch.cos(3.14159 * (k + 2) * a))
    return img.expand(batch, 1, *[size] * dims).contiguous()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--authors-git", default="/work/.mirror/jianqingzheng+def_diff_rec/repo")
    p.add_argument("--case", type=int, required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--level", type=int, default=45)
    p.add_argument("--steps", type=int, default=45)
    p.add_argument("--reps", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dims, size = CASES[a.case]
    batch = 1
    with tempfile.TemporaryDirectory() as work:
        DeformDDPM, RecResACNet = import_authors(a.authors_git, work)
        net = RecResACNet(n_steps=80, ndims=dims, num_input_chn=1, res=size)
        model = DeformDDPM(net, n_steps=80, device="cpu", image_chw=[1] + [size] * dims,
                           batch_size=batch, v_scale=V_SCALE, resample_mode="bilinear")
        model.eval()
        img = image(dims, size, batch)
        times = []
        with torch.no_grad():
            model.diff_recover(img_org=img, msk_org=img, T=[1, 1])  # warm-up
            for _ in range(a.reps):
                t0 = time.perf_counter()
                model.diff_recover(img_org=img, msk_org=img, T=[a.level, a.steps])
                times.append((time.perf_counter() - t0) * 1e3)
    ms = sorted(times)[len(times) // 2]
    print(json.dumps({"impl": "authors", "op": "generate", "case": a.case, "dims": dims,
                      "size": "x".join([str(size)] * dims), "batch": batch, "level": a.level,
                      "steps": a.steps, "threads": a.threads, "ms_per_sample": round(ms, 1),
                      "samples_per_s": round(batch / ms * 1e3, 5)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
