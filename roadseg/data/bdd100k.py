"""The official BDD100k 10k semantic-segmentation layout, read and written.

    images/10k/{train,val,test}/<stem>.jpg
    labels/sem_seg/masks/{train,val}/<stem>.png       single-channel train ids, 255 = ignore
    labels/sem_seg/colormaps/{train,val}/<stem>.png   palette PNGs, indices = train ids

Masks are preferred; colormaps are read when a split has no masks folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
IMAGE_DIR = Path("images/10k")
MASK_DIR = Path("labels/sem_seg/masks")
COLORMAP_DIR = Path("labels/sem_seg/colormaps")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class Sample:
    """One image/label pair of a split; either side may be missing (orphans)."""

    split: str
    stem: str
    image: Path | None
    label: Path | None


def image_dir(root: Path, split: str) -> Path:
    return Path(root) / IMAGE_DIR / split


def label_dir(root: Path, split: str) -> Path:
    """The masks folder of a split, or its colormaps folder when there are no masks."""
    masks = Path(root) / MASK_DIR / split
    if masks.is_dir():
        return masks
    colormaps = Path(root) / COLORMAP_DIR / split
    return colormaps if colormaps.is_dir() else masks


def mask_dir(root: Path, split: str) -> Path:
    """Where masks of a split are written."""
    return Path(root) / MASK_DIR / split


def present_splits(root: Path) -> list[str]:
    """Splits with an image or a label folder, in canonical order."""
    root = Path(root)
    return [
        s
        for s in SPLITS
        if image_dir(root, s).is_dir()
        or (root / MASK_DIR / s).is_dir()
        or (root / COLORMAP_DIR / s).is_dir()
    ]


def resolve_splits(
    root: Path, requested: list[str] | tuple[str, ...] | None
) -> tuple[list[str], list[str]]:
    """(splits to work on, requested splits that are missing). No request = all present."""
    present = present_splits(root)
    if not requested:
        return present, []
    unknown = [s for s in requested if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected one of {list(SPLITS)}")
    return [s for s in requested if s in present], [s for s in requested if s not in present]


def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes
    }


def list_samples(root: Path, split: str) -> list[Sample]:
    """All stems of a split with their image and label paths (None where absent), sorted."""
    images = _files(image_dir(root, split), IMAGE_SUFFIXES)
    labels = _files(label_dir(root, split), (".png",))
    return [
        Sample(split, stem, images.get(stem), labels.get(stem))
        for stem in sorted(set(images) | set(labels))
    ]


def list_pairs(root: Path, split: str) -> list[Sample]:
    """Samples with both an image and a label (for training and evaluation)."""
    return [s for s in list_samples(root, split) if s.image is not None and s.label is not None]


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 array, shape (H, W, 3)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_label(path: Path) -> np.ndarray:
    """Train-id array, shape (H, W), uint8. Palette PNGs give their indices, not colours."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise ValueError(f"{path}: label must be single-channel (L or P), got mode {im.mode}")
        return np.asarray(im)


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Single-channel 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8, copy=False)).save(path, optimize=False, compress_level=1)
