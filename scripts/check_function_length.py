#!/usr/bin/env python3
"""Lists the functions of the library, programs and benchmarks longer than a
limit (default 60 lines, from the signature's first line to the closing
brace). Tests are exempt. Exits 1 when any function is over the limit.

  scripts/check_function_length.py [--limit N] [FILES...]

A function is a brace block opened at namespace or class scope whose header
(the text since the previous ';', '{' or '}') has a parameter list and is not
a class, struct, enum, union or namespace; lambdas count toward the function
that holds them. Comments, strings and preprocessor lines are skipped.
"""
import argparse
import re
import subprocess
import sys

SCOPE = re.compile(r"\b(namespace|class|struct|union|enum)\b")


def strip(text):
    """Blanks out comments, string and character literals, keeping newlines."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith('R"', i):
            m = re.match(r'R"([^(]*)\(', text[i:])
            end = text.find(")" + m.group(1) + '"', i) if m else -1
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * (j - i - 1) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    kept, directive = [], False
    for line in "".join(out).split("\n"):
        directive = directive or line.lstrip().startswith("#")
        kept.append("" if directive else line)
        directive = directive and line.rstrip().endswith("\\")
    return "\n".join(kept)


def functions(text):
    """(first line, last line, header) of every function body at scope level."""
    code = strip(text)
    stack, found, header_start = [], [], 0
    for i, c in enumerate(code):
        if c == "{":
            header = code[header_start:i]
            in_function = any(kind == "function" for kind, _ in stack)
            if in_function:
                kind = "block"
            elif SCOPE.search(header) and "(" not in header.split("=")[0]:
                kind = "scope"
            elif "(" in header and not re.search(r"=\s*$", header.strip()):
                kind = "function"
            else:
                kind = "block"
            start = header_start + len(header) - len(header.lstrip())
            stack.append((kind, start))
            header_start = i + 1
        elif c == "}":
            if stack:
                kind, start = stack.pop()
                if kind == "function":
                    first = code.count("\n", 0, start) + 1
                    last = code.count("\n", 0, i) + 1
                    found.append((first, last, " ".join(code[start:i].split("{")[0].split())))
            header_start = i + 1
        elif c == ";":
            header_start = i + 1
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    files = args.files or subprocess.check_output(
        ["git", "ls-files", "src", "include", "apps", "bench", "fuzz"], text=True).split()
    long = []
    for path in files:
        if not path.endswith((".cpp", ".h")) or "/gloo_decl/" in path:
            continue
        with open(path, encoding="utf-8") as f:
            for first, last, header in functions(f.read()):
                if last - first + 1 > args.limit:
                    long.append((last - first + 1, f"{path}:{first}", header[:90]))
    for n, where, header in sorted(long, reverse=True):
        print(f"{n:5d}  {where}  {header}")
    print(f"check_function_length: {len(long)} functions over {args.limit} lines")
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main())
