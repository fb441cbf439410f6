"""19 → 14 remap: the table against params' mapping, class stats, linked images, CLI errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.data import bdd100k
from roadseg.data.remap import (
    class_stats_from_counts,
    compute_class_stats,
    remap_dataset,
    remap_mask,
)


def _text(res) -> str:
    return " ".join(res.output.split())  # rich wraps long lines


def test_remap_mask_every_id(params):
    lut = params.data.lookup_table()
    src = np.arange(256, dtype=np.uint8).reshape(16, 16)
    out = remap_mask(src, lut)
    for s, d in params.data.mapping.items():
        assert out.ravel()[s] == d
    assert out.ravel()[16] == 255  # train → ignore
    assert (out.ravel()[19:] == 255).all()  # unknown ids and 255 stay ignore
    with pytest.raises(ValueError, match="uint8"):
        remap_mask(src.astype(np.int32), lut)


def test_remap_real_sample(real_sample, params, tmp_path):
    out = tmp_path / "remapped"
    summary = remap_dataset(real_sample, out, params.data, workers=2, progress=False)
    assert summary["splits"] == {
        "train": {"images": 12, "masks": 12},
        "val": {"images": 4, "masks": 4},
    }
    mapping = params.data.mapping
    seen = set()
    for split in ("train", "val"):
        for s in bdd100k.list_pairs(real_sample, split):
            src = bdd100k.read_label(s.label)
            dst = bdd100k.read_label(out / "labels/sem_seg/masks" / split / f"{s.stem}.png")
            assert dst.shape == src.shape
            for sid in np.unique(src):
                expect = 255 if sid == 255 else mapping[int(sid)]
                assert set(np.unique(dst[src == sid])) == {expect}, (s.stem, sid)
                seen.add(int(sid))
            assert dst.max() < 14 or set(np.unique(dst[dst >= 14])) == {255}
            img = out / "images/10k" / split / s.image.name
            assert img.read_bytes() == s.image.read_bytes()
            assert os.stat(img).st_ino == os.stat(s.image).st_ino or img.stat().st_nlink == 1
    assert {0, 13, 255} <= seen  # the sample has road, car and ignore at least
    marker = json.loads((out / "remap.json").read_text())
    assert marker["num_classes"] == 14 and marker["mapping"]["16"] == 255
    stats = json.loads((out / "class_stats.json").read_text())
    counts = np.zeros(256, np.int64)
    for s in bdd100k.list_pairs(out, "train"):
        counts += np.bincount(bdd100k.read_label(s.label).ravel(), minlength=256)
    assert stats["pixel_counts"] == counts[:14].tolist()
    assert stats["classes"] == [c.name for c in params.data.classes]
    assert sum(stats["frequencies"]) == pytest.approx(1.0)


def test_colormaps_used_when_masks_absent(synth_dir, params, tmp_path):
    src = tmp_path / "cm"
    for split in ("train", "val"):
        for s in bdd100k.list_pairs(synth_dir, split):
            for sub in ("images/10k", "labels/sem_seg/colormaps"):
                p = (
                    synth_dir
                    / sub
                    / split
                    / (s.image.name if sub.startswith("images") else s.label.name)
                )
                (src / sub / split).mkdir(parents=True, exist_ok=True)
                (src / sub / split / p.name).write_bytes(p.read_bytes())
    a = remap_dataset(src, tmp_path / "a", params.data, progress=False, link_images=False)
    b = remap_dataset(
        synth_dir, tmp_path / "b", params.data, splits=["train", "val"], progress=False
    )
    assert a["class_stats"]["pixel_counts"] == b["class_stats"]["pixel_counts"]


def test_class_stats_weights():
    stats = class_stats_from_counts(np.array([900, 100, 0]), ["a", "b", "c"], 255)
    assert stats["frequencies"] == pytest.approx([0.9, 0.1, 0.0])
    w = stats["weights"]
    assert w[2] == 0.0 and np.mean(w[:2]) == pytest.approx(1.0, abs=1e-5)
    assert w[1] / w[0] == pytest.approx(3.0, rel=1e-4)  # sqrt(0.9 / 0.1)
    masks = [np.array([[0, 1], [255, 1]], np.uint8), np.array([[2, 255]], np.uint8)]
    assert compute_class_stats(masks, 3, 255)["pixel_counts"] == [1, 2, 1]


def test_split_selection_and_missing_split(synth_dir, params, tmp_path):
    s = remap_dataset(
        synth_dir, tmp_path / "o", params.data, splits=["val", "test"], progress=False
    )
    assert set(s["splits"]) == {"val", "test"} and s["missing"] == []
    assert s["class_stats"]["splits"] == ["val", "test"]
    assert not (tmp_path / "o/images/10k/train").exists()
    assert len(list((tmp_path / "o/images/10k/test").iterdir())) == 2
    runner = CliRunner()
    res = runner.invoke(app, ["data", "remap", "--data-dir", str(tmp_path / "o"), "--out",
                              str(tmp_path / "o2"), "--split", "val", "--split", "train"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "split 'train' not found" in _text(res)


def test_cli_errors(synth_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app, ["data", "remap", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 1 and "does not exist" in _text(res)
    (tmp_path / "empty").mkdir()
    res = runner.invoke(
        app, ["data", "remap", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "x")]
    )
    assert res.exit_code == 1 and "no splits" in _text(res)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/keep.txt").write_text("mine")
    res = runner.invoke(
        app, ["data", "remap", "--data-dir", str(synth_dir), "--out", str(tmp_path / "busy")]
    )
    assert res.exit_code == 1 and "refusing" in _text(res)
    assert res.exception is None or isinstance(res.exception, SystemExit)
