"""19 → 14 class remap of a BDD100k-layout dataset, with class statistics for weighted losses.

    roadseg data remap --data-dir data/synthetic --out data/remapped

OUT gets the same layout: images hard-linked (copied across file systems), masks remapped with one
lookup-table pass (`lut[mask]`), `remap.json` (the mapping used: a marker that OUT is a remapped
dataset) and `class_stats.json` (pixel counts, frequencies and inverse-sqrt-frequency weights over
the train split, or over every remapped split when there is no train split). Files are processed
by a pool of worker processes.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from collections.abc import Iterable
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from roadseg.config import DataParams
from roadseg.data.bdd100k import (
    image_dir,
    list_samples,
    mask_dir,
    read_label,
    resolve_splits,
    write_mask,
)

MARKER = "remap.json"
STATS = "class_stats.json"


def remap_mask(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Source ids → merged ids in one vectorised pass.

    Shape:
        mask: (H, W) uint8; lut: (256,) uint8; returns (H, W) uint8.
    """
    if lut.shape != (256,) or lut.dtype != np.uint8:
        raise ValueError(f"lookup table must be 256 uint8 entries, got {lut.shape} {lut.dtype}")
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8, got {mask.dtype}")
    return lut.take(mask)  # a 256-entry gather; faster than lut[mask] or a loop over classes


def frequency_weights(frequencies: Iterable[float], power: float = 0.5) -> list[float]:
    """Class weights frequency^-power (0.5: 1/sqrt, the default; 1: inverse frequency),
    normalised to mean 1 over the classes that occur; a class with no pixels gets weight 0 (it
    never appears in the targets the weights are used with)."""
    freq = np.asarray(list(frequencies), dtype=np.float64)
    weights = np.zeros(len(freq))
    seen = freq > 0
    if seen.any():
        weights[seen] = freq[seen] ** -power
        weights[seen] /= weights[seen].mean()
    return [round(float(w), 6) for w in weights]


def class_stats_from_counts(counts: np.ndarray, names: list[str], ignore_index: int) -> dict:
    """Frequencies and weights (`frequency_weights`, 1/sqrt) from per-class pixel counts."""
    counts = np.asarray(counts, dtype=np.int64)[: len(names)]
    total = counts.sum()
    freq = counts / total if total else np.zeros(len(names))
    return {
        "classes": list(names),
        "ignore_index": ignore_index,
        "pixel_counts": counts.tolist(),
        "frequencies": [float(f) for f in freq],
        "weights": frequency_weights(freq),
    }


def compute_class_stats(
    masks: Iterable[np.ndarray], num_classes: int, ignore_index: int, names=None
) -> dict:
    """Class statistics over remapped masks (ignore pixels are not counted)."""
    counts = np.zeros(256, np.int64)
    for m in masks:
        counts += np.bincount(np.asarray(m, dtype=np.uint8).ravel(), minlength=256)
    names = list(names) if names is not None else [str(i) for i in range(num_classes)]
    return class_stats_from_counts(counts[:num_classes], names, ignore_index)


