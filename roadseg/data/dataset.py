"""Torch datasets over a raw BDD100k dir, a `data remap` output dir, or KITTI Road.

The source is detected, not configured twice:
- a directory holding `remap.json` (written by `roadseg data remap`): masks are already merged ids
  (for KITTI Road: 0 not road, 1 road, 255 void, in the BDD100k layout);
- `params.data.dataset == "kitti_road"`: KITTI Road layout, labels {0 not road, 1 road, 255 void};
- otherwise a raw BDD100k directory: the 19 -> 14 lookup table of `params.data.lookup_table()` is
  applied on load with the same `remap_mask` that `data remap` uses.

Dataset mean/std are computed over (a deterministic subsample of) the training split each time a
training starts and then travel with the model in its `ModelSpec` and checkpoints, so nothing is
written next to the (DVC-tracked, possibly read-only) data.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset, Sampler

from roadseg.config import AugmentParams, Params
from roadseg.data import bdd100k
from roadseg.data.bdd100k import Sample
from roadseg.data.copy_paste import Piece, class_ids, cut_piece, paste
from roadseg.data.transforms import normalize, resize_image, resize_mask

REMAP_MARKER = "remap.json"
PIECE_CACHE = 512  # copy-paste pieces kept per dataset (worker)
CLASS_STATS = "class_stats.json"


def source_kind(data_dir: Path, params: Params) -> str:
    """ "kitti", "remapped" or "raw" (see the module docstring)."""
    if (Path(data_dir) / REMAP_MARKER).is_file():  # `data remap` output, KITTI's included
        return "remapped"
    return "kitti" if params.data.dataset == "kitti_road" else "raw"


def list_split(data_dir: Path, params: Params, split: str) -> list[Sample]:
    """Image/label pairs of a split; a ValueError when there are none."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise ValueError(f"data directory not found: {data_dir}")
    if source_kind(data_dir, params) == "kitti":
        from roadseg.data import kitti

        samples = kitti.list_pairs(data_dir, split)
    else:
        samples = bdd100k.list_pairs(data_dir, split)
    if not samples:
        raise ValueError(f"{data_dir}: split {split!r} has no image/label pairs")
    return samples


def label_reader(data_dir: Path, params: Params) -> Callable[[Path], np.ndarray]:
    """A function path -> merged-class mask (uint8), the same for training and evaluation."""
    kind = source_kind(data_dir, params)
    if kind == "kitti":
        from roadseg.data import kitti

        return kitti.read_label
    if kind == "remapped":
        return bdd100k.read_label
    from roadseg.data.remap import remap_mask

    lut = params.data.lookup_table()
    return lambda path: remap_mask(bdd100k.read_label(path), lut)


def class_stats(data_dir: Path, params: Params, samples: list[Sample] | None = None) -> dict:
    """`class_stats.json` of the dir when present, else computed over the training masks."""
    path = Path(data_dir) / CLASS_STATS
    if path.is_file() and source_kind(data_dir, params) != "kitti":
        stats = json.loads(path.read_text())
        if len(stats.get("weights", [])) == params.data.num_classes:
            return stats
    from roadseg.data.remap import compute_class_stats

    samples = samples if samples is not None else list_split(data_dir, params, "train")
    read = label_reader(data_dir, params)
    masks = (read(s.label) for s in samples)
    return compute_class_stats(masks, params.data.num_classes, params.data.ignore_index)


