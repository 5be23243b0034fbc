#!/usr/bin/env python3
"""Elastic-augmentation peers of bench/bench_generate.cpp: MONAI and TorchIO.

For each case of drdm_bench_generate (same size, same image, same number of
samples per timed call) it times random elastic deformations of ONE image:

  monai     monai.transforms.Rand2DElastic (2D: random offsets on a control
            grid of `spacing` pixels, bicubic upsampling) or Rand3DElastic (3D:
            uniform noise on the full grid, Gaussian-smoothed), prob = 1,
            spatial_size = the image size, mode bilinear, padding reflection,
            on a torch tensor [1, ...S] on the device (CPU or CUDA); meta-data
            tracking off (plain tensors: the transform's fastest path).
  torchio   torchio.RandomElasticDeformation (cubic B-spline on 7 control
            points per axis, SimpleITK resampling, linear interpolation) on a
            tio.ScalarImage; 2D as a one-slice 3D volume [1, H, W, 1] (TorchIO
            then keeps the through-plane displacement 0). CPU only (SimpleITK).

One timed call = `batch` transform calls (new random deformation each) of the
one image; samples/s = batch / median seconds. The deformation strength
(peer_params) is matched to DRDM's start field at T' = 45 for MONAI, and is
TorchIO's largest fold-free setting for TorchIO: "mean_disp" is the mean
displacement norm (voxels) over the central box (10%..90% per axis), measured
by deforming coordinate images with the same transform (exact for linear
interpolation); drdm_bench_generate reports the same measure of its fields.

Memory: VmHWM is reset (/proc/self/clear_refs) after the transform and image
are built, so "peak_rss_mb" is the process peak over the timed calls and
"peak_growth_mb" that peak minus the resident set at the reset; run one case
per process (--case I, as bench/run.py generate does). On CUDA, "cuda_peak_mb"
is torch.cuda.max_memory_allocated over the timed calls.

Prints JSON lines in the schema of drdm_bench_generate, with "impl" "monai"
or "torchio" and "op" "elastic".

Install (not in scripts/requirements.txt; see bench/requirements.txt):
  .venv/bin/pip install --no-deps -r bench/requirements.txt
"""

import argparse
import math
import sys
import warnings

import torch

from peer_common import (JsonLines, add_common_args, apply_common_args, requested_devices, reset_peak_rss,
                         rounded, status_mb, sync_device, time_op)

# (size, batch); case indices as in bench_generate.cpp.
CASES = [((128, 128), 8), ((256, 256), 4), ((64, 64, 64), 1)]
IMPLS = ["monai", "torchio"]
INSTALL = ".venv/bin/pip install --no-deps -r bench/requirements.txt"


def peer_params(impl, size):
    """Transform settings per case. MONAI: displacements of about DRDM's start
    field at T' = 45 (mean norm over the central box ~12 px at 128^2, ~24 px at
    256^2, ~5 voxels at 64^3: drdm_bench_generate's start_mean_disp). TorchIO:
    the largest max_displacement its documentation allows without folding
    (half the coarse grid spacing, n / (7 - 2) / 2 = n / 10); with 7 control
    points and locked borders its mean displacement stays well below DRDM's
    (reported as mean_disp). Its cost hardly depends on the displacement."""
    n = size[0]
    if impl == "monai":
        if len(size) == 2:  # control points every n/6 pixels (7x7 grid, as TorchIO's default)
            return {"spacing": (n / 6.0, n / 6.0), "magnitude_range": (0.07 * n, 0.11 * n)}
        return {"sigma_range": (5.0, 8.0), "magnitude_range": (350.0, 580.0)}
    # torchio: uniform B-spline coefficients in +-max_displacement mm (1 mm voxels) per axis
    m = n / 10.0
    if len(size) == 2:
        return {"num_control_points": 7, "max_displacement": (m, m, 0.0), "locked_borders": 2}
    return {"num_control_points": 7, "max_displacement": (m, m, m), "locked_borders": 2}


def missing_packages():
    missing = []
    for mod in ("monai", "torchio"):
        try:
            __import__(mod)
        except ImportError as e:
            missing.append(f"{mod} ({e})")
    return missing


def make_image(size):
    """[1, ...S] in [0, 1]: product of cosines (3 periods per axis), as bench_generate.cpp."""
    img = torch.ones(1)
    for i, n in enumerate(size):
        x = torch.arange(n, dtype=torch.float32) * (2.0 * math.pi * 3.0 / n)
        shape = [1] * len(size)
        shape[i] = n
        img = img * ((x.cos() + 1.0) * 0.5).reshape(shape)
    return img.reshape([1] + list(size)).contiguous()


