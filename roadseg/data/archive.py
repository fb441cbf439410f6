"""Unpack the official BDD100k archives into the dataset layout.

    roadseg data import --images-zip bdd100k_images_10k.zip \
        --labels-zip bdd100k_sem_seg_labels_trainval.zip --out data/bdd100k

`bdd100k_images_10k.zip` holds `bdd100k/images/10k/{train,val,test}/…` and
`bdd100k_sem_seg_labels_trainval.zip` holds `bdd100k/labels/sem_seg/{masks,colormaps,polygons,rles}/…`;
the leading `bdd100k/` is stripped. Every entry of every archive is checked before anything is
written: an absolute path, a `..` component or a symbolic link (anything that could land outside
OUT) rejects the whole import, naming each offending entry.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from roadseg.data.bdd100k import SPLITS, image_dir, label_dir

PREFIX = "bdd100k"


class ArchiveError(ValueError):
    """An archive that cannot be imported (unreadable, or entries that would escape OUT)."""


def _target(name: str) -> PurePosixPath | None:
    """Entry name → relative path under OUT (prefix stripped); None for the bare prefix folder."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if parts and parts[0] == PREFIX:
        parts = parts[1:]
    return PurePosixPath(*parts) if parts else None


def entry_problem(info: zipfile.ZipInfo, out: Path) -> str | None:
    """Why an entry may not be extracted under `out`, or None when it is safe."""
    name = info.filename
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "'..' component leaves the output folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    rel = _target(name)
    if rel is not None:
        dest = (out / rel).resolve()
        root = out.resolve()
        if dest != root and root not in dest.parents:
            return "resolves outside the output folder"
    return None


def check_archive(path: Path, out: Path) -> list[zipfile.ZipInfo]:
    """Entries of a zip to extract; raises ArchiveError naming every unsafe entry."""
    if not path.is_file():
        raise ArchiveError(f"{path}: archive not found")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ArchiveError(f"{path}: not a readable zip archive ({e})") from None
    bad = [f"  {i.filename!r}: {why}" for i in infos if (why := entry_problem(i, out))]
    if bad:
        raise ArchiveError(
            f"{path}: {len(bad)} unsafe entr{'y' if len(bad) == 1 else 'ies'}, nothing imported:\n"
            + "\n".join(bad)
        )
    return [i for i in infos if _target(i.filename) is not None]


def import_archives(
    out: Path | str,
    *,
    images_zip: Path | str | None = None,
    labels_zip: Path | str | None = None,
    progress: bool = True,
) -> dict:
    """Extract the images and/or labels archive under `out` in the BDD100k layout.

    Both archives are checked before either is extracted, so a bad archive writes nothing.

    Returns:
        Summary: out, files written, and per split the image and label counts found after import.
    """
    out = Path(out)
    zips = [Path(p) for p in (images_zip, labels_zip) if p is not None]
    if not zips:
        raise ArchiveError("give at least one archive (--images-zip and/or --labels-zip)")
    plan = [(z, check_archive(z, out)) for z in zips]
    written = 0
    total = sum(len(infos) for _, infos in plan)
    with tqdm(total=total, desc="import", unit="file", disable=not progress) as bar:
        for z, infos in plan:
            with zipfile.ZipFile(z) as zf:
                for info in infos:
                    dest = out / _target(info.filename)
                    if info.is_dir():
                        dest.mkdir(parents=True, exist_ok=True)
                    else:
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        with zf.open(info) as fin, open(dest, "wb") as fout:
                            shutil.copyfileobj(fin, fout, 1 << 20)
                        written += 1
                    bar.update()
    splits = {}
    for split in SPLITS:
        n_img = len(list(image_dir(out, split).glob("*.jpg")))
        n_lab = len(list(label_dir(out, split).glob("*.png")))
        if n_img or n_lab:
            splits[split] = {"images": n_img, "labels": n_lab}
    return {"out": str(out), "files": written, "splits": splits}
