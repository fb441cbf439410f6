"""The BentoML service in-process (Starlette TestClient over `RoadSegService.to_asgi()`).

A tiny random U-Net saved as a checkpoint is served; every route's pixels are compared with
`roadseg.inference.predict.predict` on the same decoded image, so a route that flips, crops, re-orders
channels or mixes up results between concurrent requests fails here, in seconds.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from roadseg.inference.predict import predict
from roadseg.inference.render import colorize, overlay
from tests.inprocess import in_process_service

KEY = "in-process-key"
H = {"X-API-Key": KEY}


def image_bytes(h: int, w: int, fmt: str = "PNG", seed: int = 0) -> tuple[bytes, np.ndarray]:
    """Encoded bytes and the exact RGB pixels a decoder must return (PNG is lossless)."""
    rng = np.random.default_rng(seed)
    # Smooth content with a strong left/right and top/bottom asymmetry, so that a mirrored or
    # transposed answer differs from the right one.
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    arr = (arr + rng.integers(0, 40, arr.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    data = buf.getvalue()
    return data, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("svc")
    edits = {
        "max_zip_entries: 256": "max_zip_entries: 6",
        "max_zip_uncompressed_bytes: 209715200": "max_zip_uncompressed_bytes: 400000",
    }
    with in_process_service(tmp, edits, KEY) as (client, model, spec):
        yield client, model, spec, tmp


@pytest.fixture(scope="module")
def backend() -> str:
    """The backend `served` runs (test_service_onnx.py overrides both)."""
    return "torch"


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def expected_mask(served, pixels: np.ndarray) -> np.ndarray:
    _, model, spec, _ = served
    return predict(model, [pixels], spec)[0].mask


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_segment_every_format_equals_predict(served, backend: str) -> None:
    client, _, spec, _ = served
    data, pixels = image_bytes(45, 70)
    mask = expected_mask(served, pixels)
    assert len(np.unique(mask)) > 1, "the test model must predict several classes"
    colors = spec.colors
    want = {
        "mask": mask,
        "color": colorize(mask, colors),
        "overlay": overlay(pixels, mask, colors, 0.5),
    }
    for fmt, expected in want.items():
        # raw body + query parameter (curl --data-binary), multipart image + form field (client)
        r1 = client.post(
            f"/segment?format={fmt}", content=data, headers={**H, "Content-Type": "image/png"}
        )
        r2 = client.post(
            "/segment", files={"image": ("s.png", data)}, data={"format": fmt}, headers=H
        )
        for r in (r1, r2):
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/png"
            assert r.headers["x-model-version"] == "ckpt-epoch3"
            assert r.headers["x-model-backend"] == backend
            np.testing.assert_array_equal(png_array(r.content), expected)


def test_segment_json_content(served) -> None:
    client, _, spec, _ = served
    data, pixels = image_bytes(33, 51, seed=3)
    mask = expected_mask(served, pixels)
    r = client.post("/segment/json", files={"image": ("a.png", data)}, headers=H)
    body = r.json()
    np.testing.assert_array_equal(png_array(base64.b64decode(body["mask"])), mask)
    assert (body["width"], body["height"]) == (51, 33)
    shares = {n: float((mask == i).mean()) for i, n in enumerate(spec.class_names)}
    assert body["class_shares"] == pytest.approx(shares)
    assert body["model_version"] == "ckpt-epoch3" and 0 < body["confidence"] <= 1


def test_zip_layout_pairs_like_the_streamlit_view_page(served) -> None:
    """Two parts whose names collide (`a.jpg`, a ZIP with `x/a.png` and `a.png`) give unique
    shared names; every `images/<n>` pairs with `pred_color/<n>` and `pred_mask/<n>`."""
    client, _, spec, _ = served
    a, a_px = image_bytes(20, 30, seed=1)
    b, b_px = image_bytes(25, 35, seed=2)
    c, c_px = image_bytes(22, 31, seed=4)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("x/a.png", b)
        zf.writestr("a.png", c)
    r = client.post(
        "/predict-image/returns-zip/",
        files=[("files", ("a.png", a)), ("files", ("batch.zip", buf.getvalue()))],
        headers=H,
    )
    assert r.status_code == 200, r.text
    z = zipfile.ZipFile(io.BytesIO(r.content))
    names = z.namelist()
    assert len(names) == len(set(names)) == 9
    originals = sorted(n for n in names if n.startswith("images/"))
    assert originals == ["images/a.png", "images/a_1.png", "images/a_2.png"]
    for name, pixels in zip(originals, (a_px, b_px, c_px), strict=True):
        base = name.split("/", 1)[1]
        np.testing.assert_array_equal(png_array(z.read(name)), pixels)
        mask = expected_mask(served, pixels)
        np.testing.assert_array_equal(png_array(z.read(f"pred_mask/{base}")), mask)
        np.testing.assert_array_equal(
            png_array(z.read(f"pred_color/{base}")), colorize(mask, spec.colors)
        )


def test_request_budget_spans_parts(served) -> None:
    """6 images per request: two ZIPs of 4 each pass one by one but not together."""
    client, *_ = served
    four = io.BytesIO()
    with zipfile.ZipFile(four, "w") as zf:
        for i in range(4):
            zf.writestr(f"{i}.png", image_bytes(8, 8, seed=i)[0])
    one = [("files", ("z.zip", four.getvalue()))]
    assert client.post("/predict-image/returns-zip/", files=one, headers=H).status_code == 200
    r = client.post("/predict-image/returns-zip/", files=one * 2, headers=H)
    assert r.status_code == 413 and "more than the limit of 2" in r.json()["detail"]
    body = {
        "image_names": ["x"] * 7,
        "images": [base64.b64encode(image_bytes(8, 8)[0]).decode()] * 7,
    }
    r = client.post("/predict/returns-json/", json=body, headers=H)
    assert r.status_code == 413 and r.json()["error"] == "too_many_images"


def test_json_body_and_multipart_file_give_the_same_answer(served) -> None:
    client, _, spec, _ = served
    data, pixels = image_bytes(30, 40, seed=5)
    doc = {"image_names": ["street.png"], "images": [base64.b64encode(data).decode()]}
    r1 = client.post("/predict/returns-json/", json=doc, headers=H)
    r2 = client.post(
        "/predict/returns-json/",
        files={"file": ("api_images.json", json.dumps(doc).encode(), "application/json")},
        headers=H,
    )
    assert r1.status_code == r2.status_code == 200
    assert r1.json() == r2.json()
    out = r1.json()
    mask = expected_mask(served, pixels)
    np.testing.assert_array_equal(png_array(base64.b64decode(out["pred_mask"][0])), mask)
    np.testing.assert_array_equal(
        png_array(base64.b64decode(out["pred_color"][0])), colorize(mask, spec.colors)
    )
    assert out["images"] == doc["images"]


def test_upload_answers_the_road_probability(served) -> None:
    client, model, spec, _ = served
    data, pixels = image_bytes(37, 90, seed=6)
    r = client.post("/upload", files={"file": ("k.png", data)}, headers=H)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    got = Image.open(io.BytesIO(r.content))
    assert got.mode == "L" and got.size == (90, 37)
    want = predict(model, [pixels], spec)[0].road_probability.astype(int)
    assert np.abs(np.asarray(got, int) - want).mean() < 3  # JPEG, not exact
    r = client.post("/upload?format=overlay", files={"file": ("k.png", data)}, headers=H)
    assert Image.open(io.BytesIO(r.content)).mode == "RGB"
    assert client.get("/health").json() == {"status": "healthy"}


def test_api_key_forms(served) -> None:
    client, *_ = served
    data, _ = image_bytes(10, 10)
    ok = {"Authorization": f"Bearer {KEY}", "Content-Type": "image/png"}
    assert client.post("/segment", content=data, headers=ok).status_code == 200
    for headers in (
        {},
        {"X-API-Key": "wrong"},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": KEY, "Authorization": f"Bearer {KEY}"},
    ):
        r = client.post("/segment", content=data, headers={**headers, "Content-Type": "image/png"})
        assert r.status_code == 401, headers
    # two X-API-Key headers (one right) are refused, not resolved by order
    r = client.post(
        "/segment",
        content=data,
        headers=[("X-API-Key", "wrong"), ("X-API-Key", KEY), ("Content-Type", "image/png")],
    )
    assert r.status_code == 401


def test_bad_inputs_are_json_4xx(served) -> None:
    client, *_ = served
    for data in (b"", b"not an image", image_bytes(20, 20)[0][:60]):
        r = client.post("/segment", content=data, headers={**H, "Content-Type": "image/png"})
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["detail"]
    r = client.post("/segment?format=sepia", content=image_bytes(9, 9)[0], headers=H)
    assert r.status_code in (400, 422)
    r = client.post("/predict/returns-json/", content=b"[" * 100_000, headers=H)
    assert r.status_code == 400 and r.json()["error"] == "bad_json"


def test_malformed_segment_requests_are_our_json_4xx(served) -> None:
    """Mistakes BentoML's typed-route parsing answered with a 500 and a logged traceback (a
    multipart body without `image`) or with pydantic's error list get our JSON errors; the
    service still answers a good request afterwards."""
    client, *_ = served
    png, pixels = image_bytes(12, 17, seed=5)
    cases = {
        "no image field": dict(files={"picture": ("a.png", png)}),
        "two images": dict(files=[("image", ("a.png", png)), ("image", ("b.png", png))]),
        "JSON body": dict(json={"image": base64.b64encode(png).decode()}),
        "bad format field": dict(files={"image": ("a.png", png)}, data={"format": "sepia"}),
        "broken multipart": dict(
            content=b"--b\r\nContent-Disposition: form-data; name=image\r\n\r\nxx",
            headers={**H, "Content-Type": "multipart/form-data; boundary=b"},
        ),
    }
    want = {"no image field": (422, "missing_image"), "two images": (400, "bad_multipart"),
            "JSON body": (415, "unsupported_media_type"), "bad format field": (422, "bad_format"),
            "broken multipart": (422, "missing_image")}  # fmt: skip
    for route in ("/segment", "/segment/json"):
        for name, kw in cases.items():
            if route == "/segment/json" and name == "bad format field":
                continue  # /segment/json has no format
            r = client.post(route, **({"headers": H} | kw))
            status, problem = want[name]
            assert r.status_code == status, (route, name, r.text)
            body = r.json()
            assert body["status"] == status and body["detail"], (route, name)
            assert body["error"] == problem, (route, name, body)
            assert "Traceback" not in r.text and "/work" not in r.text
    r = client.post("/segment", files={"image": ("a.png", png)}, headers=H)
    np.testing.assert_array_equal(png_array(r.content), expected_mask(served, pixels))


def test_concurrent_requests_get_their_own_answers(served) -> None:
    """Requests of different sizes, batched together, each get their own mask back; a bad
    image in the mix fails only its own request."""
    client, *_ = served
    cases = [image_bytes(20 + 3 * i, 30 + 5 * i, seed=10 + i) for i in range(10)]

    def call(i: int):
        if i == 4:
            return client.post(
                "/segment", content=b"junk", headers={**H, "Content-Type": "image/png"}
            )
        return client.post(
            "/segment", content=cases[i][0], headers={**H, "Content-Type": "image/png"}
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(10)))
    for i, r in enumerate(results):
        if i == 4:
            assert r.status_code == 415
            continue
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(png_array(r.content), expected_mask(served, cases[i][1]))


def test_openapi_documents_every_request_body(served) -> None:
    client, *_ = served
    spec = client.get("/docs.json").json()
    for path in (
        "/segment",
        "/segment/json",
        "/predict/returns-json/",
        "/predict-image/returns-zip/",
        "/predict-video/returns-zip/",
        "/upload",
    ):
        body = spec["paths"][path]["post"].get("requestBody")
        assert body and body.get("content"), path


# ---------------------------------------------------------------- a KITTI Road model (2 classes)


@pytest.fixture
def kitti(served):
    """The same live app serving a binary KITTI Road model: the engine on the service's state is
    swapped for the test (one BentoML app per process: its metrics are process-global)."""
    import bentoml

    from roadseg.serve.engine import InferenceEngine
    from roadseg.testing import random_unet

    client = served[0]
    client.get("/readyz")
    state = bentoml.get_current_service().state
    model, spec = random_unet(base_channels=4, seed=1, overrides=["data.dataset=kitti_road"])
    engine = InferenceEngine(model, spec, {"version": "kitti-1"})
    engine.ready = True
    saved = state.engine
    state.engine = engine
    yield client, model, spec
    state.engine = saved


def _png(h: int, w: int) -> tuple[bytes, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 4 % 256, yy * 6 % 256, (xx * yy) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), arr


def test_kitti_upload_like_the_original_server(kitti) -> None:
    client, model, spec = kitti
    assert spec.class_names == ("not road", "road")
    data, pixels = _png(75, 248)  # KITTI-like aspect
    # the original client: requests.post(url + "/upload", files={"file": ...}), reads a JPEG
    r = client.post("/upload", files={"file": ("um_000000.png", data)}, headers=H)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    out = Image.open(io.BytesIO(r.content))
    assert out.format == "JPEG" and out.mode == "L" and out.size == (248, 75)
    pred = predict(model, [pixels], spec)[0]
    assert np.abs(np.asarray(out, int) - pred.road_probability.astype(int)).mean() < 3
    # road probability > 0.5 is exactly where the mask says road (class 1)
    np.testing.assert_array_equal(pred.mask == 1, pred.road_probability > 127)


def test_kitti_segment_and_classes_follow_the_spec(kitti) -> None:
    client, model, spec = kitti
    data, pixels = _png(40, 64)
    r = client.post("/segment", content=data, headers={**H, "Content-Type": "image/png"})
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)
    assert set(np.unique(mask)) <= {0, 1}
    assert [c["name"] for c in client.get("/classes", headers=H).json()] == ["not road", "road"]
    assert client.get("/health").json() == {"status": "healthy"}


def test_multipart_requests_are_answered_by_the_typed_methods(served, monkeypatch) -> None:
    """The typed `@bentoml.api` methods are the real handlers of multipart requests (their
    signatures are what the BentoML clients read), raw bodies are answered in front of them;
    both give the same pixels, and a typed method's error keeps its status and JSON body."""
    import bento.service as service

    client, *_ = served
    answered: list[int] = []
    real = service._answer
    monkeypatch.setattr(
        service, "_answer", lambda ctx, r: answered.append(r.status_code) or real(ctx, r)
    )
    data, pixels = image_bytes(21, 34, seed=11)
    want = expected_mask(served, pixels)
    typed = client.post("/segment", files={"image": ("a.png", data)}, headers=H)
    assert answered == [200]
    raw = client.post("/segment", content=data, headers={**H, "Content-Type": "image/png"})
    assert answered == [200], "a raw body is answered before the typed method"
    for r in (typed, raw):
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        np.testing.assert_array_equal(png_array(r.content), want)
    shares = client.post("/segment/json", files={"image": ("a.png", data)}, headers=H)
    assert answered == [200, 200]
    np.testing.assert_array_equal(png_array(base64.b64decode(shares.json()["mask"])), want)
    broken = client.post("/segment/json", files={"image": ("a.png", b"junk")}, headers=H)
    junk = client.post("/segment/json", content=b"junk", headers={**H, "Content-Type": "image/png"})
    assert answered[-1] == broken.status_code == junk.status_code == 415
    assert broken.json() == junk.json() and broken.json()["error"] == "not_an_image"
