#!/usr/bin/env python3
"""PyTorch-in-Python peer of bench/bench_train.cpp.

The same work as libdrdm, written with PyTorch modules and ops in Python:

  train_step    the recovery network (recursive ACNN-II U-Net, K = 2, the
                architecture of include/drdm/network.h / src/diffusion/network.cpp, same
                parameter names and counts), the losses of src/diffusion/losses.cpp,
                loss.backward() and torch.optim.Adam, on a fixed pre-sampled
                (x_t, psi, t).
  sample_t40    the forward-process sampler of src/diffusion/velocity_sampler.cpp
  sample_mixed  (stationary process): multi-scale Gaussian velocity on the
                control grid, per-sample self-composition n_t / m_t times with
                grid_sample (border padding), resize to twice the image size
                with the (new-1)/(old-1) rescale, centre crop.

Inputs are drawn exactly as the C++ program draws them (same seeds, same
order, same CPU generator), and results are printed in the same JSON-lines
schema, with "impl": "pytorch-python".

On the CPU the training step is timed twice, with the default (contiguous)
layout and with channels-last weights and input; the faster is reported as the
row (its "memory_format" says which) and both times are kept in "variants".

--check DIR reads what `drdm_bench_train --dump DIR` wrote, runs the same
computations here and prints one JSON object with the differences.

--train-config CONFIG (bench/run.py memory) runs, instead, the training steps
of a resolved drdm_train config (OUTPUT/config.json) as Python code would:
every image read with SimpleITK, normalised, fitted to data.size and cached
in memory, then per step a random batch, a random affine augmentation, the
sampler, warp, RecoveryNet, the loss, backward and Adam, on the CPU with
channels-last weights and input (libdrdm's CPU layout). It prints one JSON
row with the resident set at each stage and its peak (VmHWM).
"""

import argparse
import fnmatch
import json
import math
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from peer_common import (JsonLines, add_common_args, apply_common_args, requested_devices, rounded, status_mb,
                         time_op)
T_MAX = 80
# (size, batch, sampler control, sampler levels); case indices as in bench_train.cpp.
CASES = [((128, 128), 8, 64, 4), ((64, 64, 64), 1, 32, 3)]
PARAMS = {2: 431515, 3: 1301726}
BLOCK_SLOPE = 1e-6
EMBED_SLOPE = 0.01


# ---------------------------------------------------------------- spatial ops
def sampling_grid(field):
    """grid_sample grid [N, ...S, d] (x = last axis first) for x + field(x)."""
    d = field.shape[1]
    coords = []
    for i in range(d - 1, -1, -1):
        n = field.shape[2 + i]
        scale = 2.0 / (n - 1) if n > 1 else 0.0
        shape = [1] * (d + 1)
        shape[1 + i] = n
        base = (torch.arange(n, dtype=field.dtype, device=field.device) * scale - 1.0).view(shape)
        coords.append(field[:, i] * scale + base)
    return torch.stack(coords, -1)


def warp(image, field, padding_mode="zeros"):
    return F.grid_sample(image, sampling_grid(field), mode="bilinear",
                         padding_mode=padding_mode, align_corners=True)


def compose(a, b):
    """compose(a, b)(x) = a(x) + b(x + a(x)): b acts first."""
    return a + warp(b, a, "border")


def compose_power(v, counts):
    """Per sample b: v composed with itself counts[b] times (0: zero field)."""
    most = max(counts)
    if most == 0:
        return torch.zeros_like(v)
    count = torch.tensor(counts, device=v.device).view(-1, *([1] * (v.dim() - 1)))
    phi = torch.where(count >= 1, v, torch.zeros_like(v))
    grid = sampling_grid(v) if most > 1 else None
    for k in range(1, most):
        nxt = v + F.grid_sample(phi, grid, mode="bilinear", padding_mode="border", align_corners=True)
        phi = torch.where(count > k, nxt, phi)
    return phi


def resize_field(field, size):
    d = field.shape[1]
    if list(field.shape[2:]) == list(size):
        return field
    mode = "bilinear" if d == 2 else "trilinear"
    out = F.interpolate(field, size=list(size), mode=mode, align_corners=True)
    f = [(s - 1) / (o - 1) for s, o in zip(size, field.shape[2:])]
    return out * torch.tensor(f, dtype=field.dtype, device=field.device).view(1, d, *([1] * d))


