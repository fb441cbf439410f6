"""Photometric augmentation (roadseg.data.dataset.photometric): what each jitter does to known
pixels, that it never moves a pixel, and that the training dataset applies it to images only."""

from __future__ import annotations

import numpy as np
import pytest

from roadseg.config import AugmentParams
from roadseg.data.dataset import photometric

OFF = AugmentParams(brightness=0, contrast=0, saturation=0, hue=0, blur_prob=0)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, (12, 16, 3), dtype=np.uint8)


def test_nothing_on_is_the_identity() -> None:
    image = _image()
    assert np.array_equal(photometric(image, OFF, np.random.default_rng(0)), image)


def test_brightness_scales_every_value_by_one_drawn_factor() -> None:
    image = _image()
    aug = OFF.model_copy(update={"brightness": 0.3})
    factor = np.random.default_rng(5).uniform(0.7, 1.3)
    out = photometric(image, aug, np.random.default_rng(5))
    want = np.clip(image.astype(np.float32) * factor, 0, 255).round()
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 1
    assert factor != pytest.approx(1.0, abs=0.01)


def test_saturation_and_hue_leave_greys_grey() -> None:
    grey = np.repeat(np.arange(0, 240, 20, dtype=np.uint8)[:, None, None], 3, axis=2)
    aug = OFF.model_copy(update={"saturation": 0.9, "hue": 0.5})
    for seed in range(5):
        out = photometric(grey, aug, np.random.default_rng(seed))
        assert np.abs(out.astype(int) - grey.astype(int)).max() <= 1


def test_hue_turns_red_into_another_colour_and_keeps_its_place() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[2:4, 5:7] = (200, 20, 20)
    aug = OFF.model_copy(update={"hue": 0.5})
    rng = np.random.default_rng(3)
    assert abs(np.random.default_rng(3).uniform(-0.5, 0.5)) > 0.1
    out = photometric(image, aug, rng)
    assert (out[image.sum(axis=2) == 0] == 0).all()  # black stays black, nothing moved
    red = out[2:4, 5:7].reshape(-1, 3)
    assert not (red[:, 0] > 2 * red[:, 1:].max(axis=1)).all()  # no longer red


def test_blur_only_when_drawn_and_never_moves_the_brightest_pixel() -> None:
    image = np.full((15, 15, 3), 40, np.uint8)
    image[7, 9] = 250
    blurred = photometric(image, OFF.model_copy(update={"blur_prob": 1.0}),
                          np.random.default_rng(0))  # fmt: skip
    assert blurred[7, 9].max() < 250 and blurred[7, 10].max() > 40  # spread to its neighbours
    assert np.unravel_index(blurred[..., 0].argmax(), (15, 15)) == (7, 9)


def test_the_training_dataset_jitters_images_not_masks(params, synth_dir) -> None:
    from roadseg.data.dataset import build_dataset

    norm = {"mean": [0.0] * 3, "std": [1.0] * 3}
    plain = params.model_copy(update={"augment": params.augment.model_copy(update={
        "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0, "blur_prob": 0})})  # fmt: skip
    jittered = build_dataset(synth_dir, params, "train", train=True, **norm)
    same = build_dataset(synth_dir, plain, "train", train=True, **norm)
    (a, ma), (b, mb) = jittered[3], same[3]
    assert np.array_equal(ma.numpy(), mb.numpy())  # the same crop, flip and mask
    assert not np.allclose(a.numpy(), b.numpy())
