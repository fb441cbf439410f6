"""`GET /stream` over a live `bentoml serve` (uvicorn's WebSocket stack, not the TestClient):
the `roadseg stream` client on a generated clip, a flood, bad frames, keys, an abrupt leave."""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from roadseg.inference.predict import predict
from roadseg.serve.stream_client import stream_frames, video_frames
from roadseg.testing import running_service

# Imported at collection, not inside a test: after the CLI test, pytest's assertion rewriter
# compiling this module raised CPython 3.11's "AST constructor recursion depth mismatch".
from tests.unit.test_service_app import png_array

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
KEY = "live-stream-key"
N_FRAMES = 12
MAX_STREAMS = 4
LIVE_LIMITS = {"max_connections: 16": f"max_connections: {MAX_STREAMS}"}
KEY_HEADER = f"Sec-WebSocket-Protocol: roadseg, roadseg.key.{KEY}\r\n"
RSS_BOUND_MB = 250  # growth of the server's memory over each heavy case


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    from roadseg.serve.video import VideoWriter
    from roadseg.testing import params_with, save_random_checkpoint

    tmp = tmp_path_factory.mktemp("stream-live")
    ckpt = tmp / "model.pt"
    model, spec = save_random_checkpoint(ckpt, base_channels=4, seed=1, epoch=1)
    params_with(tmp / "params.yaml", {"max_fps: 30": "max_fps: 8", **LIVE_LIMITS})
    clip = tmp / "clip.mp4"
    yy, xx = np.mgrid[0:64, 0:96]
    with VideoWriter(clip, (96, 64), 10) as w:
        for i in range(N_FRAMES):  # a moving gradient: every frame differs
            frame = np.stack([(xx * 2 + i * 9) % 256, yy * 3, (xx + yy + i * 20) % 256], -1)
            w.write(frame.astype(np.uint8))
    env = {
        "ROADSEG_MODEL_URI": str(ckpt),
        "ROADSEG_PARAMS": str(tmp / "params.yaml"),
        "ROADSEG_MONITOR_DIR": str(tmp / "monitoring"),
        "ROADSEG_API_KEY": KEY,
        "BENTOML_HOME": str(tmp / "bentoml"),
    }
    with running_service(env, log_path=tmp / "serve.log") as url:
        yield url.replace("http://", "ws://") + "/stream", model, spec, clip, tmp


def test_cli_streams_clip_and_writes_video(live) -> None:
    from roadseg.cli import app
    from roadseg.serve.video import read_video

    url, _, _, clip, tmp = live
    out = tmp / "overlay.mp4"
    args = ["stream", "--url", url, "--video", str(clip), "--out", str(out), "--fast"]
    r = CliRunner().invoke(app, [*args, "--api-key", KEY])
    assert r.exit_code == 0, r.output
    assert f"{N_FRAMES}/{N_FRAMES} frames answered" in r.output and "dropped 0" in r.output
    from roadseg.serve.decoding import Limits

    info, batches = read_video(out, Limits())
    assert (info.width, info.height) == (96, 64)
    assert sum(len(b) for b in batches) == N_FRAMES
    bad = CliRunner().invoke(app, [*args, "--api-key", "wrong"])
    assert bad.exit_code == 1 and "1008" in bad.output


def test_fast_stream_masks_equal_predict_in_order(live) -> None:
    url, model, spec, clip, _ = live
    fps, frames = video_frames(clip)
    stats, pngs = asyncio.run(
        stream_frames(url, frames, fps, fmt="mask", realtime=False, api_key=KEY, codec="png")
    )
    assert stats.frames == list(range(N_FRAMES)) and stats.dropped == 0
    for i, frame in enumerate(frames):
        np.testing.assert_array_equal(png_array(pngs[i]), predict(model, [frame], spec)[0].mask)


def test_flood_reports_drops_then_service_serves_others(live) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    url, model, spec, clip, _ = live
    _, frames = video_frames(clip)
    # 1000 frames/s against max_fps 8: most are dropped, the last is always answered
    stats, pngs = asyncio.run(
        stream_frames(url, frames * 3, 1000.0, fmt="mask", api_key=KEY, codec="png")
    )
    assert stats.dropped > 0 and stats.frames == sorted(stats.frames)
    assert stats.frames[-1] == 3 * N_FRAMES - 1 and stats.answered + stats.dropped == 3 * N_FRAMES
    protocols = ["roadseg", f"roadseg.key.{KEY}"]
    with connect(url, subprotocols=protocols) as ws:  # bad frame: error, still usable
        ws.send(b"not an image")
        assert json.loads(ws.recv())["error"] == "not_an_image"
    with connect(url, subprotocols=protocols, max_size=None) as ws:
        ws.send(b"\x89PNG" + bytes(9 * 2**20))  # over max_frame_bytes (8 MiB)
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
        assert e.value.rcvd.code == 1009
    with connect(url) as ws:  # no key
        ws.send(b"frame")
        with pytest.raises(ConnectionClosed) as e:
            ws.recv()
        assert e.value.rcvd.code == 1008
    ws = connect(url, subprotocols=protocols)
    for frame in frames[:4]:
        ws.send(frames_png(frame))
    ws.socket.close()  # abrupt: no close handshake
    stats, pngs = asyncio.run(
        stream_frames(url, frames[:2], 10.0, fmt="mask", realtime=False, api_key=KEY, codec="png")
    )
    assert stats.frames == [0, 1]
    np.testing.assert_array_equal(png_array(pngs[1]), predict(model, [frames[1]], spec)[0].mask)


