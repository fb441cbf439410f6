"""Importing the official BDD100k archives: layout, prefix stripping, unsafe entries refused."""

from __future__ import annotations

import stat
import zipfile

import pytest
from typer.testing import CliRunner

from roadseg.cli import app
from roadseg.data import bdd100k
from roadseg.data.archive import ArchiveError, import_archives


def _zip(path, entries: dict[str, bytes], links: dict[str, str] | None = None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


@pytest.fixture()
def archives(synth_dir, tmp_path):
    images, labels = {}, {}
    for p in sorted(synth_dir.rglob("*")):
        if p.is_file():
            rel = p.relative_to(synth_dir).as_posix()
            (images if rel.startswith("images/") else labels)[f"bdd100k/{rel}"] = p.read_bytes()
    labels["bdd100k/labels/sem_seg/polygons/sem_seg_train.json"] = b"[]"
    return _zip(tmp_path / "images.zip", images), _zip(tmp_path / "labels.zip", labels)


def test_import_official_layout(archives, synth_dir, tmp_path):
    out = tmp_path / "ds"
    summary = import_archives(out, images_zip=archives[0], labels_zip=archives[1], progress=False)
    assert summary["splits"] == {
        "train": {"images": 12, "labels": 12},
        "val": {"images": 4, "labels": 4},
        "test": {"images": 2, "labels": 0},
    }
    assert not (out / "bdd100k").exists()
    assert (out / "labels/sem_seg/polygons/sem_seg_train.json").read_bytes() == b"[]"
    for s in bdd100k.list_pairs(synth_dir, "train"):
        assert (out / "images/10k/train" / s.image.name).read_bytes() == s.image.read_bytes()
        assert (
            out / "labels/sem_seg/masks/train" / s.label.name
        ).read_bytes() == s.label.read_bytes()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("bdd100k/../../evil.txt", "'..'"),
        ("/etc/evil.txt", "absolute path"),
        ("bdd100k/images/10k/../../../../evil.txt", "'..'"),
        ("C:/evil.txt", "absolute path"),
    ],
)
def test_escaping_entries_are_refused(tmp_path, name, why):
    good = {"bdd100k/images/10k/train/a.jpg": b"x"}
    z = _zip(tmp_path / "bad.zip", {**good, name: b"evil"})
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match=why) as e:
        import_archives(out, images_zip=z, progress=False)
    assert name in str(e.value)
    assert not out.exists()  # nothing written, not even the good entry
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_refused_and_other_archive_untouched(tmp_path):
    images = _zip(tmp_path / "i.zip", {"bdd100k/images/10k/val/a.jpg": b"x"})
    labels = _zip(
        tmp_path / "l.zip", {}, links={"bdd100k/labels/sem_seg/masks/val/a.png": "/etc/passwd"}
    )
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match="symbolic link"):
        import_archives(out, images_zip=images, labels_zip=labels, progress=False)
    assert not out.exists()


def test_cli_import_errors(tmp_path):
    runner = CliRunner()
    bad = _zip(tmp_path / "bad.zip", {"../x": b"1", "/abs": b"2"})
    res = runner.invoke(
        app, ["data", "import", "--images-zip", str(bad), "--out", str(tmp_path / "o")]
    )
    text = " ".join(res.output.split())
    assert (
        res.exit_code == 1 and "2 unsafe entries" in text and "'../x'" in text and "'/abs'" in text
    )
    (tmp_path / "notzip.zip").write_bytes(b"hello")
    res = runner.invoke(
        app,
        [
            "data",
            "import",
            "--labels-zip",
            str(tmp_path / "notzip.zip"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 1 and "not a readable zip" in " ".join(res.output.split())
    res = runner.invoke(app, ["data", "import", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "at least one archive" in " ".join(res.output.split())
    res = runner.invoke(
        app,
        [
            "data",
            "import",
            "--images-zip",
            str(tmp_path / "none.zip"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 1 and "archive not found" in " ".join(res.output.split())
