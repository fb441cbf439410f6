"""Parent runs (`roadseg.release.runs`) and `roadseg runs compare` against a temporary SQLite store.

Two hand-made variant runs stand in for a pipeline's training runs; the registration result is
written by hand, so every number the table and chart show is known in advance. The whole
pipeline is covered by tests/pipelines/test_local_run.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.release import runs

EXP = "runs-test"


def _per_class(road: float, sky: float | None) -> list[dict]:
    return [
        {"name": "road", "iou": road, "present": True},
        {"name": "sky", "iou": sky, "present": sky is not None},
    ]


def _pipeline(client: MlflowClient, uri: str, pipeline_id: str, promoted: bool) -> tuple:
    """Two variant runs and their parent; returns (result, candidates, parent id)."""
    exp_id = client.get_experiment_by_name(EXP).experiment_id
    cands = []
    for loss, road, sky in (("wce", 0.5, 0.25), ("dice", 0.75, None)):
        run = client.create_run(exp_id, run_name=loss, tags={"roadseg.loss": loss})
        client.set_terminated(run.info.run_id)
        cands.append({"loss": loss, "run_id": run.info.run_id, "model_uri": "models:/m-x",
                      "metrics": {"miou": road if sky is None else (road + sky) / 2,
                                  "per_class": _per_class(road, sky)}})  # fmt: skip
    result = {
        "model_name": "roadseg-unet", "version": "1", "loss": "dice",
        "run_id": cands[1]["run_id"], "miou": 0.75, "promoted": promoted,
        "reason": "beats champion v0 by 0.1" if promoted else "does not beat champion v1",
        "champion_version": "1", "previous_champion_version": None, "profile_uri": None,
        "candidates": [
            {"loss": c["loss"], "run_id": c["run_id"], "model_uri": c["model_uri"],
             "miou": c["metrics"]["miou"], "pixel_accuracy": 0.9, "mean_accuracy": None,
             "mdice": 0.8}
            for c in cands
        ],
    }  # fmt: skip
    tags = {"pipeline_run_id": pipeline_id, "dataset_version": "sha256:abc",
            "params_hash": "0123456789abcdef", "git_commit": "deadbeef"}  # fmt: skip
    parent = runs.log_parent_run(result, cands, tracking_uri=uri, experiment=EXP, tags=tags)
    return result, cands, parent


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, MlflowClient]:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(uri)
    client.create_experiment(EXP, artifact_location=(tmp_path / "art").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri, client


def test_parent_run_nests_variants_and_carries_table_chart_decision(store) -> None:
    uri, client = store
    result, cands, parent_id = _pipeline(client, uri, "kfp-run-1", promoted=True)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("pipeline-")
    tags = parent.data.tags
    assert tags["roadseg.role"] == "pipeline" and tags["roadseg.pipeline_run_id"] == "kfp-run-1"
    assert tags["dataset_version"] == "sha256:abc" and tags["params_hash"] == "0123456789abcdef"
    assert tags["roadseg.decision"] == "promoted"
    assert tags["roadseg.decision_reason"] == "beats champion v0 by 0.1"
    assert "roadseg-unet v1 (dice, val mIoU 0.7500) promoted" in tags["mlflow.note.content"]
    assert parent.data.params["loss_variants"] == "wce,dice"
    assert parent.data.metrics["best_val_miou"] == 0.75
    # both variants nested under the parent, found through the tag the UI uses
    kids = runs.children(uri, parent)
    assert sorted(r.data.tags["roadseg.loss"] for r in kids) == ["dice", "wce"]
    assert {c["run_id"] for c in cands} == {r.info.run_id for r in kids}
    # table artifact: the same rows comparison_rows gives, loaded back through MLflow
    exp_id = parent.info.experiment_id
    table = client.load_table(exp_id, runs.COMPARISON_FILE, run_ids=[parent_id])
    assert table["loss"].tolist() == ["wce", "dice"]
    assert table["Mean IoU"].tolist() == [pytest.approx(0.375), pytest.approx(0.75)]
    assert table["champion"].tolist() == [False, True]
    assert runs.load_registration(uri, parent_id) == result


def test_per_class_chart_has_one_bar_per_variant_and_class(store, tmp_path: Path) -> None:
    uri, client = store
    _, _, parent_id = _pipeline(client, uri, "kfp-run-1", promoted=True)
    png = client.download_artifacts(parent_id, runs.CHART_FILE, str(tmp_path))
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[0] > 200 and image.shape[1] > 400
    variants = [
        {"loss": "wce", "metrics": {"per_class": _per_class(0.5, 0.25)}},
        {"loss": "dice", "metrics": {"per_class": _per_class(0.75, None)}},
    ]
    fig = runs.per_class_iou_figure(variants)
    bars = [(p.get_x(), p.get_height()) for p in fig.axes[0].patches]
    heights = [h for _, h in sorted(bars)]
    # x order: road/wce, road/dice, sky/wce, sky/dice (absent: NaN, no bar drawn)
    assert heights[:3] == [0.5, 0.75, 0.25] and np.isnan(heights[3])


def test_find_parent_latest_by_pipeline_run_and_by_id(store) -> None:
    uri, client = store
    _, _, first = _pipeline(client, uri, "kfp-run-1", promoted=True)
    time.sleep(0.01)  # start times are in ms: keep the two parents ordered
    _, _, second = _pipeline(client, uri, "kfp-run-2", promoted=False)
    assert runs.find_parent(uri, EXP).info.run_id == second
    assert runs.find_parent(uri, EXP, pipeline_run_id="kfp-run-1").info.run_id == first
    assert runs.find_parent(uri, EXP, parent_run_id=first).info.run_id == first
    with pytest.raises(ValueError, match="no parent run for pipeline run nope"):
        runs.find_parent(uri, EXP, pipeline_run_id="nope")
    child = runs.children(uri, client.get_run(first))[0].info.run_id
    with pytest.raises(ValueError, match="is not a pipeline run"):
        runs.find_parent(uri, EXP, parent_run_id=child)
    with pytest.raises(ValueError, match="no experiment"):
        runs.find_parent(uri, "missing")


def test_runs_compare_cli_prints_the_stored_table(store) -> None:
    uri, client = store
    r1, _, first = _pipeline(client, uri, "kfp-run-1", promoted=True)
    time.sleep(0.01)
    _, _, second = _pipeline(client, uri, "kfp-run-2", promoted=False)
    cli = CliRunner()
    latest = cli.invoke(app, ["runs", "compare", "--experiment", EXP])
    assert latest.exit_code == 0, latest.output
    assert "pipeline run kfp-run-2" in latest.output and second in latest.output
    assert "not promoted" in latest.output and "does not beat champion v1" in latest.output
    by_id = cli.invoke(app, ["runs", "compare", "--experiment", EXP, "--pipeline-run", "kfp-run-1"])
    assert by_id.exit_code == 0, by_id.output
    assert "★ champion" in by_id.output and "0.3750" in by_id.output and "0.7500" in by_id.output
    for c in r1["candidates"]:
        assert c["run_id"] in by_id.output
    by_parent = cli.invoke(app, ["runs", "compare", "--experiment", EXP, "--parent", first])
    assert by_parent.stdout == by_id.stdout
    bad = cli.invoke(app, ["runs", "compare", "--experiment", EXP, "--parent", "0" * 32])
    assert bad.exit_code == 1 and "no MLflow run" in bad.output
    both = cli.invoke(app, ["runs", "compare", "--parent", first, "--pipeline-run", "x"])
    assert both.exit_code == 2


def test_run_link_points_at_the_run_page() -> None:
    assert (
        runs.run_link("http://mlflow:5000/", "3", "abc")
        == "http://mlflow:5000/#/experiments/3/runs/abc"
    )
    local = runs.run_link("sqlite:///x.db", "3", "abc")
    assert "mlflow ui --backend-store-uri sqlite:///x.db" in local
    assert local.endswith("http://127.0.0.1:5000/#/experiments/3/runs/abc")
