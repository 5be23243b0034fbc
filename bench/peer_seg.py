#!/usr/bin/env python3
"""Peers of bench/bench_seg.cpp: the U-Net step in PyTorch-in-Python, BigAug in MONAI and TorchIO.

  --impl pytorch   op unet_step: the U-Net of include/drdm/seg/unet.h written with
                   torch.nn (per level two 3x3 conv + ReLU, max-pool 2 down,
                   ConvTranspose k2 s2 up, concat [up, skip], two 3x3 conv + ReLU,
                   1x1 head; widths 16, 32, 64, 128; 1 input channel, 4 classes;
                   the same parameter names as libdrdm's UNet::state()), BCE with
                   logits on the one-hot labels (Eq. 17), loss.item(), backward,
                   torch.optim.Adam, on a fixed batch. On the CPU, --memory-format
                   auto times the contiguous and the channels-last layout and
                   reports the faster (both kept in "variants").
  --impl monai     op bigaug: a monai.transforms.Compose of dictionary transforms
                   of the same kinds and ranges as drdm::seg::bigaug, each at
                   prob 0.5, run per sample on {"image": [1, H, W], "label": [1, H, W]}
                   (labels moved by nearest), meta-data tracking off.
  --impl torchio   op bigaug: a torchio.Compose of the transforms of those kinds
                   that TorchIO has, each at p 0.5, per sample on a tio.Subject of a
                   ScalarImage and a LabelMap (2D as one-slice volumes [1, H, W, 1];
                   SimpleITK resampling, labels by nearest).

What maps to what (BigAug # as in docs/bigaug.md) is MAPPING below; bench/run.py
seg prints it in its report. One timed bigaug call = the batch's samples one
after another (a new random draw each); samples/s = batch / median seconds.

Cases as in bench_seg.cpp: 0 = 2D 128x128 batch 16, 1 = 2D 256x256 batch 8.
Prints JSON lines in drdm_bench_seg's schema, with "impl" "pytorch-python",
"monai" or "torchio".
"""

import argparse
import copy
import json
import math
import sys
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from peer_common import JsonLines, add_common_args, apply_common_args, requested_devices, rounded, time_op

CASES = [((128, 128), 16), ((256, 256), 8)]
WIDTHS = [16, 32, 64, 128]
CLASSES = 4
INSTALL = ".venv/bin/pip install --no-deps -r bench/requirements.txt"

# BigAug transform (docs/bigaug.md) -> (MONAI, TorchIO); None: the library has none of that kind.
MAPPING = [
    ("1 blur, sigma U(0.25, 1.5)", "RandGaussianSmoothd sigma_x, sigma_y U(0.25, 1.5) (drawn per axis)",
     "RandomBlur std U(0.25, 1.5) in-plane, 0 through-plane (drawn per axis)"),
    ("2 sharpen, alpha U(10, 30), sigma1 1, sigma2 0.5",
     "RandGaussianSharpend sigma1 U(0.5, 1), sigma2 0.5, alpha U(10, 30)", None),
    ("3 noise, std U(0, 0.1)", "RandGaussianNoised std 0.1 (sample_std: U(0, 0.1))", "RandomNoise std U(0, 0.1)"),
    ("4 brightness, shift U(-0.1, 0.1)", "RandShiftIntensityd offsets 0.1", None),
    ("5 gamma U(0.5, 4.5) on the min-max rescaled image", "RandAdjustContrastd gamma (0.5, 4.5) (min-max rescaled)",
     "RandomGamma log_gamma (ln 0.5, ln 4.5) (on the raw values)"),
    ("6 intensity x s + o, s U(0.9, 1.1), o U(-0.1, 0.1)",
     "RandScaleIntensityd factors 0.1 (x (1 + U(-0.1, 0.1)); the shift part left out, same kind as 4)", None),
    ("7 rotation U(-20, 20) deg", "RandRotated range_x 20 deg, bilinear / nearest, zeros",
     "RandomAffine degrees 20 (in-plane), scales 1, linear / nearest, pad 0"),
    ("8 isotropic zoom U(0.4, 1.6)", "RandZoomd 0.4..1.6, bilinear / nearest-exact, constant 0, keep_size",
     "RandomAffine scales (0.4, 1.6) isotropic, degrees 0, linear / nearest, pad 0"),
    ("9 elastic, 7 knots, max 2.5..7.5 vox, diffeomorphic",
     "Rand2DElasticd spacing n/6 (7x7 control grid), magnitude (2.5, 7.5), bilinear / nearest, zeros",
     "RandomElasticDeformation 7 control points, max_displacement (7.5, 7.5, 0), locked_borders 2"),
]


