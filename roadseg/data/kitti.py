"""KITTI Road, read as a binary road / not-road dataset (`data.dataset: kitti_road`).

    data_road/training/image_2/<cat>_<num>.png        RGB images (cat: um, umm, uu)
    data_road/training/gt_image_2/<cat>_road_<num>.png magenta road, red not road, black void
    data_road/testing/image_2/<cat>_<num>.png          images only

KITTI has no validation split, so `training` is split deterministically by a hash of the file stem
(about 20% val): the same file always lands in the same split, whatever else is in the folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from roadseg.data.bdd100k import Sample

ROAD, NOT_ROAD, VOID = 1, 0, 255
# Ground-truth colours of KITTI's gt_image_2; any other colour (black included) is void.
ROAD_RGB, NOT_ROAD_RGB, VOID_RGB = (255, 0, 255), (255, 0, 0), (0, 0, 0)
CATEGORIES = ("um", "umm", "uu")  # urban marked, urban multiple marked, urban unmarked
VAL_PERCENT = 20
KITTI_SPLITS = ("train", "val", "test")


def kitti_root(root: Path | str) -> Path:
    """The `data_road` folder, given it or its parent."""
    root = Path(root)
    return root if (root / "training").is_dir() or root.name == "data_road" else root / "data_road"


def split_of(stem: str) -> str:
    """'val' for about VAL_PERCENT% of stems (stable hash), else 'train'."""
    h = int(hashlib.sha1(stem.encode()).hexdigest()[:8], 16)
    return "val" if h % 100 < VAL_PERCENT else "train"


def gt_name(stem: str) -> str:
    """The road ground-truth file name of an image stem: um_000001 → um_road_000001.png."""
    cat, _, num = stem.rpartition("_")
    return f"{cat}_road_{num}.png"


def list_samples(root: Path | str, split: str) -> list[Sample]:
    """Images of a split with their road ground truth (None when missing), sorted by stem."""
    if split not in KITTI_SPLITS:
        raise ValueError(f"unknown KITTI split {split!r}; expected one of {list(KITTI_SPLITS)}")
    base = kitti_root(root) / ("testing" if split == "test" else "training")
    images = sorted(p for p in (base / "image_2").glob("*.png") if p.is_file())
    out = []
    for img in images:
        if split != "test" and split_of(img.stem) != split:
            continue
        gt = base / "gt_image_2" / gt_name(img.stem)
        out.append(Sample(split, img.stem, img, gt if split != "test" and gt.is_file() else None))
    return out


def list_pairs(root: Path | str, split: str) -> list[Sample]:
    """Samples of `split` ('train' or 'val') with both image and ground truth."""
    return [s for s in list_samples(root, split) if s.label is not None]


def category_of(stem: str) -> str:
    """'um' for 'um_000012' (and for the ground truth 'um_road_000012'); '' when unknown."""
    cat = stem.split("_", 1)[0]
    return cat if cat in CATEGORIES else ""


def decode_label(rgb: np.ndarray) -> np.ndarray:
    """KITTI colour ground truth (H, W, 3) → uint8 (H, W): 1 road (magenta), 0 not road (red),
    255 anything else (black void, or a colour KITTI does not define)."""
    rgb = np.asarray(rgb)[..., :3]
    out = np.full(rgb.shape[:2], VOID, np.uint8)
    out[(rgb == NOT_ROAD_RGB).all(-1)] = NOT_ROAD
    out[(rgb == ROAD_RGB).all(-1)] = ROAD
    return out


def read_label(path: Path | str) -> np.ndarray:
    """Binary road mask, uint8 (H, W): 1 road (magenta), 0 not road (red), 255 void (black)."""
    with Image.open(path) as im:
        return decode_label(np.asarray(im.convert("RGB")))


def _scene(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A perspective road under a sky with noisy colours: (RGB uint8, road bool)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yh, vx = h * rng.uniform(0.35, 0.5), w * rng.uniform(0.35, 0.65)
    t = np.clip((yy - yh) / (h - yh), 0, None)
    half = w * rng.uniform(0.3, 0.6) * t
    road = (yy > yh) & (np.abs(xx - vx - rng.uniform(-0.2, 0.2) * w * t) < half)
    colour = np.where(road[..., None], [90, 90, 95], [70, 120, 50])
    colour = np.where((yy < yh)[..., None], [140, 180, 230], colour)
    img = colour * rng.uniform(0.7, 1.2) + rng.normal(0, 10, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), road


def _stems(train: int, val: int) -> list[str]:
    """`train` stems that `split_of` puts in train and `val` it puts in val, categories in turn."""
    need, out, j = {"train": train, "val": val}, [], 0
    while need["train"] or need["val"]:
        stem = f"{CATEGORIES[j % 3]}_{j // 3:06d}"
        if need[split_of(stem)]:
            need[split_of(stem)] -= 1
            out.append(stem)
        j += 1
    return out


def synthesize_kitti(
    out: Path | str, *, train: int, val: int, test: int, height: int, width: int, seed: int
) -> dict:
    """Write a tiny KITTI-Road-like dataset under `out/data_road` (same seed, same bytes).

    Training stems are chosen so that the hash split gives exactly `train` and `val` images;
    categories um, umm, uu take turns. The ground truth has a 2-pixel void border, as KITTI has
    where the road is undefined.

    Returns:
        Summary: root (the data_road folder), splits {split: count}, height, width, seed.
    """
    if min(height, width) < 16:
        raise ValueError(f"image size {height}x{width} is too small (min 16)")
    if min(train, val, test) < 0:
        raise ValueError(f"image counts must be >= 0, got {train}/{val}/{test}")
    root = Path(out) / "data_road"
    for sub in ("training/image_2", "training/gt_image_2", "testing/image_2"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, stem in enumerate(_stems(train, val)):
        img, road = _scene(height, width, np.random.default_rng([seed, 0, i]))
        Image.fromarray(img).save(root / "training/image_2" / f"{stem}.png")
        gt = np.where(road[..., None], ROAD_RGB, NOT_ROAD_RGB).astype(np.uint8)
        gt[:, :2] = 0
        Image.fromarray(gt).save(root / "training/gt_image_2" / gt_name(stem))
    for i in range(test):
        img, _ = _scene(height, width, np.random.default_rng([seed, 1, i]))
        Image.fromarray(img).save(
            root / "testing/image_2" / f"{CATEGORIES[i % 3]}_{i // 3:06d}.png"
        )
    splits = {"train": train, "val": val, "test": test}
    return {"root": str(root), "splits": splits, "height": height, "width": width, "seed": seed}
