"""KITTI Road label rules: the per-file table and the expectations `roadseg.data.validation` runs.

    roadseg data validate --data-dir data_road --set data.dataset=kitti_road

One row per training image (split train or val by `kitti.split_of`), per testing image (split
test), and per orphan road ground truth (`*_road_*` without an image; KITTI's `*_lane_*` ground
truth is not ours and is skipped). The rules go into the same Great Expectations suite and Data
Docs as the BDD100k ones; they are listed in `KITTI_RULES`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFile

from roadseg.data import kitti
from roadseg.data.bdd100k import IMAGE_SUFFIXES
from roadseg.data.inventory import describe_problem, inspect_image, size_of

KITTI_RULES = {
    "split_not_empty": "training/image_2 holds at least one image",
    "gt_present": "every training image has its road ground truth (<cat>_road_<num>.png)",
    "image_present": "every road ground truth has its image (no orphans)",
    "no_zero_byte_files": "no image or ground truth is an empty file",
    "image_decodes": "every image decodes completely (not corrupt or truncated)",
    "gt_decodes": "every ground truth decodes completely",
    "gt_colours_valid": "ground truth holds only magenta (road), red (not road) and black (void)",
    "sizes_agree": "image and ground truth have the same width and height",
    "gt_not_all_void": "no ground truth is entirely (or above the allowed fraction) void",
    "category_present": "each category um, umm, uu has training images",
    "name_valid": "names are <um|umm|uu>_<number> (images), <cat>_road_<number> (ground truth)",
    "name_unique": "no two images of a folder share a name (e.g. um_000001.png and .jpg)",
}
COLUMNS = [
    "row", "key", "split", "stem", "category", "training_category", "image_path", "label_path",
    "has_image", "has_label", "label_paired", "image_bytes", "label_bytes", "image_decodes",
    "label_decodes", "image_error", "label_error", "image_size", "label_size", "label_colors_valid",
    "bad_colors", "ignore_fraction", "name_valid", "name_unique",
]  # fmt: skip
_IMAGE_NAME = re.compile(r"^(um|umm|uu)_\d+$")
_GT_NAME = re.compile(r"^(um|umm|uu)_road_\d+$")
_DEFINED = np.array([kitti.ROAD_RGB, kitti.NOT_ROAD_RGB, kitti.VOID_RGB], np.int64)


def _inspect_gt(path: Path) -> dict:
    """Decode a colour ground truth: size, colours outside the three KITTI ones, void share."""
    out: dict = {"label_decodes": False}
    try:
        with Image.open(path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(np.int64)
            out["label_size"] = f"{im.width}x{im.height}"
    except Exception as e:
        out["label_error"] = describe_problem(e, path)
        return out
    codes = np.unique(rgb @ np.array([65536, 256, 1]))
    foreign = np.setdiff1d(codes, _DEFINED @ np.array([65536, 256, 1]))
    labels = kitti.decode_label(rgb[None])
    out.update(
        label_decodes=True,
        label_colors_valid=not foreign.size,
        bad_colors=[[int(c >> 16), int(c >> 8 & 255), int(c & 255)] for c in foreign[:5]],
        ignore_fraction=float((labels == kitti.VOID).mean()) if labels.size else 1.0,
    )
    return out


def _inspect(job: tuple[str, str, str, str | None, str | None]) -> dict:
    """One table row; never raises on bad files."""
    root, split, stem, image, label = job
    row = {"split": split, "stem": stem, "image_path": image, "label_path": label,
           "has_image": image is not None, "has_label": label is not None}  # fmt: skip
    saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        for key, rel, inspect in (("image", image, inspect_image), ("label", label, _inspect_gt)):
            if rel is None:
                continue
            row[f"{key}_bytes"] = size_of(Path(root) / rel)
            if row[f"{key}_bytes"] == 0:
                row[f"{key}_error"] = "zero-byte file"
            else:
                row.update(inspect(Path(root) / rel))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return row


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _jobs(root: Path) -> list[tuple]:
    """(root, split, stem, image, ground truth) per training/testing image and orphan gt."""
    jobs, gt_dir = [], root / "training/gt_image_2"
    gts = {p.stem: p for p in _images(gt_dir) if "_road_" in p.stem}
    for img in _images(root / "training/image_2"):
        gt = gts.pop(Path(kitti.gt_name(img.stem)).stem, None)
        jobs.append((kitti.split_of(img.stem), img.stem, img, gt))
    for stem, gt in gts.items():  # orphans: ground truth without an image
        image_stem = stem.replace("_road_", "_", 1)
        jobs.append((kitti.split_of(image_stem), image_stem, None, gt))
    jobs += [("test", img.stem, img, None) for img in _images(root / "testing/image_2")]
    rel = lambda p: None if p is None else p.relative_to(root).as_posix()  # noqa: E731
    return [(str(root), split, stem, rel(img), rel(gt)) for split, stem, img, gt in jobs]


def build_kitti_table(
    root: Path, *, workers: int = 1, progress: bool | None = None
) -> pd.DataFrame:
    """Inspect every image and road ground truth under the `data_road` folder `root`.

    Returns:
        A DataFrame with the columns in `COLUMNS`; absent values are None/NaN.
    """
    jobs = _jobs(root)
    workers = min(workers, os.cpu_count() or 1)
    if workers > 1 and len(jobs) >= 32:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(_inspect, jobs, chunksize=8))
    else:
        rows = [_inspect(job) for job in jobs]
    folder_names = Counter(
        (r["split"] == "test", r["stem"].lower()) for r in rows if r["has_image"]
    )
    for i, row in enumerate(rows):
        labelled = row["split"] != "test"
        row["row"], row["key"] = i, f"{row['split']}/{row['stem']}"
        row["category"] = kitti.category_of(row["stem"])
        row["training_category"] = row["category"] if labelled and row["has_image"] else None
        row["label_paired"] = row["has_label"] if labelled and row["has_image"] else None
        gt_ok = row["label_path"] is None or _GT_NAME.match(Path(row["label_path"]).stem)
        row["name_valid"] = bool(_IMAGE_NAME.match(row["stem"]) and gt_ok)
        row["name_unique"] = folder_names[(not labelled, row["stem"].lower())] <= 1
    return pd.DataFrame(rows, columns=COLUMNS)


def kitti_expectations(gxe, in_set, tag) -> list:
    """The KITTI-only rules as GX expectations (the file-level ones are shared, in
    `roadseg.data.validation`); `tag(rule)` adds the rule name and its notes."""
    return [
        in_set("gt_colours_valid", "label_colors_valid", [True]),
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="training_category", value_set=list(kitti.CATEGORIES), **tag("category_present")
        ),
        in_set("name_valid", "name_valid", [True]),
        in_set("name_unique", "name_unique", [True]),
    ]


def kitti_detail(rule: str, row: pd.Series) -> tuple[str, str]:
    """(file to name, human-readable detail) for a row that broke a KITTI `rule`."""
    image, label = row["image_path"], row["label_path"]
    details = {
        "gt_present": (image, f"no road ground truth {kitti.gt_name(row['stem'])}"),
        "image_present": (label, "orphan ground truth: no image with this name"),
        "image_decodes": (image, f"cannot decode image: {row['image_error']}"),
        "gt_decodes": (label, f"cannot decode ground truth: {row['label_error']}"),
        "gt_colours_valid": (label, f"colours outside road/not road/void: {row['bad_colors']}"),
        "sizes_agree": (label, f"image {row['image_size']} vs ground truth {row['label_size']}"),
        "gt_not_all_void": (label, f"void fraction {row['ignore_fraction']:.3f}"),
        "name_valid": (image or label, "name is not <um|umm|uu>_<number>"),
        "name_unique": (image, "another image in this folder has the same name"),
    }
    if rule == "no_zero_byte_files":
        return (image, "image is 0 bytes") if row["image_bytes"] == 0 else (label, "gt is 0 bytes")
    return details.get(rule, (image or label, rule))
