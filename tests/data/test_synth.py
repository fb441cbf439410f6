"""Synthetic dataset: exact BDD100k layout, determinism, every class, ignore pixels."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from roadseg.data import bdd100k
from roadseg.data.synth import BDD100K_COLORS, render_scene, synthesize_dataset


def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout(synth_dir):
    assert bdd100k.present_splits(synth_dir) == ["train", "val", "test"]
    for split, n in (("train", 12), ("val", 4)):
        images = sorted((synth_dir / "images/10k" / split).glob("*.jpg"))
        masks = sorted((synth_dir / "labels/sem_seg/masks" / split).glob("*.png"))
        cmaps = sorted((synth_dir / "labels/sem_seg/colormaps" / split).glob("*.png"))
        assert len(images) == len(masks) == len(cmaps) == n
        assert [p.stem for p in images] == [p.stem for p in masks] == [p.stem for p in cmaps]
        with Image.open(images[0]) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (160, 96)
        with Image.open(masks[0]) as m:
            assert m.mode == "L" and m.size == (160, 96)
        with Image.open(cmaps[0]) as c:
            assert c.mode == "P" and c.getpalette()[:57] == [
                v for rgb in BDD100K_COLORS for v in rgb
            ]
            assert np.array_equal(np.asarray(c), np.asarray(Image.open(masks[0])))
    assert len(list((synth_dir / "images/10k/test").glob("*.jpg"))) == 2
    assert not (synth_dir / "labels/sem_seg/masks/test").exists()
    stems = [
        s.stem for split in ("train", "val", "test") for s in bdd100k.list_samples(synth_dir, split)
    ]
    assert len(stems) == len(set(stems))  # no file name in two splits


def test_all_classes_and_ignore_present_with_imbalance(synth_dir):
    counts = np.zeros(256, np.int64)
    for split in ("train", "val"):
        for s in bdd100k.list_pairs(synth_dir, split):
            counts += np.bincount(bdd100k.read_label(s.label).ravel(), minlength=256)
    assert (counts[:19] > 0).all(), f"classes missing: {np.flatnonzero(counts[:19] == 0)}"
    assert counts[255] > 0
    assert set(np.flatnonzero(counts)) <= set(range(19)) | {255}
    # big classes dominate small ones, as in real street scenes
    for big in (0, 2, 10):  # road, building, sky
        for small in (5, 6, 16):  # pole, traffic light, train
            assert counts[big] > 3 * counts[small]


def test_deterministic_for_a_seed(tmp_path):
    kw = dict(train=3, val=1, test=1, height=64, width=96)
    a = synthesize_dataset(tmp_path / "a", seed=7, **kw)
    synthesize_dataset(tmp_path / "b", seed=7, **kw)
    synthesize_dataset(tmp_path / "c", seed=8, **kw)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
    assert a["splits"] == {"train": 3, "val": 1, "test": 1}
    assert sum(a["pixel_counts"]) + a["ignore_pixels"] == 4 * 64 * 96


def test_colour_follows_the_label():
    """Mean colours of sky and road differ clearly, so the labels are learnable from pixels."""
    img, lab = render_scene(120, 200, np.random.default_rng(3))
    sky, road = img[lab == 10].mean(0), img[lab == 0].mean(0)
    assert sky[2] > road[2] + 40  # sky is bluer and brighter
    assert img.dtype == np.uint8 and lab.shape == img.shape[:2]


def test_cli_synth(tmp_path):
    from typer.testing import CliRunner

    from roadseg.cli import app

    out = tmp_path / "ds"
    args = ["data", "synth", "--out", str(out), "--train", "2", "--val", "1", "--test", "0"]
    res = CliRunner().invoke(app, [*args, "--height", "48", "--width", "64", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert bdd100k.present_splits(out) == ["train", "val"]
    res = CliRunner().invoke(app, [*args, "--height", "8"])
    assert res.exit_code == 1 and "too small" in res.output