# ---------------------------------------------------------------- inputs
def make_batch(size, batch, seed):
    """Images [B, 1, H, W] in [0, 1] and int64 labels [B, 1, H, W], as bench_seg.cpp
    makes them: 4 nested discs about the centre, image 0.1 + 0.25 label + U(0, 0.1)."""
    h, w = size
    y = (torch.arange(h, dtype=torch.float32) - 0.5 * (h - 1)) / (0.5 * h)
    x = (torch.arange(w, dtype=torch.float32) - 0.5 * (w - 1)) / (0.5 * w)
    r = (y.view(h, 1) ** 2 + x.view(1, w) ** 2).sqrt()
    label = (r < 0.2).long() + (r < 0.4).long() + (r < 0.6).long()
    labels = label.view(1, 1, h, w).expand(batch, 1, h, w).contiguous()
    g = torch.Generator().manual_seed(seed)
    images = labels.float() * 0.25 + 0.1 + torch.rand(batch, 1, h, w, generator=g) * 0.1
    return images, labels


# ---------------------------------------------------------------- U-Net
class Block(nn.Module):
    """Two 3x3 convolutions, each followed by ReLU."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv2(F.relu(self.conv1(x), inplace=True)), inplace=True)


class UNet(nn.Module):
    """drdm::seg::UNet in 2D: modules enc<l>, up<l>, dec<l>, head (libdrdm's parameter names)."""

    def __init__(self, in_channels=1, classes=CLASSES, widths=WIDTHS):
        super().__init__()
        self.levels = len(widths)
        for l, w in enumerate(widths):
            setattr(self, f"enc{l}", Block(in_channels if l == 0 else widths[l - 1], w))
        for l in range(len(widths) - 1):
            setattr(self, f"up{l}", nn.ConvTranspose2d(widths[l + 1], widths[l], 2, stride=2))
            setattr(self, f"dec{l}", Block(2 * widths[l], widths[l]))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x):
        skips = []
        for l in range(self.levels):
            if l > 0:
                x = F.max_pool2d(x, 2)
            x = getattr(self, f"enc{l}")(x)
            skips.append(x)
        for l in range(self.levels - 2, -1, -1):
            x = getattr(self, f"dec{l}")(torch.cat([getattr(self, f"up{l}")(x), skips[l]], 1))
        return self.head(x)


def bce_loss(logits, labels):
    """Eq. 17: BCE of sigmoid(logits) per class channel against the one-hot labels, mean."""
    target = F.one_hot(labels.squeeze(1), logits.shape[1]).permute(0, 3, 1, 2).float()
    return F.binary_cross_entropy_with_logits(logits, target)


def unet_timing(size, batch, dev, fmt, args, case):
    torch.manual_seed(args.seed)
    model = UNet().to(dev)
    images, labels = make_batch(size, batch, args.seed + case)
    images, labels = images.to(dev), labels.to(dev)
    if fmt == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def step(_):
        loss = bce_loss(model(images), labels)
        loss.item()  # as the libdrdm trainer and bench read the loss each step
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    t = copy.copy(args)
    t.warmup, t.min_reps, t.max_reps, t.min_time = args.step_warmup, args.step_reps, args.step_reps, 0.0
    sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else None
    timing = time_op(step, t, sync=sync)
    shapes = {k: list(p.shape) for k, p in sorted(model.named_parameters())}
    return timing, sum(p.numel() for p in model.parameters() if p.requires_grad), shapes


# ---------------------------------------------------------------- BigAug peers
class MonaiPipeline:
    def __init__(self, size, dev, seed):
        import monai
        from monai import transforms as mt
        monai.data.set_track_meta(False)
        n = size[0]
        both, img = ["image", "label"], "image"
        modes = ("bilinear", "nearest")
        self.transform = mt.Compose([
            mt.RandGaussianSmoothd(img, sigma_x=(0.25, 1.5), sigma_y=(0.25, 1.5), prob=0.5),
            mt.RandGaussianSharpend(img, sigma1_x=(0.5, 1.0), sigma1_y=(0.5, 1.0), sigma2_x=0.5, sigma2_y=0.5,
                                    alpha=(10.0, 30.0), prob=0.5),
            mt.RandGaussianNoised(img, prob=0.5, mean=0.0, std=0.1),
            mt.RandShiftIntensityd(img, offsets=0.1, prob=0.5),
            mt.RandAdjustContrastd(img, gamma=(0.5, 4.5), prob=0.5),
            mt.RandScaleIntensityd(img, factors=0.1, prob=0.5),
            mt.RandRotated(both, range_x=math.radians(20.0), prob=0.5, keep_size=True, mode=modes,
                           padding_mode="zeros"),
            mt.RandZoomd(both, prob=0.5, min_zoom=0.4, max_zoom=1.6, mode=("bilinear", "nearest-exact"),
                         padding_mode="constant", keep_size=True),
            mt.Rand2DElasticd(both, spacing=(n / 6.0, n / 6.0), magnitude_range=(2.5, 7.5), spatial_size=tuple(size),
                              prob=0.5, mode=modes, padding_mode="zeros", device=torch.device(dev)),
        ]).set_random_state(seed=seed)
        self.name = f"MONAI {monai.__version__} Compose of 9 dictionary transforms"
        self.dev = dev

    def samples(self, images, labels):
        return [{"image": images[i].to(self.dev), "label": labels[i].float().to(self.dev)}
                for i in range(images.shape[0])]

    def __call__(self, sample):
        return self.transform(sample)