def place_file(src: Path, dst: Path, link: bool) -> None:
    """Hard-link `src` to `dst` when asked and possible, else copy (replacing `dst`)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links not supported
            pass
    shutil.copy2(src, dst)


def _process(task: tuple, lut: np.ndarray) -> np.ndarray:
    """One sample: place the image, remap the label; returns its 256-bin label histogram."""
    image, image_dst, label, mask_dst, link = task
    if image is not None:
        place_file(image, image_dst, link)
    if label is None:
        return np.zeros(256, np.int64)
    out = remap_mask(read_label(label), lut)
    write_mask(mask_dst, out)
    # PIL's C histogram: no 8-bytes-per-pixel temporary, unlike np.bincount on uint8
    return np.asarray(Image.fromarray(out).histogram(), dtype=np.int64)


def _check_out(src: Path, out: Path) -> None:
    if src.resolve() == out.resolve():
        raise ValueError(f"output {out} is the input dataset; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValueError(f"{out} is not empty and holds no {MARKER}: refusing to write into it")


def remap_dataset(
    src: Path | str,
    out: Path | str,
    data_params: DataParams,
    *,
    splits: list[str] | None = None,
    link_images: bool = True,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write `out` as `src` with masks remapped 19 → 14, plus remap.json and class_stats.json.

    With `data.dataset: kitti_road` the source is a KITTI Road folder (see `remap_kitti`).

    Args:
        src: dataset root in the BDD100k layout (masks, or colormaps when masks are absent).
        out: output root (created; a previous remap output there is updated in place).
        data_params: mapping, class names and ignore index.
        splits: splits to remap (default: all present); requested splits that are absent are
            listed in the summary's `missing`.
        link_images: hard-link images instead of copying them.
        workers: worker processes (capped at the cores present; <= 1 runs in this process).

    Returns:
        Summary: out, splits {split: {"images", "masks"}}, missing, stats path, class_stats.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"dataset folder {src} does not exist")
    if data_params.dataset == "kitti_road":
        return remap_kitti(src, out, data_params, link_images=link_images, workers=workers,
                           progress=progress)  # fmt: skip
    todo, missing = resolve_splits(src, splits)
    if not todo:
        raise ValueError(f"no splits to remap in {src} (requested: {splits or 'all'}, found none)")
    _check_out(src, out)
    tasks, per_split = _plan(src, out, todo, link_images)
    hist = _run(tasks, data_params.lookup_table(), out, todo, workers=workers, progress=progress)
    names = [c.name for c in data_params.classes]
    basis = ["train"] if "train" in todo and per_split["train"]["masks"] else todo
    counts = sum(hist[s] for s in basis)[: len(names)]
    stats = class_stats_from_counts(counts, names, data_params.ignore_index)
    stats["splits"] = basis
    out.mkdir(parents=True, exist_ok=True)
    marker = {
        "source": str(src),
        "mapping": {str(k): v for k, v in sorted(data_params.mapping.items())},
        "num_classes": len(names),
        "classes": names,
        "source_classes": [c.name for c in data_params.source_classes],
        "ignore_index": data_params.ignore_index,
        "splits": per_split,
    }
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    (out / STATS).write_text(json.dumps(stats, indent=2) + "\n")
    return {
        "out": str(out),
        "splits": per_split,
        "missing": missing,
        "stats": str(out / STATS),
        "class_stats": stats,
    }


def _plan(
    src: Path, out: Path, splits: list[str], link_images: bool
) -> tuple[list[tuple], dict[str, dict[str, int]]]:
    """One task per sample (image src/dst, mask src/dst, link flag) and the counts per split."""
    tasks, per_split = [], {}
    for split in splits:
        samples = list_samples(src, split)
        per_split[split] = {
            "images": sum(s.image is not None for s in samples),
            "masks": sum(s.label is not None for s in samples),
        }
        for s in samples:
            img_dst = image_dir(out, split) / s.image.name if s.image else None
            tasks.append(
                (s.image, img_dst, s.label, mask_dir(out, split) / f"{s.stem}.png", link_images)
            )
    return tasks, per_split


def _run(
    tasks: list[tuple], lut: np.ndarray, out: Path, splits: list[str], *, workers: int,
    progress: bool,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Process the tasks (in worker processes when `workers` > 1); the class histogram per split."""
    n_workers = max(1, min(workers, os.cpu_count() or 1, len(tasks) or 1))
    hist = {split: np.zeros(256, np.int64) for split in splits}
    bar = tqdm(total=len(tasks), desc="remap", unit="file", disable=not progress)
    if n_workers > 1:
        work = functools.partial(_process, lut=lut)  # the LUT is 256 bytes: sent with each chunk
        with Pool(n_workers) as pool:
            for task, h in zip(tasks, pool.imap(work, tasks, chunksize=4), strict=True):
                hist[_split_of(task, out)] += h
                bar.update()
    else:
        for task in tasks:
            hist[_split_of(task, out)] += _process(task, lut)
            bar.update()
    bar.close()
    return hist


