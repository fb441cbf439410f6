"""The ImageNet encoder pays on real streets: fine-tuned on the 12 real training images of the
shared BDD100k sample, `unet_effnet_lite0` beats the plain U-Net trained from scratch for the
same number of steps, measured on the 4 real validation images (mIoU, last epoch, not the best).

Single-threaded torch (tests/model/conftest.py); downscaled copies of the images, so decoding
720p JPEGs does not dominate. Seeds fixed; two seeds each, so one lucky run does not decide.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from roadseg.config import load_params
from roadseg.train.loop import train_model

pytestmark = pytest.mark.slow

SIZE = (128, 224)  # (H, W) the networks see; copies are stored at twice that
COMMON = ["data.num_workers=0", f"train.image_size=[{SIZE[0]},{SIZE[1]}]", "train.batch_size=4",
          "train.epochs=8", "train.warmup_epochs=1", "model.base_channels=16",
          "augment.blur_prob=0", "train.sample_every=1000"]  # fmt: skip
# The recipe docs/data-science/real-streets.md gives for each; 8 epochs = 24 steps.
SCRATCH = ["model.name=unet", "train.lr=0.003"]
PRETRAINED = ["model.name=unet_effnet_lite0", "train.lr=0.003"]


@pytest.fixture(scope="module")
def small_sample(real_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real-small")
    h, w = 2 * SIZE[0], 2 * SIZE[1]
    for split in ("train", "val"):
        (out / "images/10k" / split).mkdir(parents=True)
        (out / "labels/sem_seg/masks" / split).mkdir(parents=True)
        for path in sorted((real_sample / "images/10k" / split).glob("*.jpg")):
            with Image.open(path) as im:
                im.convert("RGB").resize((w, h), Image.BILINEAR).save(
                    out / f"images/10k/{split}/{path.stem}.png"
                )
            label = real_sample / f"labels/sem_seg/masks/{split}/{path.stem}.png"
            with Image.open(label) as im:
                im.resize((w, h), Image.NEAREST).save(out / label.relative_to(real_sample))
    return out


def _last_val_miou(data: Path, overrides: list[str], seed: int, ckpt: Path) -> float:
    params = load_params(None, [*COMMON, *overrides, f"train.seed={seed}",
                                f"train.checkpoint_dir={ckpt}"])  # fmt: skip
    result = train_model(params, data, tracking_uri=None, progress=False, echo=lambda _l: None)
    assert result.epochs_run == params.train.epochs
    return result.history[-1]["val_miou"]


def test_pretrained_encoder_beats_scratch_at_equal_steps(small_sample: Path, tmp_path) -> None:
    scores = {
        name: [_last_val_miou(small_sample, arm, seed, tmp_path / f"{name}-{seed}")
               for seed in (0, 1)]
        for name, arm in (("scratch", SCRATCH), ("pretrained", PRETRAINED))
    }  # fmt: skip
    print("real val mIoU at equal steps", scores)
    scratch, pretrained = (sum(scores[k]) / 2 for k in ("scratch", "pretrained"))
    assert pretrained > 1.5 * scratch and pretrained > scratch + 0.04, scores
    assert min(scores["pretrained"]) > max(scores["scratch"]), scores
