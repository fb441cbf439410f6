"""Image, PNG-chunk and ZIP builders shared by the tests (generated, never committed files)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image


def encode(arr: np.ndarray, fmt: str = "PNG", **save: object) -> bytes:
    """`arr` encoded by PIL in `fmt` (PNG is lossless: decoding gives `arr` back)."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **save)
    return buf.getvalue()


def noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Uniform RGB noise, (h, w, 3) uint8."""
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def noise_png(h: int = 48, w: int = 64, fmt: str = "PNG", seed: int = 0) -> bytes:
    return encode(noise(h, w, seed), fmt)


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    """One PNG chunk: length, type, data and its CRC (or a given, possibly wrong, one)."""
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()
