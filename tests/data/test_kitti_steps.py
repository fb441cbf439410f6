"""KITTI Road through the data steps: the CLI synth, the label rules (good and corrupted copies)
and the remap to binary id masks in the BDD100k layout, checked pixel by pixel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.data import kitti
from roadseg.data.remap import remap_dataset
from roadseg.data.validation import DatasetError, validate_dataset

KITTI = ["--set", "data.dataset=kitti_road"]
MAGENTA, RED, BLACK = (255, 0, 255), (255, 0, 0), (0, 0, 0)


@pytest.fixture(scope="module")
def kitti_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made through the CLI, as a user would: 6 train, 3 val, 2 test images of 24x32."""
    out = tmp_path_factory.mktemp("kitti")
    args = ["data", "synth", "--dataset", "kitti_road", "--out", str(out), "--train", "6",
            "--val", "3", "--test", "2", "--height", "24", "--width", "32", "--seed", "1"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return out / "data_road"


def _validate(root: Path, params, tmp: Path):
    data = params.data.model_copy(update={"dataset": "kitti_road", "num_workers": 0})
    return validate_dataset(root, data, report_dir=tmp / "report")


def test_cli_synth_writes_the_kitti_layout(kitti_dir: Path) -> None:
    train, val = kitti.list_pairs(kitti_dir, "train"), kitti.list_pairs(kitti_dir, "val")
    assert (len(train), len(val), len(kitti.list_samples(kitti_dir, "test"))) == (6, 3, 2)
    assert {kitti.category_of(s.stem) for s in train + val} == set(kitti.CATEGORIES)
    with Image.open(train[0].image) as im:
        assert im.size == (32, 24)


def test_good_dataset_passes(kitti_dir: Path, params, tmp_path: Path) -> None:
    result = _validate(kitti_dir, params, tmp_path)
    assert result.success, result.failures
    assert result.n_files == 11
    summary = json.loads(result.summary_path.read_text())
    assert summary["files_per_split"] == {"train": 6, "val": 3, "test": 2}
    assert "gt_colours_valid" in summary["rules"] and result.data_docs_path.is_file()
    # the KITTI rules are in the same suite's Data Docs
    docs = "".join(p.read_text() for p in result.data_docs_path.parent.rglob("*.html"))
    assert "roadseg-labels" in docs and "label_colors_valid" in docs


def test_corrupted_copy_names_each_bad_file(kitti_dir: Path, params, tmp_path: Path) -> None:
    bad = tmp_path / "data_road"
    shutil.copytree(kitti_dir, bad)
    s0, s1, s2 = kitti.list_pairs(bad, "train")[:3]
    s0.label.unlink()  # missing ground truth
    gt = np.asarray(Image.open(s1.label)).copy()
    gt[5, 5] = (0, 255, 0)  # a foreign colour
    Image.fromarray(gt).save(s1.label)
    Image.open(s2.image).resize((30, 24)).save(s2.image)  # a size mismatch
    shutil.copy(s1.label, bad / "training/gt_image_2/uu_road_000777.png")  # an orphan
    result = _validate(bad, params, tmp_path)
    rel = lambda p: p.relative_to(bad).as_posix()  # noqa: E731
    got = {(f.file, f.rule) for f in result.failures}
    assert got == {
        (rel(s0.image), "gt_present"),
        (rel(s1.label), "gt_colours_valid"),
        (rel(s2.label), "sizes_agree"),
        ("training/gt_image_2/uu_road_000777.png", "image_present"),
        ("training/gt_image_2/uu_road_000777.png", "gt_colours_valid"),
    }
    colours = next(f.detail for f in result.failures if f.file == rel(s1.label))
    assert "[0, 255, 0]" in colours


def test_missing_category_and_bad_names(tmp_path: Path, params) -> None:
    root = tmp_path / "data_road"
    for sub in ("training/image_2", "training/gt_image_2"):
        (root / sub).mkdir(parents=True)
    img, gt = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), RED, np.uint8)
    for stem in ("um_000001", "umm_000002", "xx_000003"):
        Image.fromarray(img).save(root / "training/image_2" / f"{stem}.png")
        Image.fromarray(gt).save(root / "training/gt_image_2" / kitti.gt_name(stem))
    Image.fromarray(img).save(root / "training/image_2/um_000001.jpg")  # same name twice
    Image.fromarray(gt).save(root / "training/gt_image_2/um_road_000001.jpg")
    result = _validate(root, params, tmp_path)
    got = {(f.file, f.rule) for f in result.failures}
    assert ("training/image_2", "category_present") in got
    assert "['uu']" in next(f.detail for f in result.failures if f.rule == "category_present")
    assert ("training/image_2/xx_000003.png", "name_valid") in got
    assert {f.file for f in result.failures if f.rule == "name_unique"} == {
        "training/image_2/um_000001.png",
        "training/image_2/um_000001.jpg",
    }


