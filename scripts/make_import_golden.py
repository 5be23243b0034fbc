#!/usr/bin/env python3
"""Make the golden fixture that proves `drdm_import` reproduces the authors' network.

It runs the authors' own recovery network (RecResACNet from their public
repository jianqingzheng/def_diff_rec, Apache-2.0) with their published cardiac
weights on a few fixed synthetic images and writes inputs, steps and outputs
to a small fixture (raw little-endian float32 files plus a JSON header) that
tests/test_import.cpp compares libdrdm's imported model against.

Their code is imported at run time from a checkout given on the command line;
nothing of it is copied into this repository.

  .venv/bin/python scripts/make_import_golden.py \
      --authors-repo /path/to/def_diff_rec \
      --weights /path/to/def_diff_rec/models/cmr_recresacnet/000000_cmr_recresacnet.pth \
      --output tests/data/import_golden

Output fields are converted to libdrdm's convention (DESIGN.md): the
authors' network returns displacements as fractions of the image size
(their grid_sample wrapper multiplies by the size of the first spatial
axis), channel i along tensor axis i; the fixture stores them in voxels
(multiplied by that size), channel order unchanged.
"""

import argparse
import hashlib
import importlib.util
import json
import math
import pathlib
import sys

import torch
import torch.nn.functional as F

# The cases: (name, recursion K, steps t per image). Their steps run 0..T-1.
CASES = [
    ("k1_a", 1, [5, 60]),
    ("k2_a", 2, [5, 60]),
    ("k2_b", 2, [79, 30]),
]


def load_authors_network(repo: pathlib.Path):
    """RecResACNet from the authors' Diffusion/networks.py (imported by path)."""
    path = repo / "Diffusion" / "networks.py"
    if not path.is_file():
        sys.exit(f"error: {path} not found (give --authors-repo a def_diff_rec checkout)")
    spec = importlib.util.spec_from_file_location("def_diff_rec_networks", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RecResACNet


def synthetic_images(n: int, size: int, seed: int) -> torch.Tensor:
    """[n, 1, size, size] in [0, 1]: smooth texture plus an off-centre ring and
    a bright blob, asymmetric so that an axis swap changes the prediction."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, size // 8, size // 8, generator=g)
    img = 0.4 * F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    axis = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    for i in range(n):
        cy, cx, a, b = (torch.rand(4, generator=g) * torch.tensor([0.4, 0.4, 0.3, 0.2])
                        + torch.tensor([-0.2, -0.1, 0.35, 0.25])).tolist()
        r = torch.sqrt(((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2)
        img[i, 0] += torch.exp(-((r - 1.0) / 0.12) ** 2)  # myocardium-like ring
        img[i, 0] += 0.6 * torch.exp(-(((yy + 0.5) ** 2 + (xx - 0.45) ** 2) / 0.02))
    img = img - img.amin(dim=(2, 3), keepdim=True)
    return img / img.amax(dim=(2, 3), keepdim=True)


def write_f32(path: pathlib.Path, t: torch.Tensor) -> dict:
    data = t.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
    path.write_bytes(data)
    return {"file": path.name, "shape": list(t.shape), "dtype": "float32-le",
            "sha256": hashlib.sha256(data).hexdigest()}


def write_tiny_state_dict(path: pathlib.Path) -> dict:
    """A small nn.Module state dict saved by torch.save (zip format, with the
    OrderedDict's _metadata), to test libdrdm's .pth reader without their file."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).view_as(p) * 0.5 - i)
    torch.save(module.state_dict(), path)
    return {"file": path.name,
            "entries": {k: v.flatten().tolist() for k, v in module.state_dict().items()},
            "shapes": {k: list(v.shape) for k, v in module.state_dict().items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--authors-repo", required=True, type=pathlib.Path)
    ap.add_argument("--weights", required=True, type=pathlib.Path)
    ap.add_argument("--output", required=True, type=pathlib.Path)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    Net = load_authors_network(args.authors_repo)
    net = Net(n_steps=80, time_emb_dim=100, ndims=2, num_input_chn=1)  # their config_cmr.yaml
    state = torch.load(args.weights, map_location="cpu")
    net.load_state_dict(state, strict=True)
    net.eval()
    count = sum(v.numel() for v in state.values())

    args.output.mkdir(parents=True, exist_ok=True)
    images = synthetic_images(2, args.size, args.seed)
    header = {
        "what": "RecResACNet (jianqingzheng/def_diff_rec, Apache-2.0) with their cardiac weights",
        "weights": args.weights.name,
        "weights_sha256": hashlib.sha256(args.weights.read_bytes()).hexdigest(),
        "state_dict_elements": count,
        "torch": torch.__version__,
        "size": args.size,
        "voxel_scale": args.size,
        "image": write_f32(args.output / "image.f32", images),
        "tiny_state_dict": write_tiny_state_dict(args.output / "tiny_state_dict.pt"),
        "cases": [],
    }
    with torch.no_grad():
        for name, k, steps in CASES:
            ddf = net(images, torch.tensor(steps, dtype=torch.long), rec_num=k)
            voxels = ddf * args.size  # their resample: position = ddf * size + index
            case = {"name": name, "recursion": k, "t": steps,
                    "max_abs_voxels": float(voxels.abs().max())}
            case.update(write_f32(args.output / f"{name}.f32", voxels))
            header["cases"].append(case)
            print(f"{name}: K={k} t={steps} max |u| = {case['max_abs_voxels']:.4f} voxels")
    (args.output / "golden.json").write_text(json.dumps(header, indent=2) + "\n")
    print(f"state dict elements: {count:,}; wrote {args.output}")
    if not math.isfinite(sum(c["max_abs_voxels"] for c in header["cases"])):
        sys.exit("error: non-finite output")


if __name__ == "__main__":
    main()
