#!/usr/bin/env python3
"""Forward-process parity (issue 22): the authors' forward process beside ours.

Runs THEIR forward process (Diffusion/diffuser.py of jianqingzheng/def_diff_rec,
imported at run time from a bare git snapshot, never copied into this
repository) and OURS (drdm::VelocitySampler through tests/forward_stats_tool)
on the same grids and levels, and compares the start field phi_{t:1} and the
target step psi_t: mean and max displacement magnitude in % of the image size
(per axis u_i / size_i, DESIGN.md) and the folding ratio (det(I + grad u) <= 0).
Every statistic, theirs included, is computed by libdrdm's field_stats (their
fields are handed to the tool as raw float32 in voxels), so the numbers differ
only by the fields.

Rows: "authors" (their code, v_scale 4e-5, noise_ratio 0.08), "ours" (sampler
defaults: process "stationary", sigma 0.005, perturbation 0.05) and "ours,
process authors" (sampler.process = "authors", sigma = v_scale * control =
0.00256, perturbation 0.08). With the same seed the last draws the same random
numbers as their code (both use PyTorch's CPU generator), so the script also
reports the largest difference between their fields and ours, in voxels.

usage:
  .venv/bin/python scripts/forward_parity.py [--tool build-sampler/tests/forward_stats_tool]
      [--sizes 256 128] [--levels 10 30 45 60 80] [--draws 16] [--seeds 0]
      [--json out.json] [--markdown out.md] [--fixture]

--fixture prints the numbers that tests/test_velocity_sampler.cpp stores.
Runs on the CPU; needs torch and numpy (the project's .venv).
"""

import argparse
import contextlib
import glob
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTHORS_GIT = "/work/.mirror/jianqingzheng+def_diff_rec/repo"
AUTHORS_FILES = ["Diffusion/__init__.py", "Diffusion/losses.py", "Diffusion/networks.py", "Diffusion/diffuser.py"]
V_SCALE = 4e-5  # Config/config_cmr.yaml and config_lct.yaml
NOISE_RATIO = 0.08  # _random_ddf_generate's default
CONTROL = 64  # _DDF_Encoder_init's default ctl_sz
STAT_KEYS = ["mean_magnitude_pct", "max_magnitude_pct", "folding_ratio", "min_jacobian", "max_jacobian"]


