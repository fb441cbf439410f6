"""Hardened decoding of untrusted uploads: images, base64 JSON payloads and ZIP archives.

Every problem becomes an `InputError` carrying an HTTP status and a message naming the problem,
so the service answers 4xx JSON instead of a traceback. Limits are checked before the expensive
step they guard: image dimensions before decoding pixels (decompression bombs), declared ZIP sizes
before reading members and actual bytes while reading (zip bombs). ZIP members are read in
memory, never extracted, so hostile member names cannot write anywhere.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

IMAGE_FORMATS = ("JPEG", "PNG", "MPO")  # MPO: camera JPEGs; the first frame is used
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
JPEG_MAX_SIDE = 65500  # the largest width or height a JPEG can encode


class InputError(ValueError):
    """A client-side problem with a request: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, problem: str = "bad_input") -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.problem, "detail": str(self), "status": self.status}


@dataclass(frozen=True)
class Limits:
    """Input limits (mirrors `params.serve`)."""

    max_request_bytes: int = 50 * 2**20
    max_image_pixels: int = 40_000_000
    max_zip_entries: int = 256
    max_zip_uncompressed_bytes: int = 200 * 2**20
    max_video_frames: int = 900
    max_video_seconds: float = 60.0

    @classmethod
    def from_params(cls, serve: Any) -> Limits:
        return cls(**{k: getattr(serve, k) for k in cls.__dataclass_fields__})


def decode_image(data: bytes, limits: Limits, *, name: str = "image") -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 (H, W, 3), checking the size before decoding any pixel.

    Raises:
        InputError: empty (400), not an image (415), unsupported format (415), too many
            pixels (413), truncated or corrupt (400).
    """
    if not data:
        raise InputError(f"{name}: empty upload (0 bytes)", 400, "empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))  # reads the header only
        except (
            UnidentifiedImageError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as e:
            if not isinstance(e, UnidentifiedImageError):  # both bomb thresholds: 413
                raise InputError(f"{name}: image too large ({e})", 413, "too_many_pixels") from None
            raise InputError(
                f"{name}: not an image (expected JPEG or PNG)", 415, "not_an_image"
            ) from None
        except Exception as e:
            raise InputError(
                f"{name}: unreadable image header ({e})", 400, "corrupt_image"
            ) from None
        if img.format not in IMAGE_FORMATS:
            raise InputError(
                f"{name}: unsupported image format {img.format} (send JPEG or PNG)",
                415,
                "unsupported_format",
            )
        w, h = img.size
        if w < 1 or h < 1:
            raise InputError(f"{name}: image has no pixels ({w}x{h})", 400, "corrupt_image")
        if w * h > limits.max_image_pixels:
            raise InputError(
                f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {limits.max_image_pixels}",
                413,
                "too_many_pixels",
            )
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global someone may have set: never pad data
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            img.load()
            return _to_rgb(ImageOps.exif_transpose(img))
        except Image.DecompressionBombWarning as e:
            raise InputError(f"{name}: image too large ({e})", 413, "too_many_pixels") from None
        except MemoryError:
            raise InputError(f"{name}: image too large to decode", 413, "too_many_pixels") from None
        except Exception as e:  # PIL raises many types on hostile data (struct, zlib, ...)
            raise InputError(
                f"{name}: truncated or corrupt image ({type(e).__name__}: {e})",
                400,
                "corrupt_image",
            ) from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Decoded PIL image -> RGB uint8; 16/32-bit grey is scaled to 8 bits, never clipped."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(img).astype(np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def decode_base64(text: Any, *, name: str) -> bytes:
    """Strict base64 (a `data:...;base64,` prefix is allowed) -> bytes, or InputError 400."""
    if not isinstance(text, str):
        raise InputError(
            f"{name}: expected a base64 string, got {type(text).__name__}", 422, "bad_json"
        )
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{name}: invalid base64 ({e})", 400, "invalid_base64") from None


def parse_predict_json(body: Any, limits: Limits) -> tuple[list[str], list[np.ndarray]]:
    """The legacy `{"image_names": [...], "images": [base64...]}` payload -> names, RGB images."""
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
    decoded = [
        decode_image(
            decode_base64(b64, name=f"images[{i}]"), limits, name=f"images[{i}] ({names[i]})"
        )
        for i, b64 in enumerate(images)
    ]
    return [str(n) for n in names], decoded


def _encodable(text: str) -> bool:
    """False for lone surrogates (valid in JSON escapes, not in UTF-8): they break responses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def read_zip_images(data: bytes, limits: Limits) -> list[tuple[str, bytes]]:
    """(name, bytes) of the JPEG/PNG members of a ZIP, read in memory within the limits.

    Raises:
        InputError: not a ZIP / corrupt (400), unsafe member path (400), too many entries or too
            many uncompressed bytes, declared or actually read (413), no images inside (400).
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(f"not a readable ZIP archive ({e})", 400, "corrupt_zip") from None
    if len(infos) > limits.max_zip_entries:
        raise InputError(
            f"ZIP has {len(infos)} entries, more than the limit of {limits.max_zip_entries}",
            413,
            "zip_too_many_entries",
        )
    for info in infos:
        safe_member_name(info.filename)
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_zip_uncompressed_bytes:
        raise InputError(
            f"ZIP declares {declared} uncompressed bytes, more than the limit of "
            f"{limits.max_zip_uncompressed_bytes}",
            413,
            "zip_too_large",
        )
    budget = limits.max_zip_uncompressed_bytes
    out: list[tuple[str, bytes]] = []
    for info in infos:
        name = safe_member_name(info.filename)
        base = PurePosixPath(name).name
        if info.is_dir() or base.startswith(".") or name.startswith("__MACOSX/"):
            continue
        if not base.lower().endswith(IMAGE_SUFFIXES):
            continue
        if info.flag_bits & 0x1:
            raise InputError(f"ZIP entry {name!r} is encrypted", 400, "corrupt_zip")
        try:
            with zf.open(info) as f:
                # Read at most budget+1 bytes: headers can lie about sizes.
                blob = f.read(budget + 1)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise InputError(
                f"ZIP entry {name!r} cannot be read ({e})", 400, "corrupt_zip"
            ) from None
        budget -= len(blob)
        if budget < 0:
            raise InputError(
                f"ZIP expands past the limit of {limits.max_zip_uncompressed_bytes} bytes",
                413,
                "zip_too_large",
            )
        out.append((name, blob))
    if not out:
        raise InputError("ZIP holds no JPEG or PNG images", 400, "no_images")
    return out


def read_uploads(
    data: bytes, limits: Limits, *, filename: str = "upload"
) -> list[tuple[str, bytes, np.ndarray]]:
    """One image or a ZIP of images -> (name, original bytes, RGB image) triples."""
    if not data:
        raise InputError(f"{filename}: empty upload (0 bytes)", 400, "empty")
    if is_zip(data):
        return [(n, b, decode_image(b, limits, name=n)) for n, b in read_zip_images(data, limits)]
    return [(filename, data, decode_image(data, limits, name=filename))]
