"""What the Python peers of libdrdm's benchmarks share.

The peers (peer_spatial.py, peer_train.py, peer_generate.py) take the same
common flags as the C++ benchmark programs (bench/bench_common.h), time calls
the same way and print one JSON object per line; bench/run.py runs them.
"""

import json
import sys
import time

import torch

SEED = 1234


def add_common_args(p, min_time=2.0):
    """Flags every peer takes (the C++ programs' common flags)."""
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    p.add_argument("--case", type=int, default=-1, help="run only the I-th (0-based) case (-1: all)")
    p.add_argument("--min-time", type=float, default=min_time, help="time each row at least this long (s)")
    p.add_argument("--min-reps", type=int, default=5)
    p.add_argument("--max-reps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=0, help="exactly N timed calls per row")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--out", default="", help="JSON-lines output file (default stdout)")


def apply_common_args(args):
    """--rounds N = exactly N timed calls; --threads N = torch.set_num_threads(N)."""
    if args.rounds > 0:
        args.min_reps = args.max_reps = args.rounds
        args.min_time = 0.0
    if args.threads > 0:
        torch.set_num_threads(args.threads)


def requested_devices(device, program):
    """["cpu"], ["cuda"] or both for --device cpu|cuda|all; exits if CUDA is asked for but absent."""
    devices = []
    if device in ("cpu", "all"):
        devices.append("cpu")
    if device in ("cuda", "all"):
        if torch.cuda.is_available():
            devices.append("cuda")
        elif device == "cuda":
            sys.exit(f"{program}: --device cuda but CUDA is not available")
    return devices


def time_op(fn, args, sync=None, cycle=1):
    """Calls fn(i) for i = 0, 1, ...: args.warmup warm-up calls, then timed calls
    until at least args.min_reps calls and args.min_time seconds (or
    args.max_reps calls), in whole cycles of `cycle` calls. sync(result), if
    given, waits for the device after each call. Returns median_ms, mean_ms,
    min_ms and reps."""
    call = 0

    def one():
        nonlocal call
        result = fn(call)
        call += 1
        if sync is not None:
            sync(result)

    for _ in range(args.warmup):
        one()
    ms = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        one()
        t1 = time.perf_counter()
        ms.append((t1 - t0) * 1e3)
        reps = len(ms)
        if reps % cycle == 0 and (reps >= max(args.max_reps, cycle)
                                  or (reps >= args.min_reps and t1 - start >= args.min_time)):
            break
    s = sorted(ms)
    n = len(s)
    median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return {"median_ms": median, "mean_ms": sum(ms) / n, "min_ms": s[0], "reps": n}


def sync_device(device):
    """A sync for time_op that waits for all of a device's queued work."""
    return (lambda _: torch.cuda.synchronize()) if str(device).startswith("cuda") else None


class JsonLines:
    """Prints result rows as JSON lines to --out (echoed to stderr) or stdout."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "w") if path else sys.stdout

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.path:
            self.file.close()

    def emit(self, row):
        line = json.dumps(row)
        print(line, file=self.file, flush=True)
        if self.path:
            print(line, file=sys.stderr, flush=True)


def rounded(d, digits=4):
    """The dict with its float values rounded."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in d.items()}


# ---------------------------------------------------------------- memory (Linux)
def status_mb(key):
    """A field of /proc/self/status in MB ("VmRSS", "VmHWM"), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Resets VmHWM to the current resident set (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
