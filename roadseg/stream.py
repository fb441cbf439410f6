"""`GET /stream`: live segmentation of a camera or video stream over a WebSocket.

Protocol (README, "Live stream"): the client sends each frame as one binary message (JPEG or
PNG); frames are numbered from 0 in the order they arrive. For each frame it processes, the
service sends a text message `{"frame", "dropped", "latency_ms", "model_version"}` and then one
binary message, the PNG (`?format=mask|color|overlay`, as `/segment`). A frame that cannot be
decoded gets a text `{"frame", "error", "detail"}` and the connection stays usable.

Backpressure: a receiver task reads frames as they come and keeps only the newest waiting one
(a one-slot mailbox); the frames it overwrites are reported in the next answer's `dropped`. The
processor infers through `ServingState.infer`, the service's one batching queue, so frames of many
connections share batches with every other route (and feed the monitoring log). Two frames are
in flight per connection: while frame N is rendered (thread pool) and sent, the newest waiting
frame is already decoded and inferred; answers keep the order frames were taken in.

Close codes: 1008 policy (missing/wrong API key, connection time limit, text where frames are
expected after the handshake), 1009 frame over `stream.max_frame_bytes`, 1003 unsupported data,
1013 too many connections on this pod. The API key comes as the subprotocol `roadseg.key.<key>`
(offer `roadseg` too: it is the one the server selects, so the key is never echoed), as a first
text message `{"api_key": ...}`, or as the HTTP headers of the other routes; never in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from roadseg.api import ServingState, _api_key
from roadseg.inputs import InputError, Limits, decode_image

logger = logging.getLogger(__name__)
SUBPROTOCOL = "roadseg"
KEY_PREFIX = "roadseg.key."
FORMATS = ("mask", "color", "overlay")
POLICY, TOO_BIG, UNSUPPORTED, INTERNAL, TRY_LATER = 1008, 1009, 1003, 1011, 1013
MAX_KEY_MESSAGE = 4096  # bytes of a first {"api_key": ...} message
CLOSE_WAIT = 5.0  # seconds a close frame may wait for a client that reads nothing
_LIMITS: dict[str, Any] = {}  # params.stream per params file (ROADSEG_PARAMS)


class StreamClosed(Exception):
    """End the session with a WebSocket close code and a reason (never holding the key)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


@dataclass
class Mailbox:
    """The newest waiting frame of one connection; overwritten frames become `dropped`."""

    frame: tuple[int, bytes, float] | None = None
    dropped: list[int] = field(default_factory=list)
    closed: StreamClosed | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, index: int, data: bytes) -> None:
        if self.frame is not None:
            self.dropped.append(self.frame[0])
        self.frame = (index, data, time.perf_counter())
        self.event.set()

    def close(self, why: StreamClosed) -> None:
        self.closed = why
        self.event.set()

    async def take(self) -> tuple[tuple[int, bytes, float], list[int]]:
        """The newest frame and the indices skipped before it; raises once the stream ends."""
        while self.frame is None:
            if self.closed is not None:
                raise self.closed
            self.event.clear()
            await self.event.wait()
        frame, dropped = self.frame, self.dropped
        self.frame, self.dropped = None, []
        return frame, dropped


def stream_limits() -> Any:
    """`params.stream` of the served params file (ROADSEG_PARAMS, as the service reads it)."""
    from roadseg.config import load_params

    return load_params(os.environ.get("ROADSEG_PARAMS") or None).stream


def cached_stream_limits() -> Any:
    """`stream_limits()`, read once per params file (the app and the WebSocket protocol)."""
    source = os.environ.get("ROADSEG_PARAMS") or ""
    if source not in _LIMITS:
        _LIMITS[source] = stream_limits()
    return _LIMITS[source]


def register_stream(app: FastAPI, get_state: Callable[[], ServingState]) -> None:
    """Add `GET /stream` (WebSocket) to `app` and install the WebSocket protocol guard
    (`roadseg.wsguard`: no compression, `max_frame_bytes` as the message limit). Limits are read
    at the first connection (per params file); connections are counted per app, i.e. per worker
    process: at most `max_connections` streams, and as many more waiting for their key."""
    from roadseg.wsguard import install_ws_guard

    install_ws_guard(lambda: cached_stream_limits().max_frame_bytes)
    live = {"streams": 0, "unauthenticated": 0}

    @app.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        limits = await run_in_threadpool(cached_stream_limits)
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        try:
            await asyncio.wait_for(_admit(websocket, get_state(), limits, live), limits.max_seconds)
        except TimeoutError:
            await _close(websocket, POLICY, f"connection time limit of {limits.max_seconds:g} s")
        except StreamClosed as e:
            await _close(websocket, e.code, e.reason)
        except WebSocketDisconnect:
            pass  # the client left: nothing to answer, other connections go on
        except Exception as e:  # a bug: one log line and a close code, never a traceback/1006
            logger.error("stream ended by %s: %s", type(e).__name__, str(e)[:200])
            await _close(websocket, INTERNAL, "internal error")


