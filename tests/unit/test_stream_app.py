"""`GET /stream` in-process (Starlette TestClient over `RoadSegService.to_asgi()`).

A tiny random U-Net is served (as in test_service_app.py); each answered frame's mask must equal
`roadseg.inference.predict.predict` on the same pixels, so a stream that answers the wrong frame, in the
wrong order or at the wrong size fails here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.websockets import WebSocketDisconnect

from roadseg.inference.predict import predict
from roadseg.inference.render import colorize, overlay
from tests.inprocess import in_process_service
from tests.unit.test_service_app import image_bytes, png_array

KEY = "stream-key"
GOOD = ["roadseg", f"roadseg.key.{KEY}"]
MAX_FRAME_BYTES = 60_000
IDLE_SECONDS = 4


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("stream")
    edits = {
        "max_frame_bytes: 8388608": f"max_frame_bytes: {MAX_FRAME_BYTES}",
        "max_frame_pixels: 8300000": "max_frame_pixels: 10000",
        "max_fps: 30": "max_fps: 5",
        "max_connections: 16": "max_connections: 3",
        "auth_timeout_seconds: 10": "auth_timeout_seconds: 2",
        "idle_seconds: 60": f"idle_seconds: {IDLE_SECONDS}",
    }
    with in_process_service(tmp, edits, KEY) as (client, model, spec):
        yield client, model, spec, tmp


def answer(ws) -> tuple[dict, np.ndarray]:
    head = json.loads(ws.receive_text())
    return head, png_array(ws.receive_bytes())


def test_each_frame_answered_in_order_with_predict_pixels(served) -> None:
    client, model, spec, _ = served
    frames = [image_bytes(40 + 4 * i, 64 - 2 * i, seed=i) for i in range(4)]
    with client.websocket_connect("/stream?format=mask", subprotocols=GOOD) as ws:
        assert ws.accepted_subprotocol == "roadseg"  # the key is never echoed
        for i, (data, pixels) in enumerate(frames):
            ws.send_bytes(data)
            head, mask = answer(ws)
            assert head["frame"] == i and head["dropped"] == []
            assert mask.shape == pixels.shape[:2]
            assert (head["width"], head["height"]) == (pixels.shape[1], pixels.shape[0])
            assert head["latency_ms"] > 0 and head["model_version"] == "ckpt-epoch3"
            assert head["backend"] == "torch"
            np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)
    # overlay and color answers are the same renders as /segment's
    data, pixels = frames[0]
    want_mask = predict(model, [pixels], spec)[0].mask
    for fmt, want in {
        "color": colorize(want_mask, spec.colors),
        "overlay": overlay(pixels, want_mask, spec.colors, 0.5),
    }.items():
        with client.websocket_connect(f"/stream?format={fmt}", subprotocols=GOOD) as ws:
            ws.send_bytes(data)
            head, got = answer(ws)
            assert head["frame"] == 0
            np.testing.assert_array_equal(got, want)


def test_flood_reports_dropped_and_answers_newest(served) -> None:
    client, model, spec, _ = served
    frames = [image_bytes(32, 48, seed=10 + i) for i in range(30)]
    with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
        for data, _ in frames:  # far faster than max_fps=5: most frames must be skipped
            ws.send_bytes(data)
        seen: list[int] = []
        dropped: list[int] = []
        while not seen or seen[-1] != len(frames) - 1:
            head, mask = answer(ws)
            seen.append(head["frame"])
            dropped += head["dropped"]
            want = predict(model, [frames[head["frame"]][1]], spec)[0].mask
            np.testing.assert_array_equal(mask, want)
    assert seen == sorted(seen)
    assert dropped, "a flood must be reported as dropped frames"
    # every frame is answered or reported dropped, exactly once
    assert sorted(seen + dropped) == list(range(len(frames)))


def test_bad_frame_gets_error_and_stream_goes_on(served) -> None:
    client, model, spec, _ = served
    data, pixels = image_bytes(30, 40)
    big, _ = image_bytes(120, 120)  # 14,400 pixels > max_frame_pixels 10,000
    with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
        ws.send_bytes(b"definitely not an image")
        err = json.loads(ws.receive_text())
        assert (err["frame"], err["error"]) == (0, "not_an_image")
        ws.send_bytes(big)
        err = json.loads(ws.receive_text())
        assert (err["frame"], err["error"]) == (1, "too_many_pixels")
        ws.send_bytes(data)
        head, mask = answer(ws)
        assert head["frame"] == 2
        np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)


def close_code(ws) -> int:
    with pytest.raises(WebSocketDisconnect) as e:
        ws.receive_text()
    return e.value.code


def test_oversize_and_protocol_violations_close(served) -> None:
    client, _, _, _ = served
    with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
        ws.send_bytes(b"\x89PNG" + bytes(MAX_FRAME_BYTES))
        assert close_code(ws) == 1009
    with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
        ws.send_text("hello")
        assert close_code(ws) == 1003
    with client.websocket_connect("/stream?format=sepia", subprotocols=GOOD) as ws:
        assert close_code(ws) == 1008


def test_api_key_forms(served) -> None:
    client, model, spec, _ = served
    data, pixels = image_bytes(30, 40, seed=3)
    want = predict(model, [pixels], spec)[0].mask
    with client.websocket_connect("/stream") as ws:  # no key at all, frame first
        ws.send_bytes(data)
        assert close_code(ws) == 1008
    with client.websocket_connect("/stream", subprotocols=["roadseg", "roadseg.key.nope"]) as ws:
        assert close_code(ws) == 1008
    with client.websocket_connect("/stream") as ws:
        ws.send_text(json.dumps({"api_key": "nope"}))
        assert close_code(ws) == 1008
    # first-message and header forms work
    for kwargs, first in (
        ({}, json.dumps({"api_key": KEY})),
        ({"headers": {"X-API-Key": KEY}}, None),
    ):
        with client.websocket_connect("/stream", **kwargs) as ws:
            if first:
                ws.send_text(first)
            ws.send_bytes(data)
            head, mask = answer(ws)
            assert head["frame"] == 0
            np.testing.assert_array_equal(mask, want)


def test_abrupt_disconnect_and_connection_limit_leave_service_serving(served) -> None:
    client, model, spec, _ = served
    data, pixels = image_bytes(30, 40, seed=5)
    want = predict(model, [pixels], spec)[0].mask
    with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
        for _ in range(3):
            ws.send_bytes(data)  # leave mid-stream without reading or closing
    with (
        client.websocket_connect("/stream", subprotocols=GOOD) as a,
        client.websocket_connect("/stream", subprotocols=GOOD) as b,
        client.websocket_connect("/stream", subprotocols=GOOD) as c,
    ):
        with client.websocket_connect("/stream", subprotocols=GOOD) as extra:
            assert close_code(extra) == 1013  # max_connections: 3
        for ws in (a, b, c):
            ws.send_bytes(data)
        for ws in (a, b, c):
            head, mask = answer(ws)
            assert head["frame"] == 0
            np.testing.assert_array_equal(mask, want)
        r = client.post("/segment", files={"image": ("s.png", data)}, headers={"X-API-Key": KEY})
        assert r.status_code == 200
        np.testing.assert_array_equal(png_array(r.content), want)
    # streamed frames feed the monitoring log like any other request (written in the background)
    from bento.service import current_state

    assert current_state().flush()
    logs = list((served[3] / "monitoring").glob("*"))
    assert logs and sum(len(p.read_text().splitlines()) for p in logs if p.is_file()) > 5


def test_next_frame_is_inferred_while_the_previous_one_is_rendered(served) -> None:
    """Pipelined: frame 1 is decoded and inferred while frame 0 is still being rendered (a
    slow render here), and the answers still come in order with the right pixels."""
    import time

    from bento.service import current_state

    client, model, spec, _ = served
    state = current_state()
    events: list[tuple[str, int, float]] = []
    infer, render = state.infer, state.render

    async def logged_infer(images):
        events.append(("infer", images[0].shape[1], time.perf_counter()))
        return await infer(images)

    def slow_render(image, pred, fmt):
        time.sleep(0.5)
        events.append(("rendered", image.shape[1], time.perf_counter()))
        return render(image, pred, fmt)

    frames = [image_bytes(40, 60 + 4 * i, seed=i) for i in range(2)]
    state.infer, state.render = logged_infer, slow_render
    try:
        with client.websocket_connect("/stream?format=mask", subprotocols=GOOD) as ws:
            ws.send_bytes(frames[0][0])
            deadline = time.perf_counter() + 10
            while not events and time.perf_counter() < deadline:  # frame 0 taken: not dropped
                time.sleep(0.01)
            ws.send_bytes(frames[1][0])
            for i, (_, pixels) in enumerate(frames):
                head, mask = answer(ws)
                assert head["frame"] == i and head["dropped"] == []
                np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)
    finally:
        del state.infer, state.render  # back to the class's methods
    when = {(kind, width): t for kind, width, t in events}
    assert when[("infer", 64)] < when[("rendered", 60)]
