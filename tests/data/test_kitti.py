"""KITTI Road reader: colour ground truth → binary mask, deterministic train/val split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from roadseg.data import kitti


@pytest.fixture(scope="module")
def kitti_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("kitti")
    kitti.synthesize_kitti(out, train=16, val=4, test=2, height=40, width=64, seed=0)
    return out


def test_decode_label():
    rgb = np.array([[[255, 0, 255], [255, 0, 0], [0, 0, 0], [0, 255, 0], [250, 0, 250]]], np.uint8)
    # only the exact KITTI colours count; a near-magenta is void, not road
    assert kitti.decode_label(rgb).tolist() == [[1, 0, 255, 255, 255]]


def test_category_of():
    assert [kitti.category_of(s) for s in ("um_000001", "umm_road_000002", "uu_9", "xx_1")] == [
        "um", "umm", "uu", ""
    ]  # fmt: skip


def test_synth_is_deterministic(tmp_path, kitti_dir):
    kitti.synthesize_kitti(tmp_path, train=16, val=4, test=2, height=40, width=64, seed=0)
    for rel in ("training/image_2/um_000000.png", "training/gt_image_2/um_road_000000.png"):
        assert (tmp_path / "data_road" / rel).read_bytes() == (
            kitti_dir / "data_road" / rel
        ).read_bytes()
    with pytest.raises(ValueError, match="too small"):
        kitti.synthesize_kitti(tmp_path, train=1, val=1, test=0, height=8, width=64, seed=0)


def test_read_label_from_png(tmp_path):
    gt = np.zeros((4, 6, 3), np.uint8)
    gt[:2] = (255, 0, 255)
    gt[2] = (255, 0, 0)
    Image.fromarray(gt).save(tmp_path / "um_road_000001.png")
    lab = kitti.read_label(tmp_path / "um_road_000001.png")
    assert lab.dtype == np.uint8 and lab.shape == (4, 6)
    assert (lab[:2] == 1).all() and (lab[2] == 0).all() and (lab[3] == 255).all()


def test_split_is_deterministic_and_disjoint(kitti_dir):
    train = kitti.list_pairs(kitti_dir, "train")
    val = kitti.list_pairs(kitti_dir, "val")
    assert (len(train), len(val)) == (16, 4)  # synth picks stems so the hash split gives these
    assert not {s.stem for s in train} & {s.stem for s in val}
    assert [s.stem for s in train] == [
        s.stem for s in kitti.list_pairs(kitti_dir / "data_road", "train")
    ]
    for s in train + val:
        assert (
            s.label.name == s.stem.rsplit("_", 1)[0] + "_road_" + s.stem.rsplit("_", 1)[1] + ".png"
        )
        assert kitti.split_of(s.stem) == s.split
    stems = [f"um_{i:06d}" for i in range(1000)]
    share = sum(kitti.split_of(s) == "val" for s in stems) / len(stems)
    assert 0.15 < share < 0.25


def test_labels_are_binary_with_void(kitti_dir):
    s = kitti.list_pairs(kitti_dir, "train")[0]
    lab = kitti.read_label(s.label)
    img = np.asarray(Image.open(s.image))
    assert lab.shape == img.shape[:2]
    assert set(np.unique(lab)) == {0, 1, 255}


def test_test_split_and_unknown_split(kitti_dir):
    test = kitti.list_samples(kitti_dir, "test")
    assert len(test) == 2 and all(s.label is None for s in test)
    assert kitti.list_pairs(kitti_dir, "test") == []
    with pytest.raises(ValueError, match="unknown KITTI split"):
        kitti.list_pairs(kitti_dir, "dev")
