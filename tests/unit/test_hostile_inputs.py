"""Hostile and unusual uploads: each gets the right pixels or a JSON 4xx, never a 500.

Decoder cases run on `roadseg.serve.inputs.decode_image` directly; service cases go through the
in-process BentoML app of `test_service_app` and check that a good request still succeeds after.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import time

import numpy as np
import pytest
from PIL import Image, ImageFile
from test_service_app import H, image_bytes, monkeypatch_module, served  # noqa: F401

from roadseg.serve.decoding import Budget, Limits, decode_image
from roadseg.serve.errors import InputError
from roadseg.serve.inputs import check_zip_directory, parse_predict_json
from tests.images import encode, png_chunk

LIM = Limits()


def test_16_bit_grey_png_is_scaled_not_clipped():
    grey = np.array([[0, 257 * 128, 65535, 257 * 7]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG")
    rgb = decode_image(buf.getvalue(), LIM)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 128, 255, 7] and (rgb[..., 0] == rgb[..., 2]).all()


def test_exif_orientation_is_applied():
    src = np.zeros((20, 40, 3), np.uint8)
    src[:, :20] = (255, 0, 0)  # stored: left red, right blue
    src[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(src).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    rgb = decode_image(buf.getvalue(), LIM).astype(int)
    assert rgb.shape == (40, 20, 3)  # displayed size
    assert np.abs(rgb - np.rot90(src, k=-1).astype(int)).mean() < 5  # left red -> top red
    assert rgb[:15, :, 0].min() > 200 and rgb[25:, :, 2].min() > 200


def test_mpo_first_frame_is_used():
    first = np.full((16, 24, 3), (200, 30, 30), np.uint8)
    second = Image.fromarray(np.full((16, 24, 3), (0, 0, 250), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(first).save(buf, format="MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(buf.getvalue())).format == "MPO"
    rgb = decode_image(buf.getvalue(), LIM).astype(int)
    assert np.abs(rgb - first.astype(int)).max() < 8


@pytest.mark.parametrize("load_truncated", [False, True])
def test_truncated_jpeg_is_refused_never_padded(monkeypatch, load_truncated):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    data, _ = image_bytes(200, 300, "JPEG")
    with pytest.raises(InputError) as e:
        decode_image(data[: len(data) // 2], LIM)
    assert e.value.status == 400 and e.value.problem == "corrupt_image"


def test_pixel_count_between_limit_and_pil_bomb_threshold_is_413():
    # Header only: 10000 x 10000 = 1e8 pixels, above PIL's warning threshold (~8.9e7) and below
    # its error threshold; with a generous service limit the answer must still be 413.
    ihdr = struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")
    for limits in (LIM, Limits(max_image_pixels=10**9)):
        with pytest.raises(InputError) as e:
            decode_image(data, limits)
        assert e.value.status == 413


@pytest.mark.parametrize(
    "chunk",
    [
        png_chunk(b"tEXt", b"key\x00value", crc=1),  # bad CRC
        png_chunk(b"zTXt", b"key\x00\x00not zlib at all"),  # corrupt compressed text
        png_chunk(b"iTXt", b"\xff\xfe\x00\x00\x00\x00\x00"),  # truncated fields
    ],
)
def test_broken_ancillary_chunk_after_image_data(chunk):
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    png = encode(arr)
    iend = png.rindex(b"IEND") - 4
    data = png[:iend] + chunk + png[iend:]
    try:
        rgb = decode_image(data, LIM)
    except InputError as e:  # refusing is fine; anything but a 4xx is not
        assert e.status == 400
    else:
        assert rgb.tolist() == arr.tolist()


def test_lone_surrogate_in_image_names_is_422():
    body = {"image_names": ["ok", "bad\ud800"], "images": ["", ""]}
    with pytest.raises(InputError) as e:
        parse_predict_json(body, LIM)
    assert e.value.status == 422 and "image_names[1]" in str(e.value)


def _good_request_still_works(client):
    data, _ = image_bytes(24, 32)
    assert client.post("/segment", files={"image": ("g.png", data)}, headers=H).status_code == 200


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (1, 300), (300, 2)])
def test_tiny_and_thin_images_are_segmented(served, size):  # noqa: F811
    client, _, _, _ = served
    data = encode(np.full((*size, 3), 90, np.uint8))
    r = client.post("/segment/json", files={"image": ("t.png", data)}, headers=H)
    assert r.status_code == 200, r.text
    r = client.post("/segment", files={"image": ("t.png", data)}, headers=H)
    assert r.status_code == 200 and np.asarray(Image.open(io.BytesIO(r.content))).shape[:2] == size
    _good_request_still_works(client)


def test_upload_wider_than_jpeg_allows_is_413(served):  # noqa: F811
    client, _, _, _ = served
    data = encode(np.zeros((1, 70000, 3), np.uint8))
    r = client.post("/upload", files={"file": ("w.png", data)}, headers=H)
    assert r.status_code == 413 and r.json()["error"] == "too_large_for_jpeg"
    r = client.post("/upload?format=mask", files={"file": ("w.png", data)}, headers=H)
    assert r.status_code == 200 and np.asarray(Image.open(io.BytesIO(r.content))).shape == (
        1,
        70000,
    )
    _good_request_still_works(client)


def test_surrogate_name_over_http_is_json_422(served):  # noqa: F811
    client, _, _, _ = served
    png, _ = image_bytes(8, 8)
    b64 = base64.b64encode(png).decode()
    raw = '{"image_names": ["x\\ud800"], "images": ["' + b64 + '"]}'
    r = client.post(
        "/predict/returns-json/", content=raw, headers={**H, "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error"] == "bad_name"
    _good_request_still_works(client)


@pytest.mark.parametrize(
    "headers",
    [
        {f"X-Pad-{i}": "1" for i in range(150)},  # too many headers
        {"X-Pad": "a" * 20_000},  # one huge header
    ],
)
def test_oversized_headers_are_431_json(served, headers):  # noqa: F811
    client, _, _, _ = served
    data, _ = image_bytes(8, 8)
    r = client.post("/segment", files={"image": ("h.png", data)}, headers={**H, **headers})
    assert r.status_code == 431 and r.json()["error"] == "headers_too_large"
    _good_request_still_works(client)


# ---------------------------------------------------------------- decode work and budgets


def _progressive_jpeg(h: int = 64, w: int = 64) -> bytes:
    arr = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", progressive=True)
    return buf.getvalue()


def test_jpeg_with_thousands_of_scans_is_refused_before_decoding():
    data = _progressive_jpeg()
    last_scan = data[data.rindex(b"\xff\xda") : -2]  # repeat the final scan, as an attacker would
    hostile = data[:-2] + last_scan * 3000 + b"\xff\xd9"
    start = time.process_time()
    with pytest.raises(InputError) as e:
        decode_image(hostile, LIM)
    assert e.value.status == 413 and e.value.problem == "too_much_decode_work"
    assert time.process_time() - start < 0.5
    assert decode_image(data, LIM).shape == (64, 64, 3)  # an ordinary progressive JPEG (10 scans)


def test_png_with_a_million_empty_chunks_is_refused_cheaply():
    png = encode(np.zeros((4, 4, 3), np.uint8))
    iend = png.rindex(b"IEND") - 4
    hostile = png[:iend] + png_chunk(b"zzZz", b"") * 1_000_000 + png[iend:]  # 12 MB of chunks
    start = time.process_time()
    with pytest.raises(InputError) as e:
        decode_image(hostile, LIM)
    assert e.value.status == 413 and e.value.problem == "too_much_decode_work"
    assert time.process_time() - start < 0.5


def test_frame_header_claiming_far_more_pixels_than_the_data_holds_is_422():
    data, _ = image_bytes(16, 16, "JPEG")
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    hostile = data[: sof + 5] + struct.pack(">HH", 6000, 6000) + data[sof + 9 :]  # 36 Mpx, 1 kB
    start = time.process_time()
    with pytest.raises(InputError) as e:
        decode_image(hostile, LIM)
    assert e.value.status == 422 and e.value.problem == "implausible_image"
    assert time.process_time() - start < 0.5


def test_large_uniform_images_are_not_mistaken_for_padding():
    # The densest honest files: a flat 1-bit PNG and a flat grey JPEG, 12 Mpx each.
    buf = io.BytesIO()
    Image.new("1", (4000, 3000)).save(buf, format="PNG", optimize=True)
    assert decode_image(buf.getvalue(), LIM).shape == (3000, 4000, 3)
    buf = io.BytesIO()
    Image.new("L", (4000, 3000), 128).save(buf, format="JPEG", quality=5)
    assert decode_image(buf.getvalue(), LIM).shape == (3000, 4000, 3)


def test_budget_counts_images_pixels_and_bytes_per_request():
    budget = Budget(
        Limits(max_zip_entries=3, max_request_pixels=1000, max_zip_uncompressed_bytes=50)
    )
    budget.charge("a", images=1, pixels=400, nbytes=10)
    budget.charge("b", images=1, pixels=400, nbytes=10)
    with pytest.raises(InputError) as e:
        budget.charge("c", images=1, pixels=400, nbytes=10)
    assert e.value.status == 413 and e.value.problem == "request_too_many_pixels"


def test_zip_entry_count_is_read_from_the_end_record_first():
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(300):
            zf.writestr(f"{i}.txt", b"")
    data = buf.getvalue()
    with pytest.raises(InputError) as e:
        check_zip_directory(data, 256)
    assert e.value.status == 413 and "300 entries" in str(e.value)
    # an end record that lies about a huge central directory is refused before parsing it
    end = data.rindex(b"PK\x05\x06")
    liar = data[: end + 10] + struct.pack("<HI", 1, 50_000_000) + data[end + 16 :]
    with pytest.raises(InputError) as e:
        check_zip_directory(liar, 256)
    assert e.value.status == 413


@pytest.mark.parametrize("mode", ["P", "CMYK", "LA", "I;16", "1", "RGBA"])
def test_unusual_modes_give_the_mask_of_their_rgb_pixels(served, mode):  # noqa: F811
    from test_service_app import expected_mask, png_array

    client, _, _, _ = served
    rgb = Image.fromarray(image_bytes(30, 45, seed=4)[1])
    img = rgb.convert(mode) if mode != "I;16" else rgb.convert("L").convert("I;16")
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    pixels = decode_image(buf.getvalue(), LIM)
    assert pixels.shape == (30, 45, 3)
    r = client.post("/segment", files={"image": (f"m.{fmt.lower()}", buf.getvalue())}, headers=H)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(png_array(r.content), expected_mask(served, pixels))


def test_video_title_claiming_a_short_duration_is_caught_while_decoding(tmp_path):
    import imageio_ffmpeg

    from roadseg.serve.video import read_video

    path = tmp_path / "liar.mp4"
    gen = imageio_ffmpeg.write_frames(
        str(path),
        (32, 32),
        fps=10,
        macro_block_size=1,
        output_params=["-metadata", "title=Duration: 00:00:01.00"],
    )
    gen.send(None)
    for i in range(30):  # 3 s of video
        gen.send(np.full((32, 32, 3), i * 8, np.uint8))
    gen.close()
    info, batches = read_video(path, Limits(max_video_seconds=2.0))
    assert info.seconds == 1.0  # the header parser was fooled by the title
    with pytest.raises(InputError) as e:
        for _ in batches:
            pass
    assert e.value.status == 413 and e.value.problem == "video_too_long"


def test_frames_too_large_for_h264_are_refused_from_the_header():
    from roadseg.serve.video import VideoInfo, _problems

    problems = _problems(VideoInfo(25.0, 1.0, 20000, 2), Limits())
    assert problems and problems[0][:2] == (413, "too_large_for_h264")
    assert _problems(VideoInfo(25.0, 1.0, 1920, 1080), Limits()) == []


# ---------------------------------------------------------------- round 2: metadata and formats

# What each EXIF orientation displays, from the stored pixels (EXIF 2.32, tag 0x0112).
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, -1)[::-1],
    8: lambda a: np.rot90(a, 1),
}


def _png_with_exif(pixels: np.ndarray, exif: bytes) -> bytes:
    """A lossless PNG whose eXIf chunk holds `exif` (a TIFF block, no "Exif" prefix)."""
    png = encode(pixels)
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + png_chunk(b"eXIf", exif) + png[iend:]


def _tiff_ifd(*entries: tuple[int, int, int, bytes]) -> bytes:
    """A little-endian TIFF block with one IFD of (tag, type, count, 4-byte value) entries."""
    body = b"".join(struct.pack("<HHI", t, typ, n) + v.ljust(4, b"\0") for t, typ, n, v in entries)
    return b"II*\x00" + struct.pack("<IH", 8, len(entries)) + body + b"\0\0\0\0"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_gives_the_displayed_image_and_mask(served, orientation):  # noqa: F811
    from test_service_app import expected_mask, png_array

    client, _, _, _ = served
    stored = image_bytes(18, 29, seed=orientation)[1]  # asymmetric: a wrong flip shows
    data = _png_with_exif(stored, _tiff_ifd((0x0112, 3, 1, struct.pack("<H", orientation))))
    shown = np.ascontiguousarray(DISPLAYED[orientation](stored))
    np.testing.assert_array_equal(decode_image(data, LIM), shown)
    r = client.post("/segment", files={"image": ("o.png", data)}, headers=H)
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(png_array(r.content), expected_mask(served, shown))


@pytest.mark.parametrize(
    "exif",
    [
        b"MM\x00t\x00\x00\x00\x08" + b"\0" * 20,  # not a TIFF header
        _tiff_ifd((0x0112, 2, 4, b"six\0")),  # orientation as text
        _tiff_ifd((0x0112, 3, 1, b"\x06\x00"), (0x927C, 7, 10**6, struct.pack("<I", 999))),
        b"II*\x00" + struct.pack("<IH", 8, 65535) + b"\x12\x01",  # 65535 entries announced
        b"II*\x00" + struct.pack("<I", 2**31),  # IFD far past the end
        _tiff_ifd((0x0112, 3, 1, b"\x09\x00")),  # orientation 9 does not exist
    ],
    ids=["bad-header", "text-orientation", "lying-maker-note", "entry-flood", "far-ifd", "nine"],
)
def test_broken_exif_never_fails_a_valid_image(served, exif):  # noqa: F811
    """A camera image with a corrupt EXIF block is a valid image (viewers ignore the block);
    it was refused with 400 when PIL's exif_transpose re-serialised the block."""
    client, _, _, _ = served
    stored = image_bytes(12, 20, seed=5)[1]
    data = _png_with_exif(stored, exif)
    out = decode_image(data, LIM)
    # the lying maker note sits next to a readable orientation 6; the others mean "as stored"
    want = np.rot90(stored, -1) if exif[10:12] == b"\x12\x01" and b"\x06" in exif[18:20] else stored
    np.testing.assert_array_equal(out, want)
    r = client.post("/segment", files={"image": ("e.png", data)}, headers=H)
    assert r.status_code == 200, r.text
    _good_request_still_works(client)