class TorchioPipeline:
    def __init__(self, size, dev, seed):
        import SimpleITK as sitk
        import torchio as tio
        if dev != "cpu":
            raise ValueError("TorchIO resamples with SimpleITK: CPU only")
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(torch.get_num_threads())
        torch.manual_seed(seed)  # TorchIO draws its parameters with torch's global generator
        self.tio = tio
        self.transform = tio.Compose([
            tio.RandomBlur(std=(0.25, 1.5, 0.25, 1.5, 0.0, 0.0), p=0.5),
            tio.RandomNoise(mean=0.0, std=(0.0, 0.1), p=0.5),
            tio.RandomGamma(log_gamma=(math.log(0.5), math.log(4.5)), p=0.5),
            tio.RandomAffine(scales=0.0, degrees=20.0, default_pad_value=0.0, p=0.5),
            tio.RandomAffine(scales=(0.4, 1.6), isotropic=True, degrees=0.0, default_pad_value=0.0, p=0.5),
            tio.RandomElasticDeformation(num_control_points=7, max_displacement=(7.5, 7.5, 0.0), locked_borders=2,
                                         p=0.5),
        ])
        self.name = f"TorchIO {tio.__version__} Compose of 6 transforms"

    def samples(self, images, labels):
        tio = self.tio
        return [tio.Subject(image=tio.ScalarImage(tensor=images[i].unsqueeze(-1)),
                            label=tio.LabelMap(tensor=labels[i].unsqueeze(-1)))
                for i in range(images.shape[0])]

    def __call__(self, subject):
        return self.transform(subject)


def bigaug_timing(impl, size, batch, dev, args, case):
    cls = MonaiPipeline if impl == "monai" else TorchioPipeline
    pipe = cls(size, dev, args.seed + 100 + case)
    images, labels = make_batch(size, batch, args.seed + case)
    samples = pipe.samples(images, labels)

    def call(_):
        return [pipe(s) for s in samples]

    t = copy.copy(args)
    t.warmup, t.min_reps, t.max_reps, t.min_time = args.aug_warmup, args.aug_min_reps, 100000, args.aug_min_time
    sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else None
    return time_op(call, t, sync=sync), pipe.name


# ---------------------------------------------------------------- main
def main():
    p = argparse.ArgumentParser(description="PyTorch / MONAI / TorchIO peers of drdm_bench_seg")
    add_common_args(p, min_time=2.0)
    p.add_argument("--impl", default="pytorch", choices=["pytorch", "monai", "torchio"])
    p.add_argument("--step-reps", type=int, default=5)
    p.add_argument("--step-warmup", type=int, default=2)
    p.add_argument("--aug-min-time", type=float, default=2.0)
    p.add_argument("--aug-min-reps", type=int, default=5)
    p.add_argument("--aug-warmup", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--memory-format", choices=["auto", "contiguous", "channels_last"], default="contiguous",
                   help="U-Net layout; auto (CPU): time both, report the faster")
    p.add_argument("--mapping", action="store_true", help="print MAPPING as JSON and exit")
    args = p.parse_args()
    if args.mapping:
        print(json.dumps(MAPPING))
        return
    apply_common_args(args)
    if args.impl != "pytorch":
        try:
            __import__(args.impl)
        except ImportError as e:
            sys.exit(f"peer_seg.py: {args.impl} is missing ({e}); install it with:\n  {INSTALL}")
        warnings.filterwarnings("ignore")
    threads = torch.get_num_threads()
    with JsonLines(args.out) as out:
        for dev in requested_devices(args.device, "peer_seg.py"):
            for ci, (size, batch) in enumerate(CASES):
                if args.case >= 0 and args.case != ci:
                    continue
                base = {"dims": 2, "size": "x".join(map(str, size)), "batch": batch, "device": dev, "threads": threads}
                if args.impl == "pytorch":
                    fmts = (["contiguous", "channels_last"] if dev == "cpu" and args.memory_format == "auto"
                            else [args.memory_format if args.memory_format != "auto" else "contiguous"])
                    variants, best = {}, None
                    for fmt in fmts:
                        timing, n, shapes = unet_timing(size, batch, dev, fmt, args, ci)
                        variants[fmt] = round(timing["median_ms"], 4)
                        if best is None or timing["median_ms"] < best[1]["median_ms"]:
                            best = (fmt, timing)
                    fmt, timing = best
                    out.emit({"impl": "pytorch-python", "op": "unet_step", **base, "ms": round(timing["median_ms"], 4),
                              **rounded(timing), "samples_per_s": round(1000.0 * batch / timing["median_ms"], 5),
                              "params": n, "widths": WIDTHS, "classes": CLASSES, "memory_format": fmt,
                              "variants": variants, "param_shapes": shapes})
                else:
                    if args.impl == "torchio" and dev != "cpu":
                        continue
                    timing, name = bigaug_timing(args.impl, size, batch, dev, args, ci)
                    out.emit({"impl": args.impl, "op": "bigaug", **base, "ms": round(timing["median_ms"], 4),
                              **rounded(timing), "samples_per_s": round(1000.0 * batch / timing["median_ms"], 5),
                              "transform": name})


if __name__ == "__main__":
    main()
