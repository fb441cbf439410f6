"""The pip-compile locks in requirements/: read their pins, hashes and `# via` annotations, and
write a subset of lock.txt (the closure of some root packages) with the same lines.

    python scripts/lockfile.py subset requirements/lock.txt --roots-from pyproject.toml \
        -o requirements/runtime-cpu.txt
    python scripts/lockfile.py subset requirements/lock.txt --roots-from requirements/serve.in \
        --no-hashes -o requirements/serve.txt

A subset needs no resolver (so it takes no time and cannot pick another version): pip-compile's
`# via` lines are the dependency graph, and the closure of the roots in it is what they install.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass
class Pin:
    version: str
    hashes: list[str] = field(default_factory=list)
    via: list[str] = field(default_factory=list)


def read_pins(path: Path) -> dict[str, Pin]:
    """Each pinned distribution (canonical name) with its hashes and what requires it."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if match := _PIN.match(raw):
            current = pins[canonicalize_name(match[1])] = Pin(match[2])
            in_via = False
        elif current is not None and line.startswith("--hash=sha256:"):
            current.hashes.append(line.removeprefix("--hash=sha256:").rstrip(" \\"))
        elif current is not None and line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.append(rest)
        elif current is not None and in_via and line.startswith("#   "):
            current.via.append(line.removeprefix("#").strip())
        elif not line.startswith("#") or not line:
            in_via = False
    return pins


def read_lock(path: Path) -> dict[str, str]:
    """Canonical name -> pinned version."""
    return {name: pin.version for name, pin in read_pins(path).items()}


def closure(pins: dict[str, Pin], roots: set[str]) -> set[str]:
    """The roots and everything they require, transitively, by the lock's `# via` lines."""
    children: dict[str, set[str]] = {}
    for name, pin in pins.items():
        for parent in pin.via:
            children.setdefault(canonicalize_name(parent.split(" ")[0]), set()).add(name)
    missing = roots - set(pins)
    if missing:
        raise SystemExit(f"not in the lock: {', '.join(sorted(missing))} (run `make lock`)")
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(children.get(name, ()))
    return seen


def _entries(text: str) -> list[tuple[str, list[str]]]:
    """The lock's lines grouped per pin (name, lines), after the header."""
    entries: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if match := _PIN.match(line):
            entries.append((canonicalize_name(match[1]), [line]))
        elif entries and line.startswith(" "):
            entries[-1][1].append(line)
    return entries


def write_subset(lock: Path, roots: set[str], out: Path, *, hashes: bool, title: str) -> None:
    keep = closure(read_pins(lock), roots)
    lines = [f"# {title}", f"# The closure of its roots in {lock.name}, written by:",
             f"#    python scripts/lockfile.py {shlex.join(sys.argv[1:])}", "#"]  # fmt: skip
    for name, entry in _entries(lock.read_text()):
        if name not in keep:
            continue
        if hashes:
            lines.extend(ln for ln in entry if not ln.lstrip().startswith("#"))
        else:
            lines.append(entry[0].removesuffix(" \\"))
    out.write_text("\n".join(lines) + "\n")


def roots_of(path: Path) -> set[str]:
    """Requirement names of a pyproject.toml's dependencies or of a requirements .in file."""
    if path.name == "pyproject.toml":
        deps = tomllib.loads(path.read_text())["project"]["dependencies"]
    else:
        deps = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return {canonicalize_name(Requirement(d).name) for d in deps if d}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    subset = sub.add_parser("subset", help="write the closure of some packages in a lock")
    subset.add_argument("lock", type=Path)
    subset.add_argument("--roots-from", type=Path, required=True)
    subset.add_argument("-o", "--output", type=Path, required=True)
    subset.add_argument("--no-hashes", action="store_true")
    subset.add_argument("--title", default="A subset of requirements/lock.txt.")
    args = parser.parse_args()
    write_subset(args.lock, roots_of(args.roots_from), args.output, hashes=not args.no_hashes,
                 title=args.title)  # fmt: skip


if __name__ == "__main__":
    main()