def test_many_exif_segments_are_refused_before_pil_parses_the_header(monkeypatch):
    """PIL concatenates Exif APP1 segments one onto the other (quadratic): 700 of them in a
    46 MB JPEG cost ~20 s of CPU before any pixel. Refused from the segment headers alone."""
    import PIL.Image

    data, _ = image_bytes(16, 16, "JPEG")
    app1 = b"\xff\xe1" + struct.pack(">H", 65535) + b"Exif\x00\x00" + b"\0" * 65527
    hostile = data[:2] + app1 * 700 + data[2:]

    def no_pil(*a, **k):
        raise AssertionError("PIL parsed a header that the segment walk should have refused")

    with monkeypatch.context() as m:
        m.setattr(PIL.Image, "open", no_pil)
        with pytest.raises(InputError) as e:
            decode_image(hostile, LIM)
    assert e.value.status == 413 and e.value.problem == "too_much_decode_work"
    # an ordinary camera JPEG (one Exif segment, orientation 6) still decodes, rotated
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (30, 10), (200, 10, 10)).save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), LIM).shape == (30, 10, 3)


def test_sixteen_bit_grey_is_rounded_exactly_in_bounded_memory():
    import tracemalloc

    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    rgb = decode_image(encode(values), LIM)
    want = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[..., 0], want)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    big = encode(np.tile(values, (8, 8)))  # 4 Mpx of 16-bit grey
    tracemalloc.start()
    decode_image(big, LIM)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 14 * 2048 * 2048, peak  # float64 scaling peaked at ~26 bytes per pixel


