"""Drift that acts (roadseg/monitor/retrain.py): the pure decision, then `roadseg drift
--on-drift retrain` against a temporary SQLite MLflow store with the pipeline start faked
(`create_autospec` of `run_local`: no training runs here)."""

from __future__ import annotations

import json
from pathlib import Path
from unittest.mock import create_autospec

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.monitor.retrain import (
    DECISION_TAG,
    EPISODE_TAG,
    RETRAIN_AT_TAG,
    RETRAIN_DATA_TAG,
    RETRAIN_EPISODE_TAG,
    EpisodeState,
    decide,
    has_new_data,
    in_cooldown,
    local_dataset_versions,
)
from roadseg.release.registry import PROFILE_TAG
from tests.unit.test_drift_cli import monitor_log, rows

HOUR = 3600.0
NOW = 1_800_000_000.0


def state(**kw) -> EpisodeState:
    return EpisodeState(**({"champion_dataset_version": "sha256:old"} | kw))


def act(drifted: bool, st: EpisodeState, data: tuple[str, ...] = ("sha256:new",),
        mode: str = "retrain", now: float = NOW):  # fmt: skip
    return decide(drifted, st, current_dataset=data, on_drift=mode, cooldown_hours=24, now=now)


def test_new_data_means_a_version_neither_the_champion_nor_the_last_run_had() -> None:
    assert has_new_data(("sha256:new",), state())
    assert not has_new_data(("sha256:old",), state())
    assert not has_new_data(("dvc:abc", "sha256:old"), state())  # same data, other spelling
    assert not has_new_data(("sha256:new",), state(retrain_dataset_version="sha256:new"))
    assert not has_new_data((), state())  # unknown: nothing to learn


def test_cooldown_counts_from_the_last_start() -> None:
    assert not in_cooldown(state(), NOW, 24)
    assert in_cooldown(state(retrain_started_at=NOW - 23 * HOUR), NOW, 24)
    assert not in_cooldown(state(retrain_started_at=NOW - 25 * HOUR), NOW, 24)
    assert not in_cooldown(state(retrain_started_at=NOW - HOUR), NOW, 0)


def test_drift_with_new_data_starts_once_and_claims_the_episode() -> None:
    d = act(True, state())
    assert d.start and d.episode.startswith("drift-")
    assert d.tags[RETRAIN_EPISODE_TAG] == d.episode and d.tags[RETRAIN_DATA_TAG] == "sha256:new"
    assert d.tags[RETRAIN_AT_TAG] == f"{NOW:.0f}" and d.tags[EPISODE_TAG] == d.episode
    # the next hourly check of the same episode: nothing, even with other new data
    after = EpisodeState.from_tags(d.tags | {"dataset_version": "sha256:old"})
    again = act(True, after, ("sha256:newer",), now=NOW + HOUR)
    assert again.action == "episode_started" and not again.start


@pytest.mark.parametrize(
    ("drifted", "st", "data", "mode", "action", "phrase"),
    [
        (False, state(episode="drift-x"), ("sha256:new",), "retrain", "none", "no drift"),
        (True, state(), ("sha256:new",), "alert", "alert", "alert only"),
        (True, state(), ("sha256:old",), "retrain", "no_new_data",
         "drift, no new labelled data since sha256:old"),
        (True, state(retrain_started_at=NOW - 2 * HOUR, retrain_episode="drift-old"),
         ("sha256:new",), "retrain", "cooldown", "cooldown 24 h"),
    ],
)  # fmt: skip
def test_no_run_unless_drift_new_data_and_no_cooldown(drifted, st, data, mode, action,
                                                      phrase) -> None:  # fmt: skip
    d = act(drifted, st, data, mode)
    assert d.action == action and not d.start and phrase in d.reason
    assert d.tags[DECISION_TAG] == d.reason


def test_a_clean_check_closes_the_episode_and_the_next_drift_opens_another() -> None:
    first = act(True, state(), ("sha256:old",))
    assert first.action == "no_new_data"
    clean = act(False, EpisodeState.from_tags(first.tags), now=NOW + HOUR)
    assert clean.tags[EPISODE_TAG] == ""
    reopened = act(True, EpisodeState.from_tags(clean.tags), now=NOW + 2 * HOUR)
    assert reopened.episode != first.episode


# --- the CLI against a SQLite MLflow store ----------------------------------------------------