def image_stats(samples: list[Sample], max_images: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images scaled to [0, 1], over an evenly spaced subsample."""
    if not samples:
        raise ValueError("cannot compute image statistics of an empty split")
    step = max(1, len(samples) // max_images)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for s in samples[::step][:max_images]:
        im = bdd100k.read_image(s.image).astype(np.float64).reshape(-1, 3) / 255.0
        total += im.sum(0)
        total_sq += (im**2).sum(0)
        count += im.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    size: tuple[int, int],
    aug: AugmentParams,
    rng: np.random.Generator,
    ignore_index: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale around the training size, random crop/pad to it, random horizontal flip.

    The image is first brought to scale * size (the same geometry `preprocess` uses at s = 1), so
    training crops and evaluation resizes see objects at comparable sizes. Padded mask pixels are
    `ignore_index`, so padding never counts as a class.
    """
    h, w = size
    s = rng.uniform(*aug.scale_range)
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    image, mask = resize_image(image, (sh, sw)), resize_mask(mask, (sh, sw))
    ph, pw = max(h - sh, 0), max(w - sw, 0)
    if ph or pw:
        top, left = rng.integers(0, ph + 1), rng.integers(0, pw + 1)
        pad = ((top, ph - top), (left, pw - left))
        image = np.pad(image, (*pad, (0, 0)), constant_values=0)
        mask = np.pad(mask, pad, constant_values=ignore_index)
    y, x = crop_origin(mask, (h, w), aug.class_uniform_prob, rng, ignore_index)
    image, mask = image[y : y + h, x : x + w], mask[y : y + h, x : x + w]
    if rng.random() < aug.hflip_prob:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def crop_origin(
    mask: np.ndarray, size: tuple[int, int], prob: float, rng: np.random.Generator,
    ignore_index: int,
) -> tuple[int, int]:  # fmt: skip
    """Top-left corner of a random `size` crop of `mask`. With probability `prob` (class-uniform
    sampling) the crop holds a pixel of a class drawn uniformly from those in the mask, so a class
    a few pixels wide is cropped as often as road; `prob` 0 draws exactly as a plain crop."""
    h, w = size
    rows, cols = mask.shape
    if prob > 0 and (rows > h or cols > w) and rng.random() < prob:
        classes = np.unique(mask)
        classes = classes[classes != ignore_index]
        if classes.size:
            ys, xs = np.nonzero(mask == rng.choice(classes))
            i = rng.integers(len(ys))
            y = int(np.clip(ys[i] - rng.integers(0, h), 0, rows - h))
            x = int(np.clip(xs[i] - rng.integers(0, w), 0, cols - w))
            return y, x
    return int(rng.integers(0, rows - h + 1)), int(rng.integers(0, cols - w + 1))


LUMA = np.float32([0.299, 0.587, 0.114])  # ITU-R BT.601 grey of RGB


def photometric(image: np.ndarray, aug: AugmentParams, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter and an occasional Gaussian blur of an RGB
    uint8 image (the mask is untouched: no pixel moves). Real photographs vary in exposure,
    white balance and focus far more than synthetic scenes; a model trained on a few of them
    should not learn those as class cues."""
    x = image.astype(np.float32) * rng.uniform(1 - aug.brightness, 1 + aug.brightness)
    mean = float((x @ LUMA).mean())  # contrast: around the mean grey level
    x = (x - mean) * rng.uniform(1 - aug.contrast, 1 + aug.contrast) + mean
    grey = (x @ LUMA)[..., None]  # saturation: towards or away from each pixel's grey
    x = (x - grey) * rng.uniform(1 - aug.saturation, 1 + aug.saturation) + grey
    out = np.clip(x, 0, 255).round().astype(np.uint8)
    shift = rng.uniform(-aug.hue, aug.hue)
    if shift:
        hsv = np.asarray(Image.fromarray(out).convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(shift * 256)) % 256
        out = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))
    if rng.random() < aug.blur_prob:
        sigma = rng.uniform(*aug.blur_sigma)
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.GaussianBlur(sigma)))
    return np.ascontiguousarray(out)


class SegmentationDataset(Dataset):
    """(image, mask) pairs: image float32 (3, H, W) normalised, mask int64 (H, W).

    With `train=True` each item is augmented with an RNG seeded by (seed, epoch, index), so the
    augmentation is the same for a seed whatever the number of workers or ranks, and a resumed
    run sees exactly the batches an uninterrupted run would have seen. Call `set_epoch` per epoch.
    """

    def __init__(
        self,
        samples: list[Sample],
        read_label: Callable[[Path], np.ndarray],
        *,
        image_size: tuple[int, int],
        mean: list[float],
        std: list[float],
        train: bool,
        augment: AugmentParams | None = None,
        ignore_index: int = 255,
        seed: int = 0,
        paste_ids: tuple[int, ...] = (),
    ) -> None:
        self.samples = samples
        self.read_label = read_label
        self.image_size = tuple(image_size)
        self.mean, self.std = mean, std
        self.train = train
        self.augment = augment or AugmentParams()
        self.ignore_index = ignore_index
        self.seed = seed
        self.epoch = 0
        self.paste_ids = tuple(paste_ids)  # copy-paste these classes
        self._pieces: OrderedDict[tuple[int, tuple[int, int]], Piece | None] = OrderedDict()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw image (H, W, 3) uint8 and merged-class mask (H, W) uint8 of an item."""
        s = self.samples[index]
        image, mask = bdd100k.read_image(s.image), self.read_label(s.label)
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(
                f"{s.image.name}: image {image.shape[:2]} and label {mask.shape} differ"
            )
        return image, mask

    def piece(self, index: int, shape: tuple[int, int]) -> Piece | None:
        """The copy-paste classes' pixels of item `index` in a frame of `shape`. The last
        PIECE_CACHE are kept (per worker): a small dataset is read once, while a full one
        (~150 KB of pole and sign pixels per BDD100k frame) stays bounded."""
        key = (index, shape)
        if key in self._pieces:
            self._pieces.move_to_end(key)
            return self._pieces[key]
        image, mask = self.load(index)
        image, mask = resize_image(image, shape), resize_mask(mask, shape)
        piece = self._pieces[key] = cut_piece(image, mask, self.paste_ids)
        if len(self._pieces) > PIECE_CACHE:
            self._pieces.popitem(last=False)
        return piece

    def paste_other(
        self, image: np.ndarray, mask: np.ndarray, index: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """`image` and `mask` with the thin-class pixels of another item (drawn by `rng`)
        pasted in, mirrored half the time; unchanged when that item has none."""
        other = int(rng.integers(len(self) - 1))
        other += other >= index
        flip = bool(rng.random() < 0.5)
        piece = self.piece(other, (mask.shape[0], mask.shape[1]))
        return paste(image, mask, piece, flip=flip) if piece is not None else (image, mask)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.train:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            p = self.augment.copy_paste_prob  # 0: the RNG draws exactly what it drew without it
            if p > 0 and self.paste_ids and len(self) > 1 and rng.random() < p:
                image, mask = self.paste_other(image, mask, index, rng)
            image, mask = augment_pair(
                image, mask, self.image_size, self.augment, rng, self.ignore_index
            )
            image = photometric(image, self.augment, rng)
        else:
            image, mask = resize_image(image, self.image_size), resize_mask(mask, self.image_size)
        return normalize(image, self.mean, self.std), torch.from_numpy(mask.astype(np.int64))


def build_dataset(
    data_dir: Path,
    params: Params,
    split: str,
    *,
    train: bool,
    mean: list[float],
    std: list[float],
    samples: list[Sample] | None = None,
) -> SegmentationDataset:
    """The dataset of one split, with augmentation when `train`."""
    return SegmentationDataset(
        samples if samples is not None else list_split(data_dir, params, split),
        label_reader(data_dir, params),
        image_size=tuple(params.train.image_size),
        mean=mean,
        std=std,
        train=train,
        augment=params.augment,
        ignore_index=params.data.ignore_index,
        seed=params.train.seed,
        paste_ids=tuple(paste_class_ids(params)) if train else (),
    )


def paste_class_ids(params: Params) -> list[int]:
    """The ids of `augment.copy_paste_classes` (none when `copy_paste_prob` is 0); a ValueError
    for a name the dataset's classes lack."""
    if params.augment.copy_paste_prob == 0:
        return []
    names = [c.name for c in params.data.class_table]
    return class_ids(params.augment.copy_paste_classes, names)


def build_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader with workers (capped at the cores present) and pinned memory on CUDA.

    Shuffling uses a generator seeded with (seed + epoch) so the order does not depend on any
    global RNG state; build one loader per epoch.
    """
    workers = min(num_workers, os.cpu_count() or 1)
    generator = torch.Generator().manual_seed(seed + epoch) if shuffle and sampler is None else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        generator=generator,
        persistent_workers=False,
    )
