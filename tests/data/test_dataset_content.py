"""Pixel content of the data path: RGB images, labels aligned with them, the 19 -> 14 table by
hand, the official colormap palette, and augmentation moving image and mask together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from roadseg.config import AugmentParams
from roadseg.data import bdd100k
from roadseg.data.dataset import augment_pair, build_dataset
from roadseg.data.remap import remap_mask

# BDD100k's 19 train ids -> the 14 merged class names (README: car+truck+bus -> vehicle,
# wall+fence -> wall/fence, person+rider -> person/rider, train -> ignore), written out by hand.
MERGE = {
    "road": "road", "sidewalk": "sidewalk", "building": "building", "wall": "wall/fence",
    "fence": "wall/fence", "pole": "pole", "traffic light": "traffic light",
    "traffic sign": "traffic sign", "vegetation": "vegetation", "terrain": "terrain",
    "sky": "sky", "person": "person/rider", "rider": "person/rider", "car": "vehicle",
    "truck": "vehicle", "bus": "vehicle", "train": None, "motorcycle": "motorcycle",
    "bicycle": "bicycle",
}  # fmt: skip
SOURCE = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
          "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
          "bus", "train", "motorcycle", "bicycle"]  # fmt: skip
SKY, SKY_SOURCE, VEG = 9, 10, 7  # merged ids of sky and vegetation; sky's BDD100k train id


def test_lookup_table_matches_the_merge_written_by_hand(params) -> None:
    assert [c.name for c in params.data.source_classes] == SOURCE
    merged = [c.name for c in params.data.class_table]
    lut = params.data.lookup_table()
    src = np.arange(256, dtype=np.uint8)[None]
    out = remap_mask(src, lut)[0]
    for sid, name in enumerate(SOURCE):
        want = 255 if MERGE[name] is None else merged.index(MERGE[name])
        assert out[sid] == want, name
    assert (out[19:] == 255).all()


def _chart(h: int, w: int) -> np.ndarray:
    im = np.zeros((h, w, 3), np.uint8)
    im[:, : w // 3] = (250, 10, 10)  # red left third
    im[:, w // 3 :] = (10, 200, 30)  # green
    im[h // 2 :, w // 2 :] = (20, 30, 240)  # blue bottom right
    return im


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_image_returns_rgb_source_pixels(tmp_path: Path, suffix: str) -> None:
    src = _chart(48, 64)
    path = tmp_path / f"a{suffix}"
    Image.fromarray(src).save(path, quality=95, subsampling=0)  # 4:4:4: no chroma blur
    out = bdd100k.read_image(path).astype(int)
    err = np.abs(out - src.astype(int))
    if suffix == ".png":
        assert err.max() == 0
    assert err.mean() < 3
    assert np.abs(out[:, :, ::-1] - src.astype(int)).mean() > 50  # BGR would be far off
    for y, x in [(4, 4), (4, 40), (40, 60)]:  # inside each patch
        assert err[y, x].max() <= 10, (y, x, out[y, x])


def test_synthetic_item_colours_follow_their_labels(synth_dir: Path, params) -> None:
    """Synthetic sky is light blue (135, 180, 235), vegetation green (55, 125, 40): through the
    dataset's own reader, pixels labelled so have that channel order and sky is at the top."""
    ds = build_dataset(synth_dir, params, "train", train=False, mean=[0.0] * 3, std=[1.0] * 3)
    sky, veg, rows = [], [], []
    for i in range(4):
        image, mask = ds.load(i)
        sky.append(image[mask == SKY].reshape(-1, 3))
        veg.append(image[mask == VEG].reshape(-1, 3))
        rows.append(np.nonzero(mask == SKY)[0].mean() / mask.shape[0])
    s, v = np.concatenate(sky).mean(0), np.concatenate(veg).mean(0)
    assert s[2] > s[0] + 50 and s[2] > s[1], s  # B > R: not read as BGR
    assert v[1] > v[0] + 30 and v[1] > v[2] + 30, v
    assert np.mean(rows) < 0.4  # sky in the upper part: not flipped upside down
    x, y = ds[0]  # the normalised tensor keeps the channel order (std 1, mean 0: x = rgb / 255)
    assert float(x[2][y == SKY].mean()) == pytest.approx(s[2] / 255, abs=0.1)
    assert x[2][y == SKY].mean() > x[0][y == SKY].mean() + 0.15


