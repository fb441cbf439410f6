"""Untrusted uploads beyond one image: base64 JSON payloads, ZIP archives, multi-part requests.

Limits are checked before the expensive step they guard: a ZIP's entry count and central
directory size from its end record before the directory is parsed, declared sizes before
members are read and actual bytes while reading (zip bombs); every image is probed (header
only) and charged to the request's `Budget` before any pixel is decoded. ZIP members are read
in memory, never extracted, so hostile member names cannot write anywhere. The single-image
core (`InputError`, `Limits`, `Budget`, `probe_image`, `decode_image`) lives in
`roadseg.serve.decoding` and is re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import zipfile
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from roadseg.serve.decoding import Budget, Limits, Probe, probe_image
from roadseg.serve.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
ZIP_END = b"PK\x05\x06"
URLSAFE = str.maketrans("-_", "+/")
ZIP64_END = b"PK\x06\x06"
ZIP_MAX_NAME = 1024  # bytes of central-directory record per entry we are willing to parse


def decode_base64(text: Any, *, name: str) -> bytes:
    """Base64 -> bytes, or InputError 400. Allowed: a `data:...;base64,` prefix, whitespace and
    line breaks, the URL-safe alphabet, padding left out; anything else is invalid."""
    if not isinstance(text, str):
        raise InputError(
            f"{name}: expected a base64 string, got {type(text).__name__}", 422, "bad_json"
        )
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if ("-" in text or "_" in text) and not ("+" in text or "/" in text):
        text = text.translate(URLSAFE)  # the URL-safe alphabet (RFC 4648 section 5)
    text += "=" * (-len(text) % 4 if len(text) % 4 in (2, 3) else 0)  # padding left out
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{name}: invalid base64 ({e})", 400, "invalid_base64") from None


def parse_predict_json(
    body: Any, limits: Limits, budget: Budget | None = None
) -> tuple[list[str], list[np.ndarray]]:
    """The legacy `{"image_names": [...], "images": [base64...]}` payload -> names, RGB images."""
    names, probes = probe_predict_json(body, limits, budget)
    return names, [p.decode(limits) for p in probes]


def probe_predict_json(
    body: Any, limits: Limits, budget: Budget | None = None
) -> tuple[list[str], list[Probe]]:
    """Check the payload's shape, names and every image's header against the budget; no pixel
    is decoded, so an over-budget request costs only its base64 and header reads."""
    if not isinstance(body, Mapping):
        raise InputError("body must be a JSON object with image_names and images", 422, "bad_json")
    missing = [k for k in ("image_names", "images") if k not in body]
    if missing:
        raise InputError(
            f"JSON body is missing field(s): {', '.join(missing)}", 422, "missing_field"
        )
    names, images = body["image_names"], body["images"]
    for key, value in (("image_names", names), ("images", images)):
        if not isinstance(value, list):
            raise InputError(f"{key} must be a list, got {type(value).__name__}", 422, "bad_json")
    if len(names) != len(images):
        raise InputError(
            f"image_names has {len(names)} entries but images has {len(images)}",
            422,
            "length_mismatch",
        )
    if not images:
        raise InputError("images is empty", 422, "bad_json")
    if len(images) > limits.max_zip_entries:  # the per-request image budget
        raise InputError(
            f"request holds {len(images)} images, more than the limit of {limits.max_zip_entries}",
            413,
            "too_many_images",
        )
    for i, n in enumerate(names):
        if not isinstance(n, str) or not _encodable(n):
            raise InputError(
                f"image_names[{i}] must be a UTF-8 string, got {ascii(n)[:80]}", 422, "bad_name"
            )
    budget = budget or Budget(limits)
    probes = [
        probe_image(
            decode_base64(b64, name=f"images[{i}]"),
            limits,
            name=f"images[{i}] ({names[i][:100]})",
            budget=budget,
        )
        for i, b64 in enumerate(images)
    ]
    return [str(n) for n in names], probes


def _encodable(text: str) -> bool:
    """False for lone surrogates (valid in JSON escapes, not in UTF-8): they break responses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_filename(name: str | None, default: str) -> str:
    """A client's file name fit for messages: no control characters or surrogates, bounded."""
    text = "".join(c for c in (name or "") if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF)
    return text[:120] or default


def is_zip(data: bytes) -> bool:
    return data[:4] in ZIP_MAGIC


def safe_member_name(name: str) -> str:
    """The member name if it is a plain relative path; InputError 400 for `..` or absolute."""
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in parts:
        raise InputError(
            f"ZIP entry {name!r} has an unsafe path ('..' or absolute)", 400, "unsafe_zip_path"
        )
    return norm


