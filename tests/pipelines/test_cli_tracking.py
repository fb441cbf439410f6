"""Every command finds MLflow the same way: `--tracking-uri`, then `$MLFLOW_TRACKING_URI`, then
`./mlruns.db` (absolute, so the subprocess tasks of a local run write to the same store)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import roadseg.pipeline.run
from roadseg.cli import app
from roadseg.cli.common import tracking_uri
from roadseg.tracking import resolve_tracking_uri


def test_precedence_flag_then_env_then_local_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"
    assert tracking_uri() == resolve_tracking_uri(None, "  ")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking_uri() == "http://env:5000"
    assert tracking_uri("http://flag:5000") == "http://flag:5000"


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (None, None, "local"),
        (None, "http://env:5000", "http://env:5000"),
        ("http://flag:5000", "http://env:5000", "http://flag:5000"),
    ],
)
def test_pipeline_run_local_honours_the_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flag: str | None, env: str | None,
    expected: str,
) -> None:  # fmt: skip
    """`roadseg pipeline run --local` used to ignore MLFLOW_TRACKING_URI."""
    seen: dict = {}

    def fake_run_local(params, **kw):
        seen.update(kw)
        raise roadseg.pipeline.run.PipelineFailed("stop here")

    monkeypatch.setattr(roadseg.pipeline.run, "run_local", fake_run_local)
    monkeypatch.chdir(tmp_path)
    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    args = ["pipeline", "run", "--local", *(["--tracking-uri", flag] if flag else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "stop here" in result.output
    if expected == "local":
        expected = f"sqlite:///{tmp_path.resolve() / 'mlruns.db'}"
    assert seen["tracking_uri"] == expected