def _saved(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(image_bytes(20, 30)[1])
    (img.convert("1") if fmt == "XBM" else img).save(buf, format=fmt, **kw)
    return buf.getvalue()


OTHER_FORMATS = {
    "GIF": (lambda: _saved("GIF", save_all=True, append_images=[Image.new("RGB", (30, 20))] * 50)),
    "TIFF": (lambda: _saved("TIFF", save_all=True, append_images=[Image.new("RGB", (30, 20))])),
    "BMP": lambda: _saved("BMP"),
    "WEBP": lambda: _saved("WEBP"),
    "ICO": lambda: _saved("ICO"),
    "TGA": lambda: _saved("TGA"),
    "SGI": lambda: _saved("SGI"),
    "PCX": lambda: _saved("PCX"),
    "PPM": lambda: _saved("PPM"),
    "XBM": lambda: _saved("XBM"),
    "PDF": lambda: _saved("PDF"),
    "SVG": lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
    "HEIC": lambda: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64,
    "AVIF": lambda: b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + b"\0" * 64,
    "12-bit JPEG": lambda: (lambda d, i: d[: i + 4] + b"\x0c" + d[i + 5 :])(
        image_bytes(16, 16, "JPEG")[0], image_bytes(16, 16, "JPEG")[0].index(b"\xff\xc0")
    ),
}


@pytest.mark.parametrize("fmt", OTHER_FORMATS, ids=list(OTHER_FORMATS))
def test_formats_pil_could_open_are_415_and_never_parsed(served, monkeypatch, fmt):  # noqa: F811
    """Only the JPEG and PNG plugins ever see the bytes: a TIFF's IFDs, a GIF's frames or a
    PSD's layers are not parsed just to be refused."""
    from PIL import TiffImagePlugin

    client, _, _, _ = served
    data = OTHER_FORMATS[fmt]()
    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "_open", lambda self: 1 / 0)
    with pytest.raises(InputError) as e:
        decode_image(data, LIM)
    assert e.value.status == 415, str(e.value)
    r = client.post("/segment", files={"image": ("x.bin", data)}, headers=H)
    assert r.status_code == 415 and r.json()["status"] == 415, r.text
    assert "Traceback" not in r.text
    _good_request_still_works(client)


