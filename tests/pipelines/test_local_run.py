"""The whole pipeline under kfp.local on tiny synthetic data (slow: minutes on a shared CPU).

Run 1 trains two loss variants and registers the best as champion with a drift profile; run 2
(the weaker variant only, same data and seed) is no better, so champion stays and the version
says why; a dataset that breaks the label rules stops before training and registers nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from roadseg.config import load_params
from roadseg.pipeline.run import PipelineFailed, ensure_experiment, run_local

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

TINY = [
    "synth.train=6",
    "synth.val=2",
    "synth.test=1",
    "synth.height=64",
    "synth.width=96",
    "train.epochs=1",
    "train.batch_size=4",
    "train.image_size=[64,96]",
    "model.base_channels=4",
    "data.num_workers=0",
    "register.min_miou=0.0",  # a 1-epoch model must still pass the gates to become champion
    "register.class_iou_floor=0.0",
]
NAME = "roadseg-unet"


# Run 1 also packages the int8 variant, calibrated on the run's remapped dataset; the gate is
# open (a 1-epoch model's mIoU drop says nothing): the wiring is under test, not the gate.
INT8 = ["package.int8=true", "package.int8_max_miou_drop=1.0"]


def _run(tmp: Path, uri: str, losses: list[str], extra: tuple[str, ...] = (), **kw: object) -> dict:
    overrides = [*TINY, *extra]
    return run_local(load_params(None, overrides), params_file=None, overrides=overrides,
                     loss_variants=losses, tracking_uri=uri, work_dir=tmp / "work", **kw)  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    ensure_experiment(uri, "bdd100k", tmp / "mlartifacts")
    mp = pytest.MonkeyPatch()  # the package step's Bentos go to a store of this test's own
    mp.setenv("BENTOML_HOME", str(tmp / "bentoml"))
    yield tmp, uri
    mp.undo()


@pytest.fixture(scope="module")
def first(store: tuple[Path, str]) -> dict:
    tmp, uri = store
    return _run(tmp, uri, ["wce", "dice"], tuple(INT8))


def test_one_mlflow_run_per_variant_with_metrics(store: tuple[Path, str], first: dict) -> None:
    _, uri = store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bdd100k")
    runs = client.search_runs([exp.experiment_id])
    runs = [r for r in runs if r.data.tags.get("roadseg.role") != "pipeline"]  # the parents
    assert sorted(r.data.tags["roadseg.loss"] for r in runs) == ["dice", "wce"]
    for r in runs:
        assert "best_val_miou" in r.data.metrics and "eval_val_miou" in r.data.metrics
        assert r.data.tags["params_hash"] == first_params_hash(first, client)
    assert {c["loss"] for c in first["candidates"]} == {"wce", "dice"}


def first_params_hash(result: dict, client: MlflowClient) -> str:
    return client.get_model_version(NAME, result["version"]).tags["params_hash"]


def test_best_variant_is_champion_with_drift_profile(store: tuple[Path, str], first: dict) -> None:
    tmp, uri = store
    client = MlflowClient(uri)
    best = max(first["candidates"], key=lambda c: c["miou"])
    assert first["promoted"] and first["loss"] == best["loss"]
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert str(champion.version) == first["version"] == "1"
    assert champion.run_id == best["run_id"]
    tags = champion.tags
    assert tags["loss"] == best["loss"] and tags["promotion"] == "promoted"
    assert {"dataset_version", "git_commit", "pipeline_run_id", "params_hash"} <= set(tags)
    assert tags["drift_reference_profile"].endswith("drift/reference_profile.csv")
    files = client.list_artifacts(champion.run_id, "drift")
    assert [f.path for f in files] == ["drift/reference_profile.csv"]
    # the model card of a real run: its scores, data, confusion matrix (roadseg/release/card.py)
    assert "model_card_error" not in tags and tags["model_card"].endswith("model_card.md")
    card = (Path(client.download_artifacts(champion.run_id, "model_card/model_card.md",
                                           str(tmp))).read_text())  # fmt: skip
    assert f"mIoU {best['miou']:.4f}" in card and tags["dataset_version"] in card
    assert "## Confusion matrix" in card and "| train images | 6 |" in card
    from roadseg.release.registry import download_reference_profile

    profile = download_reference_profile(NAME, "champion", tracking_uri=uri, dst=tmp / "profile")
    import pandas as pd

    df = pd.read_csv(profile)
    assert len(df) == 6 and {"brightness", "share_road"} <= set(df.columns)


def test_second_run_no_better_keeps_champion(store: tuple[Path, str], first: dict) -> None:
    tmp, uri = store
    weaker = min(first["candidates"], key=lambda c: c["miou"])["loss"]
    second = _run(tmp, uri, [weaker])
    assert second["version"] == "2" and not second["promoted"]
    assert second["champion_version"] == "1"
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    v2 = client.get_model_version_by_alias(NAME, "challenger")
    assert str(v2.version) == "2"
    assert v2.tags["promotion"] == "rejected"
    assert "does not beat champion" in v2.tags["promotion_reason"]
    # no new champion, no new Bento: the package step says why
    assert not second["package"]["packaged"]
    assert "champion did not move" in second["package"]["reason"]


def test_champion_is_packaged_and_deploy_skips_locally(
    store: tuple[Path, str], first: dict
) -> None:
    tmp, uri = store
    packaged = first["package"]
    assert packaged["packaged"] and packaged["model_uri"] == f"models:/{NAME}/1"
    assert packaged["serve_command"] == f"bentoml serve {packaged['bento_tag']}"
    # the Bento is in this test's BentoML store, and the registry records it
    name, version = packaged["bento_tag"].split(":")
    assert (tmp / "bentoml" / "bentos" / name / version / "bento.yaml").is_file()
    tags = MlflowClient(uri).get_model_version(NAME, "1").tags
    assert tags["bento_tag"] == packaged["bento_tag"]
    # package.int8: the int8 variant was calibrated on the run's dataset and shipped in the Bento
    assert packaged["int8"].startswith("shipped: mIoU drop "), packaged["int8"]
    models = list((tmp / "bentoml" / "models" / "roadseg-unet").glob("*/model.int8.onnx"))
    assert len(models) == 1, models
    labels = yaml.safe_load((models[0].parent / "model.yaml").read_text())["labels"]
    assert labels["int8"] == "shipped" and labels["int8_calibration"] == "minmax, 6 training images"
    assert (
        not first["deploy"]["deployed"] and "deploy.enabled is false" in first["deploy"]["reason"]
    )


def test_invalid_dataset_stops_before_training(tmp_path: Path) -> None:
    from roadseg.data.synth import synthesize_dataset

    data = tmp_path / "bad"
    synthesize_dataset(data, train=3, val=1, test=0, height=64, width=96, seed=1)
    mask = next((data / "labels/sem_seg/masks/train").glob("*.png"))
    Image.fromarray(np.full((64, 96), 42, np.uint8)).save(mask)  # 42: not a BDD100k train id
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    ensure_experiment(uri, "bdd100k", tmp_path / "mlartifacts")
    with pytest.raises(PipelineFailed, match="validate-labels"):
        _run(tmp_path, uri, ["wce"], data_dir=data)
    log = (tmp_path / "work/pipeline.log").read_text()
    assert "label violation" in log and mask.name in log
    assert "Executing task 'train'" not in log.replace("\x1b[96m", "").replace("\x1b[0m", "")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bdd100k")
    assert client.search_runs([exp.experiment_id]) == []
    assert client.search_registered_models() == []


# --- the data scientist's view (issue 14): checked through the MLflow API on run 1's store ---


def test_experiment_is_a_training_experiment(store: tuple[Path, str], first: dict) -> None:
    exp = MlflowClient(store[1]).get_experiment_by_name("bdd100k")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_every_variant_run_has_its_dataset_inputs(store: tuple[Path, str], first: dict) -> None:
    client = MlflowClient(store[1])
    for cand in first["candidates"]:
        run = client.get_run(cand["run_id"])
        inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
        assert sorted(inputs) == ["bdd100k-train", "bdd100k-val"], cand["loss"]
        for split, entry in inputs.items():
            assert entry.dataset.digest == run.data.params["dataset_version"]
            assert entry.dataset.source_type == "local"
            assert run.data.params["data_dir"] in entry.dataset.source
            assert {t.key: t.value for t in entry.tags} == {
                "mlflow.data.context": split.removeprefix("bdd100k-")
            }


def test_metrics_grouped_per_class_and_curves_per_epoch(
    store: tuple[Path, str], first: dict
) -> None:
    client = MlflowClient(store[1])
    run = client.get_run(first["candidates"][0]["run_id"])
    names = set(run.data.metrics)
    assert {"val_miou", "val_pixel_accuracy", "best_val_miou", "eval_val_miou"} <= names
    assert {"val_iou/road", "val_dice/road", "eval_val_iou/road"} <= names
    # no per-class metric left at the top level (the old val_iou_road form)
    assert not [n for n in names if "/" not in n and n.startswith(("val_iou", "val_dice"))]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_iou/road")] == [1]


def test_parent_run_groups_the_variants(
    store: tuple[Path, str], first: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from roadseg.release import runs

    _, uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # load_table searches the default store
    client = MlflowClient(uri)
    parent = client.get_run(first["parent_run_id"])
    tags = parent.data.tags
    assert tags["roadseg.role"] == "pipeline" and tags["roadseg.pipeline_run_id"]
    assert tags["params_hash"] == first_params_hash(first, client)
    assert tags["dataset_version"] == client.get_model_version(NAME, "1").tags["dataset_version"]
    assert tags["roadseg.decision"] == "promoted"
    kids = {r.info.run_id for r in runs.children(uri, parent)}
    assert kids == {c["run_id"] for c in first["candidates"]}
    arts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {runs.COMPARISON_FILE, runs.CHART_FILE, runs.DECISION_FILE} <= arts
    # read the table artifact itself: `load_table` searches the process-wide default store,
    # which an earlier test in the same process may have pointed elsewhere
    import json

    path = client.download_artifacts(parent.info.run_id, runs.COMPARISON_FILE)
    doc = json.loads(Path(path).read_text())
    table = {c: [row[i] for row in doc["data"]] for i, c in enumerate(doc["columns"])}
    by_loss = dict(zip(table["loss"], table["Mean IoU"], strict=True))
    assert by_loss == {c["loss"]: pytest.approx(c["miou"]) for c in first["candidates"]}


def test_runs_compare_finds_each_pipeline_run(
    store: tuple[Path, str], first: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from roadseg.cli import app

    _, uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    pipeline_id = MlflowClient(uri).get_run(first["parent_run_id"]).data.tags["pipeline_run_id"]
    compare = ["runs", "compare", "--experiment", "bdd100k"]
    out = CliRunner().invoke(app, [*compare, "--pipeline-run", pipeline_id])
    assert out.exit_code == 0, out.output
    for cand in first["candidates"]:
        assert cand["run_id"] in out.stdout and f"{cand['miou']:.4f}" in out.stdout
    latest = CliRunner().invoke(app, compare)
    parents = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("bdd100k").experiment_id],
        "tags.`roadseg.role` = 'pipeline'",
    )
    newest = max(parents, key=lambda r: r.info.start_time)
    assert latest.exit_code == 0 and newest.info.run_id in latest.stdout
