"""Hostile request payloads for tests/integration/test_hostile_live.py, generated when a case
runs (nothing large is committed or built at collection time)."""

from __future__ import annotations

import base64
import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

from tests.images import encode, noise_png, png_chunk, zip_bytes


def flat_png(h: int, w: int, seed: int = 0) -> bytes:
    """A large but small-to-send image: smooth gradients compress well."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx + seed) % 256, yy % 256, (xx // 7 + yy // 5) % 256], -1).astype(np.uint8)
    return encode(arr)


def png(h: int = 32, w: int = 48, seed: int = 0) -> bytes:
    return noise_png(h, w, seed=seed)


def progressive_scans_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="JPEG", progressive=True)
    data = buf.getvalue()
    scan = data[data.rindex(b"\xff\xda") : -2]
    return data[:-2] + scan * 5000 + b"\xff\xd9"


def chunky_png() -> bytes:
    p = png(4, 4)
    end = p.rindex(b"IEND") - 4
    return p[:end] + png_chunk(b"zzZz", b"") * 500_000 + p[end:]  # 6 MB of empty chunks


def padded_jpeg() -> bytes:
    arr = np.zeros((16, 16, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    data = buf.getvalue()
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", 1900, 1900) + data[sof + 9 :]  # 3.6 Mpx claimed


def bomb_png(side: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 10)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def bzip_bomb_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("a.png", png(8, 8))
        zf.writestr("b.png", b"\0" * 50_000_000)  # 50 MB of zeros in a few hundred bytes
    return buf.getvalue()


def big_image_zip(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(n):
            zf.writestr(f"{i}.png", flat_png(1000, 1000, seed=i))
    return buf.getvalue()


def json_body(raw: bytes) -> dict:
    return {"content": raw, "headers": {"Content-Type": "application/json"}}


def one(field: str, name: str, data: bytes) -> dict:
    return {"files": {field: (name, data)}}


def exif_flood_jpeg(segments: int = 400) -> bytes:
    """A small JPEG behind `segments` Exif APP1 segments (PIL joins them pairwise: quadratic)."""
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="JPEG")
    app1 = b"\xff\xe1" + struct.pack(">H", 16_000) + b"Exif\x00\x00" + b"\0" * 15_992
    return buf.getvalue()[:2] + app1 * segments + buf.getvalue()[2:]


def animated_gif(frames: int = 300) -> bytes:
    buf = io.BytesIO()
    first, *rest = [Image.new("P", (64, 64), i % 256) for i in range(frames)]
    first.save(buf, format="GIF", save_all=True, append_images=rest)
    return buf.getvalue()


def multipage_tiff(pages: int = 50) -> bytes:
    buf = io.BytesIO()
    first, *rest = [Image.new("RGB", (64, 64), (i, 0, 0)) for i in range(pages)]
    first.save(buf, format="TIFF", save_all=True, append_images=rest, compression="tiff_deflate")
    return buf.getvalue()


def twelve_bit_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="JPEG")
    data = buf.getvalue()
    sof = data.index(b"\xff\xc0")
    return data[: sof + 4] + b"\x0c" + data[sof + 5 :]  # sample precision 12


def broken_exif_png() -> bytes:
    """A valid PNG whose eXIf block is not even a TIFF header (was refused with 400)."""
    p = png(20, 30)
    end = p.rindex(b"IEND") - 4
    return p[:end] + png_chunk(b"eXIf", b"MM\x00t" + b"\0" * 28) + p[end:]


def zip64_ended(n: int) -> bytes:
    """A ZIP of `n` tiny PNGs whose counts live in a ZIP64 end record (the classic one: 0xFFFF)."""
    plain = zip_bytes({f"{i}.png": png(4, 4, seed=i) for i in range(n)})
    end = plain.rindex(b"PK\x05\x06")
    count, size, offset = struct.unpack_from("<HII", plain, end + 10)
    record = struct.pack(
        "<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset
    )
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end, 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 2**32 - 1, 2**32 - 1, 0)
    return plain[:end] + record + locator + eocd


def raw_multipart(ctype: str, body: bytes) -> dict:
    return {"content": body, "headers": {"Content-Type": ctype}}


PART = b'--ab\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nx\r\n'


B64 = lambda data: base64.b64encode(data)  # noqa: E731
# (label, route, request kwargs made when the case runs, status)
BATTERY = [
    ("scan bomb", "/segment", lambda: one("image", "s.jpg", progressive_scans_jpeg()), 413),
    ("chunk bomb", "/segment", lambda: one("image", "c.png", chunky_png()), 413),
    ("padded header", "/segment/json", lambda: one("image", "p.jpg", padded_jpeg()), 422),
    ("pixel bomb", "/segment", lambda: one("image", "b.png", bomb_png(30000)), 413),
    ("PIL bomb band", "/upload", lambda: one("file", "b.png", bomb_png(10000)), 413),
    (
        "bzip2 bombs x3",
        "/predict-image/returns-zip/",
        lambda: {"files": [("files", ("z.zip", bzip_bomb_zip()))] * 3},
        413,
    ),
    (
        "7 Mpx in one ZIP",
        "/predict-image/returns-zip/",
        lambda: one("files", "z.zip", big_image_zip(7)),
        413,
    ),
    (
        "over the image pixel limit",
        "/segment/json",
        lambda: one("image", "f.png", flat_png(2000, 2100)),
        413,
    ),
    (
        "deep JSON",
        "/predict/returns-json/",
        lambda: json_body(b"[" * 200_000 + b"]" * 200_000),
        400,
    ),
    (
        "5000 digits",
        "/predict/returns-json/",
        lambda: json_body(b'{"images": [' + b"9" * 5000 + b"]}"),
        400,
    ),
    (
        "surrogate name",
        "/predict/returns-json/",
        lambda: json_body(b'{"image_names": ["\\ud800"], "images": ["' + B64(png()) + b'"]}'),
        422,
    ),
    (
        "300 JSON images",
        "/predict/returns-json/",
        lambda: {"json": {"image_names": ["a"] * 300, "images": [B64(png(4, 4)).decode()] * 300}},
        413,
    ),
    (
        "5000 parts",
        "/predict-image/returns-zip/",
        lambda: {"files": [("files", ("a.png", png(4, 4)))] * 5000},
        413,
    ),
    (
        "garbage mp4",
        "/predict-video/returns-zip/",
        lambda: one("file", "v.mp4", b"\0\0\0\x18ftypisom" + b"\0" * 64),
        400,
    ),
    ("not a video", "/predict-video/returns-zip/", lambda: one("file", "v.mp4", b"hello"), 415),
    ("empty body", "/segment", lambda: {"content": b""}, 400),
    (
        "XML body",
        "/segment",
        lambda: {"content": b"<a/>", "headers": {"Content-Type": "application/xml"}},
        415,
    ),
    ("too wide for a JPEG answer", "/upload", lambda: one("file", "w.png", png(1, 66000)), 413),
    # ---- round 2
    ("Exif segment flood", "/segment", lambda: one("image", "e.jpg", exif_flood_jpeg()), 413),
    ("animated GIF", "/segment", lambda: one("image", "a.gif", animated_gif()), 415),
    ("multi-page TIFF", "/upload", lambda: one("file", "t.tif", multipage_tiff()), 415),
    ("12-bit JPEG", "/segment/json", lambda: one("image", "t.jpg", twelve_bit_jpeg()), 415),
    (
        "GIF inside a ZIP",
        "/predict-image/returns-zip/",
        lambda: one("files", "z.zip", zip_bytes({"a.png": animated_gif(5)})),
        415,
    ),
    (
        "image field is a URL",
        "/segment",
        lambda: {"data": {"image": "http://169.254.169.254/latest/meta-data/"}},
        415,
    ),
    (
        "multipart without boundary",
        "/segment/json",
        lambda: raw_multipart("multipart/form-data", b"--x\r\n"),
        400,
    ),
    (
        "BOUNDARY in capitals, 2000 parts",
        "/predict-image/returns-zip/",
        lambda: raw_multipart("multipart/form-data; BOUNDARY=ab", PART * 2000 + b"--ab--\r\n"),
        413,
    ),
    (
        "gzip body",
        "/predict/returns-json/",
        lambda: {
            "content": __import__("gzip").compress(b" " * 5_000_000),
            "headers": {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        },
        415,
    ),
    (
        "BentoML pickle body",
        "/segment",
        lambda: {
            "content": b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.",
            "headers": {"Content-Type": "application/vnd.bentoml+pickle"},
        },
        415,
    ),
    (
        "ZIP64 end record over the entry budget",
        "/predict-image/returns-zip/",
        lambda: one("files", "z.zip", zip64_ended(300)),
        413,
    ),
]
