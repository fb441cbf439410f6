"""Facts with one home, and the size targets of the shipped code (issue 13).

- the torch pin and the service's packages live in pyproject.toml; the Makefile reads the pin
  from there, and the Dockerfile and bentofile.yaml (which cannot) must agree with it;
- no function over 80 lines and no file over 400 in roadseg/, bento/, components/, pipelines/
  (`python scripts/code_size.py` lists the longest).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _pyproject_requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {Requirement(d).name.lower(): Requirement(d) for d in deps}


def test_bentofile_packages_match_pyproject() -> None:
    """Every package the service image installs is pinned as the project pins it; those the
    project does not list itself (FastAPI and python-multipart come with BentoML) are named."""
    project = _pyproject_requirements()
    bento = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]["packages"]
    only_in_bento = {"fastapi", "python-multipart"}  # BentoML's own dependencies, used directly
    for line in bento:
        req = Requirement(line)
        name = req.name.lower()
        if name in only_in_bento:
            continue
        assert name in project, f"bentofile.yaml installs {line!r}, which pyproject.toml lacks"
        assert req.specifier == project[name].specifier, (
            f"bentofile.yaml pins {line!r}, pyproject.toml {project[name]!s}"
        )
    assert "torch" in {Requirement(b).name for b in bento}


def test_torch_pin_has_one_home() -> None:
    pin = str(_pyproject_requirements()["torch"].specifier)
    assert pin.startswith("=="), "torch must be pinned exactly (CPU wheel installed first)"
    makefile = (REPO / "Makefile").read_text()
    assert not re.search(r"torch==\d", makefile), "the Makefile reads the pin from pyproject.toml"
    made = subprocess.run(
        ["make", "-s", "-f", "-", "show"],
        input=makefile + "\nshow:\n\t@echo $(TORCH_PIN)\n",
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert made == f"torch{pin}"
    assert f'"torch{pin}"' in (REPO / "Dockerfile").read_text()


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
