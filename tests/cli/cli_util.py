"""Helpers the command-line test scripts share: checks that collect failures, and running a program."""

import os
import subprocess

FAILURES = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def run(cmd, timeout=600):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def start(extra=()):
    """Parses --bin-dir, --workdir and the `extra` (name, help) options; empties the workdir."""
    import argparse
    import shutil
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--workdir", required=True)
    for name, help_text in extra:
        ap.add_argument(name, required=True, help=help_text)
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    return args


def finish(name, workdir):
    """Checks that no temporary folder is left anywhere under `workdir`; prints and returns the exit code."""
    left = [os.path.join(r, d) for r, ds, _ in os.walk(workdir) for d in ds if d.startswith(".drdm-tmp")]
    check(not left, f"no temporary folders left behind {left}")
    print(f"{name}: {len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0