def test_zip64_end_record_is_read_not_taken_for_65535_entries():
    from roadseg.serve.inputs import read_zip_images
    from tests.images import zip_bytes

    a, b = image_bytes(8, 8)[0], image_bytes(9, 8, seed=1)[0]
    plain = zip_bytes({"a.png": a, "b.png": b})
    end = plain.rindex(b"PK\x05\x06")
    n, cd_size, cd_off = struct.unpack_from("<HII", plain, end + 10)
    record = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, cd_size, cd_off)
    locator = struct.pack("<4sIQI", b"PK\x06\x07", 0, end, 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 2**32 - 1, 2**32 - 1, 0)
    zip64 = plain[:end] + record + locator + eocd
    assert read_zip_images(zip64, LIM) == [("a.png", a), ("b.png", b)]
    with pytest.raises(InputError) as e:
        check_zip_directory(zip64, 1)
    assert e.value.status == 413 and "2 entries" in str(e.value)


def test_base64_variants_clients_send():
    from roadseg.serve.inputs import decode_base64

    png = image_bytes(8, 8)[0]
    std = base64.b64encode(png).decode()
    for text in (
        std,
        "data:image/png;base64," + std,
        base64.encodebytes(png).decode(),  # MIME line breaks
        base64.urlsafe_b64encode(png).decode(),
        std.rstrip("="),
        base64.urlsafe_b64encode(png).decode().rstrip("="),
    ):
        assert decode_base64(text, name="x") == png
    for bad in ("a", "ab$d", std[:-2] + "-/", "=" * 8 + std):
        with pytest.raises(InputError) as e:
            decode_base64(bad, name="x")
        assert e.value.status == 400 and e.value.problem == "invalid_base64"


def test_json_route_reads_a_multipart_type_in_any_case(served):  # noqa: F811
    client, _, _, _ = served
    doc = {"image_names": ["a"], "images": [base64.b64encode(image_bytes(8, 8)[0]).decode()]}
    body = (
        b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a.json"\r\n\r\n'
        + json.dumps(doc).encode()
        + b"\r\n--b0--\r\n"
    )
    r = client.post(
        "/predict/returns-json/",
        content=body,
        headers={**H, "Content-Type": "Multipart/Form-Data; boundary=b0"},
    )
    assert r.status_code == 200 and len(r.json()["pred_mask"]) == 1, r.text[:300]
