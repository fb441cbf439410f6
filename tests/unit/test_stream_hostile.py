"""`GET /stream` against hostile clients, in-process (the app's own checks; what sits below it,
uvicorn's WebSocket protocol, is tested live in tests/integration/test_stream_live.py).

Every case ends in a text error (the connection stays usable) or a close code, and a good client
is served afterwards. Uses the module fixture of test_stream_app.py (max_frame_bytes 60,000,
max_frame_pixels 10,000, 3 connections, key auth timeout 2 s, idle timeout 4 s)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from roadseg.inference.predict import predict
from roadseg.serve.decoding import Limits, decode_image
from tests.unit.test_service_app import image_bytes
from tests.unit.test_stream_app import GOOD, KEY, MAX_FRAME_BYTES, answer, close_code, served

__all__ = ["served"]  # the module fixture, shared


def still_serves(client, model, spec) -> None:
    data, pixels = image_bytes(24, 40, seed=99)
    with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
        ws.send_bytes(data)
        head, mask = answer(ws)
        assert head["frame"] == 0
        np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)


def closed_with(client, first: str | bytes | None = None, path: str = "/stream", **kw) -> tuple:
    """(code, reason) the server closes a connection with, after an optional first message."""
    from starlette.websockets import WebSocketDisconnect

    with client.websocket_connect(path, **kw) as ws:
        if isinstance(first, str):
            ws.send_text(first)
        elif first is not None:
            ws.send_bytes(first)
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_text()
    return e.value.code, e.value.reason


@pytest.mark.parametrize(
    "label,first,kw",
    [
        ("key in the URL", None, {"path": f"/stream?api_key={KEY}&key={KEY}&token={KEY}"}),
        ("empty key", None, {"subprotocols": ["roadseg", "roadseg.key."]}),
        ("two key subprotocols", None, {"subprotocols": [*GOOD, "roadseg.key.other"]}),
        ("the same key twice", None, {"subprotocols": [*GOOD, f"roadseg.key.{KEY}"]}),
        ("subprotocol and header", None, {"subprotocols": GOOD, "headers": {"X-API-Key": KEY}}),
        ("empty first message", "", {}),
        ("empty key message", json.dumps({"api_key": ""}), {}),
        ("key is a number", json.dumps({"api_key": 12}), {}),
        ("key in a list", json.dumps([{"api_key": KEY}]), {}),
        ("JSON 100k deep", "[" * 100_000, {}),
        ("5000-digit number", '{"api_key": ' + "1" * 5000 + "}", {}),
        ("lone surrogate", '{"api_key": "\\ud800"}', {}),
        ("key padded past 4 kB", json.dumps({"api_key": KEY, "pad": "x" * 5000}), {}),
        ("frame before the key", b"\x89PNG", {}),
    ],
)
def test_key_edge_cases_close_1008_and_leak_nothing(served, label, first, kw) -> None:
    client, model, spec, _ = served
    code, reason = closed_with(client, first, **kw)
    assert code == 1008, label
    assert KEY not in reason and "ud800" not in reason
    still_serves(client, model, spec)


def test_key_sent_again_after_auth_is_a_protocol_violation(served) -> None:
    client, model, spec, _ = served
    code, _ = closed_with(client, json.dumps({"api_key": KEY}), subprotocols=GOOD)
    assert code == 1003  # text where a frame is expected
    with client.websocket_connect("/stream") as ws:  # first-message key, then a second one
        ws.send_text(json.dumps({"api_key": KEY}))
        ws.send_text(json.dumps({"api_key": KEY}))
        assert close_code(ws) == 1003
    still_serves(client, model, spec)


def test_format_garbage_closes_with_a_short_reason(served) -> None:
    client, model, spec, _ = served
    for fmt in ("%F0%9F%98%80" * 200, "%ff%fe", "mask%00", "MASK", "x" * 5000):
        code, reason = closed_with(client, path=f"/stream?format={fmt}", subprotocols=GOOD)
        assert code == 1008 and reason.startswith("unknown format")
        assert len(reason.encode()) <= 123  # a close frame's limit: a longer one broke the close
    with client.websocket_connect("/stream?format=color&format=mask", subprotocols=GOOD) as ws:
        data, pixels = image_bytes(20, 30, seed=4)
        ws.send_bytes(data)
        _, mask = answer(ws)  # the last `format` counts, as in Starlette's query parsing
        np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)


def test_byte_and_pixel_limits_exactly_and_one_over(served) -> None:
    client, model, spec, _ = served
    at_limit, pixels = image_bytes(100, 100, seed=7)  # 10,000 pixels: the limit
    over, _ = image_bytes(101, 100, seed=7)
    with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
        ws.send_bytes(b"")
        err = json.loads(ws.receive_text())
        assert err["frame"] == 0 and err["error"] == "empty"
        ws.send_bytes(at_limit)
        head, mask = answer(ws)
        assert head["frame"] == 1
        np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)
        ws.send_bytes(over)
        assert json.loads(ws.receive_text())["error"] == "too_many_pixels"
        ws.send_bytes(b"\xff" * MAX_FRAME_BYTES)  # exactly the byte limit: decoded, refused
        err = json.loads(ws.receive_text())
        assert err["frame"] == 3 and err["error"] == "not_an_image"
        ws.send_bytes(b"\xff" * (MAX_FRAME_BYTES + 1))
        assert close_code(ws) == 1009
    still_serves(client, model, spec)


def odd_frames() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)

    def save(im: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    deep = (rng.integers(0, 65536, (30, 50), dtype=np.uint16)).astype(np.uint16)
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[::-1].copy())]
    return {
        "gif": save(Image.fromarray(rgb).convert("P"), "GIF"),
        "animated gif": save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "16-bit png": save(Image.fromarray(deep), "PNG"),
        "cmyk jpeg": save(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "exif-rotated jpeg": save(Image.fromarray(rgb), "JPEG", exif=exif.tobytes()),
        "palette png": save(Image.fromarray(rgb).convert("P"), "PNG"),
        "la png": save(Image.fromarray(rgb).convert("LA"), "PNG"),
        "1x1": save(Image.fromarray(rgb[:1, :1]), "PNG"),
        "2x2": save(Image.fromarray(rgb[:2, :2]), "PNG"),
        "5000x1": save(Image.fromarray(np.resize(rgb, (1, 5000, 3))), "PNG"),
        "1x5000": save(Image.fromarray(np.resize(rgb, (5000, 1, 3))), "PNG"),
    }


def test_odd_formats_get_a_mask_at_displayed_size_or_a_text_error(served) -> None:
    client, model, spec, _ = served
    limits = Limits(max_image_pixels=10_000)
    with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
        for i, (label, data) in enumerate(odd_frames().items()):
            ws.send_bytes(data)
            head = json.loads(ws.receive_text())
            assert head["frame"] == i, label
            if "error" in head:  # refused as the HTTP routes refuse it: never a broken stream
                assert head["error"] in ("unsupported_format", "not_an_image"), (label, head)
                continue
            pixels = decode_image(data, limits)
            mask = answer_png(ws)
            assert mask.shape == pixels.shape[:2], label
            assert (head["height"], head["width"]) == pixels.shape[:2], label
            np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask, label)
            if label == "exif-rotated jpeg":
                assert mask.shape == (50, 30)  # displayed (rotated), not stored (30 x 50)
    still_serves(client, model, spec)


def answer_png(ws) -> np.ndarray:
    from tests.unit.test_service_app import png_array

    return png_array(ws.receive_bytes())


def test_a_frame_that_breaks_the_model_fails_alone(served) -> None:
    from bento.service import current_state

    client, model, spec, _ = served
    state = current_state()
    infer = state.infer

    async def failing_on_wide(images):
        if images[0].shape[1] == 77:
            raise RuntimeError("model failed on this frame")
        return await infer(images)

    bad, _ = image_bytes(20, 77, seed=1)
    good, pixels = image_bytes(20, 30, seed=2)
    state.infer = failing_on_wide
    try:
        with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
            ws.send_bytes(bad)
            err = json.loads(ws.receive_text())
            assert (err["frame"], err["error"]) == (0, "frame_failed")
            assert "model failed" not in err["detail"]  # no internals in the answer
            ws.send_bytes(good)
            head, mask = answer(ws)
            assert head["frame"] == 1
            np.testing.assert_array_equal(mask, predict(model, [pixels], spec)[0].mask)
    finally:
        del state.infer


def test_silent_clients_are_closed_and_do_not_take_stream_slots(served) -> None:
    """Clients that never send their key wait at most auth_timeout and have their own count
    (3): a 4th gets 1013, while a client with the key is still served. A stream that never
    sends a frame is closed after idle_seconds."""
    client, model, spec, _ = served
    with (
        client.websocket_connect("/stream") as a,
        client.websocket_connect("/stream") as b,
        client.websocket_connect("/stream") as c,
    ):
        code, _ = closed_with(client)
        assert code == 1013
        still_serves(client, model, spec)
        for ws in (a, b, c):
            assert close_code(ws) == 1008  # no key within auth_timeout_seconds
    with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
        from starlette.websockets import WebSocketDisconnect

        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_text()  # nothing sent: closed after IDLE_SECONDS
        assert e.value.code == 1008 and "no frame" in e.value.reason
    still_serves(client, model, spec)


def test_rapid_connect_disconnect_leaks_no_stream_slot(served) -> None:
    client = served[0]
    data, _ = image_bytes(20, 30, seed=3)
    for i in range(60):
        with client.websocket_connect("/stream", subprotocols=GOOD) as ws:
            if i % 3:
                ws.send_bytes(data)  # leave with a frame in flight
            if i % 3 == 2:
                ws.receive_text()
    # every slot came back: max_connections (3) streams at once are all served
    with (
        client.websocket_connect("/stream", subprotocols=GOOD) as a,
        client.websocket_connect("/stream", subprotocols=GOOD) as b,
        client.websocket_connect("/stream", subprotocols=GOOD) as c,
    ):
        for ws in (a, b, c):
            ws.send_bytes(data)
        for ws in (a, b, c):
            head, _ = answer(ws)
            assert head["frame"] == 0
