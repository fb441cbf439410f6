"""KITTI Road through the whole local pipeline, started as a user would from the CLI (slow).

`roadseg pipeline run --local --set data.dataset=kitti_road` on synthetic KITTI data: validate →
remap → train the default variant (iou) → evaluate with the KITTI measures → register under
`roadseg-kitti-road`, leaving the BDD100k model name untouched.
"""

from __future__ import annotations

import os

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from roadseg.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

TINY = [
    "data.dataset=kitti_road",
    "synth.train=6",
    "synth.val=3",
    "synth.test=1",
    "synth.height=32",
    "synth.width=64",
    "train.epochs=1",
    "train.batch_size=3",
    "train.image_size=[32,64]",
    "model.base_channels=8",
    "register.min_miou=0.0",  # a 1-epoch model must still pass the gates to become champion
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    tmp = tmp_path_factory.mktemp("kitti-pipeline")
    uri = f"sqlite:///{tmp / 'mlruns.db'}"
    args = ["pipeline", "run", "--local", "--work-dir", str(tmp / "work"), "--tracking-uri", uri]
    for item in TINY:
        args += ["--set", item]
    cwd = os.getcwd()
    os.chdir(tmp)  # the CLI puts mlartifacts/ in the working directory
    try:
        res = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    log = tmp / "work/pipeline.log"
    assert res.exit_code == 0, res.output + (log.read_text()[-3000:] if log.is_file() else "")
    return uri, res.output


def test_registers_the_kitti_champion_under_its_own_name(run: tuple[str, str]) -> None:
    uri, output = run
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("roadseg-kitti-road", "champion")
    assert str(champion.version) == "1" and champion.tags["loss"] == "iou"
    with pytest.raises(MlflowException):
        client.get_registered_model("roadseg-unet")  # the BDD100k name is never touched
    assert "roadseg-kitti-road v1 (iou): promoted to champion" in " ".join(output.split())


def test_default_variant_and_kitti_measures_logged(run: tuple[str, str]) -> None:
    uri, _ = run
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("kitti_road")
    runs = [r for r in client.search_runs([exp.experiment_id]) if "roadseg.loss" in r.data.tags]
    assert [r.data.tags["roadseg.loss"] for r in runs] == ["iou"]  # kitti_loss_variants default
    m = runs[0].data.metrics
    for key in ("eval_val_kitti_maxf", "eval_val_kitti_ap", "eval_val_kitti_fpr", "eval_val_miou"):
        assert 0.0 <= m[key] <= 1.0, key
    # precision, recall and MaxF at one operating point agree: F = 2PR / (P + R)
    p, r = m["eval_val_kitti_precision"], m["eval_val_kitti_recall"]
    assert m["eval_val_kitti_maxf"] == pytest.approx(2 * p * r / (p + r), abs=1e-6)
    assert any(k.startswith("eval_val_kitti_maxf/") for k in m)  # per category
