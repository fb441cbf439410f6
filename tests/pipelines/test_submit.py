"""Submitting to Kubeflow Pipelines (a strict fake `kfp.Client`: `create_autospec` binds every call
to the real signatures), the CLI's success and error paths, and the comparison rows of a
registration result."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from unittest.mock import create_autospec

import kfp
import pytest
import yaml
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.pipeline.run import cron_6_fields, failure_cause, submit_pipeline
from roadseg.release.runs import comparison_rows

REPO = Path(__file__).resolve().parents[2]
IR = REPO / "pipelines/training_pipeline.yaml"


def strict_client() -> kfp.Client:
    """A kfp.Client double: a call with a wrong name or argument raises TypeError/AttributeError
    as the real client would, and answers carry the ids the real responses do."""
    client = create_autospec(kfp.Client, instance=True)
    client.create_experiment.return_value = SimpleNamespace(experiment_id="exp-1")
    client.create_recurring_run.return_value = SimpleNamespace(recurring_run_id="rr-1")
    client.create_run_from_pipeline_package.return_value = SimpleNamespace(run_id="run-1")
    return client


def test_strict_client_rejects_calls_the_real_client_would() -> None:
    client = strict_client()
    with pytest.raises(TypeError):
        client.create_run_from_pipeline_package("p.yaml", argumentz={})
    with pytest.raises(AttributeError):
        client.submit_run("p.yaml")


def test_submit_recurring_run_with_schedule() -> None:
    client = strict_client()
    args = {"loss_variants": ["wce", "dice"], "synthetic": True}
    done = submit_pipeline(client, IR, experiment="nightly", arguments=args, run_name="r",
                           schedule="0 3 * * *")  # fmt: skip
    assert done == {"kind": "recurring run", "id": "rr-1"}
    client.create_experiment.assert_called_once_with("nightly")
    kwargs = client.create_recurring_run.call_args.kwargs
    assert kwargs["experiment_id"] == "exp-1" and kwargs["cron_expression"] == "0 0 3 * * *"
    assert kwargs["pipeline_package_path"] == str(IR) and kwargs["params"] == args
    assert kwargs["service_account"] == "roadseg-pipeline" and kwargs["job_name"] == "r"
    client.create_run_from_pipeline_package.assert_not_called()


def test_submit_single_run_without_schedule() -> None:
    client = strict_client()
    done = submit_pipeline(client, IR, experiment="e", arguments={}, run_name="r")
    assert done == {"kind": "run", "id": "run-1"}
    client.create_experiment.assert_not_called()
    client.create_recurring_run.assert_not_called()
    call = client.create_run_from_pipeline_package.call_args
    assert call.args == (str(IR),) and call.kwargs["experiment_name"] == "e"


def test_cli_submit_success_passes_data_revision_and_repo_as_run_arguments(monkeypatch) -> None:
    client = strict_client()
    client_cls = create_autospec(kfp.Client, return_value=client)
    monkeypatch.setattr(kfp, "Client", client_cls)
    monkeypatch.chdir(REPO)  # the default --package path is relative to the repo
    res = CliRunner().invoke(app, ["pipeline", "submit", "--host", "http://kfp.example:8888",
                                   "--data-rev", "v1.2", "--data-repo", "https://git.example/d.git",
                                   "--loss", "wce", "--loss", "dice", "--experiment", "exp",
                                   "--set", "train.epochs=2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    client_cls.assert_called_once_with(host="http://kfp.example:8888")
    call = client.create_run_from_pipeline_package.call_args
    args = call.kwargs["arguments"]
    assert args["data_rev"] == "v1.2" and args["data_repo"] == "https://git.example/d.git"
    assert args["synthetic"] is False and args["loss_variants"] == ["wce", "dice"]
    assert args["overrides"] == ["train.epochs=2"]
    assert call.kwargs["experiment_name"] == "exp" and call.kwargs["run_name"] == "roadseg-training"
    assert "submitted run run-1 to http://kfp.example:8888" in " ".join(res.output.split())
    # every argument is a parameter the compiled pipeline declares
    spec = next(yaml.safe_load_all(IR.read_text()))  # the pipeline spec; then platform config
    declared = spec["root"]["inputDefinitions"]["parameters"]
    assert set(args) <= set(declared), set(args) - set(declared)


def test_cli_submit_host_defaults_to_pipeline_host(monkeypatch) -> None:
    """`pipeline.host` in params is the endpoint when --host is not given; without either, a
    one-line error."""
    client_cls = create_autospec(kfp.Client, return_value=strict_client())
    monkeypatch.setattr(kfp, "Client", client_cls)
    monkeypatch.chdir(REPO)
    res = CliRunner().invoke(app, ["pipeline", "submit", "--set", "pipeline.host=http://kfp.p:80"])
    assert res.exit_code == 0, res.output
    client_cls.assert_called_once_with(host="http://kfp.p:80")
    res = CliRunner().invoke(app, ["pipeline", "submit"])
    assert res.exit_code == 2 and "pipeline.host" in res.output


def test_submit_rejects_missing_package_and_bad_cron(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="roadseg pipeline compile"):
        submit_pipeline(strict_client(), tmp_path / "nope.yaml", experiment="e", arguments={},
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


def test_a_failed_local_run_names_the_last_exception_of_its_log() -> None:
    # Two variants interleave their output; the cause is the last exception printed, in plain text.
    log = (
        "11:54:16 - INFO - Executing task 'train'\n"
        "[wce] epoch 1/1: train loss 2.7  val mIoU 0.0006\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 3, in <module>\n'
        "ValueError: an earlier, handled error\n"
        "\x1b[31mTraceback (most recent call last):\x1b[0m\n"
        "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked\n"
        "11:54:33 - ERROR - Task 'train' finished with status FAILURE\n"
    )
    assert failure_cause(log) == (
        "sqlalchemy.exc.OperationalError: (sqlite3.OperationalError) database is locked"
    )
    assert failure_cause("11:54:16 - INFO - Executing task 'train'\n") == ""
