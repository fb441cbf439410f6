"""Hardened input decoding: every bad upload becomes an InputError with the right status."""

from __future__ import annotations

import base64
import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from roadseg.serve.decoding import Limits, decode_image
from roadseg.serve.errors import InputError
from roadseg.serve.inputs import (
    decode_base64,
    parse_predict_json,
    read_uploads,
    read_zip_images,
    safe_member_name,
)
from roadseg.serve.video import read_video, sniff_video

LIMITS = Limits(max_image_pixels=100_000, max_zip_entries=4, max_zip_uncompressed_bytes=200_000)


def image_bytes(h: int = 24, w: int = 32, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def huge_png_header(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but holds almost no data (decompression-bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_image_returns_rgb_at_input_size(fmt: str) -> None:
    img = decode_image(image_bytes(24, 32, fmt), LIMITS)
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8


def test_decode_image_converts_grey_and_rgba() -> None:
    for mode in ("L", "RGBA", "P"):
        buf = io.BytesIO()
        Image.new(mode, (10, 8)).save(buf, format="PNG")
        assert decode_image(buf.getvalue(), LIMITS).shape == (8, 10, 3)


@pytest.mark.parametrize(
    ("data", "status", "problem"),
    [
        (b"", 400, "empty"),
        (b"this is not an image at all", 415, "not_an_image"),
        (image_bytes()[:60], 400, "corrupt_image"),
        (huge_png_header(1000, 1000), 413, "too_many_pixels"),
    ],
    ids=["zero-bytes", "not-an-image", "truncated", "too-many-pixels"],
)
def test_decode_image_rejects(data: bytes, status: int, problem: str) -> None:
    with pytest.raises(InputError) as e:
        decode_image(data, LIMITS, name="x.png")
    assert (e.value.status, e.value.problem) == (status, problem)
    assert "x.png" in str(e.value)


def test_pixel_limit_is_checked_before_decoding() -> None:
    # 60000 x 60000 declared: decoding would need 10 GiB; the check must fail fast.
    with pytest.raises(InputError) as e:
        decode_image(huge_png_header(60000, 60000), Limits())
    assert e.value.status == 413


def test_unsupported_format() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    with pytest.raises(InputError, match="unsupported image format GIF") as e:
        decode_image(buf.getvalue(), LIMITS)
    assert e.value.status == 415


def test_base64_and_json_payload() -> None:
    png = image_bytes()
    good = base64.b64encode(png).decode()
    assert decode_base64("data:image/png;base64," + good, name="x") == png
    with pytest.raises(InputError, match="invalid base64"):
        decode_base64("!!not base64!!", name="images[0]")
    names, images = parse_predict_json({"image_names": ["a.png"], "images": [good]}, LIMITS)
    assert names == ["a.png"] and images[0].shape == (24, 32, 3)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"images": []}, "missing field.*image_names"),
        ({"image_names": ["a"], "images": []}, "1 entries but images has 0"),
        ({"image_names": "a", "images": ["x"]}, "must be a list"),
        ([1, 2], "JSON object"),
    ],
)
def test_json_payload_errors(body: object, match: str) -> None:
    with pytest.raises(InputError, match=match) as e:
        parse_predict_json(body, LIMITS)
    assert 400 <= e.value.status < 500


def test_zip_reads_images_in_memory_and_skips_other_files() -> None:
    data = zip_bytes(
        {"a/one.png": image_bytes(), "two.jpg": image_bytes(fmt="JPEG"), "notes.txt": b"hi"}
    )
    out = read_uploads(data, LIMITS, filename="batch.zip")
    assert [n for n, _, _ in out] == ["a/one.png", "two.jpg"]
    assert all(img.shape == (24, 32, 3) for _, _, img in out)


@pytest.mark.parametrize(
    "name", ["../evil.png", "/etc/evil.png", "a/../../evil.png", "C:/evil.png", "..\\evil.png"]
)
def test_zip_unsafe_paths_rejected(name: str) -> None:
    with pytest.raises(InputError, match="unsafe path"):
        safe_member_name(name)
    with pytest.raises(InputError, match="unsafe path") as e:
        read_zip_images(zip_bytes({name: image_bytes()}), LIMITS)
    assert e.value.status == 400


def test_zip_bombs_rejected() -> None:
    many = zip_bytes({f"{i}.png": image_bytes(4, 4) for i in range(5)})
    with pytest.raises(InputError, match="5 entries") as e:
        read_zip_images(many, LIMITS)
    assert e.value.status == 413
    big = zip_bytes({"big.png": b"\0" * 300_000})  # compresses to a few hundred bytes
    assert len(big) < 5_000
    with pytest.raises(InputError, match="uncompressed bytes") as e:
        read_zip_images(big, LIMITS)
    assert e.value.status == 413


def test_zip_lying_header_capped_by_bytes_read() -> None:
    data = bytearray(zip_bytes({"big.png": b"\0" * 300_000}))
    # Rewrite the declared size in the central directory to 10 bytes: the reader must still stop.
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24 : cd + 28] = struct.pack("<I", 10)
    with pytest.raises(InputError) as e:
        read_zip_images(bytes(data), LIMITS)
    assert e.value.status in (400, 413)


def test_zip_corrupt_and_empty() -> None:
    with pytest.raises(InputError, match="not a readable ZIP"):
        read_zip_images(b"PK\x03\x04garbage", LIMITS)
    with pytest.raises(InputError, match="no JPEG or PNG"):
        read_zip_images(zip_bytes({"a.txt": b"x"}), LIMITS)


def test_video_sniffing_and_limits(tmp_path) -> None:
    from roadseg.serve.video import VideoWriter

    with pytest.raises(InputError, match="not a video"):
        sniff_video(b"hello world, not a video", "clip.mp4")
    with pytest.raises(InputError, match="unsupported video type"):
        sniff_video(b"\0\0\0\x18ftypmp42", "clip.mkv")
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, (32, 24), fps=10) as w:
        for i in range(12):
            w.write(np.full((24, 32, 3), i * 20, np.uint8))
    sniff_video(path.read_bytes()[:16], "clip.mp4")
    info, batches = read_video(path, Limits(), batch=5)
    sizes = [len(b) for b in batches]
    assert sum(sizes) == 12 and max(sizes) == 5 and (info.width, info.height) == (32, 24)
    with pytest.raises(InputError, match="frames") as e:
        read_video(path, Limits(max_video_frames=5))
    assert e.value.status == 413
    with pytest.raises(InputError, match="lasts") as e:
        read_video(path, Limits(max_video_seconds=0.5))
    assert e.value.status == 413
