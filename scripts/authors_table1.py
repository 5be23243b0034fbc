#!/usr/bin/env python3
"""Table 1 by the authors' own code: their DeformDDPM.diff_recover with their released
cardiac checkpoint, on the slices `scripts/table1.py` wrote, measured as table1.py measures.

The peer of `scripts/table1.py --model models/cardiac2d-paper/model.pt --schedule all
--stretch 256`: same slices (its WORK/inputs, 256 x 256 after --stretch), their intensity
scaling (min-max, as their ACDC loader), their settings of Config/config_cmr.yaml (bicubic
image warps, zero image padding, border field padding, v_scale 4e-5), T = [T', 80] as their
DRDM_augment.py calls it. Their code is imported at run time from a bare git snapshot of
the public repository jianqingzheng/def_diff_rec (Apache-2.0) and never copied here.

Their fields are fractions of the grid (their STN samples at x + u * S), so a field's
magnitude in % of the image is 100 |u| and its voxels are u * S (scripts/forward_parity.py).

    .venv/bin/python scripts/authors_table1.py --inputs /tmp/drdm-table1/inputs \\
        --pth def_diff_rec/models/cmr_recresacnet/000000_cmr_recresacnet.pth --levels 45

Prints one JSON line per field and a summary (mean +- std over fields) at the end.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import SimpleITK as sitk
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V_SCALE = 4e-5  # Config/config_cmr.yaml


def their_model(git_dir, workdir, pth, size, compose_padding="zeros"):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from forward_parity import import_authors  # noqa: E402

    DeformDDPM = import_authors(git_dir, workdir)
    from Diffusion.networks import RecResACNet  # noqa: E402  (their code, at run time)

    net = RecResACNet(n_steps=80, ndims=2, num_input_chn=1, res=size)
    net.load_state_dict(torch.load(pth, map_location="cpu"))
    model = DeformDDPM(net, n_steps=80, device="cpu", image_chw=[1, size, size], batch_size=1,
                       img_pad_mode="zeros", ddf_pad_mode="border", padding_mode=compose_padding,
                       v_scale=V_SCALE, resample_mode="bicubic")
    model.eval()
    return model


def shifted_recover(model, x, level, shift):
    """Their recovery loop (diff_recover) with the network told t = i + shift instead of i
    (clamped to their table, 0..79): libdrdm's --schedule all feeds t = 80..1 where theirs
    feeds 79..0, so shift 1 asks what that one-level offset does to their own generation."""
    _, _, start = model._get_random_ddf(img=x, t=torch.tensor(np.array([level])))
    ddf = start.clone()
    img = model.img_stn(x, ddf)
    for i in range(79, -1, -1):
        t = torch.tensor(np.array([min(79, i + shift)]))
        pre = model.backward(img, t, rec_num=None)
        ddf = model.ddf_stn_full(ddf, pre) + pre
        img = model.img_stn(x, ddf)
    return ddf, start


def metrics(u):
    """u: [2, H, W] fraction-of-grid field -> table1.py's numbers (channel i = axis i)."""
    size = np.array(u.shape[1:], dtype=np.float64).reshape(2, 1, 1)
    vox = u * size
    mag = 100.0 * np.sqrt(((vox / size) ** 2).sum(0))
    g00, g01 = np.gradient(vox[0], edge_order=1)
    g10, g11 = np.gradient(vox[1], edge_order=1)
    det = (1.0 + g00) * (1.0 + g11) - g01 * g10
    return {"max_magnitude_pct": float(mag.max()), "mean_magnitude_pct": float(mag.mean()),
            "folding_ratio": float((det <= 0).mean())}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--authors-git", default="/work/.mirror/jianqingzheng+def_diff_rec/repo")
    p.add_argument("--pth", required=True, help="their 000000_cmr_recresacnet.pth")
    p.add_argument("--inputs", required=True, help="table1.py's WORK/inputs (256 x 256 slices)")
    p.add_argument("--levels", default="45")
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--t-shift", type=int, default=0,
                   help="feed their network t = i + SHIFT in their loop (0: their diff_recover itself)")
    p.add_argument("--compose-padding", default="zeros", choices=["zeros", "border"],
                   help="padding of their recovery composition (config_cmr.yaml: zeros; libdrdm's "
                        "compose: border)")
    p.add_argument("-o", "--output", default="", help="also write the JSON lines here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    files = sorted(f for f in os.listdir(a.inputs) if f.endswith(".nii.gz"))
    rows = []
    with tempfile.TemporaryDirectory() as work:
        first = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(a.inputs, files[0])))
        model = their_model(a.authors_git, work, a.pth, first.shape[0], a.compose_padding)
        for name in files:
            img = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(a.inputs, name))).astype(np.float64)
            img = (img - img.min()) / (img.max() - img.min() + 1e-7)
            x = torch.tensor(img, dtype=torch.float32)[None, None]
            for level in [int(v) for v in a.levels.split(",")]:
                for s in range(a.samples):
                    torch.manual_seed(a.seed * 1000003 + level * 101 + s)
                    t0 = time.time()
                    with torch.no_grad():
                        if a.t_shift == 0:
                            (ddf, start), _, _ = model.diff_recover(img_org=x, msk_org=x, T=[level, 80])
                        else:
                            ddf, start = shifted_recover(model, x, level, a.t_shift)
                    row = {"name": name, "level": level, "sample": s, "seconds": round(time.time() - t0, 1),
                           **metrics(ddf[0].numpy().astype(np.float64)),
                           "start": metrics(start[0].numpy().astype(np.float64))}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    summary = {}
    for level in sorted({r["level"] for r in rows}):
        sel = [r for r in rows if r["level"] == level]
        summary[level] = {k: [float(np.mean([r[k] for r in sel])), float(np.std([r[k] for r in sel]))]
                          for k in ("max_magnitude_pct", "mean_magnitude_pct", "folding_ratio")}
    print(json.dumps({"summary": summary, "fields": len(rows)}))
    if a.output:
        with open(a.output, "w") as f:
            json.dump({"rows": rows, "summary": summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
