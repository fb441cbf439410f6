"""Submitting to Kubeflow Pipelines (a recording fake `kfp.Client`), the CLI's error paths, and the
comparison rows of a registration result."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.pipeline import comparison_rows, cron_6_fields, submit_pipeline

REPO = Path(__file__).resolve().parents[2]
IR = REPO / "pipelines/training_pipeline.yaml"


class RecordingClient:
    """Records the calls `submit_pipeline` makes, answering like kfp.Client does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def create_experiment(self, name: str) -> Any:
        self.calls.append(("create_experiment", {"name": name}))
        return SimpleNamespace(experiment_id="exp-1")

    def create_recurring_run(self, **kwargs: Any) -> Any:
        self.calls.append(("create_recurring_run", kwargs))
        return SimpleNamespace(recurring_run_id="rr-1")

    def create_run_from_pipeline_package(self, pipeline_file: str, **kwargs: Any) -> Any:
        self.calls.append(("create_run", {"pipeline_file": pipeline_file, **kwargs}))
        return SimpleNamespace(run_id="run-1")


def test_submit_recurring_run_with_schedule() -> None:
    client = RecordingClient()
    args = {"loss_variants": ["wce", "dice"], "synthetic": True}
    done = submit_pipeline(client, IR, experiment="nightly", arguments=args, run_name="r",
                           schedule="0 3 * * *")  # fmt: skip
    assert done == {"kind": "recurring run", "id": "rr-1"}
    assert client.calls[0] == ("create_experiment", {"name": "nightly"})
    name, kwargs = client.calls[1]
    assert name == "create_recurring_run"
    assert kwargs["experiment_id"] == "exp-1" and kwargs["cron_expression"] == "0 0 3 * * *"
    assert kwargs["pipeline_package_path"] == str(IR) and kwargs["params"] == args
    assert kwargs["service_account"] == "roadseg-pipeline"


def test_submit_single_run_without_schedule() -> None:
    client = RecordingClient()
    done = submit_pipeline(client, IR, experiment="e", arguments={}, run_name="r")
    assert done == {"kind": "run", "id": "run-1"}
    assert [c[0] for c in client.calls] == ["create_run"]
    assert client.calls[0][1]["experiment_name"] == "e"


def test_submit_rejects_missing_package_and_bad_cron(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="roadseg pipeline compile"):
        submit_pipeline(RecordingClient(), tmp_path / "nope.yaml", experiment="e", arguments={},
                        run_name="r")  # fmt: skip
    with pytest.raises(ValueError, match="5 or 6 fields"):
        cron_6_fields("every night")
    assert cron_6_fields("*/5 * * * * *") == "*/5 * * * * *"


def test_cli_submit_unreachable_host_is_one_clear_line() -> None:
    result = CliRunner().invoke(app, ["pipeline", "submit", "--host", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "could not submit to http://127.0.0.1:9" in result.output
    # A clean exit, not an unhandled exception (whose traceback typer would print). Not a text
    # search for "Traceback": a background thread of an earlier test may log into this output.
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output.split("--- Logging error ---")[0]


def test_cli_run_needs_local_and_an_existing_dataset(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pipeline", "run"])
    assert result.exit_code == 2 and "--local" in result.output
    result = CliRunner().invoke(
        app, ["pipeline", "run", "--local", "--data-dir", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "dataset directory not found" in result.output


def test_comparison_rows_mark_the_champion() -> None:
    scores = {"pixel_accuracy": 0.9, "mean_accuracy": 0.5, "miou": 0.4, "mdice": 0.5}
    result = {
        "run_id": "b",
        "promoted": True,
        "candidates": [
            {"loss": "wce", "run_id": "a", **scores},
            {"loss": "dice", "run_id": "b", **scores, "miou": 0.6},
        ],
    }
    rows = comparison_rows(result)
    assert [r["champion"] for r in rows] == [False, True]
    assert rows[1]["Mean IoU"] == 0.6 and rows[0]["Pixel Accuracy"] == 0.9
    assert [r["champion"] for r in comparison_rows(result | {"promoted": False})] == [False, False]
