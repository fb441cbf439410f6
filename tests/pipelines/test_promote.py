"""`roadseg promote`: the alias moves only through the gates (quality and shadow evidence), the
refusal names each failed gate and changes nothing; against a temporary SQLite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.config import RegisterParams
from roadseg.release.evidence import (
    AGREEMENT_TAG,
    IMAGES_TAG,
    combine,
    read_evidence,
    record_summary,
)
from roadseg.release.promote import PromotionError, promote
from roadseg.release.registry import CHALLENGER, CHAMPION, Candidate, register_best

NAME = "roadseg-promote-test"
PARAMS = RegisterParams(model_name=NAME, min_miou=0.2, class_iou_floor=0.01, margin=0.05)
SHADOW = PARAMS.model_copy(update={"shadow_min_images": 100, "shadow_min_agreement": 0.9})


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_name="promote-test")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    mlflow.set_tracking_uri(None)


def _register(store: str, loss: str, miou: float, road_iou: float) -> str:
    """A registered version as the pipeline leaves it: run, logged model, evaluation JSON."""
    per_class = [{"name": "road", "iou": road_iou, "present": True},
                 {"name": "sky", "iou": None, "present": False}]  # fmt: skip
    with mlflow.start_run(run_name=loss) as run:
        mlflow.log_metric("best_val_miou", miou)
        mlflow.log_dict({"miou": miou, "per_class": per_class}, "evaluation/eval_val.json")
        info = mlflow.pytorch.log_model(torch.nn.Conv2d(3, 2, 1), name="model",
                                        serialization_format="pickle", pip_requirements=["torch"])  # fmt: skip
    cand = Candidate(loss, run.info.run_id, info.model_uri, {"miou": miou, "per_class": per_class})
    return register_best([cand], PARAMS, tracking_uri=store).version


@pytest.fixture
def two_versions(store: str) -> MlflowClient:
    """v1 champion (0.55); v2 challenger only (0.57 does not clear the 0.05 margin)."""
    assert _register(store, "dice", 0.55, 0.6) == "1"
    assert _register(store, "ohem", 0.57, 0.6) == "2"
    client = MlflowClient(tracking_uri=store)
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == 1
    assert client.get_model_version_by_alias(NAME, CHALLENGER).version == 2
    return client


def test_evidence_is_the_images_weighted_mean_of_every_source() -> None:
    ev = combine({"a": {"images": 60, "agreement": 0.95}, "b": {"images": 40, "agreement": 0.80}})
    assert ev.images == 100 and ev.agreement == pytest.approx(0.89)
    assert combine({}).agreement is None
    # per-source tags win over the aggregate; an unreadable source is skipped
    tags = {"shadow.src.a": json.dumps({"images": 10, "agreement": 0.5}), "shadow.src.b": "{oops",
            IMAGES_TAG: "999", AGREEMENT_TAG: "0.99"}  # fmt: skip
    assert (read_evidence(tags).images, read_evidence(tags).agreement) == (10, 0.5)
    assert read_evidence({IMAGES_TAG: "7", AGREEMENT_TAG: "0.75"}).agreement == 0.75
    assert read_evidence({}).images == 0 and read_evidence({IMAGES_TAG: "x"}).images == 0


def test_refused_without_shadow_evidence_names_each_gate_and_changes_nothing(
    two_versions: MlflowClient, store: str
) -> None:
    r = promote(f"models:/{NAME}@challenger", SHADOW, tracking_uri=store, by="tester")
    assert not r.promoted and r.version == "2" and r.previous_champion == "1"
    assert r.failed == ["shadow images 0 < minimum 100",
                        "shadow agreement: none recorded (minimum 0.9000)"]  # fmt: skip
    assert "val mIoU 0.5700 >= minimum 0.2000" in r.passed
    assert two_versions.get_model_version_by_alias(NAME, CHAMPION).version == 1
    assert "promoted_by" not in two_versions.get_model_version(NAME, "2").tags


def test_shadow_evidence_from_two_workers_then_promotion_moves_the_alias(
    two_versions: MlflowClient, store: str
) -> None:
    client = two_versions
    record_summary(client, NAME, "2", "pod-a/123", {"images": 60, "agreement": 0.95, "dropped": 3})
    r = promote(f"models:/{NAME}@challenger", SHADOW, tracking_uri=store)
    assert r.failed == ["shadow images 60 < minimum 100"]  # agreement 0.95 passes on its own
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == 1

    # A second worker's summary is added, not overwritten: 110 images at 0.9045
    ev = record_summary(client, NAME, "2", "pod-b/7", {"images": 50, "agreement": 0.85})
    assert ev.images == 110 and ev.agreement == pytest.approx((57 + 42.5) / 110)
    tags = client.get_model_version(NAME, "2").tags
    assert tags[IMAGES_TAG] == "110" and tags["shadow.dropped"] == "3"
    assert float(tags[AGREEMENT_TAG]) == pytest.approx(0.904545, abs=1e-6)
    assert "shadow.src.pod-a-123" in tags and "shadow.src.pod-b-7" in tags

    r = promote(f"models:/{NAME}@challenger", SHADOW, tracking_uri=store, by="tester")
    assert r.promoted and not r.failed and r.previous_champion == "1" and r.by == "tester"
    assert "shadow agreement 0.9045 >= minimum 0.9000 (over 110 images)" in r.passed
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == 2
    tags = client.get_model_version(NAME, "2").tags
    assert tags["promoted_by"] == "tester" and tags["promoted_from"] == "v1"
    assert tags["promotion"] == "promoted" and tags["promoted_at"].endswith("Z")
    assert tags["promotion_reason"].startswith("roadseg promote: val mIoU 0.5700")
    old = client.get_model_version(NAME, "1").tags
    assert old["replaced_by"] == "v2" and old["replaced_at"] == tags["promoted_at"]

    again = promote(f"models:/{NAME}/2", SHADOW, tracking_uri=store)
    assert not again.promoted and "already the champion" in again.summary()


def test_quality_gates_refuse_a_weak_version(store: str) -> None:
    _register(store, "dice", 0.55, 0.6)
    weak = _register(store, "wce", 0.10, 0.005)  # under min_miou and its road IoU under the floor
    r = promote(f"models:/{NAME}/{weak}", PARAMS, tracking_uri=store)
    assert not r.promoted
    assert r.failed == ["val mIoU 0.1000 < minimum 0.2000",
                        "class IoU below floor 0.0100: road=0.0050"]  # fmt: skip
    assert MlflowClient(tracking_uri=store).get_model_version_by_alias(NAME, CHAMPION).version == 1


def test_unknown_or_malformed_uri_raises(store: str) -> None:
    _register(store, "dice", 0.55, 0.6)
    for bad in (
        f"models:/{NAME}@nobody",
        f"models:/{NAME}/9",
        "runs:/abc/model",
        f"models:/{NAME}",
    ):
        with pytest.raises(PromotionError):
            promote(bad, PARAMS, tracking_uri=store)


def test_cli_exit_codes_and_lines(two_versions: MlflowClient, store: str, tmp_path: Path) -> None:
    runner = CliRunner()
    uri = f"models:/{NAME}@challenger"
    sets = ["--set", f"register.model_name={NAME}", "--set", "register.shadow_min_images=100"]
    refused = runner.invoke(app, ["promote", uri, *sets])
    assert refused.exit_code == 1, refused.output
    assert "gate failed: shadow images 0 < minimum 100" in refused.output
    assert f"{NAME} v2 not promoted (1 gate(s) failed); champion stays v1" in refused.output

    unknown = runner.invoke(app, ["promote", f"models:/{NAME}@nobody"])
    assert unknown.exit_code == 2 and "no such registered version" in unknown.output

    record_summary(two_versions, NAME, "2", "w", {"images": 100, "agreement": 0.9})
    out = tmp_path / "decision.json"
    done = runner.invoke(app, ["promote", uri, *sets, "--by", "ci", "--json", str(out)])
    assert done.exit_code == 0, done.output
    assert f"{NAME} v2 -> champion (was v1), by ci at" in done.output
    assert json.loads(out.read_text())["promoted"] is True
    assert two_versions.get_model_version_by_alias(NAME, CHAMPION).version == 2


def test_service_shadow_summary_is_the_evidence_promote_reads(
    two_versions: MlflowClient, store: str, tmp_path: Path
) -> None:
    """The serving side's reporter (roadseg.serve.shadow.mlflow_reporter) writes what the gate
    reads: a runner over a stand-in challenger for v2 logs its summary at shutdown."""
    from types import SimpleNamespace

    import numpy as np

    from roadseg.inference.predict import Prediction
    from roadseg.serve.shadow import ShadowRunner, mlflow_reporter

    mask = np.tile(np.array([0, 0, 0, 1, 1, 1, 1, 1], np.uint8), (4, 1))  # mirror agrees on 2/8

    class Mirror:
        spec = SimpleNamespace(class_names=["road", "sky"])

        def predict_now(self, images):
            return [Prediction(np.fliplr(im[..., 0]), 1.0, {}) for im in images]

    v2 = two_versions.get_model_version(NAME, "2")
    meta = {"model_name": NAME, "version": "2", "run_id": v2.run_id}
    runner = ShadowRunner(lambda: (Mirror(), meta), share=1.0, uri=f"models:/{NAME}@challenger",
                          champion={"model_name": NAME, "version": "1"}, class_names=["road", "sky"],
                          queue_size=64, reporter=mlflow_reporter("pod-x"))  # fmt: skip
    assert runner.start().wait_loaded(10) == "on"
    image = np.repeat(mask[..., None], 3, -1)
    for _ in range(12):
        runner.offer([image], [Prediction(mask, 1.0, {})])
    runner.close(timeout=10)
    assert runner.stats.images == 12

    tags = two_versions.get_model_version(NAME, "2").tags
    assert tags[IMAGES_TAG] == "12" and float(tags[AGREEMENT_TAG]) == 0.25
    assert json.loads(tags["shadow.src.pod-x"])["champion"] == "1"
    local = two_versions.download_artifacts(v2.run_id, "shadow/pod-x.json", str(tmp_path))
    shares = json.loads(Path(local).read_text())["class_shares"]
    # mirroring moves the pixels, not their counts: the same shares, a quarter of the pixels agree
    assert shares == {"champion": {"road": 0.375, "sky": 0.625},
                      "challenger": {"road": 0.375, "sky": 0.625}}  # fmt: skip

    low = SHADOW.model_copy(update={"shadow_min_images": 10})
    r = promote(f"models:/{NAME}@challenger", low, tracking_uri=store)
    assert r.failed == ["shadow agreement 0.2500 < minimum 0.9000 (over 12 images)"]
    ok = low.model_copy(update={"shadow_min_agreement": 0.2})
    assert promote(f"models:/{NAME}@challenger", ok, tracking_uri=store).promoted
