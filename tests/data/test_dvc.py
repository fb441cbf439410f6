"""DVC: a dataset round-trips byte for byte through a local remote; the project's dvc.yaml is sane."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from roadseg.data.synth import synthesize_dataset

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path) -> str:
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"{' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _dvc(*args: str, cwd: Path) -> str:
    return _run(sys.executable, "-m", "dvc", *args, cwd=cwd)


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_push_pull_round_trip(tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    _run("git", "init", "-q", cwd=repo)
    _dvc("init", "-q", cwd=repo)
    _dvc("config", "core.analytics", "false", cwd=repo)
    _dvc("remote", "add", "-d", "local", str(remote), cwd=repo)
    data = repo / "data" / "bdd100k"
    synthesize_dataset(data, train=3, val=1, test=1, height=48, width=64, seed=5)
    before = _digest(data)
    _dvc("add", "-q", "data/bdd100k", cwd=repo)
    assert (repo / "data" / "bdd100k.dvc").is_file()
    _dvc("push", "-q", cwd=repo)
    assert any(p.is_file() for p in remote.rglob("*"))
    shutil.rmtree(data)
    shutil.rmtree(repo / ".dvc" / "cache")
    _dvc("pull", "-q", cwd=repo)
    assert _digest(data) == before
    assert "up to date" in _dvc("status", cwd=repo)


def _keys(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{prefix}{k}"
            yield from _keys(v, f"{prefix}{k}.")


def test_project_dvc_yaml_matches_params_and_cli():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    known = set(_keys(params))
    stages = spec["stages"]
    assert {"synth", "validate", "remap"} <= set(stages)
    for name in ("synth", "validate", "remap"):  # the data stages; training stages are tested apart
        stage = stages[name]
        assert stage["cmd"].startswith("roadseg "), name
        for key in stage.get("params", []):
            assert key in known, f"stage {name}: params key {key!r} is not in params.yaml"
        text = yaml.safe_dump(stage)
        for ref in re.findall(r"\$\{([^}]+)\}", text):
            assert ref in known, f"stage {name}: ${{{ref}}} is not in params.yaml"
    # data.dvc tracks the raw dataset, which no stage writes
    tracked = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["path"]
    assert tracked == params["data"]["raw_dir"] == "data/bdd100k"
    assert params["synth"]["out_dir"] != tracked


def test_project_stages_list_code_that_exists_and_their_cli_module():
    """Each stage depends on the code it runs, starting with the CLI module of its command."""
    cli_module = {"data": "data", "train": "train", "evaluate": "train", "register": "pipeline"}
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        stage = stage.get("do", stage)  # foreach stages
        code = [d for d in stage["deps"] if str(d).startswith("roadseg/")]
        for path in code:
            assert (REPO / path).exists(), f"stage {name}: {path} does not exist"
        command = stage["cmd"].split()[1]
        assert f"roadseg/cli/{cli_module[command]}.py" in code, f"stage {name}: {code}"


def test_project_stages_resolve():
    out = _dvc("stage", "list", cwd=REPO)
    for name in ("synth", "validate", "remap"):
        assert re.search(rf"^{name}\b", out, re.M), out
