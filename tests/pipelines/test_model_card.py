"""Model cards (roadseg/release/card.py): written at registration, checked by content, per
version, against a temporary SQLite MLflow store."""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from roadseg.config import RegisterParams
from roadseg.release.card import CARD_TAG, download_card
from roadseg.release.registry import Candidate, register_best
from tests.pipelines.test_registry import store  # noqa: F401  (the SQLite store fixture)

PARAMS = RegisterParams(model_name="roadseg-card", min_miou=0.1, class_iou_floor=0.2, margin=0.0)
CLASSES = ["road", "sidewalk", "pole"]


def candidate(loss: str, ious: dict[str, float | None], epochs: int) -> Candidate:
    """A logged run as training leaves it: params, spec, evaluation with a confusion matrix."""
    with mlflow.start_run(run_name=loss) as run:
        mlflow.log_params({"num_train": 12, "num_val": 4, "train.epochs": epochs,
                           "train.lr": 0.003})  # fmt: skip
        mlflow.log_dict({"model_name": "unet", "class_names": CLASSES}, "model_spec.json")
        mlflow.log_dict({"miou": 0.5, "confusion_matrix": [[90, 10, 0], [5, 45, 0], [0, 8, 2]]},
                        "evaluation/eval_val.json")  # fmt: skip
        info = mlflow.pytorch.log_model(torch.nn.Conv2d(3, 3, 1), name="model",
                                        serialization_format="pickle", pip_requirements=["torch"])  # fmt: skip
    present = [v for v in ious.values() if v is not None]
    per_class = [{"name": n, "iou": v, "present": v is not None} for n, v in ious.items()]
    return Candidate(loss, run.info.run_id, info.model_uri,
                     {"miou": sum(present) / len(present), "per_class": per_class})  # fmt: skip


def card_of(uri: str, version: str, tmp: Path) -> tuple[str, str]:
    client = MlflowClient(uri, uri)
    mv = client.get_model_version(PARAMS.model_name, version)
    assert mv.tags[CARD_TAG] == f"runs:/{mv.run_id}/model_card/model_card.md"
    folder = download_card(client, mv.run_id, tmp / f"v{version}")
    return (folder / "model_card.md").read_text(), (folder / "model_card.html").read_text()


def test_every_version_gets_its_own_card(store: str, tmp_path: Path) -> None:  # noqa: F811
    tags = {"dataset_version": "sha256:aaaa", "git_commit": "c0ffee", "params_hash": "p1",
            "pipeline_run_id": "kfp-1"}  # fmt: skip
    profile = pd.DataFrame({"brightness": [0.2, 0.4], "share_road": [0.5, 0.7]})
    r1 = register_best([candidate("dice", {"road": 0.91, "sidewalk": 0.55, "pole": 0.05}, 7)],
                       PARAMS, tracking_uri=store, tags=tags, profile_builder=lambda c: profile)  # fmt: skip
    r2 = register_best([candidate("wce", {"road": 0.83, "sidewalk": 0.12, "pole": None}, 9)],
                       PARAMS, tracking_uri=store, tags=tags | {"dataset_version": "sha256:bbbb"})  # fmt: skip
    assert r1.model_card and r2.model_card and r1.model_card != r2.model_card

    md1, html1 = card_of(store, "1", tmp_path)
    md2, _ = card_of(store, "2", tmp_path)
    assert md1.startswith("# Model card: roadseg-card v1")
    for name in CLASSES:
        assert f"| {name} |" in md1
    # v1's scores, data and recipe — none of v2's
    assert "| road | 0.9100 |" in md1 and "| sidewalk | 0.5500 |" in md1
    assert "| dataset version | sha256:aaaa |" in md1 and "| loss | dice |" in md1
    assert "| epochs | 7 |" in md1 and "| train images | 12 |" in md1
    assert "0.8300" not in md1 and "sha256:bbbb" not in md1
    # weaknesses: v1's pole is under the 0.2 floor; v2's sidewalk is, its pole unmeasured
    weak1 = md1.split("## Known weaknesses")[1].split("##")[0]
    assert "pole: IoU 0.0500 < floor 0.2000" in weak1 and "sidewalk" not in weak1
    weak2 = md2.split("## Known weaknesses")[1].split("##")[0]
    assert "sidewalk: IoU 0.1200 < floor 0.2000" in weak2
    assert "not measured (absent from the validation split): pole" in weak2
    assert "| pole | absent |" in md2 and "| loss | wce |" in md2 and "| epochs | 9 |" in md2
    # the confusion matrix, rows normalised; the drift reference; the lineage
    assert "| road | 90.0% | 10.0% | 0.0% |" in md1
    assert "| brightness | 0.3000 | 0.1000 |" in md1 and "| road | 0.600 |" in md1
    assert "| pipeline run | kfp-1 |" in md1 and f"| MLflow run | {r1.run_id} |" in md1
    assert "gates failed" in md1 and "class IoU below floor" in md1  # the promotion decision
    # the HTML says the same, offline: no script, no remote resource
    assert "<td>0.9100</td>" in html1 and "pole: IoU 0.0500 &lt; floor 0.2000" in html1
    assert not re.search(r"(src|href)=|<script|https?://", html1)


def test_a_card_that_cannot_be_built_never_loses_the_registration(
    store: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from roadseg.release import card

    def broken(*_a, **_k):
        raise KeyError("miou")

    monkeypatch.setattr(card, "build_card", broken)
    r = register_best([candidate("dice", {"road": 0.9}, 1)], PARAMS, tracking_uri=store)
    assert r.version == "1" and r.model_card is None
    tags = MlflowClient(store, store).get_model_version(PARAMS.model_name, "1").tags
    assert CARD_TAG not in tags and tags["model_card_error"]


def test_no_weakness_says_so(store: str, tmp_path: Path) -> None:  # noqa: F811
    params = PARAMS.model_copy(update={"class_iou_floor": 0.0})
    register_best([candidate("dice", {"road": 0.9, "sidewalk": 0.3, "pole": 0.2}, 1)], params,
                  tracking_uri=store)  # fmt: skip
    md, _ = card_of(store, "1", tmp_path)
    assert "none: every measured class reaches the floor 0.0000" in md


def test_lineage_links_and_prints_the_card(
    store: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from roadseg.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    r = register_best([candidate("dice", {"road": 0.9, "sidewalk": 0.15, "pole": 0.3}, 3)],
                      PARAMS, tracking_uri=store)  # fmt: skip
    table = CliRunner().invoke(app, ["lineage", f"models:/{PARAMS.model_name}/1"])
    assert table.exit_code == 0, table.output
    assert "model card" in table.output and "/model_card/model_" in "".join(table.output.split())
    printed = CliRunner().invoke(app, ["lineage", f"models:/{PARAMS.model_name}/1", "--card"])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.startswith("# Model card: roadseg-card v1")
    assert "sidewalk: IoU 0.1500 < floor 0.2000" in printed.stdout and r.run_id in printed.stdout
    MlflowClient(store, store).delete_model_version_tag(PARAMS.model_name, "1", CARD_TAG)
    none = CliRunner().invoke(app, ["lineage", f"models:/{PARAMS.model_name}/1", "--card"])
    assert none.exit_code == 2 and "roadseg-cardv1hasnomodelcard" in "".join(none.output.split())