def jacobian_determinant(u):
    d = u.shape[1]

    def fd(x, dim):
        n = x.shape[dim]
        first = x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1)
        last = x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
        inside = (x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)) * 0.5
        return torch.cat([first, inside, last], dim)

    grad = [fd(u, 2 + j) for j in range(d)]

    def J(i, j):
        g = grad[j][:, i]
        return g + 1.0 if i == j else g

    if d == 2:
        det = J(0, 0) * J(1, 1) - J(0, 1) * J(1, 0)
    else:
        det = (J(0, 0) * (J(1, 1) * J(2, 2) - J(1, 2) * J(2, 1))
               - J(0, 1) * (J(1, 0) * J(2, 2) - J(1, 2) * J(2, 0))
               + J(0, 2) * (J(1, 0) * J(2, 1) - J(1, 1) * J(2, 0)))
    return det.unsqueeze(1)


# ---------------------------------------------------------------- losses
def recovery_loss(psi, psi_hat, w=(1.0, 1.0, 10.0), eps=1e-3):
    sampled = warp(psi_hat, psi, "border")  # psi_hat(x + psi(x))
    npsi = torch.linalg.vector_norm(psi, 2, dim=1)
    distance = (torch.linalg.vector_norm(psi + sampled, 2, dim=1) / (npsi + eps)).mean()
    angle = ((psi * sampled).sum(1) / (npsi * torch.linalg.vector_norm(sampled, 2, dim=1) + eps)).mean()
    d = psi_hat.shape[1]
    # Smoothness on the field in image-size units: channel i divided by S_i.
    inv = torch.tensor([1.0 / s for s in psi_hat.shape[2:]], dtype=torch.float64)
    scaled = psi_hat * inv.to(psi_hat.device, psi_hat.dtype).view(1, d, *([1] * d))
    smooth = psi_hat.new_zeros(())
    for j in range(d):
        n = psi_hat.shape[2 + j]
        if n >= 2:
            smooth = smooth + (scaled.narrow(2 + j, 1, n - 1) - scaled.narrow(2 + j, 0, n - 1)).abs().mean()
    smooth = smooth / d
    folding = torch.relu(-jacobian_determinant(psi_hat)).mean()
    total = distance * w[0] + angle * w[1] + (smooth + folding) * w[2]
    return {"total": total, "distance": distance, "angle": angle, "smoothness": smooth, "folding": folding}


# ---------------------------------------------------------------- network
def conv(dims, cin, cout, k, stride=1, padding=0, dilation=1):
    cls = nn.Conv2d if dims == 2 else nn.Conv3d
    return cls(cin, cout, k, stride=stride, padding=padding, dilation=dilation)


class AcnnBlock(nn.Module):
    """ACNN-II: x = norm(conv(f)); r = conv_d3(act(conv_d1(act(x)))); act(r + x)."""

    def __init__(self, dims, cin, cout):
        super().__init__()
        self.conv_in = conv(dims, cin, cout, 3, padding=1)
        norm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d
        self.norm = norm(cout, affine=True, track_running_stats=False)
        self.conv_d1 = conv(dims, cout, cout, 3, padding=1)
        self.conv_d3 = conv(dims, cout, cout, 3, padding=3, dilation=3)

    def forward(self, f):
        x = self.norm(self.conv_in(f))
        r = self.conv_d1(F.leaky_relu(x, BLOCK_SLOPE))
        r = self.conv_d3(F.leaky_relu(r, BLOCK_SLOPE))
        return F.leaky_relu(r + x, BLOCK_SLOPE)


def stage(dims, widths):
    return nn.ModuleList(AcnnBlock(dims, a, b) for a, b in zip(widths[:-1], widths[1:]))