def import_authors(git_dir, workdir):
    """Extract their Diffusion package from the bare snapshot and import DeformDDPM."""
    for name in AUTHORS_FILES:
        text = subprocess.check_output(["git", "--git-dir", git_dir, "show", "HEAD:" + name])
        path = os.path.join(workdir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(text)
    sys.path.insert(0, workdir)
    warnings.filterwarnings("ignore")  # torch.meshgrid without indexing=
    from Diffusion.diffuser import DeformDDPM  # noqa: E402  (their code, at run time)

    return DeformDDPM


def their_fields(DeformDDPM, size, t, draws, seed):
    """Their phi (ddf_forward) and psi (dvf_forward) in image voxels, channel i = axis i.

    Their STN takes fields as fractions of the grid size (x + u * S), so voxels = u * S.
    """
    model = DeformDDPM(torch.nn.Identity(), n_steps=80, device="cpu", image_chw=(1, size, size),
                       batch_size=draws, v_scale=V_SCALE)
    torch.manual_seed(seed)
    rec_num, mul_ddf, mul_dvf = model._get_ddf_scale(t=torch.full((draws,), t))
    with torch.no_grad():
        ddf, dvf = model._random_ddf_generate(rec_num=rec_num, mul_num=[mul_ddf, mul_dvf],
                                              noise_ratio=NOISE_RATIO)
    counts = {"rec_num": int(rec_num), "m_t": int(mul_ddf[0]), "n_t": int(mul_dvf[0])}
    return (ddf * size).float(), (dvf * size).float(), counts


def tool_stats(tool, field, workdir):
    path = os.path.join(workdir, "field.f32")
    field.contiguous().numpy().astype(np.float32).tofile(path)
    out = subprocess.check_output([tool, "stats", path] + [str(s) for s in field.shape])
    return json.loads(out)


def our_fields(tool, size, t, draws, seed, workdir, keys):
    raw = os.path.join(workdir, "ours.f32")
    args = [tool, "sample", f"{size},{size}", str(t), str(draws), str(seed), f"raw={raw}"]
    out = json.loads(subprocess.check_output(args + [f"{k}={v}" for k, v in keys.items()]))
    data = np.fromfile(raw, dtype=np.float32).reshape(2, draws, 2, size, size)
    return out, torch.from_numpy(data[0]), torch.from_numpy(data[1])


OURS = {"ours": {}, "ours, process authors": {"process": "authors", "sigma": V_SCALE * CONTROL,
                                               "perturbation": NOISE_RATIO}}


def summary(stats):
    return {k: float(np.mean(stats[k])) for k in STAT_KEYS} | {
        "mean_magnitude_pct_sd": float(np.std(stats["mean_magnitude_pct"])),
        "folding_ratio_sd": float(np.std(stats["folding_ratio"]))}


def measure(DeformDDPM, tool, size, t, draws, seed, workdir):
    phi, psi, counts = their_fields(DeformDDPM, size, t, draws, seed)
    rows = {"authors": {"phi": summary(tool_stats(tool, phi, workdir)),
                        "psi": summary(tool_stats(tool, psi, workdir)), **counts}}
    for name, keys in OURS.items():
        out, our_phi, our_psi = our_fields(tool, size, t, draws, seed, workdir, keys)
        rows[name] = {"phi": summary(out["phi"]), "psi": summary(out["psi"])}
        if keys:  # the same random numbers as theirs: how far apart are the fields?
            rows[name]["max_abs_diff_phi_voxels"] = float((our_phi - phi).abs().max())
            rows[name]["max_abs_diff_psi_voxels"] = float((our_psi - psi).abs().max())
            rows[name]["max_abs_phi_voxels"] = float(phi.abs().max())
    return rows


def markdown(results, draws, seeds):
    lines = [f"Start field phi_{{t:1}} and target step psi_t: mean over {draws} draws x {len(seeds)} seed(s) "
             "of each field's mean / max magnitude (% of image size) and folding ratio (% voxels with |J| <= 0).",
             "",
             "| grid | T' | m_t / n_t | process | phi mean % | phi max % | phi folding % | psi mean % | psi max % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name in ["authors"] + list(OURS):
            row = r["rows"][name]
            phi, psi = row["phi"], row["psi"]
            counts = f"{r['rows']['authors']['m_t']} / {r['rows']['authors']['n_t']}"
            lines.append(f"| {r['size']}² | {r['t']} | {counts} | {name} | {phi['mean_magnitude_pct']:.2f} | "
                         f"{phi['max_magnitude_pct']:.2f} | {100 * phi['folding_ratio']:.3f} | "
                         f"{psi['mean_magnitude_pct']:.3f} | {psi['max_magnitude_pct']:.3f} |")
    diffs = [r["rows"]["ours, process authors"]["max_abs_diff_phi_voxels"] for r in results]
    lines += ["", f"Same seed, their fields vs ours with process \"authors\": largest |difference| "
                  f"{max(diffs):.2e} voxels."]
    return "\n".join(lines)


def average(rows_per_seed):
    """Average the per-seed summaries (each already a mean over draws)."""
    out = {}
    for name in rows_per_seed[0]:
        out[name] = {}
        for key, value in rows_per_seed[0][name].items():
            if isinstance(value, dict):
                out[name][key] = {k: float(np.mean([r[name][key][k] for r in rows_per_seed])) for k in value}
            elif key.startswith("max_abs"):
                out[name][key] = max(r[name][key] for r in rows_per_seed)
            else:
                out[name][key] = value
    return out


def fixture(DeformDDPM, tool, workdir):
    """The numbers tests/test_velocity_sampler.cpp stores (process "authors" parity)."""
    first = torch.randn(4, generator=torch.Generator().manual_seed(0))
    print("// torch.randn(4) from seed 0:", [round(float(x), 6) for x in first])
    phi, psi, counts = their_fields(DeformDDPM, 128, 10, 2, 0)
    print("// their fields, 128^2, t = 10, 2 draws, seed 0:", counts)
    for b, i, j in [(0, 0, 0), (0, 64, 64), (1, 10, 100), (1, 127, 31)]:
        print(f"//   phi[{b}, :, {i}, {j}] = {[round(float(x), 5) for x in phi[b, :, i, j]]}, "
              f"psi = {[round(float(x), 5) for x in psi[b, :, i, j]]}")
    phi, psi, counts = their_fields(DeformDDPM, 256, 45, 16, 0)
    s = tool_stats(tool, phi, workdir)
    print("// their phi, 256^2, t = 45, 16 draws, seed 0:", counts, {k: float(np.mean(v)) for k, v in s.items()})
    print("//   per draw mean %:", [round(x, 3) for x in s["mean_magnitude_pct"]])
    print("//   per draw folding:", [round(x, 4) for x in s["folding_ratio"]])
    s = tool_stats(tool, psi, workdir)
    print("// their psi:", {k: float(np.mean(v)) for k, v in s.items()})


def find_tool():
    found = sorted(glob.glob(os.path.join(ROOT, "build*", "tests", "forward_stats_tool")), key=os.path.getmtime)
    return found[-1] if found else None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tool", default=find_tool(), help="forward_stats_tool (built with the tests)")
    p.add_argument("--authors-git", default=AUTHORS_GIT, help="bare git snapshot of jianqingzheng/def_diff_rec")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 128])
    p.add_argument("--levels", type=int, nargs="+", default=[10, 30, 45, 60, 80])
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--json", help="write all numbers here")
    p.add_argument("--markdown", help="write the table here")
    p.add_argument("--fixture", action="store_true", help="print the numbers the C++ test stores, then stop")
    a = p.parse_args()
    if not a.tool or not os.path.exists(a.tool):
        sys.exit("forward_stats_tool not found: build it (cmake --build BUILD --target forward_stats_tool) "
                 "and pass --tool")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory() as workdir:
        with contextlib.redirect_stdout(io.StringIO()):
            DeformDDPM = import_authors(a.authors_git, workdir)
        if a.fixture:
            fixture(DeformDDPM, a.tool, workdir)
            return
        results = []
        for size in a.sizes:
            for t in a.levels:
                rows = average([measure(DeformDDPM, a.tool, size, t, a.draws, s, workdir) for s in a.seeds])
                results.append({"size": size, "t": t, "rows": rows})
                print(f"{size}^2 t={t}: " + ", ".join(
                    f"{n}: phi {r['phi']['mean_magnitude_pct']:.2f}% fold {100 * r['phi']['folding_ratio']:.3f}%"
                    for n, r in rows.items()), file=sys.stderr, flush=True)
    table = markdown(results, a.draws, a.seeds)
    print(table)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(table + "\n")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"draws": a.draws, "seeds": a.seeds, "v_scale": V_SCALE, "noise_ratio": NOISE_RATIO,
                       "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
