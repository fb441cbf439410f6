"""Facts with one home, and the size targets of the shipped code (issue 13).

- the versions every install uses live in requirements/ (tests/unit/test_lock.py);
- no function over 80 lines and no file over 400 in roadseg/, bento/, components/, pipelines/
  (`python scripts/code_size.py` lists the longest).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_code_size_targets_hold() -> None:
    """No function over 80 lines, no file over 400 (the script names every offender)."""
    proc = subprocess.run(
        [sys.executable, "scripts/code_size.py", "--check", "--top", "3"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"longest functions.*\n\s+\d+\s+\S+:\S+", proc.stdout)


def test_code_size_script_finds_offenders(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("code_size", REPO / "scripts/code_size.py")
    code_size = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code_size)
    pkg = tmp_path / "roadseg"
    pkg.mkdir()
    body = "".join(f"        x{i} = {i}\n" for i in range(85))
    (pkg / "long.py").write_text(f"class A:\n    def f(self):\n{body}" + "#\n" * 400)
    functions, files = code_size.measure(tmp_path)
    assert functions[0] == ("roadseg/long.py:A.f", 86)
    assert files[0] == ("roadseg/long.py", 487)
