"""Label validation (Great Expectations) over a dataset holding every kind of bad file at once,
over the real BDD100k sample and over synthetic data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.data.inventory import build_file_table
from roadseg.data.validation import RULES, DatasetError, validate_dataset

H, W = 48, 64


def _jpeg(rng: np.random.Generator, h: int = H, w: int = W) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90
    )
    return buf.getvalue()


def _mask(rng: np.random.Generator, h: int = H, w: int = W) -> np.ndarray:
    mask = rng.integers(0, 19, (h, w), dtype=np.uint8)
    mask[:4] = 255
    return mask


def _write(
    root: Path, split: str, stem: str, image: bytes | None, mask: np.ndarray | Image.Image | None
) -> None:
    if image is not None:
        path = root / "images/10k" / split / f"{stem}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image)
    if mask is not None:
        path = root / "labels/sem_seg/masks" / split / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        (mask if isinstance(mask, Image.Image) else Image.fromarray(mask)).save(path)


# (split, file relative to the data dir, rule) that the bad dataset must report - and nothing else.
EXPECTED = {
    ("train", "images/10k/train/corrupt.jpg", "image_decodes"),
    ("train", "images/10k/train/truncated.jpg", "image_decodes"),
    ("train", "labels/sem_seg/masks/train/rgb_mask.png", "mask_single_channel_8bit"),
    ("train", "labels/sem_seg/masks/train/id42.png", "mask_ids_valid"),
    ("train", "images/10k/train/no_mask.jpg", "mask_present"),
    ("train", "labels/sem_seg/masks/train/orphan.png", "image_present"),
    ("train", "images/10k/train/zero_image.jpg", "no_zero_byte_files"),
    ("val", "labels/sem_seg/masks/val/zero_mask.png", "no_zero_byte_files"),
    ("train", "images/10k/train/dup.jpg", "name_unique_across_splits"),
    ("val", "images/10k/val/dup.jpg", "name_unique_across_splits"),
    ("val", "labels/sem_seg/masks/val/all_ignore.png", "mask_not_all_ignore"),
    ("val", "labels/sem_seg/masks/val/wrong_size.png", "sizes_agree"),
}
GOOD = ["good_a", "good_b", "good_c"]


def write_bad_dataset(root: Path) -> Path:
    """Good pairs plus one of each bad input, all in one dataset."""
    rng = np.random.default_rng(0)
    for stem in GOOD:
        _write(root, "train", stem, _jpeg(rng), _mask(rng))
    _write(root, "val", "good_v", _jpeg(rng), _mask(rng))
    _write(
        root, "train", "corrupt", rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(), _mask(rng)
    )
    whole = _jpeg(rng, 240, 320)
    _write(root, "train", "truncated", whole[: len(whole) // 2], _mask(rng, 240, 320))
    _write(root, "train", "rgb_mask", _jpeg(rng), Image.new("RGB", (W, H), (128, 64, 128)))
    id42 = _mask(rng)
    id42[10, 10] = 42
    _write(root, "train", "id42", _jpeg(rng), id42)
    _write(root, "train", "no_mask", _jpeg(rng), None)
    _write(root, "train", "orphan", None, _mask(rng))
    _write(root, "train", "zero_image", b"", _mask(rng))
    _write(root, "train", "dup", _jpeg(rng), _mask(rng))
    _write(root, "val", "dup", _jpeg(rng), _mask(rng))
    _write(root, "val", "all_ignore", _jpeg(rng), np.full((H, W), 255, np.uint8))
    _write(root, "val", "wrong_size", _jpeg(rng), _mask(rng, H + 2, W))
    _write(root, "val", "zero_mask", _jpeg(rng), None)
    (root / "labels/sem_seg/masks/val/zero_mask.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bad_dataset(tmp_path_factory.mktemp("bad"))


def test_every_bad_file_is_named_with_its_rule(bad_dir: Path, params, tmp_path: Path) -> None:
    result = validate_dataset(bad_dir, params.data, report_dir=tmp_path, workers=2)
    found = {(f.split, f.file, f.rule) for f in result.failures}
    assert found == EXPECTED
    assert not result.success
    assert result.n_files == 16
    named = " ".join(f.file for f in result.failures)
    assert not any(stem in named for stem in [*GOOD, "good_v"])
    details = {f.rule: f.detail for f in result.failures}
    assert "42" in details["mask_ids_valid"]
    assert "RGB" in details["mask_single_channel_8bit"]
    assert "truncated" in next(f.detail for f in result.failures if "truncated" in f.file)


def test_reports_are_written(bad_dir: Path, params, tmp_path: Path) -> None:
    result = validate_dataset(bad_dir, params.data, report_dir=tmp_path)
    assert result.data_docs_path == tmp_path / "data_docs/index.html"
    assert result.data_docs_path.is_file()
    pages = list((tmp_path / "data_docs/validations").rglob("*.html"))
    assert len(pages) == 1
    html = pages[0].read_text()
    assert "image_decodes" in html and "train/truncated" in html and "val/all_ignore" in html
    summary = json.loads((tmp_path / "validation_summary.json").read_text())
    assert summary["success"] is False
    assert summary["n_failures"] == len(EXPECTED)
    assert summary["failures_per_rule"]["no_zero_byte_files"] == 2
    assert set(summary["rules"]) == set(RULES)


def test_file_table_holds_bad_files_as_values(bad_dir: Path, params) -> None:
    table = build_file_table(bad_dir, params.data, ["train", "val"], workers=1).set_index(
        ["split", "stem"]
    )
    assert table.loc[("train", "truncated"), "image_decodes"] is False
    assert table.loc[("train", "truncated"), "image_width"] == 320
    assert table.loc[("train", "rgb_mask"), "label_channels"] == 3
    assert table.loc[("train", "id42"), "bad_ids"] == [42]
    assert table.loc[("val", "all_ignore"), "ignore_fraction"] == 1.0
    good = table.loc[("train", "good_a")]
    assert sum(good[f"pixels_{i:02d}"] for i in range(19)) + 4 * W == H * W


def test_cli_names_every_bad_file_without_traceback(bad_dir: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["data", "validate", "--data-dir", str(bad_dir), "--report-dir", str(tmp_path)]
    )
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    flat = " ".join(res.output.split())
    for _, file, rule in EXPECTED:
        assert Path(file).name in flat and rule in flat
    assert "good_a" not in flat


def test_missing_split_is_reported(bad_dir: Path, params, tmp_path: Path) -> None:
    result = validate_dataset(bad_dir, params.data, splits=["val", "test"], report_dir=tmp_path)
    assert ("test", "split_present") in {(f.split, f.rule) for f in result.failures}
    assert {f.split for f in result.failures} == {"val", "test"}
    # the val copy of `dup` still clashes with train, which was not requested
    assert any(f.rule == "name_unique_across_splits" for f in result.failures)


def test_empty_and_missing_dirs_are_clear_errors(params, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        validate_dataset(tmp_path / "nope", params.data, report_dir=tmp_path / "r")
    with pytest.raises(DatasetError, match="no dataset found"):
        validate_dataset(tmp_path, params.data, report_dir=tmp_path / "r")
    runner = CliRunner()
    for target, message in [(tmp_path / "nope", "does not exist"), (tmp_path, "no dataset found")]:
        res = runner.invoke(
            app,
            ["data", "validate", "--data-dir", str(target), "--report-dir", str(tmp_path / "r")],
        )
        assert res.exit_code == 2
        assert message in " ".join(res.output.split()) and "Traceback" not in res.output
    res = runner.invoke(app, ["data", "validate", "--data-dir", str(tmp_path), "--split", "bogus"])
    assert res.exit_code == 2 and "unknown split" in res.output


def test_real_sample_passes(real_sample: Path, params, tmp_path: Path) -> None:
    result = validate_dataset(real_sample, params.data, report_dir=tmp_path)
    assert result.failures == []
    assert result.success and result.n_files == 16
    assert result.data_docs_path.is_file()


def test_synthetic_data_passes(synth_dir: Path, params, tmp_path: Path) -> None:
    result = validate_dataset(synth_dir, params.data, report_dir=tmp_path)
    assert result.failures == []
    assert result.success and result.n_files == 18


def test_cli_passes_on_real_sample(real_sample: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["data", "validate", "--data-dir", str(real_sample), "--report-dir", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "validation_summary.json").is_file()


def test_worker_processes_give_the_same_table(bad_dir: Path, params, monkeypatch) -> None:
    from roadseg.data import inventory

    serial = build_file_table(bad_dir, params.data, ["train", "val"], workers=1)
    monkeypatch.setattr(inventory, "_MIN_FILES_FOR_POOL", 0)
    parallel = build_file_table(bad_dir, params.data, ["train", "val"], workers=2, progress=True)
    assert parallel.astype(str).equals(serial.astype(str))


def test_unlabelled_split_passes_and_empty_split_is_named(params, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    _write(root, "train", "a", _jpeg(rng), _mask(rng))
    _write(root, "test", "t", _jpeg(rng), None)  # BDD100k test has no labels: not a missing mask
    (root / "images/10k/val").mkdir(parents=True)
    result = validate_dataset(root, params.data, report_dir=tmp_path / "r")
    assert [(f.split, f.rule) for f in result.failures] == [("val", "split_not_empty")]
    assert validate_dataset(
        root, params.data, splits=["train", "test"], report_dir=tmp_path / "r"
    ).success
