"""Python client of `GET /stream` (`roadseg stream`): stream a video file, write the answers.

`--realtime` (default) sends frames at the video's frame rate, as a camera would; frames the
service cannot keep up with come back as `dropped`, and the written video repeats the latest
answer in their place so it keeps the input's timing. `--fast` sends the next frame as soon as the
previous one is answered (no drops, as fast as the service goes).
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # what a subprotocol name may hold


@dataclass
class StreamStats:
    sent: int = 0
    answered: int = 0
    dropped: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # send -> PNG received
    frames: list[int] = field(default_factory=list)  # answered indices, in arrival order

    @property
    def fps(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> str:
        share = self.dropped / self.sent if self.sent else 0.0
        return (
            f"{self.answered}/{self.sent} frames answered in {self.seconds:.2f} s "
            f"({self.fps:.2f} frames/s); latency p50 {self.percentile(50):.1f} ms, "
            f"p95 {self.percentile(95):.1f} ms; dropped {self.dropped} ({share:.0%}); "
            f"errors {self.errors}"
        )


def encode_frame(frame: np.ndarray, codec: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format=codec, **({"quality": 90} if codec == "JPEG" else {}))
    return buf.getvalue()


def video_frames(path: Path) -> tuple[float, list[np.ndarray]]:
    """(fps, RGB frames) of a local video file (the client's own file: no service limits)."""
    from roadseg.serve.decoding import Limits
    from roadseg.serve.video import read_video

    big = Limits(max_video_frames=10**7, max_video_seconds=10.0**7, max_image_pixels=10**9)
    info, batches = read_video(path, big, batch=16)
    frames = [f for b in batches for f in b]
    return (info.fps or 25.0), frames


def stream_video(
    url: str,
    video: Path,
    *,
    out: Path | None = None,
    fmt: str = "overlay",
    realtime: bool = True,
    api_key: str | None = None,
    codec: str = "JPEG",
) -> StreamStats:
    """Stream `video` to `url` (ws://host:port/stream) and optionally write the answers."""
    fps, frames = video_frames(video)
    if not frames:
        raise ValueError(f"{video}: no frames")
    stats, pngs = asyncio.run(
        stream_frames(url, frames, fps, fmt=fmt, realtime=realtime, api_key=api_key, codec=codec)
    )
    if out is not None:
        write_video(out, frames, pngs, fps)
    return stats


async def stream_frames(
    url: str,
    frames: list[np.ndarray],
    fps: float,
    *,
    fmt: str = "overlay",
    realtime: bool = True,
    api_key: str | None = None,
    codec: str = "JPEG",
) -> tuple[StreamStats, dict[int, bytes]]:
    """Send `frames` (RGB) over one connection; the stats and the PNG answer of each frame."""
    from websockets.asyncio.client import connect

    codec = codec.upper()
    protocols = ["roadseg"]
    first = None
    if api_key and TOKEN.match(api_key):
        protocols.append(f"roadseg.key.{api_key}")
    elif api_key:
        first = json.dumps({"api_key": api_key})
    sep = "&" if "?" in url else "?"
    stats, pngs = StreamStats(), {}
    sent_at: dict[int, float] = {}
    answered = asyncio.Event()
    # JPEG and PNG do not deflate: per-message compression would only cost CPU on both ends.
    url = f"{url}{sep}format={fmt}"
    async with connect(url, subprotocols=protocols, max_size=None, compression=None) as ws:
        if first is not None:
            await ws.send(first)
        start = time.perf_counter()
        receiver = asyncio.create_task(_receive(ws, stats, pngs, sent_at, answered, len(frames)))
        for i, frame in enumerate(frames):
            data = await asyncio.to_thread(encode_frame, frame, codec)
            if realtime:
                await asyncio.sleep(max(0.0, start + i / fps - time.perf_counter()))
            answered.clear()
            sent_at[i] = time.perf_counter()
            await ws.send(data)
            stats.sent += 1
            if not realtime:
                await _wait_either(answered.wait(), receiver)
        await receiver  # ends once the last frame is answered (the newest is never dropped)
        stats.seconds = time.perf_counter() - start
    return stats, pngs


async def _wait_either(event_wait, receiver: asyncio.Task) -> None:
    waiter = asyncio.ensure_future(event_wait)
    await asyncio.wait({waiter, receiver}, return_when=asyncio.FIRST_COMPLETED)
    if receiver.done():
        waiter.cancel()
        receiver.result()  # re-raise the receiver's failure (a close from the service)


async def _receive(ws, stats, pngs, sent_at, answered, total: int) -> None:
    while True:
        head = json.loads(await ws.recv())
        stats.dropped += len(head.get("dropped", []))
        index = head["frame"]
        if "error" in head:
            stats.errors += 1
        else:
            pngs[index] = await ws.recv()
            stats.answered += 1
            stats.frames.append(index)
            stats.latencies_ms.append((time.perf_counter() - sent_at[index]) * 1000)
        answered.set()
        if index == total - 1:
            return


def write_video(out: Path, frames: list[np.ndarray], pngs: dict[int, bytes], fps: float) -> None:
    """One output frame per input frame: the answer, or the latest one before it (dropped)."""
    from PIL import Image

    from roadseg.serve.video import VideoWriter

    h, w = frames[0].shape[:2]
    latest = np.zeros((h, w, 3), np.uint8)
    with VideoWriter(out, (w, h), fps) as writer:
        for i in range(len(frames)):
            if i in pngs:
                latest = np.asarray(Image.open(io.BytesIO(pngs[i])).convert("RGB"))
            writer.write(latest)
