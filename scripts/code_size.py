"""Report the longest functions and files of the shipped code, and check them against the targets.

    python scripts/code_size.py            # the longest functions and files, worst first
    python scripts/code_size.py --check    # exit 1 naming every function > 80 or file > 400 lines

Counts physical lines: a function from its `def` (decorators excluded) to its last line, a file
from first to last line. Covers `roadseg/`, `bento/`, `components/`, `pipelines/` (tests and
benchmarks are excluded, as the targets are about the code a change has to find its way in).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("roadseg", "bento", "components", "pipelines")
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 400


def python_files(root: Path = ROOT) -> list[Path]:
    """Every `.py` file under the shipped packages, sorted."""
    return sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py") if p.is_file())


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines) of every function and method in `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                found.append((name, child.end_lineno - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def measure(root: Path = ROOT) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(functions, files), each a list of (`path[:name]`, lines), longest first."""
    functions, files = [], []
    for path in python_files(root):
        rel = path.relative_to(root).as_posix()
        files.append((rel, len(path.read_text(encoding="utf-8").splitlines())))
        functions += [(f"{rel}:{name}", n) for name, n in function_lengths(path)]
    return sorted(functions, key=lambda x: -x[1]), sorted(files, key=lambda x: -x[1])


def offenders(root: Path = ROOT) -> list[str]:
    """One line per function over `MAX_FUNCTION_LINES` and file over `MAX_FILE_LINES`."""
    functions, files = measure(root)
    return [f"function {name}: {n} lines (> {MAX_FUNCTION_LINES})"
            for name, n in functions if n > MAX_FUNCTION_LINES] + [
            f"file {name}: {n} lines (> {MAX_FILE_LINES})"
            for name, n in files if n > MAX_FILE_LINES]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=10, help="how many of each to list")
    ap.add_argument("--check", action="store_true", help="exit 1 when a target is broken")
    args = ap.parse_args(argv)
    functions, files = measure()
    print(f"longest functions (target <= {MAX_FUNCTION_LINES} lines):")
    for name, n in functions[: args.top]:
        print(f"  {n:5d}  {name}")
    print(f"longest files (target <= {MAX_FILE_LINES} lines):")
    for name, n in files[: args.top]:
        print(f"  {n:5d}  {name}")
    bad = offenders()
    for line in bad:
        print(f"over target: {line}")
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
