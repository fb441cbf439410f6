"""`GET /stream`: live segmentation of a camera or video stream over a WebSocket.

Protocol (README, "Live stream"): the client sends each frame as one binary message (JPEG or
PNG); frames are numbered from 0 in the order they arrive. For each frame it processes, the
service sends a text message `{"frame", "dropped", "latency_ms", "model_version", "backend",
"width", "height"}` and then one binary message, the PNG (`?format=mask|color|overlay`, as
`/segment`). A frame that cannot be decoded gets a text `{"frame", "error", "detail"}` and the
connection stays usable.

Backpressure: a receiver task reads frames as they come and keeps only the newest waiting one
(a one-slot mailbox); the frames it overwrites are reported in the next answer's `dropped`. The
processor infers through `ServingState.infer`, the service's one batching queue, so frames of many
connections share batches with every other route (and feed the monitoring log). Three frames are
in flight per connection: while frame N is rendered (thread pool) and sent, frame N+1 is inferred
and the newest waiting frame is decoded, so the model never waits for this stream's JPEG decoding;
one inference at a time per connection; answers keep the order frames were taken in.

Close codes: 1008 policy (missing/wrong API key, connection time limit, text where frames are
expected after the handshake), 1009 frame over `stream.max_frame_bytes`, 1003 unsupported data,
1013 too many connections on this pod. The API key comes as the subprotocol `roadseg.key.<key>`
(offer `roadseg` too: it is the one the server selects, so the key is never echoed), as a first
text message `{"api_key": ...}`, or as the HTTP headers of the other routes; never in the URL
(roadseg/serve/stream_auth.py). Below the app, roadseg/serve/wsguard.py hardens uvicorn's WebSocket protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, WebSocket
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect, WebSocketState

from roadseg.serve.api import FORMATS, ServingState, format_problem
from roadseg.serve.decoding import Limits, decode_image
from roadseg.serve.errors import InputError
from roadseg.serve.stream_auth import POLICY, TRY_LATER, StreamClosed, authenticate

logger = logging.getLogger(__name__)
SUBPROTOCOL = "roadseg"
TOO_BIG, UNSUPPORTED, INTERNAL = 1009, 1003, 1011
IN_FLIGHT = 3  # frames per stream: one answered, one inferred, one decoded
CLOSE_WAIT = 5.0  # seconds a close frame may wait for a client that reads nothing


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


def register_stream(app: FastAPI, get_state: Callable[[], ServingState]) -> None:
    """Add `GET /stream` (WebSocket) to `app`. Its limits are the serving state's
    `stream_limits` (params.stream; the frame size limit is enforced below the app by
    `roadseg.serve.wsguard`); connections are counted per app, i.e. per worker process: at most
    `max_connections` streams, and as many more waiting for their key."""
    live = {"streams": 0, "unauthenticated": 0}

    @app.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        offered = websocket.scope.get("subprotocols") or []
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        try:
            state = get_state()
            limits = state.stream_limits
            await asyncio.wait_for(_admit(websocket, state, limits, live), limits.max_seconds)
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
        raise StreamClosed(POLICY, format_problem(fmt))
    await authenticate(websocket, state, limits, live)
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


@dataclass
class Stage:
    """One frame's progress, for the frame after it: `taken` (the next task may start),
    `inferring` (the model has it: the next frame is taken just in time, see `_take`)."""

    taken: asyncio.Event = field(default_factory=asyncio.Event)
    inferring: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


@dataclass
class Timing:
    """Moving averages (seconds) of one stream's decode and inference times."""

    decode: float = 0.0
    infer: float = 0.0

    def add(self, name: str, seconds: float) -> None:
        old = getattr(self, name)
        setattr(self, name, seconds if old == 0.0 else 0.8 * old + 0.2 * seconds)


async def _take(mailbox: Mailbox, pacer: Pacer, previous: Stage | None, timing: Timing) -> Any:
    """The newest frame, taken just in time: once the previous frame is with the model, about
    one decode before its inference ends (a fresher frame than taking it at once, and the
    model still does not wait for the decoder)."""
    await pacer.wait()
    if previous is not None and previous.task is not None:
        await previous.inferring.wait()
        lead = timing.infer - 1.5 * timing.decode - 0.002
        if lead > 0:
            await asyncio.wait([previous.task], timeout=lead)
    try:
        taken = await mailbox.take()
    except StreamClosed as e:
        if e.code == 0:  # the client went away: nothing left to send
            raise WebSocketDisconnect(1000) from None
        raise
    pacer.last = time.perf_counter()
    return taken