def _split_of(task: tuple, out: Path) -> str:
    # mask destination is OUT/labels/sem_seg/masks/<split>/<stem>.png
    return task[3].parent.name


def _process_kitti(task: tuple) -> np.ndarray:
    """One KITTI sample: place the image, write its binary id mask; its 256-bin histogram."""
    from roadseg.data.kitti import read_label as read_kitti_label

    image, image_dst, label, mask_dst, link = task
    place_file(image, image_dst, link)
    if label is None:
        return np.zeros(256, np.int64)
    out = read_kitti_label(label)
    write_mask(mask_dst, out)
    return np.asarray(Image.fromarray(out).histogram(), dtype=np.int64)


def remap_kitti(
    src: Path, out: Path, data_params: DataParams, *, link_images: bool = True, workers: int = 1,
    progress: bool = True,
) -> dict:  # fmt: skip
    """KITTI Road (`data_road/training`, `testing`) → the BDD100k layout with binary id masks.

    Masks: road (magenta) 1, not road (red) 0, anything else the ignore index. Training images
    go to train or val by `kitti.split_of`, testing images to test; stems are kept, so the
    category (um, umm, uu) stays readable. Class statistics are over the train split.
    """
    from roadseg.data import kitti

    root = kitti.kitti_root(src)
    if not (root / "training/image_2").is_dir():
        raise ValueError(f"no KITTI Road training/image_2 folder in {root}")
    _check_out(root, out)
    if data_params.ignore_index != kitti.VOID:
        raise ValueError(
            f"KITTI void is {kitti.VOID}; data.ignore_index is {data_params.ignore_index}"
        )
    tasks, per_split = [], {}
    for split in kitti.KITTI_SPLITS:
        samples = [s for s in kitti.list_samples(root, split) if s.label or split == "test"]
        per_split[split] = {
            "images": len(samples),
            "masks": sum(s.label is not None for s in samples),
        }
        tasks += [(s.image, image_dir(out, split) / s.image.name, s.label,
                   mask_dir(out, split) / f"{s.stem}.png", link_images) for s in samples]  # fmt: skip
    n_workers = max(1, min(workers, os.cpu_count() or 1, len(tasks) or 1))
    hist = {split: np.zeros(256, np.int64) for split in per_split}
    with tqdm(total=len(tasks), desc="remap", unit="file", disable=not progress) as bar:
        pool = Pool(n_workers) if n_workers > 1 else contextlib.nullcontext()
        with pool:
            run = (
                pool.imap(_process_kitti, tasks, 4) if n_workers > 1 else map(_process_kitti, tasks)
            )
            for task, h in zip(tasks, run, strict=True):
                hist[_split_of(task, out)] += h
                bar.update()
    names = [c.name for c in data_params.kitti_classes]
    basis = ["train"] if per_split["train"]["masks"] else ["val"]
    stats = class_stats_from_counts(sum(hist[s] for s in basis)[: len(names)], names, kitti.VOID)
    stats["splits"] = basis
    out.mkdir(parents=True, exist_ok=True)
    marker = {"source": str(root), "dataset": "kitti_road", "num_classes": len(names),
              "classes": names, "ignore_index": kitti.VOID, "splits": per_split,
              "mapping": {"magenta (road)": kitti.ROAD, "red (not road)": kitti.NOT_ROAD,
                          "anything else": kitti.VOID}}  # fmt: skip
    (out / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    (out / STATS).write_text(json.dumps(stats, indent=2) + "\n")
    return {"out": str(out), "splits": per_split, "missing": [], "stats": str(out / STATS),
            "class_stats": stats}  # fmt: skip
