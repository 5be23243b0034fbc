#!/usr/bin/env python3
"""PyTorch-in-Python peer of bench/bench_reg.cpp: one VoxelMorph training step.

The network of include/drdm/reg/voxelmorph.h in its default configuration,
written with torch.nn: encoder convs 16, 32, 32, 32 (3x3 conv + LeakyReLU(0.2),
then 2x max-pooling), decoder convs 32, 32, 32, 32 (each followed by nearest 2x
upsampling and concatenation with the encoder features of that resolution),
then 32, 16, 16 at full resolution and the flow conv (weights N(0, 1e-5), bias
0); libdrdm's parameter names (enc<l>, dec<l>, rem<k>, flow). The flow is a
stationary velocity, resized to half resolution (linear, align_corners, scaled
to stay in voxels, as drdm::resize_field), integrated by scaling and squaring
(v / 2^7, then 7 times phi <- phi + phi(x + phi(x)), bilinear / trilinear
grid_sample with align_corners=True and border padding: peer_spatial.py's
integrate_ss) and resized back.

One step: loss = MSE(warp(moving, displacement), fixed) (linear, zero padding)
+ 0.01 * the mean squared forward difference of the half-resolution velocity,
loss.item(), backward, torch.optim.Adam, on a fixed random (moving, fixed) pair
drawn as bench_reg.cpp draws it.

Cases as in bench_reg.cpp: 0 = 2D 128x128 batch 8, 1 = 3D 64^3 batch 1.
Prints JSON lines in drdm_bench_reg's schema with "impl" "pytorch-python".
"""

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from peer_common import JsonLines, add_common_args, apply_common_args, requested_devices, rounded, sync_device, time_op
from peer_spatial import SpatialTransformer, integrate_ss, warp

CASES = [((128, 128), 8), ((64, 64, 64), 1)]
ENCODER = [16, 32, 32, 32]
DECODER = [32, 32, 32, 32, 32, 16, 16]
STEPS = 7
DOWNSIZE = 2
SMOOTH_WEIGHT = 0.01
LEARNING_RATE = 1e-4  # VoxelMorph's default, as bench_reg.cpp


def resize_field(field, size):
    """drdm::resize_field: linear resampling (align_corners) to `size`, channel i
    scaled by (size_i - 1) / (S_i - 1) so that it stays in voxels."""
    old = list(field.shape[2:])
    if old == list(size):
        return field
    d = len(size)
    out = F.interpolate(field, size=list(size), mode="bilinear" if d == 2 else "trilinear", align_corners=True)
    factors = [(n - 1) / (o - 1) if o > 1 and n > 1 else (1.0 if n > 1 else 0.0) for n, o in zip(size, old)]
    return out * torch.tensor(factors, dtype=field.dtype, device=field.device).view(1, d, *[1] * d)


class VoxelMorph(nn.Module):
    """drdm::reg::VoxelMorph (velocity, 7 squarings at half resolution) for one spatial size."""

    def __init__(self, size, device, channels=1):
        super().__init__()
        dims, levels = len(size), len(ENCODER)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        prev = 2 * channels
        for l, w in enumerate(ENCODER):
            setattr(self, f"enc{l}", conv(prev, w, 3, padding=1))
            prev = w
        for l in range(levels):
            setattr(self, f"dec{l}", conv(prev, DECODER[l], 3, padding=1))
            prev = DECODER[l] + ENCODER[levels - 1 - l]  # after concatenation with the skip
        for k in range(levels, len(DECODER)):
            setattr(self, f"rem{k - levels}", conv(prev, DECODER[k], 3, padding=1))
            prev = DECODER[k]
        self.flow = conv(prev, dims, 3, padding=1)
        nn.init.normal_(self.flow.weight, 0.0, 1e-5)
        nn.init.zeros_(self.flow.bias)
        self.levels, self.rems = levels, len(DECODER) - levels
        self.pool = F.max_pool2d if dims == 2 else F.max_pool3d
        self.small = [s // DOWNSIZE for s in size]
        self.full = list(size)
        self.st_small = SpatialTransformer(self.small, device)

    def flow_output(self, x):
        skips = []
        for l in range(self.levels):
            x = F.leaky_relu(getattr(self, f"enc{l}")(x), 0.2)
            skips.append(x)
            x = self.pool(x, 2)
        for l in range(self.levels):
            x = F.leaky_relu(getattr(self, f"dec{l}")(x), 0.2)
            skip = skips.pop()
            x = torch.cat([F.interpolate(x, size=skip.shape[2:], mode="nearest"), skip], 1)
        for k in range(self.rems):
            x = F.leaky_relu(getattr(self, f"rem{k}")(x), 0.2)
        return self.flow(x)

    def forward(self, moving, fixed):
        """(displacement [N, d, ...S], preintegration field [N, d, ...S / 2])."""
        v = resize_field(self.flow_output(torch.cat([moving, fixed], 1)), self.small)
        return resize_field(integrate_ss(self.st_small, v, STEPS), self.full), v


def grad_l2(field):
    """Mean over the spatial axes of the mean squared forward difference along each."""
    axes = range(2, field.dim())
    return sum(field.diff(dim=a).pow(2).mean() for a in axes) / len(axes)


def make_pair(size, batch, seed):
    """moving, fixed U(0, 1) [batch, 1, ...size], in this order from one CPU generator (as bench_reg.cpp)."""
    g = torch.Generator().manual_seed(seed)
    shape = [batch, 1, *size]
    moving = torch.rand(shape, generator=g)
    return moving, torch.rand(shape, generator=g)


def step_timing(size, batch, dev, args, case):
    moving, fixed = (t.to(dev) for t in make_pair(size, batch, args.seed + case))
    torch.manual_seed(args.seed)
    model = VoxelMorph(size, dev).to(dev)
    model.train()
    st_full = SpatialTransformer(size, dev)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    first = []

    def step(_):
        displacement, v = model(moving, fixed)
        loss = (warp(st_full, moving, displacement) - fixed).pow(2).mean() + SMOOTH_WEIGHT * grad_l2(v)
        value = loss.item()  # as the libdrdm bench reads the loss each step
        if not first:
            first.append(value)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    timing = time_op(step, args, sync=sync_device(dev))
    shapes = {k: list(p.shape) for k, p in sorted(model.named_parameters())}
    return timing, first[0], sum(p.numel() for p in model.parameters() if p.requires_grad), shapes


def main():
    p = argparse.ArgumentParser(description="PyTorch-in-Python peer of drdm_bench_reg")
    add_common_args(p, min_time=0.5)
    args = p.parse_args()
    apply_common_args(args)
    threads = torch.get_num_threads()
    with JsonLines(args.out) as out:
        for dev in requested_devices(args.device, "peer_reg.py"):
            for ci, (size, batch) in enumerate(CASES):
                if args.case >= 0 and args.case != ci:
                    continue
                timing, first_loss, n, shapes = step_timing(size, batch, dev, args, ci)
                out.emit({"impl": "pytorch-python", "op": "voxelmorph_step", "dims": len(size),
                          "size": "x".join(map(str, size)), "batch": batch, "device": dev, "threads": threads,
                          "ms": round(timing["median_ms"], 4), **rounded(timing),
                          "samples_per_s": round(1000.0 * batch / timing["median_ms"], 5),
                          "first_loss": first_loss, "params": n, "param_shapes": shapes})


if __name__ == "__main__":
    main()
