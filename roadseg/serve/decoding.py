"""Verify-then-decode of one untrusted image: limits, per-request budgets, decode-work bounds.

Every problem becomes an `InputError` carrying an HTTP status and a message naming the problem,
so the service answers 4xx JSON instead of a traceback. `probe_image` reads only the header and
the bytes' structure: format, size, pixel limits, JPEG scans, PNG chunks, and whether the file
could hold the pixels its header claims; it charges the request's `Budget`. Only then does
`Probe.decode` run the decoder, which refuses truncated data instead of padding it.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from roadseg.serve.errors import InputError

IMAGE_FORMATS = ("JPEG", "PNG", "MPO")  # MPO: camera JPEGs; the first frame is used
# The only PIL plugins that ever see the bytes (PIL's JPEG opener also yields MPO).
OPEN_FORMATS = ("JPEG", "PNG")
# Formats we name in a 415 (PIL never parses them).
OTHER_FORMATS = (
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (b"\xffO\xffQ", "JPEG2000"),
    (b"\xff\xd8\xff", "JPEG variant (12-bit, lossless or a broken frame header)"),
)
JPEG_MAX_EXIF_SEGMENTS = 8  # PIL joins Exif APP1 segments pairwise: quadratic in their number
JPEG_MAX_SIDE = 65500  # the largest width or height a JPEG can encode
# Pixels per byte of file beyond which a header lies about its data: a JPEG needs >= 1 bit per
# 8x8 block (512 px/byte), a 1-bit PNG at deflate's best ratio ~8300 px/byte; 2x margin each.
JPEG_MAX_PIXELS_PER_BYTE = 1024
PNG_MAX_PIXELS_PER_BYTE = 16384
PNG_MIN_CHUNKS = 1000


@dataclass(frozen=True)
class Limits:
    """Input limits (mirrors `params.serve`). `max_zip_entries` is also the images per request."""

    max_request_bytes: int = 50 * 2**20
    max_image_pixels: int = 40_000_000
    max_zip_entries: int = 256
    max_zip_uncompressed_bytes: int = 200 * 2**20
    max_video_frames: int = 900
    max_video_seconds: float = 60.0
    max_request_pixels: int = 1_000_000_000
    max_jpeg_scans: int = 100
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 15.0
    max_body_seconds: float = 120.0
    send_timeout_seconds: float = 30.0
    max_inflight_bytes: int = 128 * 2**20

    @classmethod
    def from_params(cls, serve: Any) -> Limits:
        return cls(**{k: getattr(serve, k) for k in cls.__dataclass_fields__})


class Budget:
    """What one request has spent so far; every route charges it before decoding anything.

    Images (`max_zip_entries`), decoded pixels (`max_request_pixels`) and uncompressed bytes
    (`max_zip_uncompressed_bytes`) are per request, across all parts, ZIP entries, JSON images
    and video frames, so splitting a payload into many parts buys nothing.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.images = self.pixels = self.bytes = 0

    @property
    def images_left(self) -> int:
        return self.limits.max_zip_entries - self.images

    @property
    def bytes_left(self) -> int:
        return self.limits.max_zip_uncompressed_bytes - self.bytes

    def charge(self, name: str, *, images: int = 0, pixels: int = 0, nbytes: int = 0) -> None:
        """Add to the totals; InputError 413 naming the budget once one is exceeded."""
        self.images, self.pixels, self.bytes = (
            self.images + images,
            self.pixels + pixels,
            self.bytes + nbytes,
        )
        lim = self.limits
        if self.images > lim.max_zip_entries:
            raise InputError(
                f"request holds more than {lim.max_zip_entries} images", 413, "too_many_images"
            )
        if self.pixels > lim.max_request_pixels:
            raise InputError(
                f"{name}: the request's images hold {self.pixels} pixels in all, over the "
                f"per-request limit of {lim.max_request_pixels}",
                413,
                "request_too_many_pixels",
            )
        if self.bytes > lim.max_zip_uncompressed_bytes:
            raise InputError(
                f"{name}: the request's images hold more than {lim.max_zip_uncompressed_bytes} "
                "uncompressed bytes",
                413,
                "zip_too_large",
            )