def coordinates(size):
    """[d, ...S]: channel i holds the voxel coordinate along axis i."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in size], indexing="ij")
    return torch.stack(grids, 0)


def central_mean_norm(disp):
    """disp [d, ...S] -> mean norm over the central box (10%..90% per axis)."""
    for i in range(1, disp.dim()):
        n = disp.shape[i]
        disp = disp.narrow(i, n // 10, n - 2 * (n // 10))
    return float(torch.linalg.vector_norm(disp.double(), 2, dim=0).mean())


class Peer:
    """One transform on one image; __call__() returns one augmented image."""

    def __init__(self, impl, size, device, seed):
        self.impl, self.size, self.device = impl, list(size), device
        self.params = peer_params(impl, size)
        dims = len(size)
        if impl == "monai":
            import monai
            from monai.transforms import Rand2DElastic, Rand3DElastic
            monai.data.set_track_meta(False)
            cls = Rand2DElastic if dims == 2 else Rand3DElastic
            self.transform = cls(prob=1.0, spatial_size=tuple(size), mode="bilinear", padding_mode="reflection",
                                 device=torch.device(device), **self.params)
            self.transform.set_random_state(seed=seed)
            self.image = make_image(size).to(device)
            self.name = f"MONAI {monai.__version__} {cls.__name__}"
        else:
            import torchio as tio
            import SimpleITK as sitk
            if device != "cpu":
                raise ValueError("TorchIO resamples with SimpleITK: CPU only")
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(torch.get_num_threads())
            torch.manual_seed(seed)  # TorchIO draws its parameters with torch's global generator
            self.tio = tio
            self.transform = tio.RandomElasticDeformation(image_interpolation="linear", **self.params)
            self.image = tio.ScalarImage(tensor=self.as_tio(make_image(size)))
            self.name = f"TorchIO {tio.__version__} RandomElasticDeformation"

    def as_tio(self, t):
        """[C, ...S] -> TorchIO's 4D [C, X, Y, Z] (2D: one slice)."""
        return t.unsqueeze(-1) if len(self.size) == 2 else t

    def __call__(self):
        if self.impl == "monai":
            return self.transform(self.image)
        return self.transform(self.image).data

    def mean_disp(self, draws=4):
        """Mean displacement norm over the central box, averaged over `draws` deformations."""
        coords = coordinates(self.size)
        vals = []
        for _ in range(draws):
            if self.impl == "monai":
                out = self.transform(coords.to(self.device)).cpu()
            else:
                out = self.transform(self.tio.ScalarImage(tensor=self.as_tio(coords))).data
                out = out[..., 0] if len(self.size) == 2 else out
            vals.append(central_mean_norm(out.float() - coords))
        return sum(vals) / len(vals)


def main():
    p = argparse.ArgumentParser(description="MONAI / TorchIO elastic-augmentation peers of drdm_bench_generate")
    add_common_args(p, min_time=2.0)
    p.add_argument("--impl", default="all", help="monai, torchio or all")
    args = p.parse_args()
    missing = missing_packages()
    if missing:
        sys.exit("peer_generate.py: missing " + ", ".join(missing) + f"\ninstall them with:\n  {INSTALL}")
    apply_common_args(args)
    warnings.filterwarnings("ignore")
    impls = IMPLS if args.impl == "all" else args.impl.split(",")
    with JsonLines(args.out) as out:
        for dev in requested_devices(args.device, "peer_generate.py"):
            run_device(dev, impls, out, args)


def run_device(dev, impls, out, args):
    threads = torch.get_num_threads()
    for ci, (size, batch) in enumerate(CASES):
        if args.case >= 0 and args.case != ci:
            continue
        for impl in impls:
            if impl == "torchio" and dev != "cpu":
                continue
            peer = Peer(impl, size, dev, args.seed + ci)
            rss_before = status_mb("VmRSS")
            reset = dev == "cpu" and reset_peak_rss()
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()

            def call(_):
                for _ in range(batch):
                    peer()

            timing = time_op(call, args, sync=sync_device(dev))
            hwm = status_mb("VmHWM")
            cuda_mb = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None
            out.emit({"impl": impl, "op": "elastic", "dims": len(size), "size": "x".join(map(str, size)),
                      "batch": batch, "device": dev, "threads": threads, "ms": round(timing["median_ms"], 4),
                      **rounded(timing),
                      "samples_per_s": round(1000.0 * batch / timing["median_ms"], 5),
                      "transform": peer.name,
                      "params": {k: list(v) if isinstance(v, tuple) else v for k, v in peer.params.items()},
                      "peak_rss_mb": round(hwm, 1) if reset and hwm else None,
                      "rss_before_mb": round(rss_before, 1) if rss_before else None,
                      "peak_growth_mb": round(hwm - rss_before, 1) if reset and hwm and rss_before else None,
                      "cuda_peak_mb": round(cuda_mb, 1) if cuda_mb is not None else None,
                      "mean_disp": round(peer.mean_disp(), 3)})


if __name__ == "__main__":
    main()
