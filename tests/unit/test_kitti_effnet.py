"""KITTI Road's binary model over the ImageNet encoder: `model.kitti_name: unet_effnet_lite0`
builds it for `data.dataset: kitti_road` (two channels, road = 1, as the KITTI measures read
it), it trains with the IoU loss from the ImageNet weights, and its spec records ImageNet's
normalisation; the BDD100k model keeps `model.name`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from roadseg.config import load_params
from roadseg.models.effnet_lite import IMAGENET_MEAN, IMAGENET_STD, load_imagenet_weights
from roadseg.models.io import load_model

KITTI = ["data.dataset=kitti_road", "model.kitti_name=unet_effnet_lite0", "loss.name=iou",
         "model.base_channels=4", "train.image_size=[48,96]", "train.batch_size=2",
         "train.epochs=1", "data.num_workers=0", "augment.blur_prob=0"]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def kitti_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from roadseg.data.kitti import synthesize_kitti

    out = tmp_path_factory.mktemp("kitti")
    synthesize_kitti(out, train=4, val=2, test=0, height=60, width=120, seed=0)
    return out


def test_the_key_picks_the_kitti_model_only() -> None:
    params = load_params(overrides=KITTI)
    assert params.model.name == "unet_effnet_lite0"  # the BDD100k model is untouched
    assert params.model.name_for("kitti_road") == "unet_effnet_lite0"
    assert params.model.name_for("bdd100k") == "unet_effnet_lite0"
    # The defaults: the ImageNet encoder for BDD100k, the plain U-Net for KITTI Road; null
    # kitti_name follows model.name.
    assert load_params().model.name_for("kitti_road") == "unet"
    follow = load_params(overrides=["model.kitti_name=null", "model.name=baseline"]).model
    assert follow.name_for("kitti_road") == follow.name_for("bdd100k") == "baseline"


def test_kitti_model_over_the_imagenet_encoder_trains_and_records_its_normalisation(
    kitti_dir: Path, tmp_path: Path
) -> None:
    from roadseg.evaluate.kitti import road_probabilities
    from roadseg.train.loop import train_model

    params = load_params(overrides=[*KITTI, f"train.checkpoint_dir={tmp_path / 'ckpt'}"])
    result = train_model(params, kitti_dir, tracking_uri=None, progress=False,
                         echo=lambda _line: None)  # fmt: skip
    assert result.history and np.isfinite(result.history[0]["train_loss"])
    model, spec, _ = load_model(tmp_path / "ckpt/last.pt")
    assert (spec.model_name, spec.num_classes) == ("unet_effnet_lite0", 2)
    assert spec.dataset == "kitti_road"
    assert spec.class_names == ("not road", "road") and spec.extra["loss"] == "iou"
    assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert model.head.out_channels == 2
    # Trained from the ImageNet weights: a step moved the encoder a little, not from scratch.
    stem = model.state_dict()["encoder._conv_stem.weight"]
    imagenet = load_imagenet_weights()["_conv_stem.weight"]
    assert not torch.equal(stem, imagenet)
    assert (stem - imagenet).norm() < 0.1 * imagenet.norm()
    image = np.random.default_rng(0).integers(0, 256, (60, 120, 3), dtype=np.uint8)
    (prob,) = road_probabilities(model, [image], spec, "cpu")
    assert prob.shape == (60, 120) and 0 <= prob.min() <= prob.max() <= 1