@dataclass(frozen=True)
class Probe:
    """An upload whose header passed every check; its pixels are not decoded yet."""

    name: str
    data: bytes
    width: int
    height: int

    def decode(self, limits: Limits) -> np.ndarray:
        return _decode_checked(self.data, limits, self.name)


def decode_image(
    data: bytes, limits: Limits, *, name: str = "image", budget: Budget | None = None
) -> np.ndarray:
    """JPEG/PNG bytes -> RGB uint8 (H, W, 3), checking the size before decoding any pixel.

    Raises:
        InputError: empty (400), not an image (415), unsupported format (415), too many
            pixels for the image or the request (413), too much decode work (413), truncated
            or corrupt (400).
    """
    return probe_image(data, limits, name=name, budget=budget).decode(limits)


def probe_image(
    data: bytes, limits: Limits, *, name: str = "image", budget: Budget | None = None
) -> Probe:
    """Read the header only: format, size, pixel limits, decode-work bounds, the budget."""
    if not data:
        raise InputError(f"{name}: empty upload (0 bytes)", 400, "empty")
    if data[:2] == b"\xff\xd8":
        _check_jpeg_segments(data, name)  # before PIL parses the header, which is the cost
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise InputError(f"{name}: image too large ({e})", 413, "too_many_pixels") from None
        except UnidentifiedImageError:
            raise _not_supported(data, name) from None
        except Exception as e:
            raise InputError(
                f"{name}: unreadable image header ({_short(e)})", 400, "corrupt_image"
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
    check_decode_work(data, img.format, w * h, limits, name)
    if budget is not None:
        budget.charge(name, images=1, pixels=w * h, nbytes=len(data))
    return Probe(name, data, w, h)


def _not_supported(data: bytes, name: str) -> InputError:
    """415 for bytes no allowed decoder accepts, naming the format when its magic is known."""
    riff = data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    fmt = (
        "WEBP" if riff else next((f for magic, f in OTHER_FORMATS if data.startswith(magic)), None)
    )
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"avis"):
        fmt = "HEIF/AVIF"
    if fmt is None:
        return InputError(f"{name}: not an image (expected JPEG or PNG)", 415, "not_an_image")
    return InputError(
        f"{name}: unsupported image format {fmt} (send JPEG or PNG)", 415, "unsupported_format"
    )


def check_decode_work(data: bytes, fmt: str, pixels: int, limits: Limits, name: str) -> None:
    """Bound what a decoder would do, from the bytes alone, before it runs.

    A JPEG's work grows with its scans (a progressive file can hold thousands, each a pass over
    the whole image) and a PNG's with its chunks (a million empty ones cost seconds); a header
    claiming far more pixels than the data could ever hold is a padding attack, refused before
    the decoder allocates the frame.
    """
    if fmt in ("JPEG", "MPO"):
        # 0xFFDA only occurs as a start-of-scan marker: entropy-coded data stuffs every 0xFF.
        scans = data.count(b"\xff\xda")
        if scans > limits.max_jpeg_scans:
            raise InputError(
                f"{name}: JPEG holds {scans} scans, over the limit of {limits.max_jpeg_scans}",
                413,
                "too_much_decode_work",
            )
        floor = JPEG_MAX_PIXELS_PER_BYTE  # >= 1 bit per 8x8 block in any valid JPEG
    else:
        _check_png_chunks(data, name)
        floor = PNG_MAX_PIXELS_PER_BYTE  # 1-bit pixels at deflate's best ratio, with margin
    if pixels > floor * len(data):
        raise InputError(
            f"{name}: the header claims {pixels} pixels but the file holds only {len(data)} "
            "bytes (truncated or crafted)",
            422,
            "implausible_image",
        )