def test_not_a_kitti_folder(tmp_path: Path, params) -> None:
    with pytest.raises(DatasetError, match="training/image_2"):
        _validate(tmp_path, params, tmp_path)
    res = CliRunner().invoke(app, ["data", "validate", "--data-dir", str(tmp_path), *KITTI])
    assert res.exit_code == 2 and "no KITTI Road dataset" in res.output


def test_cli_validate_exit_codes(kitti_dir: Path, tmp_path: Path) -> None:
    args = ["data", "validate", "--data-dir", str(kitti_dir.parent), "--report-dir", str(tmp_path)]
    assert CliRunner().invoke(app, [*args, *KITTI]).exit_code == 0
    bad = tmp_path / "bad"
    shutil.copytree(kitti_dir, bad / "data_road")
    next((bad / "data_road/training/gt_image_2").iterdir()).unlink()
    res = CliRunner().invoke(app, [*args[:3], str(bad), "--report-dir", str(tmp_path), *KITTI])
    assert res.exit_code == 1 and "gt_present" in res.output


def test_remap_is_exact_pixel_by_pixel(tmp_path: Path, params) -> None:
    """Two hand-made ground truths; every pixel's id and the class counts derived by hand."""
    root = tmp_path / "data_road"
    for sub in ("training/image_2", "training/gt_image_2", "testing/image_2"):
        (root / sub).mkdir(parents=True)
    # Stems whose hash split is known: one train, one val.
    train_stem = next(f"um_{i:06d}" for i in range(100) if kitti.split_of(f"um_{i:06d}") == "train")
    val_stem = next(f"uu_{i:06d}" for i in range(100) if kitti.split_of(f"uu_{i:06d}") == "val")
    gt = np.array(
        [[MAGENTA, MAGENTA, RED, BLACK], [RED, (0, 255, 0), MAGENTA, (254, 0, 255)]], np.uint8
    )
    expected = np.array([[1, 1, 0, 255], [0, 255, 1, 255]], np.uint8)
    rng = np.random.default_rng(0)
    for stem in (train_stem, val_stem):
        Image.fromarray(rng.integers(0, 256, (2, 4, 3), dtype=np.uint8)).save(
            root / "training/image_2" / f"{stem}.png"
        )
        Image.fromarray(gt).save(root / "training/gt_image_2" / kitti.gt_name(stem))
    Image.fromarray(np.zeros((2, 4, 3), np.uint8)).save(root / "testing/image_2/umm_000000.png")
    data = params.data.model_copy(update={"dataset": "kitti_road"})
    summary = remap_dataset(tmp_path, tmp_path / "out", data, workers=1, progress=False)
    out = tmp_path / "out"
    for split, stem in (("train", train_stem), ("val", val_stem)):
        mask = np.asarray(Image.open(out / f"labels/sem_seg/masks/{split}/{stem}.png"))
        assert mask.dtype == np.uint8 and mask.tolist() == expected.tolist()
        image = out / f"images/10k/{split}/{stem}.png"
        assert image.read_bytes() == (root / f"training/image_2/{stem}.png").read_bytes()
    assert (out / "images/10k/test/umm_000000.png").is_file()
    assert not (out / "labels/sem_seg/masks/test").exists()
    stats = json.loads((out / "class_stats.json").read_text())
    # train split only: 2 not-road pixels (red), 3 road pixels (magenta); 3 void are not counted
    assert stats["classes"] == ["not road", "road"] and stats["pixel_counts"] == [2, 3]
    assert stats["frequencies"] == pytest.approx([0.4, 0.6])
    w = 1 / np.sqrt([0.4, 0.6])
    assert stats["weights"] == pytest.approx((w / w.mean()).tolist(), abs=1e-6)
    assert summary["splits"]["train"] == {"images": 1, "masks": 1}
    assert json.loads((out / "remap.json").read_text())["dataset"] == "kitti_road"


def test_cli_remap_then_training_reads_the_remapped_dir(kitti_dir: Path, tmp_path: Path, params):
    from roadseg.data.dataset import label_reader, list_split, source_kind

    out = tmp_path / "remapped"
    args = ["data", "remap", "--data-dir", str(kitti_dir), "--out", str(out), "--workers", "1"]
    res = CliRunner().invoke(app, [*args, *KITTI])
    assert res.exit_code == 0, res.output
    p = params.model_copy(update={"data": params.data.model_copy(update={"dataset": "kitti_road"})})
    assert source_kind(out, p) == "remapped"
    val = list_split(out, p, "val")
    assert [s.stem for s in val] == [s.stem for s in kitti.list_pairs(kitti_dir, "val")]
    raw = {s.stem: kitti.read_label(s.label) for s in kitti.list_pairs(kitti_dir, "val")}
    read = label_reader(out, p)
    for s in val:
        assert np.array_equal(read(s.label), raw[s.stem])
