"""Training mechanics: resume after a kill, evaluation paths agree, MLflow gets what is promised,
and training survives a dead tracking server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from roadseg.config import load_params
from roadseg.evaluate.segmentation import evaluate_model, evaluate_predictions
from roadseg.models.io import load_checkpoint, load_model
from roadseg.testing import free_port
from roadseg.train.loop import train_model


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from roadseg.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("tiny")
    synthesize_dataset(out, train=6, val=3, test=0, height=40, width=56, seed=1)
    return out


def tiny_params(ckpt: Path, *sets: str):
    return load_params(
        None,
        [
            "data.num_workers=0",
            "model.base_channels=4",
            "train.image_size=[32,48]",
            "train.batch_size=2",
            "train.epochs=3",
            "train.sample_every=2",
            f"train.checkpoint_dir={ckpt}",
            *sets,
        ],
    )


def test_resume_after_a_kill_matches_an_unbroken_run(tiny_data: Path, tmp_path: Path) -> None:
    full = train_model(tiny_params(tmp_path / "a"), tiny_data, tracking_uri=None, progress=False)
    p = tiny_params(tmp_path / "b")
    first = train_model(p, tiny_data, tracking_uri=None, progress=False, max_epochs_this_run=1)
    assert first.epochs_run == 1
    assert load_checkpoint(tmp_path / "b/last.pt")["epoch"] == 1
    resumed = train_model(p, tiny_data, resume=True, tracking_uri=None, progress=False)
    assert resumed.epochs_run == full.epochs_run == 3
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a = load_checkpoint(tmp_path / "a/last.pt")["model"]
    b = load_checkpoint(tmp_path / "b/last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.best_val["miou"] == full.best_val["miou"]


def test_resume_continues_the_same_mlflow_run(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    """`--resume` logs into the run the interrupted training started: same run id, and the metric
    steps follow on (1 before the kill, 2 and 3 after), with the final model logged once."""
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    p = tiny_params(tmp_path / "ck")
    first = train_model(p, tiny_data, tracking_uri=uri, progress=False, max_epochs_this_run=1)
    client = MlflowClient(uri)
    assert client.get_run(first.run_id).info.status == "KILLED" and first.model_uri is None
    assert load_checkpoint(tmp_path / "ck/last.pt")["run_id"] == first.run_id
    resumed = train_model(p, tiny_data, resume=True, tracking_uri=uri, progress=False)
    assert resumed.run_id == first.run_id and resumed.epochs_run == 3
    for key in ("train_loss", "val_miou", "lr"):
        assert [m.step for m in client.get_metric_history(first.run_id, key)] == [1, 2, 3], key
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and resumed.model_uri is not None
    experiment = client.get_experiment_by_name("bdd100k").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [first.run_id]


def test_model_and_pred_dir_evaluation_agree(tiny_data: Path, tmp_path: Path) -> None:
    p = tiny_params(tmp_path / "ck", "train.epochs=1")
    train_model(p, tiny_data, tracking_uri=None, progress=False)
    model, spec, info = load_model(tmp_path / "ck/best.pt")
    assert info["source"] == "checkpoint" and spec.image_size == (32, 48)
    preds = tmp_path / "preds"
    by_model = evaluate_model(model, spec, tiny_data, p, "val", pred_dir=preds, progress=False)
    by_dir = evaluate_predictions(preds, tiny_data, p, "val", progress=False)
    assert by_model == by_dir
    assert set(by_model) >= {"pixel_accuracy", "mean_accuracy", "miou", "mdice", "per_class"}
    # masks are written at the full image resolution, not the training size
    first = sorted(preds.glob("*.png"))[0]
    assert np.asarray(Image.open(first)).shape == (40, 56)

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(first)
    with pytest.raises(ValueError, match=first.name):
        evaluate_predictions(preds, tiny_data, p, "val", progress=False)
    first.unlink()
    with pytest.raises(ValueError, match=f"missing prediction.*{first.name}"):
        evaluate_predictions(preds, tiny_data, p, "val", progress=False)


def test_mlflow_gets_params_metrics_figures_and_model(
    tiny_data: Path, tmp_path: Path, monkeypatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_system_metrics_sampling_interval(0.1)  # a tiny run may last under a second
    mlflow.set_system_metrics_samples_before_logging(1)
    try:
        r = train_model(tiny_params(tmp_path / "ck"), tiny_data, tracking_uri=uri, progress=False)
    finally:
        mlflow.set_system_metrics_sampling_interval(None)
        mlflow.set_system_metrics_samples_before_logging(None)
    assert not r.fell_back and r.model_uri.startswith("models:/m-")
    client = MlflowClient(uri)
    run = client.get_run(r.run_id)
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "bdd100k" and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.info.status == "FINISHED"
    prm = run.data.params
    assert prm["train.epochs"] == "3" and prm["model.base_channels"] == "4"
    assert prm["dataset_version"].startswith("sha256:")
    assert len(prm["git_commit"]) >= 40 and len(prm["params_digest"]) == 16
    assert [m.step for m in client.get_metric_history(r.run_id, "train_loss")] == [1, 2, 3]
    assert len(client.get_metric_history(r.run_id, "val_miou")) == 3
    assert "val_iou/road" in run.data.metrics and "val_mdice" in run.data.metrics
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert sorted(inputs) == ["bdd100k-train", "bdd100k-val"]
    for split in ("train", "val"):
        i = inputs[f"bdd100k-{split}"]
        assert i.dataset.digest == prm["dataset_version"]
        assert [(t.key, t.value) for t in i.tags] == [("mlflow.data.context", split)]
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    arts = {
        a.path
        for d in ("", "confusion_matrix", "samples")
        for a in client.list_artifacts(r.run_id, d)
    }
    assert {"model_spec.json", "confusion_matrix/epoch_002.png", "samples/epoch_002.png"} <= arts
    assert "confusion_matrix/best.png" in arts and "samples/epoch_003.png" in arts

    mlflow.set_tracking_uri(uri)
    model, spec, info = load_model(r.model_uri)
    assert spec.base_channels == 4 and info["run_id"] == r.run_id
    ckpt_model, ckpt_spec, _ = load_model(tmp_path / "ck/best.pt")
    assert ckpt_spec == spec
    x = torch.randn(2, 3, 37, 53)  # any batch and image size
    assert torch.allclose(model(x), ckpt_model(x), atol=1e-5)

    mv = mlflow.register_model(r.model_uri, "roadseg-unet")
    client.set_registered_model_alias("roadseg-unet", "champion", mv.version)
    for u in ("models:/roadseg-unet@champion", f"models:/roadseg-unet/{mv.version}"):
        _, s, i = load_model(u)
        assert s == spec and i["version"] == str(mv.version) and i["run_id"] == r.run_id


def test_dead_tracking_server_falls_back_to_a_local_store(
    tiny_data: Path, tmp_path: Path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    messages: list[str] = []
    dead = f"http://127.0.0.1:{free_port()}"
    p = tiny_params(tmp_path / "ck", "train.epochs=2")
    r = train_model(p, tiny_data, tracking_uri=dead, progress=False, echo=messages.append)
    assert r.fell_back and r.epochs_run == 2
    assert any("unreachable" in m and dead in m for m in messages)
    assert (tmp_path / "ck/last.pt").is_file() and (tmp_path / "ck/best.pt").is_file()
    local = MlflowClient(r.tracking_uri)
    run = local.get_run(r.run_id)
    assert run.data.tags["roadseg.fallback_from"] == dead
    assert len(local.get_metric_history(r.run_id, "train_loss")) == 2
    assert run.data.params["train.epochs"] == "2"
    assert r.model_uri is not None


def test_cli_train_then_evaluate(tiny_data: Path, tmp_path: Path, monkeypatch) -> None:
    import json

    from typer.testing import CliRunner

    from roadseg.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'cli.db'}")
    runner = CliRunner()
    sets = ["--set", "data.num_workers=0", "--set", "model.base_channels=4",
            "--set", "train.image_size=[32,48]", "--set", "train.epochs=1",
            "--set", f"train.checkpoint_dir={tmp_path / 'ck'}"]  # fmt: skip
    res = runner.invoke(app, ["train", "--data-dir", str(tiny_data), "--model", "baseline",
                              "--loss", "ohem", "--json", "train.json", *sets])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "train.json").read_text())
    assert out["epochs_run"] == 1 and out["model_uri"].startswith("models:/m-")
    res = runner.invoke(app, ["evaluate", "--model-uri", out["model_uri"], "--data-dir",
                              str(tiny_data), "--json", "eval.json", *sets])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Mean IoU" in res.output and "logged to MLflow run" in res.output
    scores = json.loads((tmp_path / "eval.json").read_text())
    assert scores["num_images"] == 3 and 0.0 <= scores["miou"] <= 1.0
    res = runner.invoke(app, ["evaluate", "--pred-dir", "nowhere", "--data-dir", str(tiny_data)])
    assert res.exit_code == 1 and "prediction directory not found" in res.output
    res = runner.invoke(app, ["evaluate", "--data-dir", str(tiny_data)])
    assert res.exit_code == 2 and "exactly one" in res.output
