"""The ImageNet normalisation of `unet_effnet_lite0` survives every way a model travels: logged to
MLflow and loaded back with `roadseg.models.io.load_model`, and packaged into a Bento and loaded
with `roadseg.models.bento.load_packaged_model`. After each trip, serving's preprocessing of a
real image gives exactly the tensor training fed the network, and that tensor is the RGB image
standardised by ImageNet's mean/std, not 0..1 scaling nor BGR order (both checked by content).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from roadseg.config import load_params
from roadseg.data.bdd100k import read_image
from roadseg.inference.predict import prepare
from roadseg.models.effnet_lite import IMAGENET_MEAN, IMAGENET_STD
from roadseg.models.io import build_from_spec, load_model, log_model
from roadseg.models.spec import ModelSpec
from roadseg.train.setup import build_data, setup_runtime

REPO = Path(__file__).resolve().parents[2]
NAME = "roadseg-effnet-test"
EFFNET = ["model.name=unet_effnet_lite0", "model.base_channels=4", "train.image_size=[64,112]"]


@pytest.fixture(scope="module")
def trained(real_sample: Path) -> tuple[ModelSpec, torch.Tensor, np.ndarray]:
    """Training's spec for the effnet model on the real sample, the tensor training's validation
    set feeds the network for the first real validation image, and that raw image."""
    params = load_params(overrides=EFFNET)
    data = build_data(params, real_sample, setup_runtime("cpu"))
    image = read_image(data.val_ds.samples[0].image)
    return data.spec, data.val_ds[0][0], image


@pytest.fixture(scope="module")
def registered(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, torch.nn.Module]:
    """The effnet model logged with `log_model` and registered in a temporary sqlite store."""
    import mlflow

    spec = trained[0]
    tmp = tmp_path_factory.mktemp("mlflow")
    tracking = f"sqlite:///{tmp / 'mlruns.db'}"
    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment("spec-roundtrip")
    torch.manual_seed(0)
    model = build_from_spec(spec)
    with mlflow.start_run():
        info = log_model(model, spec, registered_model_name=NAME)
    return tracking, model, str(info.registered_model_version)


def _assert_imagenet_preprocessing(spec: ModelSpec, trained, where: str) -> None:
    _, fed_in_training, image = trained
    assert spec.model_name == "unet_effnet_lite0", where
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD, where
    served = prepare(image, spec)
    torch.testing.assert_close(served, fed_in_training, rtol=0, atol=0, msg=where)
    # Content, computed here independently: RGB channel c is (x / 255 - mean[c]) / std[c].
    from PIL import Image

    h, w = spec.image_size
    rgb = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR), dtype=np.float32)
    expected = (rgb / 255 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    expected = torch.from_numpy(expected).permute(2, 0, 1)
    torch.testing.assert_close(served, expected, rtol=0, atol=1e-5, msg=where)
    # ... which plain 0..1 scaling and BGR order would both miss by far (a street is not grey).
    assert (served - expected.flip(0)).abs().mean() > 0.05, f"{where}: RGB vs BGR"
    assert (served - torch.from_numpy(rgb / 255).permute(2, 0, 1)).abs().mean() > 0.5, where


def test_training_records_imagenet_normalisation(trained) -> None:
    _assert_imagenet_preprocessing(trained[0], trained, "training")


def test_mlflow_round_trip_keeps_the_normalisation_and_weights(trained, registered) -> None:
    import mlflow

    tracking, model, version = registered
    mlflow.set_tracking_uri(tracking)
    loaded, spec, _ = load_model(f"models:/{NAME}/{version}")
    assert spec == trained[0]
    _assert_imagenet_preprocessing(spec, trained, "MLflow")
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


LOAD_FROM_BENTO = """
import json, sys, torch
from pathlib import Path
from roadseg.models.bento import load_packaged_model
bento = next(Path(sys.argv[1]).glob("bentos/roadseg/*/bento.yaml")).parent
model, spec, info = load_packaged_model(bento_dir=bento)
Path(sys.argv[2]).write_text(json.dumps(spec.to_dict()))
torch.save(model.state_dict(), sys.argv[3])
"""


@pytest.mark.slow
def test_packaged_bento_keeps_the_normalisation_and_weights(trained, registered, tmp_path) -> None:
    """`roadseg package` then `load_packaged_model`, in processes of their own: BentoML fixes its
    home (BENTOML_HOME) once per process."""
    tracking, model, version = registered
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "BENTOML_HOME": str(tmp_path / "bh")}
    for cmd in (
        [sys.executable, "-m", "roadseg.cli", "package", "--model-uri",
         f"models:/{NAME}/{version}"],
        [sys.executable, "-c", LOAD_FROM_BENTO, str(tmp_path / "bh"), str(tmp_path / "spec.json"),
         str(tmp_path / "weights.pt")],
    ):  # fmt: skip
        proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{cmd[:4]}:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    spec = ModelSpec.from_dict(json.loads((tmp_path / "spec.json").read_text()))
    assert spec == trained[0]
    _assert_imagenet_preprocessing(spec, trained, "Bento")
    weights = torch.load(tmp_path / "weights.pt", weights_only=True)
    for k, a in model.state_dict().items():
        torch.testing.assert_close(a, weights[k], rtol=0, atol=0, msg=k)
