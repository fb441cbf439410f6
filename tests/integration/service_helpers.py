"""Helpers of tests/integration/test_service.py: generated payloads, and how the original
clients (U-Net-SSeg's Streamlit pages, its scripts) send requests and read answers."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zipfile
import zlib

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from tests.images import noise_png, png_chunk, zip_bytes

KEY = "s3cret-test-key"


png = noise_png


def bomb_png(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + png_chunk(b"IEND", b"")
    )


zipped = zip_bytes


# The original clients, written from reading Mairex1337/U-Net-SSeg (streamlit/utils/
# api_client.py, streamlit/pages/, scripts/json_img.py) and the KITTI road server (www/main.py):
# the same requests, the same parsing. They send no API key; a session hook adds it, as a
# gateway would.


@pytest.fixture
def keyed_requests(monkeypatch: pytest.MonkeyPatch):
    import requests

    original = requests.Session.request

    def request(self, method, url, **kwargs):
        kwargs["headers"] = {**(kwargs.get("headers") or {}), "X-API-Key": KEY}
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(requests.Session, "request", request)
    return requests


@pytest.fixture(scope="module")
def reference(service):
    """What the served version answers in-process (`roadseg.inference.predict.predict`) for some pixels:
    every client's answer below is compared with it, pixel by pixel."""
    import mlflow

    from roadseg.inference.predict import predict
    from roadseg.models.io import load_model

    _, version, tmp = service
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
    try:
        # a Bento serves "<mlflow version>+<bento tag>": the registered version before the +
        model, spec, _ = load_model(f"models:/roadseg-unet/{version.split('+')[0]}")
    finally:
        mlflow.set_tracking_uri(previous)
    return (lambda pixels: predict(model, [pixels], spec)[0]), spec


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def streamlit_view_page(result: io.BytesIO) -> list[tuple]:
    """What the view page shows: (original, segmented, name) image triples, or for a video
    the two .mp4 members as (bytes, name) pairs with the `predicted` one identified."""
    with zipfile.ZipFile(result) as z:
        names = z.namelist()
        videos = [n for n in names if n.endswith(".mp4")]
        if videos:
            return [(z.read(n), n.rsplit("/", 1)[-1]) for n in videos]
        exts = (".png", ".jpg", ".jpeg")
        originals = {n: z.read(n) for n in names if n.startswith("images/") and n.endswith(exts)}
        colored = {n: z.read(n) for n in names if n.startswith("pred_color/") and n.endswith(exts)}
        shown = []
        for n, data in originals.items():
            base = n.rsplit("/", 1)[-1]
            if f"pred_color/{base}" in colored:
                shown.append((data, colored[f"pred_color/{base}"], base))
        return shown


def check_error(r: httpx.Response, status: int, words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert words.lower() in body["detail"].lower(), body
    assert r.headers["x-model-version"]


def tree_rss_mb(port: int) -> float:
    """Resident memory of the server on PORT: every process of its process group (the
    `bentoml serve` session: arbiter and workers; the serve process retitles itself)."""
    pids = {c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port}
    pids.discard(None)
    assert pids, f"nothing listens on port {port}"
    group = os.getpgid(pids.pop())
    total = 0
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == group:
                total += proc.memory_info().rss
    return total / 2**20
