"""Remap mechanics the pixel tests in test_remap.py / test_kitti_steps.py do not pin: the worker
pool (capped at the cores and the files, none for one worker), hard links kept when an output is
updated in place, the progress bar, and the class-statistics helpers' inputs and outputs.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from roadseg.data import remap
from roadseg.data.remap import compute_class_stats, remap_dataset, remap_mask


@pytest.fixture(scope="module")
def bdd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from roadseg.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("remap-bdd")
    synthesize_dataset(out, train=3, val=2, test=1, height=32, width=48, seed=4)
    return out


@pytest.fixture(scope="module")
def kitti_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from roadseg.data.kitti import synthesize_kitti

    out = tmp_path_factory.mktemp("remap-kitti")
    synthesize_kitti(out, train=3, val=2, test=1, height=24, width=32, seed=4)
    return out


class InlinePool:
    """Stands in for multiprocessing.Pool: records its size, runs the tasks in this process."""

    sizes: ClassVar[list[int]] = []
    mapped: ClassVar[list[int]] = []  # tasks run through imap, per pool

    def __init__(self, n: int, initializer=None, initargs=()) -> None:
        InlinePool.sizes.append(n)
        InlinePool.mapped.append(0)
        if initializer is not None:
            initializer(*initargs)

    def imap(self, fn, tasks, chunksize=1):
        assert callable(fn) and chunksize >= 1
        fn = pickle.loads(pickle.dumps(fn))  # what a worker process receives: all it needs
        tasks = list(tasks)
        InlinePool.mapped[-1] += len(tasks)
        return map(fn, tasks)

    def __enter__(self) -> InlinePool:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def outputs(out: Path) -> dict[str, bytes]:
    """Every written mask and the two JSON files (images are links, checked separately)."""
    files = {p.relative_to(out).as_posix(): p.read_bytes()
             for p in sorted((out / "labels").rglob("*.png"))}  # fmt: skip
    files["class_stats.json"] = (out / "class_stats.json").read_bytes()
    marker = json.loads((out / "remap.json").read_text())
    marker.pop("source")
    files["remap.json"] = json.dumps(marker).encode()
    return files


@pytest.mark.parametrize("dataset", ["bdd100k", "kitti_road"])
@pytest.mark.parametrize(
    ("workers", "cores", "pool"),
    [(1, 4, None), (3, 4, 3), (8, 2, 2), (3, 1, None), (50, 64, "tasks"), (2, None, None)],
)
def test_workers_are_capped_at_cores_and_files_and_one_means_no_pool(
    dataset, workers, cores, pool, bdd_dir, kitti_dir, params, tmp_path, monkeypatch
) -> None:
    """`workers` processes, at most one per core (1 when the core count is unknown) and per
    file; one worker runs in this process. The output is the same whatever the pool."""
    data = params.data.model_copy(update={"dataset": dataset})
    src = bdd_dir if dataset == "bdd100k" else kitti_dir
    want = outputs_of(src, data, tmp_path / "serial", workers=1)
    monkeypatch.setattr(remap, "Pool", InlinePool)
    monkeypatch.setattr(remap.os, "cpu_count", lambda: cores)
    InlinePool.sizes, InlinePool.mapped = [], []
    out = tmp_path / "out"
    summary = remap_dataset(src, out, data, workers=workers, progress=False)
    n_files = sum(s["images"] for s in summary["splits"].values())
    assert InlinePool.sizes == ([] if pool is None else [n_files if pool == "tasks" else pool])
    assert InlinePool.mapped == ([] if pool is None else [n_files])  # every file via the pool
    assert outputs(out) == want


def outputs_of(src: Path, data, out: Path, workers: int) -> dict[str, bytes]:
    remap_dataset(src, out, data, workers=workers, progress=False)
    return outputs(out)


@pytest.mark.parametrize("dataset", ["bdd100k", "kitti_road"])
def test_images_stay_hard_links_when_the_output_is_updated_in_place(
    dataset, bdd_dir, kitti_dir, params, tmp_path
) -> None:
    data = params.data.model_copy(update={"dataset": dataset})
    src = bdd_dir if dataset == "bdd100k" else kitti_dir
    out = tmp_path / "out"
    for _ in range(2):  # the second run replaces the links it made
        remap_dataset(src, out, data, workers=1, progress=False)
        images = sorted((out / "images/10k").rglob("*.*"))
        assert images and all(p.stat().st_nlink >= 2 for p in images)  # shared with the source
    copied = tmp_path / "copied"
    remap_dataset(src, copied, data, workers=1, progress=False, link_images=False)
    images = sorted((copied / "images/10k").rglob("*.*"))
    assert images and all(p.stat().st_nlink == 1 for p in images)


@pytest.mark.parametrize("dataset", ["bdd100k", "kitti_road"])
def test_progress_bar_counts_files_only_when_asked(
    dataset, bdd_dir, kitti_dir, params, tmp_path, capsys
) -> None:
    data = params.data.model_copy(update={"dataset": dataset})
    src = bdd_dir if dataset == "bdd100k" else kitti_dir
    s = remap_dataset(src, tmp_path / "quiet", data, workers=1, progress=False)
    assert capsys.readouterr().err == ""
    remap_dataset(src, tmp_path / "loud", data, workers=1, progress=True)
    n = sum(v["images"] for v in s["splits"].values())
    err = capsys.readouterr().err
    assert "remap: 100%" in err and f"{n}/{n}" in err and "file/s" in err


def test_lookup_table_and_mask_checks_name_what_is_wrong(params) -> None:
    lut = params.data.lookup_table()
    mask = np.zeros((2, 2), np.uint8)
    with pytest.raises(
        ValueError, match=r"lookup table must be 256 uint8 entries, got \(256,\) int32"
    ):
        remap_mask(mask, lut.astype(np.int32))
    with pytest.raises(ValueError, match=r"got \(255,\) uint8"):
        remap_mask(mask, lut[:255])


def test_class_stats_of_masks_without_ignore_pixels_names_and_ignore_index() -> None:
    masks = [np.array([[0, 1], [1, 1]], np.uint8), [[2, 0]]]
    s = compute_class_stats(masks, 3, 250, names=["road", "car", "sky"])
    assert s["classes"] == ["road", "car", "sky"] and s["ignore_index"] == 250
    assert s["pixel_counts"] == [2, 3, 1]
    assert compute_class_stats(masks, 3, 255)["classes"] == ["0", "1", "2"]


def test_kitti_remap_writes_the_same_contract_as_bdd100k(kitti_dir, params, tmp_path) -> None:
    """Summary, remap.json and class_stats.json of a KITTI remap: every field, the counts summed
    over all training masks, and the files written like the BDD100k ones (indent 2, newline)."""
    from roadseg.data import kitti

    data = params.data.model_copy(update={"dataset": "kitti_road"})
    out = tmp_path / "a/b/out"
    summary = remap_dataset(kitti_dir, out, data, workers=1, progress=False)
    splits = {"train": {"images": 3, "masks": 3}, "val": {"images": 2, "masks": 2},
              "test": {"images": 1, "masks": 0}}  # fmt: skip
    stats = json.loads((out / "class_stats.json").read_text())
    assert summary == {"out": str(out), "splits": splits, "missing": [],
                       "stats": str(out / "class_stats.json"), "class_stats": stats}  # fmt: skip
    marker = json.loads((out / "remap.json").read_text())
    assert marker == {
        "source": str(kitti.kitti_root(kitti_dir)), "dataset": "kitti_road", "num_classes": 2,
        "classes": ["not road", "road"], "ignore_index": 255, "splits": splits,
        "mapping": {"magenta (road)": 1, "red (not road)": 0, "anything else": 255},
    }  # fmt: skip
    counts = np.zeros(256, np.int64)
    for m in (out / "labels/sem_seg/masks/train").glob("*.png"):
        counts += np.bincount(np.asarray(Image.open(m)).ravel(), minlength=256)
    assert stats["pixel_counts"] == counts[:2].tolist() and stats["splits"] == ["train"]
    assert stats["ignore_index"] == 255 and stats["classes"] == ["not road", "road"]
    for name, obj in (("remap.json", marker), ("class_stats.json", stats)):
        assert (out / name).read_text() == json.dumps(obj, indent=2) + "\n"


def test_kitti_stats_fall_back_to_val_without_training_masks(params, tmp_path) -> None:
    from roadseg.data.kitti import synthesize_kitti

    synthesize_kitti(tmp_path / "src", train=0, val=2, test=1, height=32, width=48, seed=1)
    data = params.data.model_copy(update={"dataset": "kitti_road"})
    s = remap_dataset(tmp_path / "src", tmp_path / "out", data, workers=1, progress=False)
    counts = np.zeros(256, np.int64)
    for m in (tmp_path / "out/labels/sem_seg/masks/val").glob("*.png"):
        counts += np.bincount(np.asarray(Image.open(m)).ravel(), minlength=256)
    assert s["class_stats"]["splits"] == ["val"]
    assert s["class_stats"]["pixel_counts"] == counts[:2].tolist() and counts[:2].sum() > 0


def test_remap_kitti_defaults_link_in_this_process_with_a_bar(
    kitti_dir, params, tmp_path, monkeypatch, capsys
) -> None:
    from roadseg.data import kitti

    monkeypatch.setattr(remap, "Pool", InlinePool)
    InlinePool.sizes, InlinePool.mapped = [], []
    data = params.data.model_copy(update={"dataset": "kitti_road"})
    remap.remap_kitti(kitti.kitti_root(kitti_dir), tmp_path / "out", data)
    assert InlinePool.sizes == []
    images = sorted((tmp_path / "out/images/10k").rglob("*.png"))
    assert images and all(p.stat().st_nlink >= 2 for p in images)
    assert "remap: 100%" in capsys.readouterr().err


def test_kitti_remap_errors_name_the_problem(kitti_dir, params, tmp_path) -> None:
    data = params.data.model_copy(update={"dataset": "kitti_road"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^no KITTI Road training/image_2 folder in "):
        remap_dataset(tmp_path / "empty", tmp_path / "o1", data, progress=False)
    wrong = data.model_copy(update={"ignore_index": 250})
    with pytest.raises(ValueError, match=r"^KITTI void is 255; data.ignore_index is 250$"):
        remap_dataset(kitti_dir, tmp_path / "o2", wrong, progress=False)


def test_a_mask_without_its_image_is_still_remapped(bdd_dir, params, tmp_path) -> None:
    import shutil

    src = tmp_path / "src"
    shutil.copytree(bdd_dir, src)
    (image,) = [p for p in (src / "images/10k/val").iterdir()][:1]
    image.unlink()
    s = remap_dataset(src, tmp_path / "out", params.data, workers=1, progress=False)
    assert s["splits"]["val"] == {"images": 1, "masks": 2}
    assert len(list((tmp_path / "out/labels/sem_seg/masks/val").glob("*.png"))) == 2
    assert not (tmp_path / f"out/images/10k/val/{image.name}").exists()


def test_class_stats_from_integer_counts_of_any_size() -> None:
    """A class seen once still gets a weight; no pixels at all give zeros, never NaN; counts
    stay integers (as JSON writes them) whatever array type they come in."""
    from roadseg.data.remap import class_stats_from_counts

    s = class_stats_from_counts(np.array([1.0, 4.0, 0.0]), ["a", "b", "c"], 255)
    assert s["pixel_counts"] == [1, 4, 0] and all(type(c) is int for c in s["pixel_counts"])
    assert s["weights"][0] > s["weights"][1] > 0 and s["weights"][2] == 0.0
    empty = class_stats_from_counts(np.zeros(3, np.int64), ["a", "b", "c"], 255)
    assert empty["frequencies"] == [0.0, 0.0, 0.0] and empty["weights"] == [0.0, 0.0, 0.0]


def test_bdd_remap_writes_its_contract_field_by_field(bdd_dir, params, tmp_path, capsys) -> None:
    """Summary, remap.json and class_stats.json of a BDD100k remap; the bar is on by default;
    weights rounded to 6 decimals."""
    out = tmp_path / "out"
    summary = remap_dataset(bdd_dir, out, params.data, workers=1)  # progress defaults to on
    assert "remap: 100%" in capsys.readouterr().err
    splits = {"train": {"images": 3, "masks": 3}, "val": {"images": 2, "masks": 2},
              "test": {"images": 1, "masks": 0}}  # fmt: skip
    stats = json.loads((out / "class_stats.json").read_text())
    assert summary == {"out": str(out), "splits": splits, "missing": [],
                       "stats": str(out / "class_stats.json"), "class_stats": stats}  # fmt: skip
    marker = json.loads((out / "remap.json").read_text())
    d = params.data
    assert marker == {
        "source": str(bdd_dir), "mapping": {str(k): v for k, v in sorted(d.mapping.items())},
        "num_classes": 14, "classes": [c.name for c in d.classes],
        "source_classes": [c.name for c in d.source_classes], "ignore_index": 255,
        "splits": splits,
    }  # fmt: skip
    assert stats["ignore_index"] == 255 and stats["splits"] == ["train"]
    assert stats["weights"] == [round(w, 6) for w in stats["weights"]]
    assert any(round(w, 5) != w for w in stats["weights"])  # really 6 decimals, not fewer
    for name, obj in (("remap.json", marker), ("class_stats.json", stats)):
        assert (out / name).read_text() == json.dumps(obj, indent=2) + "\n"


def test_remap_refusals_name_the_folder(bdd_dir, params, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"is the input dataset; choose another folder$"):
        remap_dataset(bdd_dir, bdd_dir, params.data, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"\(requested: all, found none\)$"):
        remap_dataset(tmp_path / "empty", tmp_path / "out", params.data, progress=False)
