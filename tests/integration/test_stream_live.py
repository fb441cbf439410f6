"""`GET /stream` over a live `bentoml serve` (uvicorn's WebSocket stack, not the TestClient):
the `roadseg stream` client on a generated clip, a flood, bad frames, keys, an abrupt leave."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from roadseg.launcher import running_service
from roadseg.serving import predict
from roadseg.stream_client import stream_frames, video_frames

# Imported at collection, not inside a test: after the CLI test, pytest's assertion rewriter
# compiling this module raised CPython 3.11's "AST constructor recursion depth mismatch".
from tests.unit.test_service_app import png_array

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
KEY = "live-stream-key"
N_FRAMES = 12


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory):
    from roadseg.launcher import params_with, save_random_checkpoint
    from roadseg.video import VideoWriter

    tmp = tmp_path_factory.mktemp("stream-live")
    ckpt = tmp / "model.pt"
    model, spec = save_random_checkpoint(ckpt, base_channels=4, seed=1, epoch=1)
    params_with(tmp / "params.yaml", {"max_fps: 30": "max_fps: 8"})
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
    from roadseg.video import read_video

    url, _, _, clip, tmp = live
    out = tmp / "overlay.mp4"
    args = ["stream", "--url", url, "--video", str(clip), "--out", str(out), "--fast"]
    r = CliRunner().invoke(app, [*args, "--api-key", KEY])
    assert r.exit_code == 0, r.output
    assert f"{N_FRAMES}/{N_FRAMES} frames answered" in r.output and "dropped 0" in r.output
    from roadseg.inputs import Limits

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
    from roadseg.stream_client import encode_frame

    return encode_frame(frame, "PNG")
