#!/usr/bin/env python3
"""The layer rule of docs/architecture.md, checked on the source tree.

Every file of the library lives in one layer: src/<layer>/ and
include/drdm/<layer>/. A file may include its own layer and the layers
below it, never one above it ("back-arrows"), and no chain of includes may
lead from a file back to itself (cycles, with a header and its .cpp counted
as one unit). The programs (apps/, bench/, tests/, fuzz/) stand above all
layers. Exits 1 listing every violation.

  scripts/check_layers.py [ROOT]
"""
import os
import re
import subprocess
import sys

LAYERS = ["core", "io", "engine", "diffusion", "seg", "reg"]
RANK = {name: i for i, name in enumerate(LAYERS)}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def library_files(root):
    out = subprocess.check_output(["git", "ls-files", "src", "include"], cwd=root, text=True)
    return [f for f in out.split() if f.endswith((".h", ".cpp")) and "/gloo_decl/" not in f
            and os.path.exists(os.path.join(root, f))]


def layer_of(path):
    parts = path.split("/")
    part = parts[2] if parts[0] == "include" else parts[1]
    return part if part in RANK else None


def resolve(name, including, known):
    """The tracked file an #include "name" names, or None (a system header)."""
    for cand in ("include/" + name, "src/" + name,
                 os.path.normpath(os.path.join(os.path.dirname(including), name))):
        if cand in known:
            return cand
    return None


def unit(path):
    """A header and its .cpp are one unit: include/drdm/x/y.h ~ src/x/y.cpp."""
    stem = os.path.splitext(path)[0]
    return stem[len("include/drdm/"):] if stem.startswith("include/drdm/") else stem[len("src/"):]


def find_cycles(edges):
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    files = library_files(root)
    known = set(files)
    problems, edges = [], {}
    for f in files:
        here = layer_of(f)
        if here is None:
            problems.append(f"{f}: not in a layer folder ({', '.join(LAYERS)})")
            continue
        with open(os.path.join(root, f), encoding="utf-8") as text:
            names = INCLUDE.findall(text.read())
        for name in names:
            if name.startswith("../"):
                problems.append(f"{f}: includes {name} (name private headers from src/)")
            target = resolve(name, f, known)
            if target is None:
                continue
            there = layer_of(target)
            if there is not None and RANK[there] > RANK[here]:
                problems.append(f"{f}: includes {name} ({there} is above {here})")
            if unit(target) != unit(f):
                edges.setdefault(unit(f), set()).add(unit(target))
    for cycle in find_cycles(edges):
        problems.append("include cycle: " + " -> ".join(cycle))
    for p in problems:
        print(p)
    print(f"check_layers: {len(files)} files, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
