"""Registry: selection, gates, margin and aliases against a temporary SQLite MLflow store."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from roadseg.config import RegisterParams
from roadseg.release.registry import (
    CHALLENGER,
    CHAMPION,
    PROFILE_TAG,
    Candidate,
    check_gates,
    decide_promotion,
    download_reference_profile,
    register_best,
    select_best,
)

PARAMS = RegisterParams(model_name="roadseg-test", min_miou=0.2, class_iou_floor=0.01, margin=0.05)


def _cand(
    loss: str, miou: float, ious: dict[str, float] | None = None, run_id: str = "r"
) -> Candidate:
    per_class = [
        {"name": n, "iou": v, "present": True} for n, v in (ious or {"road": miou}).items()
    ]
    return Candidate(loss, run_id, "models:/m-x", {"miou": miou, "per_class": per_class})


def test_select_best_picks_highest_miou() -> None:
    best = select_best([_cand("wce", 0.3), _cand("dice", 0.5), _cand("ohem", 0.4)])
    assert best.loss == "dice"
    with pytest.raises(ValueError, match="no candidates"):
        select_best([])


def test_gates_min_miou_and_class_floor_ignore_absent_classes() -> None:
    assert check_gates(_cand("wce", 0.5, {"road": 0.9, "sky": 0.1}), PARAMS) == []
    low = check_gates(_cand("wce", 0.1, {"road": 0.2, "pole": 0.0}), PARAMS)
    assert any("minimum" in r for r in low) and any("pole=0.0000" in r for r in low)
    absent = Candidate(
        "wce",
        "r",
        "u",
        {"miou": 0.5, "per_class": [{"name": "pole", "iou": 0.0, "present": False}]},
    )
    assert check_gates(absent, PARAMS) == []


@pytest.mark.parametrize(
    ("miou", "champion", "promoted", "phrase"),
    [
        (0.50, None, True, "first champion"),
        (0.50, 0.40, True, "beats champion"),
        (0.44, 0.40, False, "does not beat"),
        (0.10, None, False, "gates failed"),
    ],
)
def test_promotion_margin(miou: float, champion: float | None, promoted: bool, phrase: str) -> None:
    ok, reason = decide_promotion(_cand("dice", miou), PARAMS, champion)
    assert ok is promoted and phrase in reason


def _logged_candidate(loss: str, miou: float) -> Candidate:
    """A real MLflow run with a logged (tiny) PyTorch model, as training leaves it."""
    with mlflow.start_run(run_name=loss) as run:
        mlflow.log_metric("best_val_miou", miou)
        info = mlflow.pytorch.log_model(
            torch.nn.Conv2d(3, 2, 1),
            name="model",
            serialization_format="pickle",
            pip_requirements=["torch"],
        )
    return Candidate(
        loss,
        run.info.run_id,
        info.model_uri,
        {"miou": miou, "per_class": [{"name": "road", "iou": miou, "present": True}]},
    )


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_name="registry-test")
    monkeypatch.chdir(tmp_path)
    yield uri
    mlflow.set_tracking_uri(None)


def test_register_promotes_then_keeps_champion_when_not_better(store: str) -> None:
    profile = pd.DataFrame({"brightness": [0.3, 0.4], "share_road": [0.5, 0.6]})
    first = [_logged_candidate("wce", 0.40), _logged_candidate("dice", 0.55)]
    tags = {
        "dataset_version": "abc",
        "git_commit": "deadbeef",
        "params_hash": "p1",
        "pipeline_run_id": "j1",
    }
    r1 = register_best(
        first, PARAMS, tracking_uri=store, tags=tags, profile_builder=lambda c: profile
    )
    assert r1.promoted and r1.loss == "dice" and r1.version == "1" and r1.champion_version == "1"

    client = MlflowClient(tracking_uri=store)
    champ = client.get_model_version_by_alias(PARAMS.model_name, CHAMPION)
    assert str(champ.version) == "1" and champ.tags["loss"] == "dice"
    assert champ.tags["params_hash"] == "p1" and champ.tags["promotion"] == "promoted"
    assert "dice" in champ.description and PROFILE_TAG in champ.tags
    got = download_reference_profile(
        PARAMS.model_name, CHAMPION, tracking_uri=store, dst=store.split("///")[1] + ".d"
    )
    assert pd.read_csv(got).shape == (2, 2)

    # Second run: the best (0.57) is not 0.05 better than 0.55 -> champion stays, reason tagged.
    r2 = register_best([_logged_candidate("ohem", 0.57)], PARAMS, tracking_uri=store, tags=tags)
    assert not r2.promoted and r2.champion_version == "1" and r2.previous_champion_version == "1"
    assert client.get_model_version_by_alias(PARAMS.model_name, CHAMPION).version == 1
    challenger = client.get_model_version_by_alias(PARAMS.model_name, CHALLENGER)
    assert str(challenger.version) == "2"
    assert challenger.tags["promotion"] == "rejected"
    assert "does not beat champion 0.5500" in challenger.tags["promotion_reason"]

    # Third run clears the margin -> champion moves.
    r3 = register_best([_logged_candidate("dice_ce", 0.70)], PARAMS, tracking_uri=store, tags=tags)
    assert (
        r3.promoted and client.get_model_version_by_alias(PARAMS.model_name, CHAMPION).version == 3
    )


def test_register_runs_uri_and_gate_failure_without_champion(store: str) -> None:
    cand = _logged_candidate("wce", 0.05)
    runs_uri = Candidate(cand.loss, cand.run_id, f"runs:/{cand.run_id}/model", cand.metrics)
    r = register_best([runs_uri], PARAMS, tracking_uri=store)
    assert not r.promoted and r.champion_version is None and "minimum" in r.reason
    client = MlflowClient(tracking_uri=store)
    assert client.get_model_version(PARAMS.model_name, r.version).source.startswith("models:/m-")
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(PARAMS.model_name, CHAMPION)