NAME = "roadseg-drift-test"


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A champion version whose run holds the reference profile, trained on `data/`."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.txt").write_text("v1")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri, uri)
    exp = client.create_experiment("drift", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    (tmp_path / "reference_profile.csv").write_text(pd.DataFrame(rows(80)).to_csv(index=False))
    client.log_artifact(run.info.run_id, str(tmp_path / "reference_profile.csv"), "drift")
    client.create_registered_model(NAME)
    mv = client.create_model_version(NAME, f"{run.info.artifact_uri}/model", run.info.run_id,
                                     tags={"dataset_version": local_dataset_versions(data)[0],
                                           PROFILE_TAG: "x"})  # fmt: skip
    client.set_registered_model_alias(NAME, "champion", mv.version)
    yield {"client": client, "run_id": run.info.run_id, "data": data, "tmp": tmp_path}
    mlflow.set_tracking_uri(None)


def drift(served: dict, log: Path, *extra: str):
    return CliRunner().invoke(app, ["drift", "--reference", f"models:/{NAME}@champion",
                                    "--current", str(log), "--out", "out",
                                    "--on-drift", "retrain", "--data-dir", "data",
                                    "--set", "drift.cooldown_hours=0", *extra])  # fmt: skip


def test_hourly_checks_over_a_lasting_drift_start_exactly_one_run(served, monkeypatch) -> None:
    from roadseg.pipeline import run as pipeline_run

    fake = create_autospec(pipeline_run.run_local, return_value={
        "model_name": NAME, "version": "2", "promoted": False, "parent_run_id": "p1"})  # fmt: skip
    monkeypatch.setattr(pipeline_run, "run_local", fake)
    client, tmp = served["client"], served["tmp"]
    drifted_log = monitor_log(tmp / "monitoring", rows(60, seed=1, shift=3.0), version="1")

    # 1. drift, the dataset is the champion's: recorded, no run
    r = drift(served, drifted_log)
    assert r.exit_code == 1, r.output
    tags = client.get_model_version(NAME, "1").tags
    assert tags[DECISION_TAG].startswith("drift, no new labelled data since sha256:")
    assert fake.call_count == 0
    # the report is on the version's run, under drift/<timestamp>/
    (stamp,) = [a.path for a in client.list_artifacts(served["run_id"], "drift") if a.is_dir]
    assert {a.path.rsplit("/", 1)[1] for a in client.list_artifacts(served["run_id"], stamp)} == {
        "drift_report.html", "drift_summary.json"}  # fmt: skip
    summary = client.download_artifacts(served["run_id"], f"{stamp}/drift_summary.json", str(tmp))
    assert json.loads(Path(summary).read_text())["drifted"] is True

    # 2. new labelled data: exactly one run, with the data dir it was found in
    (served["data"] / "labels.txt").write_text("v2")
    r = drift(served, drifted_log)
    assert r.exit_code == 1, r.output
    assert fake.call_count == 1
    assert Path(fake.call_args.kwargs["data_dir"]) == Path("data")
    tags = client.get_model_version(NAME, "1").tags
    assert tags[RETRAIN_EPISODE_TAG] == tags[EPISODE_TAG] != ""
    assert "registered=roadseg-drift-test v2" in tags["retrain_run"]

    # 3. the next check, same episode, no cooldown configured: still one run
    r = drift(served, drifted_log)
    assert r.exit_code == 1 and fake.call_count == 1, r.output
    assert "already started a run" in client.get_model_version(NAME, "1").tags[DECISION_TAG]

    # 4. traffic back to normal: the episode closes, nothing starts
    clean = monitor_log(tmp / "clean", rows(60), version="1")
    r = drift(served, clean)
    assert r.exit_code == 0 and fake.call_count == 1, r.output
    assert client.get_model_version(NAME, "1").tags[EPISODE_TAG] == ""


def test_a_failed_start_frees_the_episode_and_exits_2(served, monkeypatch) -> None:
    from roadseg.pipeline import run as pipeline_run

    fake = create_autospec(pipeline_run.run_local,
                           side_effect=pipeline_run.PipelineFailed("train-op failed"))  # fmt: skip
    monkeypatch.setattr(pipeline_run, "run_local", fake)
    (served["data"] / "labels.txt").write_text("v2")
    r = drift(served, monitor_log(served["tmp"] / "m", rows(60, seed=1, shift=3.0), version="1"))
    assert r.exit_code == 2 and "train-op failed" in r.output, r.output
    tags = served["client"].get_model_version(NAME, "1").tags
    assert tags[RETRAIN_EPISODE_TAG] == "" and "did not start" in tags[DECISION_TAG]
    assert fake.call_count == 1


def test_retrain_needs_a_registered_reference(tmp_path: Path) -> None:
    ref = tmp_path / "ref.csv"
    pd.DataFrame(rows(80)).to_csv(ref, index=False)
    log = monitor_log(tmp_path / "m", rows(30))
    r = CliRunner().invoke(app, ["drift", "--reference", str(ref), "--current", str(log),
                                 "--out", str(tmp_path / "out"), "--on-drift", "retrain"])  # fmt: skip
    assert r.exit_code == 2 and "needs--referencemodels:/" in "".join(r.output.split()), r.output


def test_an_empty_monitoring_log_exits_2_with_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("monitoring").mkdir()
    Path("monitoring/serve-0.jsonl").write_text("")
    (tmp_path / "ref.csv").write_text(pd.DataFrame(rows(80)).to_csv(index=False))
    r = CliRunner().invoke(app, ["drift", "--reference", "ref.csv", "--current", "monitoring",
                                 "--out", "out"])  # fmt: skip
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines == ["error: empty monitoring log: monitoring holds no served images"]
    assert not Path("out/drift.prom").exists()