def sinusoidal_table(timesteps, width):
    t = torch.arange(timesteps + 1, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(width // 2, dtype=torch.float64)
    w = torch.pow(10000.0, -2.0 * j / width).unsqueeze(0)
    arg = t * w
    return torch.stack([torch.sin(arg), torch.cos(arg)], 2).reshape(timesteps + 1, width).float()


class UNet(nn.Module):
    """One pass of the time-conditioned U-Net (paper Table B.4)."""

    def __init__(self, dims, in_channels=1, timesteps=T_MAX, emb=80):
        super().__init__()
        self.dims = dims
        self.register_buffer("time_table", sinusoidal_table(timesteps, emb))
        for i, c in enumerate([in_channels, 10, 20, 40, 80, 40, 20]):
            setattr(self, f"te{i + 1}", nn.Sequential(nn.Linear(emb, c), nn.LeakyReLU(EMBED_SLOPE), nn.Linear(c, c)))
        self.enc1 = stage(dims, [in_channels, 10, 10, 10])
        self.down1 = conv(dims, 10, 10, 4, 2, 1)
        self.enc2 = stage(dims, [10, 20, 20, 20])
        self.down2 = conv(dims, 20, 20, 4, 2, 1)
        self.enc3 = stage(dims, [20, 40, 40, 40])
        self.down3 = conv(dims, 40, 40, 4, 2, 1)
        self.bottleneck = stage(dims, [40, 20, 20, 40])
        up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.up1 = up(40, 40, 4, stride=2, padding=1)
        self.dec1 = stage(dims, [80, 40, 20, 20])
        self.up2 = up(20, 20, 4, stride=2, padding=1)
        self.dec2 = stage(dims, [40, 20, 10, 10])
        self.up3 = up(10, 10, 4, stride=2, padding=1)
        self.dec3 = stage(dims, [20, 10, 10, 10])
        self.out = conv(dims, 10, dims, 3, padding=1)
        with torch.no_grad():  # an untrained network predicts ~0 voxels
            self.out.weight.normal_(0.0, 1e-5)
            self.out.bias.zero_()

    def embed(self, i, t0):
        e = getattr(self, f"te{i + 1}")(t0)
        return e.view(*e.shape, *([1] * self.dims))

    @staticmethod
    def run(blocks, x):
        for b in blocks:
            x = b(x)
        return x

    def forward(self, image, t):
        t0 = self.time_table.index_select(0, t)
        f1 = self.run(self.enc1, image + self.embed(0, t0))
        f2 = self.run(self.enc2, self.down1(f1) + self.embed(1, t0))
        f3 = self.run(self.enc3, self.down2(f2) + self.embed(2, t0))
        f4 = self.run(self.bottleneck, self.down3(f3) * self.embed(3, t0))
        f5 = self.run(self.dec1, torch.cat([f3, self.up1(f4)], 1) + self.embed(4, t0))
        f6 = self.run(self.dec2, torch.cat([f2, self.up2(f5)], 1) + self.embed(5, t0))
        f7 = self.run(self.dec3, torch.cat([f1, self.up3(f6)], 1) + self.embed(6, t0))
        return self.out(f7)


class RecoveryNet(nn.Module):
    """K passes with shared weights; pass k sees the ORIGINAL image warped by the
    accumulated field, and acc <- compose(psi_k, acc)."""

    def __init__(self, dims, recursion=2, timesteps=T_MAX, emb=80):
        super().__init__()
        self.net = UNet(dims, timesteps=timesteps, emb=emb)
        self.recursion = recursion

    def forward(self, image, t):
        acc = self.net(image, t)
        for _ in range(1, self.recursion):
            psi = self.net(warp(image, acc, "zeros"), t)
            acc = compose(psi, acc)
        return acc

    def load_drdm_state(self, state):
        """libdrdm keys ("enc1.0.conv_in.weight", ...) are this UNet's keys."""
        self.net.load_state_dict(state, strict=True)


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- sampler
class Sampler:
    """Stationary forward process of src/diffusion/velocity_sampler.cpp."""

    def __init__(self, size, control=64, levels=4, device="cpu", sigma=0.005, alpha=0.6, beta=1.0,
                 ialpha=1.3, ibeta=1.5, imax=200, perturbation=0.05):
        self.size, self.control, self.levels, self.device = list(size), control, levels, device
        self.sigma, self.alpha, self.beta = sigma, alpha, beta
        self.ialpha, self.ibeta, self.imax, self.perturbation = ialpha, ibeta, imax, perturbation

    def n(self, t):
        return int(math.floor(t ** self.alpha / self.beta + 1e-9))

    def m(self, t):
        return min(max(int(math.floor(t ** self.ialpha / self.ibeta + 1e-9)), 1), self.imax)

    def velocity(self, batch, g):
        d = len(self.size)
        c0 = self.control
        v = torch.zeros([batch, d] + [c0] * d, device=self.device)
        mode = "bilinear" if d == 2 else "trilinear"
        for level in range(self.levels):
            c = c0 >> level
            noise = torch.randn([batch, d] + [c] * d, generator=g, device=self.device).mul_(self.sigma * 2.0 ** level)
            v.add_(noise if level == 0 else F.interpolate(noise, size=[c0] * d, mode=mode, align_corners=True))
        return v

    def to_image(self, f):
        big = resize_field(f, [2 * s for s in self.size])
        for i, s in enumerate(self.size):
            big = big.narrow(2 + i, s // 2, s)
        return big.contiguous()

    def sample(self, t, g):
        ts = [int(x) for x in t.tolist()]
        v = self.velocity(len(ts), g)
        perturbed = v + self.velocity(len(ts), g) * self.perturbation if self.perturbation > 0 else v
        phi = self.to_image(compose_power(perturbed, [self.m(x) for x in ts]))
        psi = self.to_image(compose_power(v, [self.n(x) for x in ts]))
        return psi, phi


def make_input(size, batch, control, levels, device, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, T_MAX + 1, (batch,), generator=g)
    x0 = torch.rand([batch, 1] + list(size), generator=g)
    with torch.no_grad():
        psi, phi = Sampler(size, control, levels).sample(t, g)
        xt = warp(x0, phi)
    return xt.to(device), psi.to(device), t.to(device)


# ---------------------------------------------------------------- timing
def sync(x):
    if x.is_cuda:
        torch.cuda.synchronize()


def train_timing(dims, size, batch, control, levels, device, fmt, args, case):
    torch.manual_seed(args.seed)
    model = RecoveryNet(dims).to(device)
    n = count_params(model)
    assert n == PARAMS[dims], f"peer has {n} parameters, libdrdm {PARAMS[dims]}"
    xt, psi, t = make_input(size, batch, control, levels, device, args.seed + case)
    if fmt != "contiguous":
        mf = torch.channels_last if dims == 2 else torch.channels_last_3d
        model = model.to(memory_format=mf)
        xt = xt.contiguous(memory_format=mf)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def step(_):
        psi_hat = model(xt, t)
        loss = recovery_loss(psi, psi_hat)["total"]
        loss.item()  # as the libdrdm trainer and bench read the loss each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        return psi_hat

    return time_op(step, args, sync=sync), n, t.tolist()


def main_bench(args):
    with JsonLines(args.out) as out:
        for dev in requested_devices(args.device, "peer_train.py"):
            bench_device(dev, out, args)


def bench_device(dev, out, args):
    threads = torch.get_num_threads()
    ops = None if args.ops == "all" else set(args.ops.split(","))
    for ci, (size, batch, control, levels) in enumerate(CASES):
        if args.case >= 0 and args.case != ci:
            continue
        dims = len(size)
        base = {"impl": "pytorch-python", "dims": dims, "size": "x".join(map(str, size)),
                "batch": batch, "device": dev, "threads": threads}

        def emit(op, timing, ms, **extra):
            out.emit(dict(base, op=op, ms=round(ms, 4), **rounded(timing), **extra))

        if ops is None or "train_step" in ops:
            fmts = ["contiguous", "channels_last"] if (dev == "cpu" and args.memory_format == "auto") \
                else [args.memory_format if args.memory_format != "auto" else "contiguous"]
            variants = {}
            best = None
            for fmt in fmts:
                timing, n, tl = train_timing(dims, size, batch, control, levels, dev, fmt, args, ci)
                variants[fmt] = round(timing["median_ms"], 4)
                if best is None or timing["median_ms"] < best[1]["median_ms"]:
                    best = (fmt, timing)
            fmt, timing = best
            label = fmt if fmt == "contiguous" or dims == 2 else "channels_last_3d"
            emit("train_step", timing, timing["median_ms"], params=n,
                 memory_format=label + (" weights+input" if fmt != "contiguous" else ""),
                 variants=variants, t=tl)

        sampler = Sampler(size, control, levels, device=dev)
        extra = {"control": control, "levels": levels}
        with torch.no_grad():
            if ops is None or "sample_t40" in ops:
                g = torch.Generator(device=dev).manual_seed(args.seed + 100 + ci)
                t40 = torch.full((batch,), 40, dtype=torch.long)
                timing = time_op(lambda _: sampler.sample(t40, g)[1], args, sync=sync)
                emit("sample_t40", timing, timing["median_ms"], **extra)
            if ops is None or "sample_mixed" in ops:
                g = torch.Generator(device=dev).manual_seed(args.seed + 200 + ci)
                tg = torch.Generator().manual_seed(args.seed + 300 + ci)
                table = torch.randint(1, T_MAX + 1, (8, batch), generator=tg)
                timing = time_op(lambda i: sampler.sample(table[i % 8], g)[1], args, sync=sync, cycle=8)
                emit("sample_mixed", timing, timing["mean_ms"], t=table.tolist(), **extra)


# ---------------------------------------------------------------- cross-check
def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def load_pickle(path):
    """A dict written by torch::jit::pickle_save (it tags the dict's type)."""
    import torch.jit._pickle as jit_pickle
    with torch.serialization.safe_globals([jit_pickle.restore_type_tag]):
        return dict(torch.load(path, weights_only=True))


def check(args):
    torch.manual_seed(0)
    res = {}
    for dims in (2, 3):
        d = load_pickle(os.path.join(args.check, f"train_{dims}d.pt"))
        model = RecoveryNet(dims)
        n = count_params(model)
        state = {k[len("state."):]: v for k, v in d.items() if k.startswith("state.")}
        model.load_drdm_state(state)
        xt, psi, t = d["xt"], d["psi"], d["t"]
        psi_hat = model(xt, t)
        terms = recovery_loss(psi, psi_hat)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        opt.zero_grad()
        terms["total"].backward()
        params = dict(model.net.named_parameters())
        # Gradients, per parameter: max |difference| / max |gradient|, worst
        # parameter, against each other and against this model run in float64
        # (the yardstick for float32 rounding). The conv biases just before an
        # instance norm ("*.conv_in.bias") have a zero gradient in exact
        # arithmetic (noise ~1e-9 in both) and are left out.
        ref = RecoveryNet(dims).double()
        ref.load_drdm_state({k: v.double() for k, v in state.items()})
        recovery_loss(psi.double(), ref(xt.double(), t))["total"].backward()
        g64 = {k: p.grad.float() for k, p in ref.net.named_parameters()}
        # The same model with channels-last weights (libdrdm's CPU layout):
        # oneDNN's channels-last kernels round differently.
        cl = RecoveryNet(dims)
        cl.load_drdm_state(state)
        cl = cl.to(memory_format=torch.channels_last if dims == 2 else torch.channels_last_3d)
        recovery_loss(psi, cl(xt, t))["total"].backward()
        gcl = {k: p.grad for k, p in cl.net.named_parameters()}
        keys = [k for k in params if not k.endswith("conv_in.bias")]
        grad_cmp = {
            "libdrdm_vs_peer": max((rel(d["grad." + k], params[k].grad), k) for k in keys),
            "libdrdm_vs_float64": max((rel(d["grad." + k], g64[k]), k) for k in keys),
            "peer_vs_float64": max((rel(params[k].grad, g64[k]), k) for k in keys),
            "libdrdm_vs_peer_channels_last": max((rel(d["grad." + k], gcl[k]), k) for k in keys),
            "peer_channels_last_vs_float64": max((rel(gcl[k], g64[k]), k) for k in keys),
        }
        # Adam alone: libdrdm's own gradients through torch.optim.Adam.
        with torch.no_grad():
            for k, p in params.items():
                p.grad = d["grad." + k].clone()
        opt.step()
        adam_diff = max(float((params[k].detach() - d["after." + k]).abs().max()) for k in params)
        with torch.no_grad():
            after = recovery_loss(psi, model(xt, t))["total"]
        r = {
            "params_peer": n, "params_libdrdm": int(d["params"]), "params_expected": PARAMS[dims],
            "psi_hat_max_abs_diff": float((psi_hat.detach() - d["psi_hat"]).abs().max()),
            "psi_hat_max_abs": float(d["psi_hat"].abs().max()),
            "loss_libdrdm": {k: float(d["loss." + k]) for k in terms},
            "loss_peer": {k: float(v.detach()) for k, v in terms.items()},
            "grad_worst_rel_diff": {k: [round(v[0], 6), v[1]] for k, v in grad_cmp.items()},
            "grads_compared": len(keys),
            "adam_step_params_max_abs_diff": adam_diff,
            "loss_after_adam_step_libdrdm": float(d["loss_after_step"]),
            "loss_after_adam_step_peer": float(after),
        }
        # Sampler (the benchmark's cases).
        size, batch, control, levels = CASES[0 if dims == 2 else 1]
        s = load_pickle(os.path.join(args.check, f"sampler_{dims}d.pt"))
        sampler = Sampler(size, control, levels)
        for kind in ("t40", "mixed"):
            table = s[kind + ".t"]
            g = torch.Generator().manual_seed(args.seed + 5)
            stats = []
            with torch.no_grad():
                for row in range(table.shape[0]):
                    psi_s, phi_s = sampler.sample(table[row], g)
                    if row == 0:
                        r[f"sampler_{kind}_first_draw_max_abs_diff"] = max(
                            float((psi_s - s[kind + ".psi0"]).abs().max()),
                            float((phi_s - s[kind + ".phi0"]).abs().max()))
                        r[f"sampler_{kind}_first_draw_max_abs"] = float(s[kind + ".phi0"].abs().max())
                    st = []
                    for f in (psi_s, phi_s):
                        st += [torch.linalg.vector_norm(f, 2, dim=1).flatten(1).mean(1),
                               f.pow(2).flatten(1).mean(1).sqrt()]
                    stats.append(torch.stack(st, 1).double())
            ours = s[kind + ".stats"].mean(0)
            peer = torch.cat(stats, 0).mean(0)
            names = ["psi_mean_norm", "psi_rms", "phi_mean_norm", "phi_rms"]
            r[f"sampler_{kind}_stats_libdrdm"] = dict(zip(names, ours.tolist()))
            r[f"sampler_{kind}_stats_peer"] = dict(zip(names, peer.tolist()))
            r[f"sampler_{kind}_stats_max_rel_diff"] = float(((ours - peer).abs() / ours.abs()).max())
            r[f"sampler_{kind}_samples"] = int(table.numel())
        res[f"{dims}d"] = r
    print(json.dumps(res, indent=1))


# ---------------------------------------------------------------- training memory
def image_files(data):
    """The files drdm_train reads: data.folders scanned recursively, include / exclude patterns,
    the data.subset part of each folder's sorted list."""
    lo, hi = data.get("subset", [0.0, 1.0])
    files = []
    for folder in data["folders"]:
        found = []
        for top, dirs, names in os.walk(folder):
            dirs.sort()
            for name in names:
                rel = os.path.relpath(os.path.join(top, name), folder)
                if name.startswith(".") or not any(fnmatch.fnmatchcase(name, p) for p in data["include"]):
                    continue
                if any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in data["exclude"]):
                    continue
                found.append(os.path.join(top, name))
        found.sort()
        files += found[math.floor(lo * len(found) + 1e-9):math.floor(hi * len(found) + 1e-9)]
    return files


def fit_to_size(x, spacing, size):
    """[...S] in [0, 1] -> [1, ...size]: the physically longest extent fills size, centred in zeros."""
    d = len(size)
    scale = max(n * sp / s for n, sp, s in zip(x.shape, spacing, size))
    fitted = [min(max(round(n * sp / scale), 1), s) for n, sp, s in zip(x.shape, spacing, size)]
    mode = "bilinear" if d == 2 else "trilinear"
    y = F.interpolate(x[None, None], size=fitted, mode=mode, align_corners=False, antialias=d == 2)[0]
    pad = []
    for f, s in reversed(list(zip(fitted, size))):
        pad += [(s - f) // 2, s - f - (s - f) // 2]
    return F.pad(y, pad)


def load_dataset(data):
    """All training samples [N, 1, ...size], as drdm_train's ImageDataset prepares them."""
    import numpy as np
    import SimpleITK as sitk

    dims, size = data["dims"], data["size"]
    samples = []
    for path in image_files(data):
        image = sitk.ReadImage(path)
        x = torch.from_numpy(sitk.GetArrayFromImage(image).astype(np.float32))
        spacing = list(reversed(image.GetSpacing()))
        if x.dim() == 3 and 1 in x.shape:  # a volume of one slice is a 2D image
            a = list(x.shape).index(1)
            x, spacing = x.select(a, 0), spacing[:a] + spacing[a + 1:]
        lo, hi = np.percentile(x.numpy(), [data["clip_low_pct"], data["clip_high_pct"]])
        x = ((x.clamp(lo, hi) - lo) / max(hi - lo, 1e-12)).clamp(0, 1)
        if x.dim() == dims:
            parts = [(x, spacing)]
        else:  # 2D model, 3D volume: slices along slice_axis
            ax = data["slice_axis"]
            parts = [(x.select(ax, k), spacing[:ax] + spacing[ax + 1:]) for k in range(x.shape[ax])]
        for part, sp in parts:
            if (part > 0.05).float().mean() >= data["min_foreground"]:
                samples.append(fit_to_size(part, sp, size))
    return torch.stack(samples)


def augment(batch, g):
    """A random rotation (+ crop-zoom scale) and translation per sample, one linear resampling."""
    n, d = batch.shape[0], batch.dim() - 2
    q, _ = torch.linalg.qr(torch.randn(n, d, d, generator=g))
    theta = torch.cat([q * (0.6 + 0.4 * torch.rand(n, 1, 1, generator=g)),
                       (torch.rand(n, d, 1, generator=g) * 2 - 1) * 0.25], 2)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=True)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def train_memory(args):
    with open(args.train_config) as f:
        cfg = json.load(f)
    data, sam, tr, loss_w = cfg["data"], cfg["sampler"], cfg["train"], cfg["loss"]
    if sam["process"] != "stationary":
        raise SystemExit("peer_train.py: --train-config: only the stationary process is written here")
    row = {"impl": "pytorch-python", "op": "train_memory", "config": cfg["name"],
           "size": "x".join(map(str, data["size"])), "batch": tr["batch_size"], "steps": tr["steps"],
           "threads": torch.get_num_threads(), "rss_start_mb": status_mb("VmRSS")}
    start = time.perf_counter()
    cache = load_dataset(data)
    row.update(samples=cache.shape[0], dataset_mb=round(cache.numel() * 4 / 2**20, 1),
               load_seconds=round(time.perf_counter() - start, 2), rss_after_data_mb=status_mb("VmRSS"))
    torch.manual_seed(tr["seed"])
    dims = data["dims"]
    mf = torch.channels_last if dims == 2 else torch.channels_last_3d
    model = RecoveryNet(dims, cfg["model"]["recursion"], sam["timesteps"],
                        cfg["model"]["time_embedding"]).to(memory_format=mf)
    opt = torch.optim.Adam(model.parameters(), lr=tr["lr"])
    sampler = Sampler(data["size"], sam["control"], sam["levels"], sigma=sam["sigma"], alpha=sam["alpha"],
                      beta=sam["beta"], ialpha=sam["integrated_alpha"], ibeta=sam["integrated_beta"],
                      imax=sam["integrated_max"], perturbation=sam["perturbation"])
    weights = (loss_w["distance"], loss_w["angle"], loss_w["regularisation"])
    g = torch.Generator().manual_seed(tr["seed"])
    start = time.perf_counter()
    for _ in range(tr["steps"]):
        x0 = cache[torch.randint(cache.shape[0], (tr["batch_size"],), generator=g)]
        if cfg["augment"]["enabled"]:
            x0 = augment(x0, g)
        t = torch.randint(1, sam["timesteps"] + 1, (tr["batch_size"],), generator=g)
        with torch.no_grad():
            psi, phi = sampler.sample(t, g)
            xt = warp(x0, phi).contiguous(memory_format=mf)
        loss = recovery_loss(psi, model(xt, t), weights, loss_w["eps"])["total"]
        loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    row.update(seconds_per_step=round((time.perf_counter() - start) / max(1, tr["steps"]), 2),
               rss_end_mb=status_mb("VmRSS"), peak_rss_mb=status_mb("VmHWM"))
    with JsonLines(args.out) as out:
        out.emit(rounded(row, 1))


def main():
    p = argparse.ArgumentParser(description="PyTorch-in-Python peer of drdm_bench_train")
    add_common_args(p, min_time=2.0)
    p.add_argument("--ops", default="all")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--memory-format", choices=["auto", "contiguous", "channels_last"], default="auto",
                   help="training-step layout; auto (CPU): time both, report the faster")
    p.add_argument("--check", default="", help="directory written by drdm_bench_train --dump")
    p.add_argument("--train-config", default="",
                   help="a resolved drdm_train config (OUTPUT/config.json): run its training steps (memory)")
    args = p.parse_args()
    apply_common_args(args)
    if args.train_config:
        train_memory(args)
    elif args.check:
        check(args)
    else:
        main_bench(args)


if __name__ == "__main__":
    main()