def check_zip_directory(data: bytes, entries_left: int) -> None:
    """Entry count and central-directory size from the end record, before zipfile parses the
    directory (a lying or huge directory would otherwise cost its full parse)."""
    end = data.rfind(ZIP_END, max(0, len(data) - 65557))
    if end < 0 or end + 22 > len(data):
        raise InputError("not a readable ZIP archive (no end record)", 400, "corrupt_zip")
    entries, cd_size = struct.unpack_from("<HI", data, end + 10)
    if entries == 0xFFFF or cd_size == 0xFFFFFFFF:  # the real values are in the ZIP64 record
        entries, cd_size = _zip64_directory(data, end)
    if entries > entries_left:
        raise InputError(
            f"ZIP has {entries} entries, more than the limit of {entries_left}",
            413,
            "zip_too_many_entries",
        )
    if cd_size > max(entries, 1) * (46 + ZIP_MAX_NAME) + 4096:
        raise InputError(
            f"ZIP central directory of {cd_size} bytes is too large for {entries} entries",
            413,
            "zip_too_many_entries",
        )


def _zip64_directory(data: bytes, end: int) -> tuple[int, int]:
    """(entries, directory size) from the ZIP64 end record that precedes the locator (some
    writers use one whatever the archive's size)."""
    locator = end - 20
    if locator < 56 or data[locator : locator + 4] != b"PK\x06\x07":
        raise InputError("ZIP64 archive without its end record locator", 400, "corrupt_zip")
    record = data.rfind(ZIP64_END, max(0, locator - 65536), locator)
    if record < 0 or record + 56 > locator:
        raise InputError("ZIP64 archive without its end record", 400, "corrupt_zip")
    entries, cd_size = struct.unpack_from("<QQ", data, record + 32)
    return entries, cd_size


def read_zip_images(
    data: bytes, limits: Limits, budget: Budget | None = None
) -> list[tuple[str, bytes]]:
    """(name, bytes) of the JPEG/PNG members of a ZIP, read in memory within the budget.

    Raises:
        InputError: not a ZIP / corrupt (400), unsafe member path (400), too many entries or too
            many uncompressed bytes, declared or actually read (413), no images inside (400).
    """
    budget = budget or Budget(limits)
    check_zip_directory(data, budget.images_left)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as e:
        raise InputError(f"not a readable ZIP archive ({e})", 400, "corrupt_zip") from None
    if len(infos) > budget.images_left:
        raise InputError(
            f"ZIP has {len(infos)} entries, more than the limit of {budget.images_left}",
            413,
            "zip_too_many_entries",
        )
    for info in infos:
        safe_member_name(info.filename)
    declared = sum(i.file_size for i in infos)
    if declared > budget.bytes_left:
        raise InputError(
            f"ZIP declares {declared} uncompressed bytes, more than the {budget.bytes_left} "
            f"left of the limit of {limits.max_zip_uncompressed_bytes}",
            413,
            "zip_too_large",
        )
    out: list[tuple[str, bytes]] = []
    left = budget.bytes_left
    for info, name in _image_members(infos):
        blob = _read_member(zf, info, name, left)
        left -= len(blob)
        if left < 0:
            raise InputError(
                f"ZIP expands past the limit of {limits.max_zip_uncompressed_bytes} bytes",
                413,
                "zip_too_large",
            )
        out.append((name, blob))
    if not out:
        raise InputError("ZIP holds no JPEG or PNG images", 400, "no_images")
    return out


def _image_members(infos: list[zipfile.ZipInfo]) -> list[tuple[zipfile.ZipInfo, str]]:
    out = []
    for info in infos:
        name = safe_member_name(info.filename)
        base = PurePosixPath(name).name
        if info.is_dir() or base.startswith(".") or name.startswith("__MACOSX/"):
            continue
        if base.lower().endswith(IMAGE_SUFFIXES):
            out.append((info, name))
    return out


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, left: int) -> bytes:
    if info.flag_bits & 0x1:
        raise InputError(f"ZIP entry {name!r} is encrypted", 400, "corrupt_zip")
    try:
        with zf.open(info) as f:
            return f.read(max(left, 0) + 1)  # at most one byte past the budget: sizes can lie
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise InputError(f"ZIP entry {name!r} cannot be read ({e})", 400, "corrupt_zip") from None


def probe_uploads(
    data: bytes, limits: Limits, budget: Budget, *, filename: str = "upload"
) -> list[Probe]:
    """One image or a ZIP of images -> probes (headers checked, budget charged, not decoded)."""
    if not data:
        raise InputError(f"{filename}: empty upload (0 bytes)", 400, "empty")
    if is_zip(data):
        members = read_zip_images(data, limits, budget)
        return [probe_image(b, limits, name=n, budget=budget) for n, b in members]
    return [probe_image(data, limits, name=filename, budget=budget)]


def read_uploads(
    data: bytes, limits: Limits, *, filename: str = "upload", budget: Budget | None = None
) -> list[tuple[str, bytes, np.ndarray]]:
    """One image or a ZIP of images -> (name, original bytes, RGB image) triples."""
    probes = probe_uploads(data, limits, budget or Budget(limits), filename=filename)
    return [(p.name, p.data, p.decode(limits)) for p in probes]
