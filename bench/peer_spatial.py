#!/usr/bin/env python3
"""PyTorch-in-Python peer of bench/bench_spatial.cpp.

The same four operations as libdrdm's spatial core, written the usual way in
Python registration code (a spatial-transformer module with an identity grid
kept as a buffer, the field added to it, normalised to [-1, 1] and the channel
order reversed for grid_sample(align_corners=True)):

  warp(I, u)          = grid_sample(I, grid(u)), linear, zero padding
  compose(a, b)       = a + grid_sample(b, grid(a)), border padding
  compose_power(v, n) = phi <- compose(v, phi), n copies of v
  integrate_ss(v, k)  = u = v / 2^k, then k times u <- compose(u, u)

Conventions follow DESIGN.md: fields [N, d, ...S] in voxels, channel i along
tensor axis i. Inputs are drawn exactly as the C++ program draws them (same
seeds, same order, same CPU generator), and results are printed in the same
JSON-lines schema, with "impl": "pytorch-python".
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from peer_common import JsonLines, add_common_args, apply_common_args, requested_devices, time_op


class SpatialTransformer:
    """Pull-back sampler for one grid size; the identity grid is built once."""

    def __init__(self, size, device):
        self.size = list(size)
        d = len(size)
        axes = [torch.arange(s, dtype=torch.float32, device=device) for s in size]
        self.grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), 0).unsqueeze(0)
        scale = [2.0 / (s - 1) if s > 1 else 0.0 for s in size]
        self.scale = torch.tensor(scale, device=device).view(1, d, *([1] * d))

    def __call__(self, src, flow, padding_mode="zeros", mode="bilinear"):
        # Absolute sampling positions in voxels, then normalised to [-1, 1].
        loc = (self.grid + flow) * self.scale - 1.0
        # [N, d, ...S] -> [N, ...S, d], last dim in x (= W) first order.
        loc = loc.movedim(1, -1).flip(-1)
        return F.grid_sample(src, loc, mode=mode, padding_mode=padding_mode, align_corners=True)


def warp(st, image, u):
    return st(image, u, padding_mode="zeros")


def compose(st, a, b):
    return a + st(b, a, padding_mode="border")


def compose_power(st, v, n):
    if n == 0:
        return torch.zeros_like(v)
    phi = v
    for _ in range(1, n):
        phi = compose(st, v, phi)
    return phi


def integrate_ss(st, v, steps):
    u = v / (2.0 ** steps)
    for _ in range(steps):
        u = compose(st, u, u)
    return u


def smooth_field(batch, size, amplitude):
    """Normal noise on a grid 8x coarser, times amplitude voxels, upsampled linearly."""
    d = len(size)
    coarse = [batch, d] + [max(2, s // 8) for s in size]
    noise = torch.randn(coarse, dtype=torch.float32) * amplitude
    mode = "bilinear" if d == 2 else "trilinear"
    return F.interpolate(noise, size=list(size), mode=mode, align_corners=True)


def random_image(batch, size, channels=1):
    return torch.rand([batch, channels] + list(size), dtype=torch.float32)


def sync(t):
    # CUDA launches are asynchronous; reading one element waits for the stream.
    if t.is_cuda:
        t.reshape(-1)[0].item()


def dump(args):
    """Same files as `drdm_bench_spatial --dump DIR`: raw float32, C order."""
    os.makedirs(args.dump, exist_ok=True)
    for size, batch in (([64, 48], 2), ([24, 32, 20], 1)):
        torch.manual_seed(args.seed)
        image = random_image(batch, size)
        a = smooth_field(batch, size, 3.0)
        b = smooth_field(batch, size, 3.0)
        st = SpatialTransformer(size, "cpu")
        tag = f"{len(size)}d"
        outs = {
            "warp": warp(st, image, a),
            "compose": compose(st, a, b),
            "compose_power": compose_power(st, a, 8),
            "integrate_ss": integrate_ss(st, a, 7),
        }
        for name, t in outs.items():
            t.contiguous().float().cpu().numpy().tofile(os.path.join(args.dump, f"{name}_{tag}.f32"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_args(p, min_time=0.5)
    p.add_argument("--sizes", choices=["quick", "full", "kernels"], default="quick")
    p.add_argument("--channels", type=int, default=1, help="channels of the warped image")
    p.add_argument("--ops", default="all",
                   help="comma-separated subset of warp,compose,compose_power,integrate_ss")
    p.add_argument("--dump", default="", help="write cross-check results to this directory and exit")
    args = p.parse_args()
    apply_common_args(args)
    if args.dump:
        dump(args)
        return 0

    devices = requested_devices(args.device, "peer_spatial.py")

    cases = [([256, 256], 1), ([256, 256], 8), ([64, 64, 64], 1)]
    if args.sizes == "full":
        cases.append(([128, 128, 128], 1))
    if args.sizes == "kernels":  # as drdm_bench_spatial --sizes kernels
        cases = [([512, 512], 1), ([64, 64, 64], 1), ([128, 128, 128], 1)]
    if args.case >= len(cases):
        print(f"peer_spatial.py: --case {args.case} but --sizes {args.sizes} has {len(cases)} cases",
              file=sys.stderr)
        return 2
    wanted = None if args.ops == "all" else set(args.ops.split(","))

    threads = torch.get_num_threads()
    with JsonLines(args.out) as out:
        for dev in devices:
            for ci, (size, batch) in enumerate(cases):
                if args.case >= 0 and ci != args.case:
                    continue
                # Same seed and drawing order as bench_spatial.cpp.
                torch.manual_seed(args.seed + ci)
                image = random_image(batch, size, args.channels).to(dev)
                a = smooth_field(batch, size, 3.0).to(dev)
                b = smooth_field(batch, size, 3.0).to(dev)
                st = SpatialTransformer(size, dev)  # built once, like a module buffer
                ops = [
                    ("warp", lambda _: warp(st, image, a)),
                    ("compose", lambda _: compose(st, a, b)),
                    ("compose_power", lambda _: compose_power(st, a, 8)),
                    ("integrate_ss", lambda _: integrate_ss(st, a, 7)),
                ]
                for name, fn in ops:
                    if wanted is not None and name not in wanted:
                        continue
                    timing = time_op(fn, args, sync=sync)
                    row = {
                        "impl": "pytorch-python", "op": name, "dims": len(size),
                        "size": "x".join(map(str, size)), "batch": batch, "device": dev,
                        "threads": threads, "median_ms": round(timing["median_ms"], 4),
                        "min_ms": round(timing["min_ms"], 4), "reps": timing["reps"],
                    }
                    if args.channels != 1:  # as bench_spatial.cpp
                        row["channels"] = args.channels
                    out.emit(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
