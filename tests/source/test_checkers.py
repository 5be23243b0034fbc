#!/usr/bin/env python3
"""The source checks catch what they promise: a back-arrow between layers, an
include cycle, a function over the line limit, and they pass clean code.
Builds small throw-away trees; exits non-zero on the first failed case."""
import os
import subprocess
import sys
import tempfile

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts")


def tree(files):
    root = tempfile.mkdtemp(prefix="drdm_checkers_")
    for path, text in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
        with open(os.path.join(root, path), "w") as f:
            f.write(text)
    subprocess.run(["git", "init", "-q", root], check=True)
    subprocess.run(["git", "-C", root, "add", "."], check=True)
    return root


def run(args, cwd=None):
    r = subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True, text=True)
    return r.returncode, r.stdout


def expect(ok, what, out):
    if not ok:
        sys.exit(f"FAILED: {what}\n{out}")
    print(f"ok: {what}")


def layers_cases():
    clean = {"include/drdm/core/a.h": "#pragma once\n",
             "src/io/b.cpp": '#include "drdm/core/a.h"\n'}
    rc, out = run([os.path.join(SCRIPTS, "check_layers.py"), tree(clean)])
    expect(rc == 0 and "0 problems" in out, "layers: a downward include passes", out)
    back = dict(clean, **{"src/core/c.cpp": '#include "drdm/engine/d.h"\n',
                          "include/drdm/engine/d.h": "#pragma once\n"})
    rc, out = run([os.path.join(SCRIPTS, "check_layers.py"), tree(back)])
    expect(rc == 1 and "engine is above core" in out, "layers: a back-arrow fails", out)
    cycle = {"include/drdm/io/x.h": '#include "drdm/io/y.h"\n',
             "include/drdm/io/y.h": "#pragma once\n", "src/io/y.cpp": '#include "drdm/io/x.h"\n'}
    rc, out = run([os.path.join(SCRIPTS, "check_layers.py"), tree(cycle)])
    expect(rc == 1 and "include cycle: io/x -> io/y -> io/x" in out, "layers: a cycle fails", out)


def length_cases():
    body = "".join(f"  x += {i};\n" for i in range(57))
    text = ("namespace n {\nstruct S {\n  int f() {\n    return 1;\n  }\n};\n"
            "int ok(int x) {\n" + body + "  return x;\n}\n"
            'int too_long(int x) {\n  auto s = "{";\n' + body + "  return x;\n}\n}  // namespace n\n")
    root = tree({"src/core/f.cpp": text})
    rc, out = run([os.path.join(SCRIPTS, "check_function_length.py"), "src/core/f.cpp"], cwd=root)
    expect(rc == 1 and "too_long" in out and " ok(" not in out and "1 functions" in out,
           "length: 61 lines fail, 60 pass, a brace in a string is no brace", out)


if __name__ == "__main__":
    layers_cases()
    length_cases()