async def _admit(websocket: WebSocket, state: ServingState, limits: Any, live: dict) -> None:
    """Format, key and connection limit, then the session. A client without the key cannot
    take a stream's place: those waiting for their key have their own count."""
    fmt = websocket.query_params.get("format") or "mask"
    if fmt not in FORMATS:
        raise StreamClosed(POLICY, f"unknown format {fmt[:40]!a} (mask, color or overlay)")
    await _authenticate(websocket, state, limits, live)
    if live["streams"] >= limits.max_connections:
        raise StreamClosed(TRY_LATER, "too many streams on this pod, try again later")
    live["streams"] += 1
    try:
        await _session(websocket, state, limits, fmt)
    finally:
        live["streams"] -= 1


async def _session(websocket: WebSocket, state: ServingState, limits: Any, fmt: str) -> None:
    mailbox = Mailbox()
    receiver = asyncio.create_task(_receive(websocket, mailbox, limits))
    frame_limits = dataclasses.replace(
        state.limits, max_image_pixels=min(state.limits.max_image_pixels, limits.max_frame_pixels)
    )
    process = asyncio.create_task(
        _process(websocket, state, mailbox, fmt, limits.max_fps, frame_limits)
    )
    try:
        await asyncio.wait((receiver, process), return_when=asyncio.FIRST_COMPLETED)
        if not process.done() and mailbox.closed is not None and mailbox.closed.code == 0:
            process.cancel()  # the client left: drop its frames in flight (and queued images)
            raise WebSocketDisconnect(1001)
        await process
    finally:
        receiver.cancel()
        process.cancel()


async def _authenticate(websocket: WebSocket, state: ServingState, limits: Any, live: dict) -> None:
    """Check the API key when one is configured (compared in constant time, never logged). It
    comes once: as a subprotocol, a header, or a first text message; never from the URL."""
    if not state.api_key:
        return
    offered = websocket.scope.get("subprotocols") or []
    keys = [p[len(KEY_PREFIX) :] for p in offered if p.startswith(KEY_PREFIX)]
    headers = websocket.scope.get("headers", [])
    header_key, problem = _api_key(headers)
    if header_key is not None:
        keys.append(header_key)
    elif any(k.lower() in (b"x-api-key", b"authorization") for k, _ in headers):
        raise StreamClosed(POLICY, problem or "bad API key header")
    if len(keys) > 1:
        raise StreamClosed(POLICY, "send the API key once (one subprotocol or one header)")
    if not keys:  # browsers cannot set headers: the first message may carry the key
        keys.append(await _first_message_key(websocket, limits, live))
    given = keys[0].encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given, state.api_key.encode("utf-8", "surrogatepass")):
        raise StreamClosed(POLICY, "wrong API key")


async def _first_message_key(websocket: WebSocket, limits: Any, live: dict) -> str:
    """The key of a first `{"api_key": ...}` message, within `auth_timeout_seconds`. At most
    `max_connections` connections wait for theirs, apart from the streams' own count."""
    if live["unauthenticated"] >= limits.max_connections:
        raise StreamClosed(TRY_LATER, "too many connections waiting for their key, try later")
    live["unauthenticated"] += 1
    try:
        message = await asyncio.wait_for(websocket.receive(), limits.auth_timeout_seconds)
    except TimeoutError:
        raise StreamClosed(POLICY, "no API key received") from None
    finally:
        live["unauthenticated"] -= 1
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return _key_message(message.get("text"))


def _key_message(text: str | None) -> str:
    if text is None:
        raise StreamClosed(POLICY, "missing API key (subprotocol or first text message)")
    key = None
    if len(text) <= MAX_KEY_MESSAGE:
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):  # bad JSON, 100k-deep nesting, 5000-digit numbers
            body = None
        key = body.get("api_key") if isinstance(body, dict) else None
    if not isinstance(key, str):
        raise StreamClosed(POLICY, 'first message must be {"api_key": "..."}')
    return key


