"""Copy-paste of thin classes (roadseg.data.copy_paste, augment.copy_paste_prob): the pasted
pixels land where they were in their own frame (or mirrored), with their own colours and ids,
and nothing else changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from roadseg.config import DEFAULT_PARAMS, AugmentParams, load_params
from roadseg.data.bdd100k import Sample, read_label
from roadseg.data.copy_paste import class_ids, cut_piece, paste
from roadseg.data.dataset import SegmentationDataset, build_dataset, paste_class_ids
from roadseg.data.transforms import resize_mask

SIGN, PERSON, VEHICLE, ROAD = 6, 10, 11, 0


def frame() -> tuple[np.ndarray, np.ndarray]:
    """A 20x30 frame: grey road, a yellow 3x2 sign top right, a red 4x1 person bottom left, a
    blue vehicle that is not a thin class."""
    image = np.full((20, 30, 3), 90, np.uint8)
    mask = np.full((20, 30), ROAD, np.uint8)
    image[2:4, 24:27], mask[2:4, 24:27] = (220, 220, 0), SIGN
    image[12:16, 3], mask[12:16, 3] = (220, 20, 60), PERSON
    image[15:18, 10:15], mask[15:18, 10:15] = (0, 0, 142), VEHICLE
    image[2, 24] = (255, 255, 255)  # the sign's top-left pixel differs: mirroring must move it
    return image, mask


def test_paste_puts_the_pixels_where_they_were_with_their_colours() -> None:
    source_image, source_mask = frame()
    piece = cut_piece(source_image, source_mask, [SIGN, PERSON])
    target = np.zeros((20, 30, 3), np.uint8), np.full((20, 30), 8, np.uint8)
    before = target[0].copy(), target[1].copy()
    image, mask = paste(*target, piece)

    thin = np.isin(source_mask, [SIGN, PERSON])
    assert (mask[thin] == source_mask[thin]).all() and (image[thin] == source_image[thin]).all()
    assert (mask[~thin] == 8).all() and (image[~thin] == 0).all()  # the vehicle was not cut
    assert tuple(image[2, 24]) == (255, 255, 255)
    assert (target[0] == before[0]).all() and (target[1] == before[1]).all()  # copies


def test_flip_mirrors_the_piece_across_the_frame() -> None:
    source_image, source_mask = frame()
    piece = cut_piece(source_image, source_mask, [SIGN, PERSON])
    image, mask = paste(np.zeros_like(source_image), np.full_like(source_mask, 8), piece, flip=True)
    mirrored = source_mask[:, ::-1]
    assert (mask == np.where(np.isin(mirrored, [SIGN, PERSON]), mirrored, 8)).all()
    assert tuple(image[2, 29 - 24]) == (255, 255, 255)  # the sign's marked pixel, mirrored
    assert (mask[12:16, 26] == PERSON).all() and (mask[12:16, 3] == 8).all()


def test_no_thin_pixel_is_no_piece_and_sizes_must_match() -> None:
    image, mask = frame()
    assert cut_piece(image, mask, [5]) is None  # no traffic light in the frame
    piece = cut_piece(image, mask, [SIGN])
    with pytest.raises(ValueError, match=r"\(20, 30\) frame cannot be pasted into \(20, 31\)"):
        paste(np.zeros((20, 31, 3), np.uint8), np.zeros((20, 31), np.uint8), piece)


def test_class_names_resolve_to_ids_or_a_clear_error() -> None:
    table = ["road", "pole", "traffic sign", "person/rider"]
    assert class_ids(["person/rider", "pole", "pole"], table) == [1, 3]
    with pytest.raises(ValueError, match=r"unknown classes \['persons'\]; the classes are"):
        class_ids(["pole", "persons"], table)


def write_pair(root: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> Sample:
    Image.fromarray(image).save(root / f"{stem}.png")
    Image.fromarray(mask).save(root / f"{stem}_label.png")
    return Sample("train", stem, root / f"{stem}.png", root / f"{stem}_label.png")


def test_a_training_item_gets_another_items_thin_pixels(tmp_path: Path) -> None:
    """Two items, only the second with a sign and a person: with copy_paste_prob 1 and an
    identity geometry, item 0 comes out with item 1's sign and person, in place or mirrored, in
    their colours; with 0 it comes out exactly as without copy-paste (the same random draws)."""
    image, mask = frame()
    plain = np.full_like(image, 90), np.full_like(mask, ROAD)
    samples = [write_pair(tmp_path, "plain", *plain), write_pair(tmp_path, "busy", image, mask)]

    def item(prob: float, paste_ids: tuple[int, ...], seed: int) -> tuple:
        aug = AugmentParams(scale_range=(1.0, 1.0), hflip_prob=0.0, brightness=0.0,
                            contrast=0.0, saturation=0.0, hue=0.0, blur_prob=0.0,
                            copy_paste_prob=prob)  # fmt: skip
        ds = SegmentationDataset(samples, read_label, image_size=(20, 30), mean=[0.0] * 3,
                                 std=[1 / 255] * 3, train=True, augment=aug, seed=seed,
                                 paste_ids=paste_ids)  # fmt: skip
        x, y = ds[0]
        return x.permute(1, 2, 0).round().numpy().astype(np.uint8), y.numpy()

    flips = set()
    for seed in range(8):
        x, y = item(1.0, (SIGN, PERSON), seed)
        flipped = y[2, 29 - 26] == SIGN
        want_mask, want_image = (mask[:, ::-1], image[:, ::-1]) if flipped else (mask, image)
        thin = np.isin(want_mask, [SIGN, PERSON])
        assert (y[thin] == want_mask[thin]).all() and (y[~thin] == ROAD).all()
        assert (x[thin] == want_image[thin]).all() and (x[~thin] == 90).all()
        flips.add(bool(flipped))
    assert flips == {True, False}  # mirrored about half the time
    for seed in range(3):
        off, without = item(0.0, (SIGN, PERSON), seed), item(0.0, (), seed)
        assert (off[0] == without[0]).all() and (off[1] == without[1]).all()
        assert (off[1] == ROAD).all()


def test_params_choose_the_classes_and_only_training_pastes(synth_dir: Path) -> None:
    on = load_params(DEFAULT_PARAMS, overrides=["augment.copy_paste_prob=0.5"])
    assert paste_class_ids(on) == [4, 5, 6, 10]  # pole, traffic light, traffic sign, person/rider
    assert paste_class_ids(load_params(DEFAULT_PARAMS)) == []  # off by default
    kw = {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert build_dataset(synth_dir, on, "train", train=True, **kw).paste_ids == (4, 5, 6, 10)
    assert build_dataset(synth_dir, on, "val", train=False, **kw).paste_ids == ()
    bad = load_params(DEFAULT_PARAMS, overrides=["augment.copy_paste_prob=1",
                                                 "augment.copy_paste_classes=[pole,signs]"])  # fmt: skip
    with pytest.raises(ValueError, match=r"copy_paste_classes: unknown classes \['signs'\]"):
        build_dataset(synth_dir, bad, "train", train=True, **kw)


def test_the_piece_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full dataset would cache ~150 KB a frame in every loader worker: the cache keeps the
    last PIECE_CACHE, and a piece read again after eviction is the same."""
    import roadseg.data.dataset as dataset

    monkeypatch.setattr(dataset, "PIECE_CACHE", 2)
    image, mask = frame()
    samples = [write_pair(tmp_path, f"f{i}", np.roll(image, i, 1), np.roll(mask, i, 1))
               for i in range(4)]  # fmt: skip
    ds = SegmentationDataset(samples, read_label, image_size=(20, 30), mean=[0.0] * 3,
                             std=[1.0] * 3, train=True, paste_ids=(SIGN,))  # fmt: skip
    first = ds.piece(0, (20, 30))
    for i in (1, 2, 3):
        assert (ds.piece(i, (20, 30)).xs == first.xs + i).all()  # each frame's own sign
    assert len(ds._pieces) == 2
    again = ds.piece(0, (20, 30))
    assert again is not first and (again.xs == first.xs).all() and (again.rgb == first.rgb).all()
    half = ds.piece(0, (10, 15))  # another frame size: the label resized, then cut
    ys, xs = np.nonzero(resize_mask(mask, (10, 15)) == SIGN)
    assert half.shape == (10, 15) and (half.ids == SIGN).all()
    assert (half.ys == ys).all() and (half.xs == xs).all() and xs.min() >= 10  # still top right