def frames_png(frame: np.ndarray) -> bytes:
    from roadseg.serve.stream_client import encode_frame

    return encode_frame(frame, "PNG")


# Hostile clients below the app: uvicorn's WebSocket protocol as `bentoml serve` runs it, with
# roadseg.serve.wsguard installed. Raw frames come from tests/integration/ws_raw.py.


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def serves_a_frame(url: str, model, spec) -> None:
    from websockets.sync.client import connect

    frame = np.random.default_rng(3).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    with connect(url, subprotocols=["roadseg", f"roadseg.key.{KEY}"], open_timeout=30) as ws:
        ws.send(frames_png(frame))
        head = json.loads(ws.recv(timeout=60))
        assert head["frame"] == 0 and (head["width"], head["height"]) == (56, 40)
        mask = png_array(ws.recv(timeout=60))
    np.testing.assert_array_equal(mask, predict(model, [frame], spec)[0].mask)


def test_no_compression_and_protocol_violations_close(live) -> None:
    import zlib

    from websockets.sync.client import connect

    from tests.integration.ws_raw import BINARY, CONT, TEXT, RawWS, close_frame, frame

    url, model, spec, _, _ = live
    port = port_of(url)
    with connect(url, subprotocols=["roadseg", f"roadseg.key.{KEY}"], compression="deflate") as ws:
        assert ws.protocol.extensions == []  # permessage-deflate offered, not negotiated
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = deflate.compress(bytes(64 * 2**20)) + deflate.flush(zlib.Z_SYNC_FLUSH)
    cases = {  # label: (frames sent, close code)
        "compressed 64 MiB of zeros in 64 kB": (frame(BINARY, bomb[:-4], rsv1=True), 1002),
        "declared length 2**62": (frame(BINARY, b"", length=2**62), 1009),
        "2000 empty fragments": (
            frame(BINARY, b"x", fin=False) + frame(CONT, b"", fin=False) * 2000, 1009),
        "unmasked frame": (frame(BINARY, b"abc", mask=False), 1002),
        "close code 999": (close_frame(999), 1002),
        "close reason not UTF-8": (close_frame(1000, b"\xff\xfe"), 1007),
        "text not UTF-8": (frame(TEXT, b"\xff\xfe"), 1007),
        "one byte over max_frame_bytes": (frame(BINARY, b"", length=8 * 2**20 + 1), 1009),
    }  # fmt: skip
    for label, (data, code) in cases.items():
        ws = RawWS(port, extra_headers=KEY_HEADER)
        try:
            assert "sec-websocket-extensions" not in ws.response.lower()
            ws.send(data)
            assert ws.close_code()[0] == code, label
        finally:
            ws.close()
    ws = RawWS(port, extra_headers=KEY_HEADER)  # exactly max_frame_bytes: read, then refused
    ws.send(frame(BINARY, b"\xff" * (8 * 2**20)))
    op, payload = ws.recv_frame()
    assert op == TEXT and json.loads(payload)["error"] == "not_an_image"
    ws.close()
    serves_a_frame(url, model, spec)


def test_pings_pongs_and_messages_after_close(live) -> None:
    from tests.integration.service_helpers import tree_rss_mb
    from tests.integration.ws_raw import (
        BINARY,
        CLOSE,
        PING,
        PONG,
        TEXT,
        RawWS,
        close_frame,
        frame,
    )

    url, model, spec, clip, _ = live
    port = port_of(url)
    start = tree_rss_mb(port)
    ws = RawWS(port, extra_headers=KEY_HEADER)
    ws.send(frame(PING, b"hello") + frame(PONG, b"unsolicited"))
    assert ws.recv_frame() == (PONG, b"hello")
    _, frames = video_frames(clip)
    ws.send(frame(BINARY, frames_png(frames[0])))
    op, head = ws.recv_frame()
    assert op == TEXT and json.loads(head)["frame"] == 0
    ws.send(close_frame(1000, b"bye") + frame(BINARY, frames_png(frames[1])))
    assert ws.recv_frame()[0] == BINARY  # the answer already under way, then the close echo
    assert ws.close_code() == (1000, "bye")
    ws.close()
    flood = RawWS(port, extra_headers=KEY_HEADER)  # pings beyond the budget close 1008
    flood.send(frame(PING, b"p" * 125) * 5000)
    op = None
    while op != CLOSE:
        op, payload = flood.recv_frame()
    assert payload[:2] == (1008).to_bytes(2, "big")
    flood.close()
    serves_a_frame(url, model, spec)
    assert tree_rss_mb(port) - start < RSS_BOUND_MB


