"""Learning checks: the U-Net learns synthetic scenes and overfits real BDD100k images.

Single-threaded torch: on a shared, oversubscribed CPU more threads make training far slower.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from roadseg.config import load_params
from roadseg.train.loop import train_model

pytestmark = pytest.mark.slow


def test_unet_learns_synthetic_scenes(tmp_path: Path) -> None:
    from roadseg.data.synth import synthesize_dataset

    data = tmp_path / "synth"
    synthesize_dataset(data, train=24, val=6, test=0, height=64, width=96, seed=0)
    params = load_params(
        None,
        [
            "data.num_workers=0",
            "model.name=unet",  # the original projects' model (the default is the encoder's)
            "model.base_channels=16",
            "train.image_size=[64,96]",
            "train.batch_size=4",
            "train.lr=0.01",
            "train.epochs=40",
            f"train.checkpoint_dir={tmp_path / 'ckpt'}",
        ],
    )
    result = train_model(params, data, tracking_uri=None, progress=False)
    print("synthetic val mIoU", result.best_val["miou"], "epoch", result.best_epoch)
    assert result.best_val["miou"] >= 0.6
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]


# The 4 training images whose rarest class covers the most pixels at 72x128: an overfitting
# check should not hinge on classes a few pixels wide at this resolution.
FOUR = ("00aad4a0-ee8135fe", "00d8944b-e157478b", "00a7ef03-00000000", "00d1c9e3-a7a7075f")


def test_unet_overfits_four_real_images(real_sample: Path, tmp_path: Path) -> None:
    from PIL import Image

    # train = val = the same 4 images (downscaled copies, so decoding is cheap), so the val
    # mIoU is the training-set mIoU
    data = tmp_path / "four"
    for split in ("train", "val"):
        (data / "images/10k" / split).mkdir(parents=True)
        (data / "labels/sem_seg/masks" / split).mkdir(parents=True)
        for s in FOUR:
            with Image.open(real_sample / f"images/10k/train/{s}.jpg") as im:
                im.resize((128, 72), Image.BILINEAR).save(data / f"images/10k/{split}/{s}.png")
            with Image.open(real_sample / f"labels/sem_seg/masks/train/{s}.png") as im:
                im.resize((128, 72), Image.NEAREST).save(
                    data / f"labels/sem_seg/masks/{split}/{s}.png"
                )
    params = load_params(
        None,
        [
            "data.num_workers=0",
            "model.name=unet",  # the original projects' model (the default is the encoder's)
            "model.base_channels=16",
            "train.image_size=[72,128]",
            "train.batch_size=2",
            "train.lr=0.005",
            "train.warmup_epochs=5",
            "train.epochs=150",
            "train.early_stopping_patience=1000",
            "augment.scale_range=[1.0,1.0]",
            "augment.hflip_prob=0.0",
            "loss.name=dice_ce",
            f"train.checkpoint_dir={tmp_path / 'ckpt'}",
        ],
    )
    result = train_model(params, data, tracking_uri=None, progress=False)
    print("4-image train mIoU", result.best_val["miou"], "epoch", result.best_epoch)
    assert result.best_val["miou"] >= 0.8
