"""The serving core shared by the typed BentoML API (`bento/service.py`) and the legacy routes.

`ServingState` lives on the service instance (never in a module global): the loaded engine, the
limits, the monitoring log and the API key. Every route, typed or legacy, goes through
`ServingState.infer`, i.e. one batching queue (`roadseg.serve.engine`), and renders through the same
helpers, so all routes answer the same pixels. `roadseg.serve.httpguard.GuardMiddleware` wraps the
whole BentoML app (API key, limits, timeouts, `X-Model-Version`). `SegmentRoutes` checks
`/segment` requests and answers raw bodies (`curl --data-binary @img.jpg`); multipart `image`
requests go on to the typed methods.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from roadseg.config import StreamParams
from roadseg.inference.predict import Prediction
from roadseg.inference.render import colorize, encode_png, overlay
from roadseg.monitor.log import BackgroundJobs, MonitorLog
from roadseg.serve.decoding import Budget, Limits, decode_image
from roadseg.serve.engine import EngineUnavailable, InferenceEngine
from roadseg.serve.errors import InputError, error_response, problem_response, retry_later

logger = logging.getLogger(__name__)

# Probes, metrics and the API description stay open: clients read /schema.json to find methods.
OPEN_PATHS = (
    "/healthz",
    "/livez",
    "/readyz",
    "/metrics",
    "/health",
    "/docs",
    "/docs.json",
    "/schema.json",
)
VERSION_HEADER = "X-Model-Version"
# Header budget per request (431 beyond): generous for browsers and clients, small for attackers.
MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024
Format = Literal["mask", "color", "overlay"]
FORMATS = ("mask", "color", "overlay")


def format_problem(fmt: str) -> str:
    """What is wrong with a format not in FORMATS (bounded, ASCII: it may go into a close frame)."""
    return f"unknown format {fmt[:40]!a} (mask, color or overlay)"


# Images waiting for their monitoring row (each held as a <= 512x512x3 grid: <= 50 MB in all).
MONITOR_QUEUE = 64


@dataclass
class ServingState:
    """What the routes and the middleware share; filled in by the service at start-up."""

    limits: Limits = field(default_factory=Limits)
    stream_limits: StreamParams = field(default_factory=StreamParams)  # GET /stream
    engine: InferenceEngine | None = None
    monitor: MonitorLog | None = None
    api_key: str | None = None
    overlay_alpha: float = 0.5
    metadata: dict[str, Any] = field(default_factory=dict)
    ui_dir: Path | None = None
    # Monitoring rows are written off the response path (full queue: rows dropped, counted).
    monitor_jobs: BackgroundJobs = field(default_factory=lambda: BackgroundJobs(MONITOR_QUEUE))
    # The shadow challenger (roadseg.serve.shadow.ShadowRunner), offered every prediction.
    shadow: Any = None

    @property
    def version(self) -> str:
        return self.engine.version if self.engine is not None else "unloaded"

    @property
    def backend(self) -> str:
        """What runs the network (`serve.backend`), as `/metadata` says; "unloaded" before."""
        return str(self.metadata.get("backend", "unloaded")) if self.engine else "unloaded"

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.ready

    def require_engine(self) -> InferenceEngine:
        if not self.ready:
            raise HTTPException(503, "model is not loaded yet")
        return self.engine

    async def infer(self, images: list[np.ndarray]) -> list[Prediction]:
        """The one inference path: the batching queue; the monitoring log is fed in the
        background (a small copy of each image's pixels is all it keeps, see `record_features`)."""
        hooks = [functools.partial(record_features, self)] if self.monitor is not None else []
        if self.shadow is not None:
            hooks.append(self.shadow.offer)
        then = hooks[0] if len(hooks) == 1 else functools.partial(_each, hooks) if hooks else None
        try:
            return await self.require_engine().predict(images, then=then)
        except EngineUnavailable as e:
            raise retry_later(str(e)) from None

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Write the monitoring rows still queued (tests, shutdown); False on timeout."""
        return self.monitor_jobs.flush(timeout)

    def render(self, image: np.ndarray, pred: Prediction, fmt: str, codec: str = "PNG") -> bytes:
        """Mask (class ids), colour mask or overlay, as PNG (or JPEG for the KITTI route)."""
        colors = self.require_engine().spec.colors
        if fmt == "mask":
            array = pred.mask
        elif fmt == "color":
            array = colorize(pred.mask, colors)
        elif fmt == "overlay":
            array = overlay(image, pred.mask, colors, self.overlay_alpha)
        else:
            raise InputError(format_problem(fmt), 422, "bad_format")
        return encode_image(array, codec, photo=fmt == "overlay")

    async def segment(self, data: bytes, fmt: str) -> Response:
        """`POST /segment` (raw body or the typed method's `image`): one image's PNG (class ids,
        colour mask or overlay) at its own size, or a JSON error."""
        try:
            if fmt not in FORMATS:  # before any decoding or inference
                raise InputError(format_problem(fmt), 422, "bad_format")
            image = await run_in_threadpool(self.decode_one, data)
            (pred,) = await self.infer([image])
            png = await run_in_threadpool(self.render, image, pred, fmt)
        except (InputError, HTTPException) as e:
            return error_response(e)
        return Response(png, media_type="image/png")

    async def segment_json(self, data: bytes) -> JSONResponse:
        """`POST /segment/json`: base64 PNG mask, class shares, confidence, version."""
        try:
            image = await run_in_threadpool(self.decode_one, data)
            (pred,) = await self.infer([image])
        except (InputError, HTTPException) as e:
            return error_response(e)
        return JSONResponse(await run_in_threadpool(self.json_result, image, pred))

    def decode_one(self, data: bytes) -> np.ndarray:
        return decode_image(data, self.limits, name="image", budget=Budget(self.limits))

    def json_result(self, image: np.ndarray, pred: Prediction) -> dict[str, Any]:
        """The `/segment/json` body."""
        return {
            "mask": base64.b64encode(encode_png(pred.mask)).decode(),
            "width": image.shape[1],
            "height": image.shape[0],
            "class_shares": pred.class_shares,
            "confidence": pred.confidence,
            "model_version": self.version,
        }


def encode_image(array: np.ndarray, codec: str = "PNG", *, photo: bool = False) -> bytes:
    if codec == "PNG":
        return encode_png(array, photo=photo)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format=codec, quality=90)
    return buf.getvalue()


def record_features(state: ServingState, images: list[np.ndarray], preds: list[Prediction]) -> None:
    """Queue one monitoring row per image; never blocks, never fails the request.

    In the request's post-processing thread only the feature grid is taken (a strided uint8
    copy, long side <= 512: ~0.3 ms for 720p) so neither the image nor the mask is held by the
    queue; the features and the write run on the monitoring thread. Images too small for the features (< 3 px on a side)
    or any other feature error only leave the row out, with a warning.
    """
    from roadseg.monitor.features import feature_grid

    for im, p in zip(images, preds, strict=True):
        try:
            grid = feature_grid(im)
        except Exception as e:
            logger.warning("monitoring skipped a %sx%s image: %s", im.shape[1], im.shape[0], e)
            continue
        outcome = {"class_shares": p.class_shares, "confidence": p.confidence}
        size = {"width": im.shape[1], "height": im.shape[0]}
        state.monitor_jobs.submit(_write_row, state.monitor, state.version, grid, outcome, size)


def _write_row(
    monitor: MonitorLog, version: str, grid: np.ndarray, outcome: dict, size: dict
) -> None:
    from roadseg.monitor.features import grid_features

    monitor.write([grid_features(grid, outcome) | size], model_version=version)


def _each(hooks: list[Callable], images: list[np.ndarray], preds: list[Prediction]) -> None:
    """Run every after-prediction hook; one that fails never skips the others."""
    for hook in hooks:
        try:
            hook(images, preds)
        except Exception:
            logger.exception("after-prediction hook %r failed", hook)


StateSource = ServingState | Callable[[], ServingState | None]


def resolve_state(source: StateSource) -> ServingState | None:
    return source if isinstance(source, ServingState) else source()


SEGMENT_ROUTES = ("/segment", "/segment/json")


class SegmentRoutes:
    """The reader in front of `POST /segment` and `/segment/json`: every request is checked here,
    then answered by one of two entrances to the same `ServingState.segment` / `segment_json`:

    - a raw body (`curl --data-binary @img.jpg`, the earlier clients) is answered here: no
      multipart round trip, temporary file or pydantic model on the serving hot path;
    - a multipart body with one `image` file (+ `format`: the BentoML clients, HTML forms) is
      handed on, its bytes replayed, to the typed `@bentoml.api` methods of `bento/service.py`,
      which answer it and whose signatures are the schema the BentoML clients read.

    What neither should see gets our JSON error here: a JSON body (415: a typed route would take
    its `image` string for a server-side path), no `image` or two (422/400), a malformed body
    (400), a format outside FORMATS (422), before BentoML's parser answers them with pydantic's
    error list.
    """

    def __init__(self, app: Any, state: StateSource) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        if scope.get("path") not in SEGMENT_ROUTES:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            data, fmt, typed = await _segment_input(request)
            if fmt is not None and fmt not in FORMATS:  # before any decoding or inference
                raise InputError(format_problem(fmt), 422, "bad_format")
        except ClientDisconnect:
            return  # the guard answered (408, 413) or the client left
        except InputError as e:
            await error_response(e)(scope, receive, send)
            return
        state = resolve_state(self.state)
        if state is None:
            response = problem_response(503, "not_ready", "model is not loaded yet")
        elif typed:
            await self.app(scope, replay(data, receive), send)
            return
        elif scope["path"] == "/segment":
            response = await state.segment(data, fmt or "mask")
        else:
            response = await state.segment_json(data)
        await response(scope, receive, send)


def replay(body: bytes, receive: Any) -> Any:
    """An ASGI `receive` that gives `body` once, then listens to the client (disconnects)."""
    sent = False

    async def again() -> dict:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def _segment_input(request: Request) -> tuple[bytes, str | None, bool]:
    """(bytes, format, typed) of a segment request. A raw body: (the image, `?format=`, False).
    A well-formed multipart body with one `image` file: (the whole body, its format, True), for
    the typed method. Anything else: `InputError`."""
    ctype = request.headers.get("content-type", "").lower()
    query = request.query_params.get("format")
    if ctype.startswith("application/json"):
        raise InputError("send the image as the raw body or as the multipart field `image`",
                         415, "unsupported_media_type")  # fmt: skip
    multipart = ctype.startswith("multipart/form-data")
    if not multipart and not ctype.startswith("application/x-www-form-urlencoded"):
        return await request.body(), query, False
    body = await request.body()  # bounded by the guard's body limit
    try:
        form_request = Request(request.scope, replay(body, request.receive))
        async with form_request.form(max_files=1, max_fields=4) as form:
            images = form.getlist("image")
            if len(images) != 1:
                raise InputError(f"expected one multipart field `image`, got {len(images)}",
                                 422, "missing_image")  # fmt: skip
            image, fmt = images[0], form.get("format")
            typed = multipart and not isinstance(image, str)  # a file part
            if not typed:  # a text field (an urlencoded form): its bytes are the image
                body = image.encode() if isinstance(image, str) else await image.read()
    except (MultiPartException, HTTPException) as e:  # malformed, too many files or fields
        detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e)
        raise InputError(f"bad multipart body: {detail[:200]}", 400, "bad_multipart") from None
    if fmt is not None and not isinstance(fmt, str):
        raise InputError("`format` must be a text field", 422, "bad_format")
    if fmt and fmt.startswith('"'):  # the BentoML clients send form fields JSON-encoded
        with contextlib.suppress(ValueError, RecursionError):
            decoded = json.loads(fmt)
            fmt = decoded if isinstance(decoded, str) else fmt
    return body, fmt or query, typed