async def _prepare(
    state: ServingState,
    mailbox: Mailbox,
    pacer: Pacer,
    frame_limits: Limits,
    previous: Stage | None,
    stage: Stage,
    timing: Timing,
) -> Prepared:
    """Take a frame and decode it (thread pool); then, once the previous frame's inference is
    done (one at a time per stream, in order), infer it (the batching queue)."""
    try:
        try:
            (index, data, received), dropped = await _take(mailbox, pacer, previous, timing)
        finally:
            stage.taken.set()  # the next frame's task may start (it waits for `inferring`)
        start = time.perf_counter()
        try:
            image = await run_in_threadpool(decode_image, data, frame_limits, name=f"frame {index}")
        except InputError as e:
            return Prepared(index, dropped, received, error=e)
        except Exception as e:  # this frame broke the decoder: it alone fails
            return Prepared(index, dropped, received, error=_frame_failed(index, e))
        timing.add("decode", time.perf_counter() - start)
        if previous is not None and previous.task is not None:
            await asyncio.wait([previous.task])
        stage.inferring.set()
        start = time.perf_counter()
        try:
            (pred,) = await state.infer([image])
        except Exception as e:  # this frame broke the model: it alone fails
            return Prepared(index, dropped, received, error=_frame_failed(index, e))
        timing.add("infer", time.perf_counter() - start)
        return Prepared(index, dropped, received, image, pred)
    finally:
        stage.inferring.set()


def _frame_failed(index: int, e: Exception) -> InputError:
    logger.warning("frame %d not served: %s: %s", index, type(e).__name__, str(e)[:200])
    return InputError(f"frame {index} could not be served", 422, "frame_failed")


def _ended(task: asyncio.Task | None) -> bool:
    return task is not None and task.done() and (task.cancelled() or task.exception() is not None)


async def _process(
    websocket: WebSocket,
    state: ServingState,
    mailbox: Mailbox,
    fmt: str,
    max_fps: float,
    frame_limits: Limits,
) -> None:
    """Answer the newest frame, in order, at most `max_fps` frames per second, IN_FLIGHT
    frames at a time: while frame N is rendered (thread pool) and sent, frame N+1 is inferred
    and frame N+2 decoded, so the inference queue never waits for this stream's decoding."""
    pacer = Pacer(1.0 / max_fps)
    slots = asyncio.Semaphore(IN_FLIGHT)
    frames: asyncio.Queue[asyncio.Task] = asyncio.Queue()
    producer = asyncio.create_task(
        _produce(state, mailbox, pacer, frame_limits, slots, frames.put_nowait)
    )
    try:
        while True:
            task = await frames.get()
            frame = await task  # re-raises the end of the stream once all before it are sent
            await _answer(websocket, state, fmt, frame)
            slots.release()
    finally:
        producer.cancel()
        while not frames.empty():  # errors they end with are not reported: the session ends
            left = frames.get_nowait()
            left.cancel()
            left.add_done_callback(lambda t: t.cancelled() or t.exception())


async def _produce(
    state: ServingState,
    mailbox: Mailbox,
    pacer: Pacer,
    frame_limits: Limits,
    slots: asyncio.Semaphore,
    put: Callable[[asyncio.Task], None],
) -> None:
    """Start one frame's task each time a slot is free and the previous frame is taken;
    stop after the task that ends the stream (it raises: the answer loop re-raises it)."""
    previous: Stage | None = None
    timing = Timing()
    while previous is None or not _ended(previous.task):
        await slots.acquire()
        stage = Stage()
        stage.task = asyncio.create_task(
            _prepare(state, mailbox, pacer, frame_limits, previous, stage, timing)
        )
        put(stage.task)
        previous = stage
        await stage.taken.wait()


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
        "backend": state.backend,  # as /metadata's and X-Model-Backend
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
