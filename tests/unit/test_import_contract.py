"""The import contract of roadseg's stages (`[tool.importlinter]` in pyproject.toml): it holds
on the tree, and it breaks, naming the import, when a lower stage imports a higher one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip


def _copy(tmp: Path) -> Path:
    shutil.copytree(REPO / "roadseg", tmp / "roadseg", ignore=shutil.ignore_patterns("_report_*"))
    shutil.copy(REPO / "pyproject.toml", tmp / "pyproject.toml")
    return tmp


def test_the_stages_keep_the_contract() -> None:
    proc = _lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout and "3 kept" in proc.stdout


def test_a_lower_stage_importing_a_higher_one_breaks_it(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    unet = root / "roadseg/models/unet.py"
    unet.write_text(unet.read_text() + "\nfrom roadseg.serve import engine  # noqa: E402\n")
    proc = _lint(root)
    assert proc.returncode != 0
    assert "roadseg.models is not allowed to import roadseg.serve" in proc.stdout
    assert "roadseg.models.unet -> roadseg.serve.engine" in proc.stdout


def test_release_importing_serving_breaks_it(tmp_path: Path) -> None:
    """Also when the layers would allow it: the forbidden contract names the import."""
    root = _copy(tmp_path)
    registry = root / "roadseg/release/registry.py"
    registry.write_text(registry.read_text() + "\nfrom roadseg.serve import api  # noqa: E402\n")
    proc = _lint(root)
    assert proc.returncode != 0
    assert "roadseg.release.registry -> roadseg.serve.api" in proc.stdout
