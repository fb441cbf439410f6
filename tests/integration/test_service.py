"""The real service: `bentoml serve` on a free port with a small model from a temporary MLflow store.

Every endpoint over HTTP, each bad input, a short generated video, the API key; afterwards the
service is still ready and still answers a good request.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from service_helpers import (  # noqa: F401 (fixtures)
    KEY,
    bomb_png,
    check_error,
    keyed_requests,
    pixels_of,
    png,
    reference,
    streamlit_view_page,
    zipped,
)

from roadseg.testing import (
    free_port,
    package_champion,
    params_with,
    register_random_model,
    running_service,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


# torch: the registered version served from MLflow. onnxruntime: that version packaged as a Bento
# (weights and model.onnx) and served from it by ONNX Runtime with MLflow unreachable, so every
# route and every original client below runs against the packaged ONNX model too.
@pytest.fixture(scope="module", params=["torch", "onnxruntime-bento"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp(f"serve-{request.param}")
    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    version = register_random_model(tracking)
    params = params_with(
        tmp / "params.yaml",
        {
            "max_request_bytes: 52428800": "max_request_bytes: 3000000",
            "max_image_pixels: 40000000": "max_image_pixels: 1000000",
            "max_zip_entries: 256": "max_zip_entries: 8",
            "max_zip_uncompressed_bytes: 209715200": "max_zip_uncompressed_bytes: 2000000",
            "max_video_frames: 900": "max_video_frames: 20",
        },
    )
    (tmp / "tmp").mkdir()
    env = {
        "MLFLOW_TRACKING_URI": tracking,
        "ROADSEG_MODEL_URI": "models:/roadseg-unet@champion",
        "ROADSEG_PARAMS": str(params),
        "ROADSEG_MONITOR_DIR": str(tmp / "monitoring"),
        "ROADSEG_API_KEY": KEY,
        "BENTOML_HOME": str(tmp / "bentoml"),
        "TMPDIR": str(tmp / "tmp"),  # the service's temp files, apart from other processes'
    }
    target, served_version, cwd = "bento.service:RoadSegService", version, REPO
    if request.param == "onnxruntime-bento":
        target = package_champion(tracking, tmp / "bentoml", tmp)
        served_version, cwd = f"{version}+{target}", tmp  # not the repository: self-contained
        env |= {"ROADSEG_MODEL_URI": None, "ROADSEG_BACKEND": "onnxruntime",
                "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}  # nothing listens  # fmt: skip
    with (
        running_service(env, target=target, cwd=cwd, log_path=tmp / "serve.log") as url,
        httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as client,
    ):
        if request.param == "onnxruntime-bento":
            meta = client.get("/metadata").json()
            assert meta["backend"] == "onnxruntime" and meta["bento_tag"] == target, meta
            assert "exporting it now" not in (tmp / "serve.log").read_text()  # the packaged file
        yield client, served_version, tmp


def test_health_metadata_classes_docs(service) -> None:
    client, version, _ = service
    meta = client.get("/metadata").json()
    assert meta["version"] == version and meta["run_id"] and meta["params_hash"]
    # both backends of the fixture: a header stuck at one of them fails on the other
    assert meta["backend"] in ("torch", "onnxruntime")
    for path in ("/healthz", "/readyz"):
        r = httpx.get(f"{client.base_url}{path}")  # no key: probes stay open
        assert r.status_code == 200 and r.headers["x-model-version"] == version
        assert r.headers["x-model-backend"] == meta["backend"]
    r = httpx.get(f"{client.base_url}/metadata")  # no key: a 401 says which model answered too
    assert r.status_code == 401 and r.headers["x-model-backend"] == meta["backend"]
    classes = client.get("/classes").json()
    assert classes[0] == {"id": 0, "name": "road", "color": [128, 64, 128]} and len(classes) == 14
    spec = client.get("/docs.json").json()
    assert {"/segment", "/predict/returns-json/", "/predict-video/returns-zip/", "/upload"} <= set(
        spec["paths"]
    )


def test_segment_formats_and_json(service) -> None:
    client, version, _ = service
    for fmt, mode in (("mask", "L"), ("color", "RGB"), ("overlay", "RGB")):
        r = client.post(
            f"/segment?format={fmt}",
            content=png(50, 70, "JPEG"),
            headers={"Content-Type": "image/jpeg"},
        )
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["x-model-version"] == version
        assert r.headers["x-model-backend"] == client.get("/metadata").json()["backend"]
        out = Image.open(io.BytesIO(r.content))
        assert out.size == (70, 50) and out.mode == mode
    r = client.post("/segment/json", files={"image": ("a.png", png(40, 60))})
    body = r.json()
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["mask"]))))
    assert mask.shape == (40, 60) and mask.max() < 14
    assert sum(body["class_shares"].values()) == pytest.approx(1.0)
    assert 0 < body["confidence"] <= 1 and body["model_version"] == version


def test_legacy_json(service) -> None:
    client, _, _ = service
    images = [
        base64.b64encode(png(30, 40)).decode(),
        base64.b64encode(png(20, 50, "JPEG")).decode(),
    ]
    r = client.post(
        "/predict/returns-json/", json={"image_names": ["a.png", "b.jpg"], "images": images}
    )
    body = r.json()
    assert body["image_names"] == ["a.png", "b.jpg"] and body["images"] == images
    sizes = [Image.open(io.BytesIO(base64.b64decode(m))).size for m in body["pred_mask"]]
    assert sizes == [(40, 30), (50, 20)] and len(body["pred_color"]) == 2


def test_legacy_zip_upload_and_video(service) -> None:
    client, _, tmp = service
    r = client.post("/predict-image/returns-zip/", files={"files": ("a.png", png())})
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert sorted(names) == ["images/a.png", "pred_color/a.png", "pred_mask/a.png"]
    archive = zipped({"x/one.png": png(), "two.jpg": png(fmt="JPEG")})
    r = client.post("/predict-image/returns-zip/", files={"files": ("batch.zip", archive)})
    assert len(zipfile.ZipFile(io.BytesIO(r.content)).namelist()) == 6
    r = client.post("/upload", files={"file": ("k.png", png(37, 90))})
    assert r.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(r.content)).size == (
        90,
        37,
    )

    from roadseg.serve.video import VideoWriter

    video = tmp / "clip.mp4"
    with VideoWriter(video, (64, 48), fps=5) as w:
        for i in range(7):
            w.write(np.full((48, 64, 3), 30 * i, np.uint8))
    r = client.post("/predict-video/returns-zip/", files={"file": ("clip.mp4", video.read_bytes())})
    assert r.status_code == 200, r.text
    names = set(zipfile.ZipFile(io.BytesIO(r.content)).namelist())
    for kind in ("frames", "pred_mask", "pred_color"):
        assert {f"{kind}/frame_{i:05d}.png" for i in range(7)} <= names
    assert {"video/original.mp4", "video/predicted.mp4"} <= names
    lines = [
        json.loads(x)
        for f in (tmp / "monitoring").glob("*.jsonl")
        for x in f.read_text().splitlines()
    ]
    assert len(lines) >= 12 and {"brightness", "sharpness", "share_road", "confidence"} <= set(
        lines[-1]
    )


def test_bad_inputs(service) -> None:
    client, _, tmp = service

    def seg(data: bytes) -> httpx.Response:
        return client.post("/segment", content=data, headers={"Content-Type": "image/png"})

    check_error(seg(b"not an image"), 415, "not an image")
    check_error(seg(png()[:80]), 400, "truncated or corrupt")
    check_error(seg(b""), 400, "0 bytes")
    check_error(seg(bomb_png(5000, 5000)), 413, "exceeds the limit")
    check_error(seg(b"\0" * 3_100_000), 413, "exceeds the limit")

    def zip_post(data: bytes) -> httpx.Response:
        return client.post("/predict-image/returns-zip/", files={"files": ("b.zip", data)})

    check_error(zip_post(zipped({f"{i}.png": png(4, 4) for i in range(9)})), 413, "9 entries")
    check_error(zip_post(zipped({"big.png": b"\0" * 2_500_000})), 413, "uncompressed bytes")
    check_error(zip_post(zipped({"../../evil.png": png()})), 400, "unsafe path")
    check_error(zip_post(zipped({"/abs/evil.png": png()})), 400, "unsafe path")
    assert not (tmp.parent / "evil.png").exists()
    from roadseg.serve.video import VideoWriter

    long_video = tmp / "long.mp4"
    with VideoWriter(long_video, (32, 32), fps=10) as w:
        for _ in range(30):
            w.write(np.zeros((32, 32, 3), np.uint8))

    def vid(name: str, data: bytes) -> httpx.Response:
        return client.post("/predict-video/returns-zip/", files={"file": (name, data)})

    check_error(vid("long.mp4", long_video.read_bytes()), 413, "frames")
    check_error(vid("x.mp4", b"definitely not a video"), 415, "not a video")
    check_error(vid("x.mkv", long_video.read_bytes()), 415, "unsupported video type")

    def j(body: object) -> httpx.Response:
        return client.post("/predict/returns-json/", json=body)

    good = base64.b64encode(png()).decode()
    check_error(j({"images": [good]}), 422, "image_names")
    check_error(j({"image_names": ["a"], "images": ["***"]}), 400, "invalid base64")
    check_error(j({"image_names": ["a", "b"], "images": [good]}), 422, "2 entries")
    check_error(client.post("/predict/returns-json/", content=b"{not json"), 400, "not valid JSON")
    r = client.post("/upload", files={"other": ("a.png", png())})
    assert r.status_code == 422


def test_api_key_and_still_serving(service) -> None:
    import time

    client, _, tmp = service
    base = str(client.base_url)
    r = httpx.post(f"{base}/segment", content=png())
    check_error(r, 401, "X-API-Key")
    check_error(httpx.get(f"{base}/metadata", headers={"X-API-Key": "wrong"}), 401, "X-API-Key")
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.status_code == 200
    assert (
        "roadseg_inference_latency_seconds" in metrics.text and "roadseg_batch_size" in metrics.text
    )
    assert "roadseg_model_info" in metrics.text
    assert httpx.get(f"{base}/readyz").status_code == 200
    r = client.post("/segment", content=png(33, 44), headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (44, 33)
    # video work dirs are removed by a background task after each response
    service_tmp = tmp / "tmp"
    for _ in range(50):
        leftovers = list(service_tmp.glob("roadseg-video-*"))
        if not leftovers:
            break
        time.sleep(0.2)
    assert not leftovers, leftovers


# ---------------------------------------------------------------- the original clients, live
# (how they were written: tests/integration/service_helpers.py)


def test_streamlit_client_image_zip_and_video(service, keyed_requests, reference) -> None:  # noqa: F811
    from roadseg.inference.render import colorize

    client, _, tmp = service
    expect, spec = reference
    requests = keyed_requests
    base = str(client.base_url).rstrip("/")

    def upload_image_or_zip(file_bytes, filename):  # as api_client.py does
        r = requests.post(
            f"{base}/predict-image/returns-zip/", files=[("files", (filename, file_bytes))]
        )
        r.raise_for_status()
        return io.BytesIO(r.content)

    def upload_video(file_bytes, filename):
        r = requests.post(
            f"{base}/predict-video/returns-zip/",
            files={"file": (filename, file_bytes, "video/mp4")},
        )
        r.raise_for_status()
        return io.BytesIO(r.content)

    shown = streamlit_view_page(upload_image_or_zip(io.BytesIO(png(30, 40)), "street.jpg"))
    assert len(shown) == 1
    original, segmented, name = shown[0]
    assert (
        Image.open(io.BytesIO(original)).size == Image.open(io.BytesIO(segmented)).size == (40, 30)
    )
    assert (
        np.asarray(Image.open(io.BytesIO(original))).tolist()
        == np.asarray(Image.open(io.BytesIO(png(30, 40)))).tolist()
    )
    want = colorize(expect(pixels_of(original)).mask, spec.colors)
    np.testing.assert_array_equal(pixels_of(segmented), want)
    archive = zipped({"a/x.png": png(seed=1), "b/x.png": png(seed=2), "y.jpg": png(fmt="JPEG")})
    shown = streamlit_view_page(upload_image_or_zip(io.BytesIO(archive), "batch.zip"))
    assert sorted(s[2] for s in shown) == ["x.png", "x_1.png", "y.png"]
    by_name = {name: (pixels_of(o), pixels_of(c)) for o, c, name in shown}
    # each name holds its own input (colliding names keep their order) and its own prediction
    np.testing.assert_array_equal(by_name["x.png"][0], pixels_of(png(seed=1)))
    np.testing.assert_array_equal(by_name["x_1.png"][0], pixels_of(png(seed=2)))
    for original_px, color_px in by_name.values():
        np.testing.assert_array_equal(color_px, colorize(expect(original_px).mask, spec.colors))

    from roadseg.serve.video import VideoWriter

    clip = tmp / "street.mp4"
    with VideoWriter(clip, (64, 48), fps=5) as w:
        for i in range(6):
            w.write(np.full((48, 64, 3), 40 * i, np.uint8))
    result = upload_video(io.BytesIO(clip.read_bytes()), "street.mp4")
    videos = streamlit_view_page(result)
    assert len(videos) == 2
    result.seek(0)
    with zipfile.ZipFile(result) as z:  # every frame's mask is the model's answer for that frame
        for i in range(6):
            frame = pixels_of(z.read(f"frames/frame_{i:05d}.png"))
            mask = pixels_of(z.read(f"pred_mask/frame_{i:05d}.png"))
            np.testing.assert_array_equal(mask, expect(frame).mask)
    predicted = [v for v in videos if "predicted" in v[1]]
    original = [v for v in videos if "predicted" not in v[1]]
    assert len(predicted) == len(original) == 1
    for data, name in videos:  # H.264 in MP4, what a browser's <video type="video/mp4"> plays
        out = tmp / f"check-{name}"
        out.write_bytes(data)
        from roadseg.serve.decoding import Limits
        from roadseg.serve.video import read_video

        info, frames = read_video(out, Limits())
        assert (info.width, info.height) == (64, 48) and sum(len(f) for f in frames) == 6
        assert b"avc1" in data[:4096] or b"avcC" in data


def test_readme_json_curl_and_multipart_json(service, tmp_path, reference) -> None:  # noqa: F811
    import shutil

    from roadseg.inference.render import colorize

    expect, spec = reference
    client, _, _ = service
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    src = tmp_path / "images"
    src.mkdir()
    (src / "one.png").write_bytes(png(20, 30, seed=7))
    (src / "two.jpg").write_bytes(png(24, 36, "JPEG", seed=8))
    # scripts/img_json.py's document: image_names + base64 images, one per file
    doc = {"image_names": [], "images": []}
    for f in sorted(src.iterdir()):
        doc["image_names"].append(f.name)
        doc["images"].append(base64.b64encode(f.read_bytes()).decode())
    body = tmp_path / "api_images.json"
    body.write_text(json.dumps(doc))
    url = str(client.base_url).rstrip("/") + "/predict/returns-json/"
    answers = []
    for form in (
        ["-H", "Content-Type: application/json", "-d", f"@{body}"],
        ["-F", f"file=@{body};type=application/json"],
    ):
        out = subprocess.run(
            [curl, "-fsS", "-X", "POST", url, "-H", f"X-API-Key: {KEY}", *form],
            capture_output=True,
            check=True,
            timeout=120,
        ).stdout
        answers.append(json.loads(out))
    assert answers[0] == answers[1]
    data = answers[0]
    # scripts/json_img.py: images, pred_mask, pred_color decode to files, named per image_names
    assert all(k in data for k in ("images", "pred_mask", "pred_color"))
    for i, name in enumerate(data.get("image_names", doc["image_names"])):
        original = Image.open(io.BytesIO(base64.b64decode(data["images"][i])))
        mask = Image.open(io.BytesIO(base64.b64decode(data["pred_mask"][i])))
        color = Image.open(io.BytesIO(base64.b64decode(data["pred_color"][i])))
        assert original.size == mask.size == color.size, name
        assert mask.mode == "L" and color.mode == "RGB"
        want = expect(np.asarray(original.convert("RGB"))).mask
        np.testing.assert_array_equal(np.asarray(mask), want, err_msg=name)
        np.testing.assert_array_equal(np.asarray(color), colorize(want, spec.colors))


def test_kitti_server_clients(service, keyed_requests, reference) -> None:  # noqa: F811
    client, _, _ = service
    expect, _ = reference
    requests = keyed_requests
    base = str(client.base_url).rstrip("/")
    assert requests.get(f"{base}/health").json() == {"status": "healthy"}
    r = requests.post(f"{base}/upload", files={"file": ("um_000001.png", png(37, 90))})
    r.raise_for_status()
    out = Image.open(io.BytesIO(r.content))
    assert out.format == "JPEG" and out.mode == "L" and out.size == (90, 37)
    road = expect(pixels_of(png(37, 90))).road_probability.astype(int)
    assert np.abs(np.asarray(out, int) - road).mean() < 3  # JPEG: close, not exact


def test_bentoml_python_clients(service, tmp_path, reference) -> None:  # noqa: F811
    import asyncio

    import bentoml

    from roadseg.inference.render import colorize

    client, version, _ = service
    expect, spec = reference
    url = str(client.base_url).rstrip("/")
    street = tmp_path / "street.png"
    street.write_bytes(png(44, 66, seed=9))
    with bentoml.SyncHTTPClient(url, token=KEY) as c:
        mask_file = c.segment(image=street)
        color_file = c.segment(image=street, format="color")
        result = c.segment_json(image=street)
    mask = np.asarray(Image.open(mask_file))
    want = expect(pixels_of(png(44, 66, seed=9))).mask
    np.testing.assert_array_equal(mask, want)
    color = np.asarray(Image.open(color_file))
    np.testing.assert_array_equal(color, colorize(want, spec.colors))
    palette = {tuple(c["color"]) for c in client.get("/classes").json()}
    assert {tuple(p) for p in color.reshape(-1, 3)} <= palette
    assert result["model_version"] == version
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(base64.b64decode(result["mask"])))), mask
    )

    async def run() -> dict:
        async with bentoml.AsyncHTTPClient(url, token=KEY) as c:
            return await c.segment_json(image=street)

    assert asyncio.run(run())["mask"] == result["mask"]