def test_real_sample_sky_is_blue_and_colormaps_use_the_official_palette(
    real_sample: Path, params
) -> None:
    """Over the 16 real images the sky averages (130, 175, 209); read as BGR it would be red-heavy.
    Each colormap PNG pixel is the official colour of its mask's train id."""
    palette = np.zeros((256, 3), np.uint8)
    palette[:19] = [c.color for c in params.data.source_classes]
    total, count = np.zeros(3), 0
    for split in ("train", "val"):
        for s in bdd100k.list_pairs(real_sample, split):
            image, mask = bdd100k.read_image(s.image), bdd100k.read_label(s.label)
            total += image[mask == SKY_SOURCE].astype(np.float64).sum(0)
            count += int((mask == SKY_SOURCE).sum())
            cmap = real_sample / bdd100k.COLORMAP_DIR / split / f"{s.stem}.png"
            with Image.open(cmap) as im:
                assert (np.asarray(im.convert("RGB")) == palette[mask]).all(), s.stem
    mean = total / count
    assert mean[2] > mean[0] + 40, mean


def _coded(h: int, w: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """A mask of constant blocks with distinct ids and an image whose colour encodes the id."""
    ids = (np.arange(h // block)[:, None] * (w // block) + np.arange(w // block)[None]) % 200
    mask = np.kron(ids, np.ones((block, block), int))
    image = np.stack([mask, 255 - mask, (mask * 7) % 256], -1).astype(np.uint8)
    return image, mask.astype(np.uint8)


def test_flip_moves_image_and_mask_together() -> None:
    image, mask = _coded(24, 40, 4)
    aug = AugmentParams(scale_range=(1.0, 1.0), hflip_prob=1.0)
    im, m = augment_pair(image, mask, (24, 40), aug, np.random.default_rng(0), 255)
    assert (m == mask[:, ::-1]).all()  # flipped (prob 1), not cropped elsewhere
    assert (im == image[:, ::-1]).all()
    no = AugmentParams(scale_range=(1.0, 1.0), hflip_prob=0.0)
    im, m = augment_pair(image, mask, (24, 40), no, np.random.default_rng(0), 255)
    assert (m == mask).all() and (im == image).all()


@pytest.mark.parametrize("scale", [0.5, 2.0, 1.5])
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_scale_crop_and_flip_keep_every_pixel_paired(scale: float, flip: float) -> None:
    """Wherever the mask holds an id (away from block edges the bilinear image blurs), the
    image holds that id's colour; padding is ignore in the mask and black in the image."""
    image, mask = _coded(64, 96, 16)
    aug = AugmentParams(scale_range=(scale, scale), hflip_prob=flip)
    for seed in range(4):
        im, m = augment_pair(image, mask, (64, 96), aug, np.random.default_rng(seed), 255)
        pad = m == 255
        assert pad.any() == (scale < 1)
        assert (im[pad] == 0).all()
        inner = np.zeros_like(pad)
        inner[2:-2, 2:-2] = True
        for dy in (-2, 0, 2):
            for dx in (-2, 0, 2):
                inner &= np.roll(m, (dy, dx), (0, 1)) == m
        inner &= ~pad
        assert inner.sum() > 0.15 * (~pad).sum()
        want = np.stack([m, 255 - m, (m.astype(int) * 7) % 256], -1)
        assert np.abs(im[inner].astype(int) - want[inner]).max() <= 1
        # the flip is real: block ids grow left to right unless flipped
        row = m[m.shape[0] // 2]
        row = row[row != 255].astype(int)
        assert (np.diff(row) >= 0).all() if flip == 0.0 else (np.diff(row) <= 0).all()


def test_eval_items_are_resized_with_labels_aligned(synth_dir: Path, params) -> None:
    """Eval items: the mask is the nearest-neighbour resize (pixel centres, by hand) of the
    label, and the image's sky pixels are where the mask says sky."""
    ds = build_dataset(synth_dir, params, "val", train=False, mean=[0.0] * 3, std=[1.0] * 3)
    _, mask = ds.load(0)
    x, y = ds[0]
    (h, w), (sh, sw) = params.train.image_size, mask.shape
    rows = np.floor((np.arange(h) + 0.5) * sh / h).astype(int)
    cols = np.floor((np.arange(w) + 0.5) * sw / w).astype(int)
    assert (y.numpy() == mask[rows][:, cols]).all()
    sky = (y == SKY).numpy()
    assert sky.any() and (~sky).any()
    blue_minus_red = (x[2] - x[0]).numpy()
    assert blue_minus_red[sky].mean() > blue_minus_red[~sky].mean() + 0.1