def test_client_that_never_reads_costs_bounded_memory(live) -> None:
    import socket
    import time

    from tests.integration.service_helpers import tree_rss_mb
    from tests.integration.ws_raw import BINARY, RawWS, frame

    url, model, spec, _, _ = live
    port = port_of(url)
    start = tree_rss_mb(port)
    big = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    data = frame(BINARY, frames_png(big))  # 2.7 MB: answers (overlay-size PNGs) pile up
    ws = RawWS(port, path="/stream?format=overlay", extra_headers=KEY_HEADER)
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws.sock.settimeout(5)
    peak, deadline = start, time.monotonic() + 6
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            ws.send(data)
            peak = max(peak, tree_rss_mb(port))
    serves_a_frame(url, model, spec)  # while that one still holds its unread answers
    peak = max(peak, tree_rss_mb(port))
    ws.close()
    print(f"\nserver RSS {start:.0f} MB, peak {peak:.0f} MB while a client never read")
    assert peak - start < RSS_BOUND_MB


def answered(ws) -> bool:
    """True when `ws` answers its frame 0; False when it was refused (1013)."""
    from websockets.exceptions import ConnectionClosed

    try:
        head = json.loads(ws.recv(timeout=60))
    except ConnectionClosed as e:
        assert e.rcvd is not None and e.rcvd.code == 1013
        return False
    assert head["frame"] == 0 and isinstance(ws.recv(timeout=60), bytes)
    return True


def test_connection_limit_and_rapid_connect_loops(live) -> None:
    import time

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from tests.integration.service_helpers import tree_rss_mb
    from tests.integration.ws_raw import BINARY, RawWS, frame

    url, model, spec, clip, _ = live
    port = port_of(url)
    _, frames = video_frames(clip)
    data = frame(BINARY, frames_png(frames[0]))
    start = tree_rss_mb(port)
    for i in range(150):  # connect, maybe send a frame, vanish without a close handshake
        ws = RawWS(port, extra_headers=KEY_HEADER)
        if i % 2:
            ws.send(data)
        ws.close()
    protocols = ["roadseg", f"roadseg.key.{KEY}"]
    streams = [connect(url, subprotocols=protocols, open_timeout=30) for _ in range(MAX_STREAMS)]
    try:
        for ws in streams:  # (a stream refused while the loop's last closes land is retried)
            ws.send(frames_png(frames[1]))
        streams = [s for s in streams if answered(s)]
        deadline = time.monotonic() + 30
        while len(streams) < MAX_STREAMS and time.monotonic() < deadline:
            ws = connect(url, subprotocols=protocols, open_timeout=30)
            ws.send(frames_png(frames[1]))
            streams += [ws] if answered(ws) else []
        assert len(streams) == MAX_STREAMS
        with connect(url, subprotocols=protocols) as extra:
            with pytest.raises(ConnectionClosed) as e:
                extra.recv(timeout=30)
            assert e.value.rcvd.code == 1013
        for ws in streams:  # every slot the loop used came back: all MAX_STREAMS still served
            ws.send(frames_png(frames[2]))
        for ws in streams:
            assert json.loads(ws.recv(timeout=60))["frame"] == 1
            assert isinstance(ws.recv(timeout=60), bytes)
    finally:
        for ws in streams:
            ws.close()
    serves_a_frame(url, model, spec)
    assert tree_rss_mb(port) - start < RSS_BOUND_MB


def test_key_in_url_refused_and_logs_hold_no_key_nor_traceback(live) -> None:
    """Last in this module: the server's log over every case above."""
    from tests.integration.ws_raw import BINARY, RawWS, frame

    url, _, _, _, tmp = live
    ws = RawWS(port_of(url), path=f"/stream?api_key={KEY}&format=mask")
    ws.send(frame(BINARY, b"frame"))
    assert ws.close_code()[0] == 1008
    ws.close()
    log = (tmp / "serve.log").read_text(errors="replace")
    assert KEY not in log
    assert "Traceback" not in log and "Exception in ASGI" not in log