async def _receive(websocket: WebSocket, mailbox: Mailbox, limits: Any) -> None:
    """Read frames into the mailbox until the client leaves, breaks the protocol or sends
    nothing for `idle_seconds`."""
    index = 0
    try:
        while True:
            try:
                async with asyncio.timeout(limits.idle_seconds):
                    message = await websocket.receive()
            except TimeoutError:
                raise StreamClosed(POLICY, f"no frame for {limits.idle_seconds:g} s") from None
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            data = message.get("bytes")
            if data is None:
                raise StreamClosed(UNSUPPORTED, "send frames as binary messages (JPEG or PNG)")
            if len(data) > limits.max_frame_bytes:
                raise StreamClosed(
                    TOO_BIG, f"frame {index} of {len(data)} bytes exceeds {limits.max_frame_bytes}"
                )
            mailbox.put(index, data)
            index += 1
    except (StreamClosed, WebSocketDisconnect) as e:
        mailbox.close(e if isinstance(e, StreamClosed) else StreamClosed(0, "disconnected"))
    except RuntimeError:  # receive after the socket closed
        mailbox.close(StreamClosed(0, "disconnected"))


@dataclass
class Prepared:
    """One frame taken from the mailbox, decoded and inferred (or the reason it could not be)."""

    index: int
    dropped: list[int]
    received: float
    image: Any = None
    pred: Any = None
    error: InputError | None = None


@dataclass
class Pacer:
    """At most `max_fps` frames taken per second; frames arriving meanwhile replace each other."""

    gap: float
    last: float | None = None

    async def wait(self) -> None:
        if self.last is not None and (wait := self.last + self.gap - time.perf_counter()) > 0:
            await asyncio.sleep(wait)


async def _prepare(
    state: ServingState, mailbox: Mailbox, pacer: Pacer, frame_limits: Limits
) -> Prepared:
    """Take the newest frame, decode it (thread pool) and infer it (the batching queue)."""
    await pacer.wait()
    try:
        (index, data, received), dropped = await mailbox.take()
    except StreamClosed as e:
        if e.code == 0:  # the client went away: nothing left to send
            raise WebSocketDisconnect(1000) from None
        raise
    pacer.last = time.perf_counter()
    try:
        image = await run_in_threadpool(decode_image, data, frame_limits, name=f"frame {index}")
        (pred,) = await state.infer([image])
    except InputError as e:
        return Prepared(index, dropped, received, error=e)
    except Exception as e:  # this frame broke decoding or the model: it alone fails
        return Prepared(index, dropped, received, error=_frame_failed(index, e))
    return Prepared(index, dropped, received, image, pred)


def _frame_failed(index: int, e: Exception) -> InputError:
    logger.warning("frame %d not served: %s: %s", index, type(e).__name__, str(e)[:200])
    return InputError(f"frame {index} could not be served", 422, "frame_failed")


async def _process(
    websocket: WebSocket,
    state: ServingState,
    mailbox: Mailbox,
    fmt: str,
    max_fps: float,
    frame_limits: Limits,
) -> None:
    """Answer the newest frame, in order, at most `max_fps` frames per second, two in flight:
    while frame N is rendered (thread pool) and sent, frame N+1 is decoded and inferred."""
    pacer = Pacer(1.0 / max_fps)
    pending = asyncio.create_task(_prepare(state, mailbox, pacer, frame_limits))
    try:
        while True:
            frame = await pending  # re-raises the end of the stream once all before it are sent
            pending = asyncio.create_task(_prepare(state, mailbox, pacer, frame_limits))
            await _answer(websocket, state, fmt, frame)
    finally:
        pending.cancel()  # an error it ends with is not reported: the session ends either way
        pending.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _answer(websocket: WebSocket, state: ServingState, fmt: str, frame: Prepared) -> None:
    """One text message, then (unless the frame was not decodable) one binary PNG message."""
    if frame.error is not None:
        e = frame.error
        body = {
            "frame": frame.index,
            "dropped": frame.dropped,
            "error": e.problem,
            "detail": str(e),
        }
        await websocket.send_text(json.dumps(body))
        return
    try:
        png = await run_in_threadpool(state.render, frame.image, frame.pred, fmt)
    except Exception as e:
        frame.error = _frame_failed(frame.index, e)
        await _answer(websocket, state, fmt, frame)
        return
    head = {
        "frame": frame.index,
        "dropped": frame.dropped,
        "latency_ms": round((time.perf_counter() - frame.received) * 1000, 2),
        "model_version": state.version,
        "width": frame.image.shape[1],
        "height": frame.image.shape[0],
    }
    await websocket.send_text(json.dumps(head))
    await websocket.send_bytes(png)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close with `code`; the reason is cut to the 123 bytes a close frame holds, and a client
    that reads nothing gets CLOSE_WAIT seconds (the protocol aborts the socket later)."""
    if websocket.application_state == WebSocketState.CONNECTED and code:
        short = reason.encode("utf-8", "replace")[:123].decode("utf-8", "ignore")
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, TimeoutError):
            await asyncio.wait_for(websocket.close(code, short), CLOSE_WAIT)
