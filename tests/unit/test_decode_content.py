"""`roadseg.serve.inputs.decode_image` returns the source pixels, in RGB order, for every accepted kind.

Each source is an asymmetric colour chart (red, green, blue, grey patches, left/right and
top/bottom different), so a channel swap, a mirror or a transpose changes the decoded array.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from roadseg.serve.decoding import Limits, decode_image

LIMITS = Limits()


def chart(h: int = 32, w: int = 48) -> np.ndarray:
    """(H, W, 3) uint8: red | green on top, blue | grey | white on the bottom."""
    im = np.zeros((h, w, 3), np.uint8)
    im[: h // 2, : w // 3] = (255, 0, 0)
    im[: h // 2, w // 3 :] = (0, 200, 0)
    im[h // 2 :, : w // 2] = (0, 0, 230)
    im[h // 2 :, w // 2 : 3 * w // 4] = (128, 128, 128)
    im[h // 2 :, 3 * w // 4 :] = (250, 250, 250)
    return im


def encode(pil: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_png_rgb_is_exact() -> None:
    src = chart()
    out = decode_image(encode(Image.fromarray(src), "PNG"), LIMITS)
    assert out.dtype == np.uint8 and out.shape == src.shape
    assert (out == src).all()
    assert out[0, 0].tolist() == [255, 0, 0]  # red first: RGB, not BGR


def test_png_rgba_drops_alpha_keeping_colours() -> None:
    src = chart()
    rgba = np.dstack([src, np.linspace(0, 255, src.shape[1], dtype=np.uint8)[None].repeat(32, 0)])
    out = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), LIMITS)
    assert out.shape == src.shape and (out == src).all()


def test_palette_png_gives_palette_colours() -> None:
    src = chart()
    pal = Image.fromarray(src).quantize(colors=8, method=Image.Quantize.MEDIANCUT)
    assert pal.mode == "P"
    out = decode_image(encode(pal, "PNG"), LIMITS)
    assert (out == src).all()  # 5 colours fit an 8-entry palette exactly


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_grey_png_is_replicated_to_three_equal_channels(mode: str) -> None:
    grey = np.tile(np.arange(0, 240, 5, dtype=np.uint8), (20, 1))  # left dark, right bright
    pil = Image.fromarray(grey, "L")
    if mode == "LA":
        pil.putalpha(77)
    out = decode_image(encode(pil, "PNG"), LIMITS)
    assert out.shape == (*grey.shape, 3)
    for c in range(3):
        assert (out[:, :, c] == grey).all()


def test_sixteen_bit_grey_png_keeps_the_layout() -> None:
    grey = np.zeros((10, 20), np.uint16)
    grey[:, 10:] = 65535
    out = decode_image(encode(Image.fromarray(grey), "PNG"), LIMITS)
    assert out.shape == (10, 20, 3)
    assert (out[:, :10] == out[0, 0]).all() and (out[:, 10:] == out[0, 10]).all()
    assert int(out[0, 10, 0]) > int(out[0, 0, 0])  # bright stays right


@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0 chroma
def test_jpeg_is_close_to_its_source(subsampling: int) -> None:
    src = chart(64, 96)
    data = encode(Image.fromarray(src), "JPEG", quality=95, subsampling=subsampling)
    out = decode_image(data, LIMITS).astype(int)
    err = np.abs(out - src.astype(int))
    assert err.mean() < 4
    # inside each patch (away from 8×8 block edges with colour steps) within a few levels
    for y, x in [(4, 4), (4, 80), (60, 4), (60, 60), (60, 92)]:
        assert err[y, x].max() <= 12, (y, x, out[y, x], src[y, x])
    swapped = np.abs(out[:, :, ::-1] - src.astype(int)).mean()
    assert swapped > 10 * err.mean()


def test_grey_jpeg_has_three_equal_channels() -> None:
    grey = np.tile(np.repeat(np.array([20, 200], np.uint8), 16), (16, 1))
    out = decode_image(encode(Image.fromarray(grey, "L"), "JPEG", quality=95), LIMITS)
    assert (out[:, :, 0] == out[:, :, 1]).all() and (out[:, :, 1] == out[:, :, 2]).all()
    assert abs(int(out[8, 2, 0]) - 20) <= 6 and abs(int(out[8, 29, 0]) - 200) <= 6


def test_cmyk_jpeg_decodes_to_rgb_colours() -> None:
    src = chart(32, 48)
    data = encode(Image.fromarray(src).convert("CMYK"), "JPEG", quality=95)
    out = decode_image(data, LIMITS).astype(int)
    for y, x in [(4, 4), (4, 40), (28, 4)]:
        assert np.abs(out[y, x] - src[y, x]).max() <= 20, (y, x, out[y, x])