def _check_png_chunks(data: bytes, name: str) -> None:
    """Walk the chunk headers (no CRC, no inflate): at most one chunk per 4 kB on average."""
    allowed = max(PNG_MIN_CHUNKS, len(data) // 4096)
    pos, count = 8, 0
    while pos + 8 <= len(data):
        count += 1
        if count > allowed:
            raise InputError(
                f"{name}: PNG holds more than {allowed} chunks for {len(data)} bytes",
                413,
                "too_much_decode_work",
            )
        (length,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4 : pos + 8] == b"IEND":
            return
        pos += 12 + length


def _check_jpeg_segments(data: bytes, name: str) -> None:
    """Walk the marker segments before the first scan (headers only): PIL concatenates every
    Exif APP1 segment onto the previous ones, so 700 of them (46 MB) cost ~20 s of CPU."""
    pos, exif = 2, 0
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: the header is over
            return
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            exif += 1
            if exif > JPEG_MAX_EXIF_SEGMENTS:
                raise InputError(
                    f"{name}: JPEG holds more than {JPEG_MAX_EXIF_SEGMENTS} Exif segments",
                    413,
                    "too_much_decode_work",
                )
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")


def _decode_checked(data: bytes, limits: Limits, name: str) -> np.ndarray:
    """Decode bytes that `probe_image` accepted; truncated data is refused, never padded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global someone may have set: never pad data
            ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            img = Image.open(io.BytesIO(data), formats=OPEN_FORMATS)
            img.load()
            return _to_rgb(_displayed(img))
        except Image.DecompressionBombWarning as e:
            raise InputError(f"{name}: image too large ({e})", 413, "too_many_pixels") from None
        except MemoryError:
            raise InputError(f"{name}: image too large to decode", 413, "too_many_pixels") from None
        except Exception as e:  # PIL raises many types on hostile data (struct, zlib, ...)
            raise InputError(
                f"{name}: truncated or corrupt image ({type(e).__name__}: {_short(e)})",
                400,
                "corrupt_image",
            ) from None


def _short(e: Exception) -> str:
    """An exception's first line, bounded: never a traceback, never a long echo of the input."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def _displayed(img: Image.Image) -> Image.Image:
    """The image as displayed: its EXIF (or XMP) orientation applied, all eight of them.

    Metadata never fails a decode: an unreadable or nonsensical EXIF block (a broken maker note,
    a wrong type) means orientation 1, as viewers treat it. Unlike `ImageOps.exif_transpose`
    this neither copies an unrotated image nor re-serialises the EXIF block.
    """
    try:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # PIL raises many types on hostile metadata (struct, Syntax, Value...)
        return img
    method = TRANSPOSE.get(orientation) if isinstance(orientation, int) else None
    return img if method is None else img.transpose(method)


ORIENTATION_TAG = 0x0112
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _to_rgb(img: Image.Image) -> np.ndarray:
    """Decoded PIL image -> RGB uint8; 16/32-bit grey is scaled to 8 bits, never clipped.

    Grey is scaled in integers (rint(v / 257), 65535 -> 255) at 2 bytes per pixel, not through
    float64 (8 bytes per pixel: +320 MB for a 40 Mpx 16-bit PNG of 80 kB).
    """
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        grey = np.asarray(img)
        if grey.dtype != np.uint16:  # mode I (int32): clip into the 16-bit range first
            grey = np.clip(grey, 0, 65535).astype(np.uint16)
        q = grey // 257
        q += (grey - q * 257) >= 129  # round half up; v / 257 is never exactly k + 0.5
        return np.repeat(q.astype(np.uint8)[:, :, None], 3, axis=2)
    return np.asarray(img if img.mode == "RGB" else img.convert("RGB"))  # convert copies even RGB
