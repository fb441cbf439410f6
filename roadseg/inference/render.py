"""What a prediction looks like: colourised masks, overlays on the image, and PNG encoding."""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Sequence

import numpy as np


def colorize(mask: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """Class-id mask (H, W) -> RGB uint8 (H, W, 3); ids without a colour (ignore) are black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    return palette[mask]


def overlay(
    image: np.ndarray, mask: np.ndarray, colors: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """Blend the colourised mask over the image: (1 - alpha) * image + alpha * colours, rounded.

    Looked up, not computed: each output value depends only on (class id, channel, input value),
    so a 256 x 3 x 256 table of the blend (`_blend_table`) gives the same bytes 5x faster than
    the float arithmetic at 720p.
    """
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    table = _blend_table(tuple(tuple(int(v) for v in c) for c in colors), alpha)
    base = mask.astype(np.uint16) << 8  # table index: class id * 256 + the pixel's value
    out = np.empty((*mask.shape[:2], 3), np.uint8)
    for ch in range(3):
        np.take(table[ch], base | image[:, :, ch], out=out[:, :, ch])
    return out


@functools.lru_cache(maxsize=16)
def _blend_table(colors: tuple[tuple[int, ...], ...], alpha: float) -> np.ndarray:
    """(3, 256 * 256) uint8: channel, class id * 256 + value -> the blended value, computed with
    the float formula once per (colours, alpha); ids without a colour blend with black."""
    values = np.arange(256, dtype=np.float32)[None, None, :]
    palette = colorize(np.arange(256, dtype=np.uint8), colors)[:, :, None]  # (id, channel, 1)
    blend = (1.0 - alpha) * values + alpha * palette
    table = blend.round().clip(0, 255).astype(np.uint8)  # (id, channel, value)
    return np.ascontiguousarray(table.transpose(1, 0, 2)).reshape(3, -1)


_PNG_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: grey, RGB, RGBA


def encode_png(array: np.ndarray, *, photo: bool = False) -> bytes:
    """PNG bytes of a (H, W), (H, W, 3) or (H, W, 4) uint8 array, zlib level 1.

    Written here rather than by PIL, which tries all five row filters on every row: at 1280x720
    a mask takes 2.5 ms instead of 8.5 and a colour mask 5 instead of 19, for the same bytes
    within 3%. Masks and colour masks compress best unfiltered; `photo=True` (overlays, photos)
    uses the Sub filter, which makes them 7% smaller and faster to compress than unfiltered.
    """
    a = np.ascontiguousarray(array, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in _PNG_COLOR_TYPE or min(a.shape[:2]) < 1:
        raise ValueError(f"encode_png needs (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    h, w, c = a.shape
    rows = a.reshape(h, w * c)
    raw = np.empty((h, 1 + w * c), np.uint8)  # each row: its filter type byte, then the row
    if photo:  # Sub: each byte minus the same channel of the pixel to its left (mod 256)
        raw[:, 0] = 1
        raw[:, 1 : 1 + c] = rows[:, :c]
        np.subtract(rows[:, c:], rows[:, :-c], out=raw[:, 1 + c :])
    else:
        raw[:, 0] = 0
        raw[:, 1:] = rows
    header = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR_TYPE[c], 0, 0, 0)
    chunks = (b"IHDR", header), (b"IDAT", zlib.compress(raw, 1)), (b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks
    )
