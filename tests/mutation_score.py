"""Mutation score per module for `make mutation` (mutmut 3), with equivalent mutants excluded.

Run inside mutmut's scratch copy after `mutmut run`:

    python tests/mutation_score.py scope "roadseg/metrics/segmentation.py roadseg/losses/*"   # before the run
    python tests/mutation_score.py report                                         # after it

`scope` narrows `[tool.mutmut] only_mutate` of the copy's pyproject.toml to the given globs (the
run then takes minutes, not an hour). `report` prints killed / (total - equivalent) per module;
equivalent mutants are listed, each with the reason it cannot be killed, in
tests/mutation_equivalent.txt (`name  # reason`). A listed name that is no longer a survivor is
reported, so the list cannot silently go stale when the code changes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
KILLED = {"killed", "timeout"}


def scope(globs: str) -> None:
    path = Path("pyproject.toml")
    items = ", ".join(f'"{g}"' for g in globs.split())
    text, n = re.subn(r"only_mutate = \[.*?\]", f"only_mutate = [{items}]", path.read_text(),
                      count=1, flags=re.S)  # fmt: skip
    if n != 1:
        sys.exit("pyproject.toml has no [tool.mutmut] only_mutate to narrow")
    path.write_text(text)


def equivalents() -> dict[str, str]:
    out = {}
    for line in (HERE / "mutation_equivalent.txt").read_text().splitlines():
        name, _, reason = line.partition("#")
        if name.strip():
            out[name.strip()] = reason.strip()
    return out


def report() -> int:
    res = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    status = {}
    for line in res.stdout.splitlines():
        name, sep, state = line.strip().rpartition(": ")
        if sep and name.startswith("roadseg."):
            status[name] = state.strip()
    equiv = equivalents()
    rows: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, state in status.items():
        module = re.split(r"\.x(?:_|ǁ)", name, maxsplit=1)[0]
        kind = "killed" if state in KILLED else "equivalent" if name in equiv else state
        rows[module][kind] += 1
    total_k = total_n = 0
    print(f"{'module':34} {'killed':>7} {'of':>5} {'score':>7}  survived  no tests  equivalent")
    for module, c in sorted(rows.items()):
        n = sum(c.values()) - c["equivalent"]
        total_k, total_n = total_k + c["killed"], total_n + n
        print(f"{module:34} {c['killed']:7d} {n:5d} {100 * c['killed'] / max(n, 1):6.1f}%  "
              f"{c['survived']:8d}  {c['no tests']:8d}  {c['equivalent']:10d}")  # fmt: skip
    print(f"{'all':34} {total_k:7d} {total_n:5d} {100 * total_k / max(total_n, 1):6.1f}%")
    stale = [n for n in equiv if n in status and status[n] in KILLED]
    for name in stale:
        print(f"listed as equivalent but killed (remove it from the list): {name}")
    for name, state in sorted(status.items()):
        if state not in KILLED and name not in equiv:
            print(f"{state}: {name}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "scope":
        scope(sys.argv[2])
    elif sys.argv[1:] == ["report"]:
        sys.exit(report())
    else:
        sys.exit(__doc__)
