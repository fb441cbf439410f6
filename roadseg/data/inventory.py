"""The per-file table of a BDD100k-layout dataset: one row per image/label pair, bad files included.

Every file is opened and fully decoded in worker processes; what goes wrong (missing partner,
undecodable or truncated file, wrong mode, ids outside the class table, zero bytes) becomes a row
value, never an exception. `roadseg.data.validation` runs the Great Expectations suite over it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile
from tqdm import tqdm

from roadseg.config import DataParams
from roadseg.data import bdd100k

NUM_SOURCE_CLASSES = 19
PIXEL_COLUMNS = [f"pixels_{i:02d}" for i in range(NUM_SOURCE_CLASSES)]
COLUMNS = [
    "row", "key", "split", "stem", "image_path", "label_path", "has_image", "has_label", "split_labelled",
    "label_paired", "image_bytes", "label_bytes", "image_decodes", "label_decodes", "image_error",
    "label_error", "image_width", "image_height", "image_size", "image_mode", "label_width",
    "label_height", "label_size", "label_mode", "label_dtype", "label_channels", "label_ids",
    "bad_ids", "label_ids_valid", "ignore_fraction", *PIXEL_COLUMNS, "other_splits", "in_other_split",
]  # fmt: skip
# Below this many files the process pool costs more than it saves.
_MIN_FILES_FOR_POOL = 32


@dataclass(frozen=True)
class _Job:
    root: str
    split: str
    stem: str
    image: str | None
    label: str | None
    ignore_index: int


def size_of(path: Path) -> int | None:
    """The size of a file in bytes, or None when it cannot be read."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def describe_problem(error: Exception, path: Path) -> str:
    """The decoder's complaint without the path, which the report already names."""
    return f"{type(error).__name__}: {str(error).replace(str(path), path.name)}"


def inspect_image(path: Path) -> dict:
    """Decode an image fully; a corrupt or truncated file becomes `image_error`."""
    out: dict = {"image_decodes": False}
    try:
        with Image.open(path) as im:
            out.update(image_width=im.width, image_height=im.height, image_mode=im.mode)
            if im.format == "JPEG":
                # DCT-domain downscaling still walks the whole entropy-coded stream (so truncation
                # is caught) but skips most of the decode work.
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        out["image_decodes"] = True
        out["image_size"] = f"{out['image_width']}x{out['image_height']}"
    except Exception as e:
        out["image_error"] = describe_problem(e, path)
    return out


def _inspect_label(path: Path, ignore_index: int) -> dict:
    """Decode a label; single-channel 8-bit labels also get their ids and per-class pixel counts."""
    out: dict = {"label_decodes": False}
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
            out.update(label_width=im.width, label_height=im.height, label_mode=im.mode)
            out["label_size"] = f"{im.width}x{im.height}"
        out.update(
            label_decodes=True,
            label_dtype=str(arr.dtype),
            label_channels=1 if arr.ndim == 2 else arr.shape[2],
        )
    except Exception as e:
        out["label_error"] = describe_problem(e, path)
        return out
    if out["label_mode"] not in ("L", "P"):
        return out  # ids are meaningless for RGB or 16-bit labels; the mode rule reports them
    counts = np.bincount(arr.ravel(), minlength=256)
    ids = np.flatnonzero(counts)
    valid = set(range(NUM_SOURCE_CLASSES)) | {ignore_index}
    bad = [int(i) for i in ids if int(i) not in valid]
    out.update(
        label_ids=[int(i) for i in ids],
        bad_ids=bad,
        label_ids_valid=not bad,
        ignore_fraction=float(counts[ignore_index] / max(1, arr.size)),
        **{col: int(counts[i]) for i, col in enumerate(PIXEL_COLUMNS)},
    )
    return out


def inspect_pair(job: _Job) -> dict:
    """One table row for an image/label pair; never raises on bad files."""
    root = Path(job.root)
    row: dict = {
        "split": job.split,
        "stem": job.stem,
        "image_path": job.image,
        "label_path": job.label,
        "has_image": job.image is not None,
        "has_label": job.label is not None,
    }
    # Truncated files must fail loudly here, whatever another module set globally.
    saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        if job.image is not None:
            row["image_bytes"] = size_of(root / job.image)
            if row["image_bytes"] == 0:
                row["image_error"] = "zero-byte file"
            else:
                row.update(inspect_image(root / job.image))
        if job.label is not None:
            row["label_bytes"] = size_of(root / job.label)
            if row["label_bytes"] == 0:
                row["label_error"] = "zero-byte file"
            else:
                row.update(_inspect_label(root / job.label, job.ignore_index))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return row


def _relative(path: Path | None, root: Path) -> str | None:
    return None if path is None else path.relative_to(root).as_posix()


def _split_is_labelled(root: Path, split: str) -> bool:
    return (root / bdd100k.MASK_DIR / split).is_dir() or (
        root / bdd100k.COLORMAP_DIR / split
    ).is_dir()


def _map_rows(jobs: list[_Job], workers: int, progress: bool | None) -> list[dict]:
    show = len(jobs) >= 64 if progress is None else progress
    bar = tqdm(total=len(jobs), desc="inspecting files", unit="file", disable=not show)
    with bar:
        if workers <= 1 or len(jobs) < _MIN_FILES_FOR_POOL:
            rows = []
            for job in jobs:
                rows.append(inspect_pair(job))
                bar.update()
            return rows
        chunk = max(1, min(32, len(jobs) // (workers * 4)))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = []
            for row in pool.map(inspect_pair, jobs, chunksize=chunk):
                rows.append(row)
                bar.update()
            return rows


def build_file_table(
    data_dir: Path | str,
    data_params: DataParams,
    splits: Iterable[str],
    *,
    workers: int | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Inspect every image and label of `splits` under `data_dir`, one row per pair.

    Args:
        data_dir: dataset root in the BDD100k 10k layout.
        data_params: `params.data` (ignore index, worker count).
        splits: splits to inspect; `in_other_split` is computed against every split present.
        workers: worker processes (default `data_params.num_workers`, capped at the cores present).
        progress: show a tqdm bar (default: only for 64 files or more).

    Returns:
        A DataFrame with the columns in `COLUMNS`; absent values are None/NaN.
    """
    root = Path(data_dir)
    splits = list(splits)
    jobs = [
        _Job(
            str(root),
            s.split,
            s.stem,
            _relative(s.image, root),
            _relative(s.label, root),
            data_params.ignore_index,
        )
        for split in splits
        for s in bdd100k.list_samples(root, split)
    ]
    n_workers = min(
        workers if workers is not None else data_params.num_workers, os.cpu_count() or 1
    )
    rows = _map_rows(jobs, n_workers, progress)

    labelled = {split: _split_is_labelled(root, split) for split in splits}
    stem_splits: dict[str, set[str]] = defaultdict(set)
    for split in bdd100k.present_splits(root):
        for s in bdd100k.list_samples(root, split):
            stem_splits[s.stem].add(split)
    for i, row in enumerate(rows):
        others = sorted(stem_splits[row["stem"]] - {row["split"]})
        row["row"] = i
        row["key"] = f"{row['split']}/{row['stem']}"  # names offending rows in the Data Docs
        row["split_labelled"] = labelled[row["split"]]
        # Null where the split has no labels at all (e.g. BDD100k test): nothing to pair with.
        row["label_paired"] = (
            row["has_label"] if row["split_labelled"] and row["has_image"] else None
        )
        row["other_splits"] = ",".join(others)
        row["in_other_split"] = bool(others)
    return pd.DataFrame(rows, columns=COLUMNS)
