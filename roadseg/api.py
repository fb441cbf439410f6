"""The HTTP API of the segmentation service (FastAPI), mounted on the BentoML service.

`build_app(state)` holds every route; `bento/service.py` only loads the model into `state` and
mounts the app. All inference goes through `state.engine` (one batching queue), and all
pre/post-processing through `roadseg.serving`, so served and evaluated predictions match.
`GuardMiddleware` wraps the whole BentoML app: API key, request-size limit, model-version header.
"""

from __future__ import annotations

import base64
import hmac
import io
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from roadseg.batching import InferenceEngine
from roadseg.drift import image_features
from roadseg.inputs import InputError, Limits, decode_image, parse_predict_json, read_uploads
from roadseg.monitoring import MonitorLog
from roadseg.serving import Prediction, colorize, encode_png, overlay
from roadseg.video import VideoWriter, read_video, sniff_video

OPEN_PATHS = ("/healthz", "/livez", "/readyz", "/metrics")
VERSION_HEADER = "X-Model-Version"


@dataclass
class ServingState:
    """What the routes and the middleware share; filled in by the service at start-up."""

    limits: Limits = field(default_factory=Limits)
    engine: InferenceEngine | None = None
    monitor: MonitorLog | None = None
    api_key: str | None = None
    overlay_alpha: float = 0.5
    metadata: dict[str, Any] = field(default_factory=dict)
    ui_dir: Path | None = None

    @property
    def version(self) -> str:
        return self.engine.version if self.engine is not None else "unloaded"


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


def _json_error(status: int, problem: str, detail: str) -> dict[str, Any]:
    return {"error": problem, "detail": detail, "status": status}


class GuardMiddleware:
    """ASGI middleware: API key (401), body-size limit (413), `X-Model-Version` on every response."""

    def __init__(self, app: Any, state: ServingState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        version = self.state.version.encode()

        async def send_with_version(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (VERSION_HEADER.lower().encode(), version),
                ]
            await send(message)

        path = scope.get("path", "")
        key = self.state.api_key
        if key and not (path in OPEN_PATHS or path.startswith("/ui")):
            given = headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), key.encode()):
                body = _json_error(401, "unauthorized", "missing or wrong X-API-Key header")
                await JSONResponse(body, 401)(scope, receive, send_with_version)
                return
        limit = self.state.limits.max_request_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            body = _json_error(
                413, "too_large", f"request body of {length} bytes exceeds the limit of {limit}"
            )
            await JSONResponse(body, 413)(scope, receive, send_with_version)
            return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:  # chunked uploads carry no Content-Length
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send_with_version)


def build_app(state: ServingState) -> FastAPI:
    """The FastAPI app with every route of the service."""
    app = FastAPI(title="roadseg", description="Road-scene semantic segmentation")

    @app.exception_handler(InputError)
    async def _input_error(_: Request, exc: InputError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
        problem = {401: "unauthorized", 404: "not_found", 413: "too_large", 503: "not_ready"}
        body = _json_error(
            exc.status_code, problem.get(exc.status_code, "bad_request"), str(exc.detail)
        )
        return JSONResponse(body, exc.status_code)

    def engine() -> InferenceEngine:
        if state.engine is None or not state.engine.ready:
            raise HTTPException(503, "model is not loaded yet")
        return state.engine

    async def infer(images: list[np.ndarray]) -> list[Prediction]:
        preds = await engine().predict(images)
        if state.monitor is not None:
            await run_in_threadpool(_record, state, images, preds)
        return preds

    async def single_image(request: Request) -> tuple[str, np.ndarray]:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file") or next(
                (v for v in form.values() if hasattr(v, "read")), None
            )
            if upload is None or not hasattr(upload, "read"):
                raise InputError("multipart body has no file field 'file'", 422, "missing_field")
            data, name = await upload.read(), upload.filename or "image"
        else:
            data, name = await request.body(), "image"
        return name, await run_in_threadpool(decode_image, data, state.limits, name=name)

    @app.post("/segment", tags=["segment"], response_class=Response)
    async def segment(
        request: Request, format: Literal["mask", "color", "overlay"] = Query("mask")
    ) -> Response:
        """One JPEG/PNG (raw body or multipart `file`) -> PNG at the input's resolution:
        class ids (`mask`), colourised mask (`color`) or the image blended with it (`overlay`)."""
        _, image = await single_image(request)
        (pred,) = await infer([image])
        png = await run_in_threadpool(_render, state, image, pred, format)
        return Response(png, media_type="image/png")

    @app.post("/segment/json", tags=["segment"])
    async def segment_json(request: Request) -> dict[str, Any]:
        """One image -> base64 PNG mask, per-class pixel shares, mean confidence, model version."""
        _, image = await single_image(request)
        (pred,) = await infer([image])
        return {
            "mask": base64.b64encode(encode_png(pred.mask)).decode(),
            "width": image.shape[1],
            "height": image.shape[0],
            "class_shares": pred.class_shares,
            "confidence": pred.confidence,
            "model_version": state.version,
        }

    @app.post("/predict/returns-json/", tags=["legacy"])
    async def predict_json(request: Request) -> dict[str, Any]:
        """Legacy: `{"image_names", "images": [base64]}` -> names, images, pred_mask, pred_color."""
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"body is not valid JSON ({e})", 400, "bad_json") from None
        names, images = await run_in_threadpool(parse_predict_json, body, state.limits)
        preds = await infer(images)
        colors = state.engine.spec.colors

        def encode() -> tuple[list[str], list[str]]:
            b64 = lambda a: base64.b64encode(encode_png(a)).decode()  # noqa: E731
            return [b64(p.mask) for p in preds], [b64(colorize(p.mask, colors)) for p in preds]

        masks, color_masks = await run_in_threadpool(encode)
        return {
            "image_names": names,
            "images": body["images"],
            "pred_mask": masks,
            "pred_color": color_masks,
        }

    @app.post("/predict-image/returns-zip/", tags=["legacy"], response_class=Response)
    async def predict_zip(files: list[UploadFile] = File(...)) -> Response:
        """Legacy: multipart `files` (JPEG/PNG images or ZIPs of them) -> ZIP of images, masks, colours."""
        entries: list[tuple[str, bytes, np.ndarray]] = []
        for f in files:
            data = await f.read()
            entries += await run_in_threadpool(
                read_uploads, data, state.limits, filename=f.filename or "image"
            )
        preds = await infer([e[2] for e in entries])
        blob = await run_in_threadpool(_zip_results, state, entries, preds)
        return Response(
            blob,
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="predictions.zip"'},
        )

    @app.post("/predict-video/returns-zip/", tags=["legacy"], response_class=Response)
    async def predict_video(file: UploadFile = File(...)) -> Response:
        """Legacy: multipart `file` (MP4/AVI/MOV) -> ZIP with frames, masks, colour masks, the
        original and the segmented video. Frames go through the model in batches."""
        tmp = Path(tempfile.mkdtemp(prefix="roadseg-video-"))
        try:
            return await _segment_video(state, infer, file, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @app.post("/upload", tags=["legacy"], response_class=Response)
    async def upload(file: UploadFile = File(...)) -> Response:
        """Legacy (KITTI road server): multipart `file` -> JPEG of the image blended with the mask."""
        data = await file.read()
        image = await run_in_threadpool(
            decode_image, data, state.limits, name=file.filename or "file"
        )
        (pred,) = await infer([image])
        jpeg = await run_in_threadpool(_render, state, image, pred, "overlay", "JPEG")
        return Response(jpeg, media_type="image/jpeg")

    @app.get("/classes", tags=["info"])
    async def classes() -> list[dict[str, Any]]:
        """Class ids, names and colours of the served model."""
        spec = engine().spec
        return [
            {"id": i, "name": n, "color": list(c)}
            for i, (n, c) in enumerate(zip(spec.class_names, spec.colors, strict=True))
        ]

    @app.get("/metadata", tags=["info"])
    async def metadata() -> dict[str, Any]:
        """Model name, version, run id, params hash and serving settings."""
        engine()
        return {**state.metadata, "model_version": state.version}

    if state.ui_dir is not None and (state.ui_dir / "index.html").is_file():
        from fastapi.staticfiles import StaticFiles

        app.mount("/ui", StaticFiles(directory=state.ui_dir, html=True), name="ui")
    return app


def _record(state: ServingState, images: list[np.ndarray], preds: list[Prediction]) -> None:
    rows = [
        image_features(im, p) | {"width": im.shape[1], "height": im.shape[0]}
        for im, p in zip(images, preds, strict=True)
    ]
    state.monitor.write(rows, model_version=state.version)


def _render(
    state: ServingState, image: np.ndarray, pred: Prediction, fmt: str, codec: str = "PNG"
) -> bytes:
    colors = state.engine.spec.colors
    if fmt == "mask":
        return encode_png(pred.mask)
    array = (
        colorize(pred.mask, colors)
        if fmt == "color"
        else overlay(image, pred.mask, colors, state.overlay_alpha)
    )
    if codec == "PNG":
        return encode_png(array)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=codec, quality=90)
    return buf.getvalue()


def _unique_names(names: list[str]) -> list[str]:
    """Flat, safe, unique file names for the output ZIP."""
    out, seen = [], set()
    for i, name in enumerate(names):
        base = PurePosixPath(name.replace("\\", "/")).name or f"image_{i}"
        if base in seen:
            base = f"{i}_{base}"
        seen.add(base)
        out.append(base)
    return out


def _zip_results(
    state: ServingState, entries: list[tuple[str, bytes, np.ndarray]], preds: list[Prediction]
) -> bytes:
    colors = state.engine.spec.colors
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, (_, raw, _image), pred in zip(
            _unique_names([e[0] for e in entries]), entries, preds, strict=True
        ):
            stem = PurePosixPath(name).stem
            zf.writestr(f"images/{name}", raw)
            zf.writestr(f"masks/{stem}.png", encode_png(pred.mask))
            zf.writestr(f"colors/{stem}.png", encode_png(colorize(pred.mask, colors)))
    return buf.getvalue()


async def _segment_video(state: ServingState, infer: Any, file: UploadFile, tmp: Path) -> Response:
    name = PurePosixPath((file.filename or "video.mp4").replace("\\", "/")).name
    head = await file.read(16)
    sniff_video(head, name)
    src = tmp / f"original{Path(name).suffix.lower() or '.mp4'}"
    with src.open("wb") as out:
        out.write(head)
        while chunk := await file.read(1 << 20):
            out.write(chunk)
    info, batches = await run_in_threadpool(
        read_video, src, state.limits, state.engine.max_batch_size if state.engine else 8
    )
    colors = state.engine.spec.colors
    seg_path, zip_path = tmp / "segmented.mp4", tmp / "result.zip"
    index = 0
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        writer = await run_in_threadpool(VideoWriter, seg_path, (info.width, info.height), info.fps)
        try:
            while (frames := await run_in_threadpool(next, batches, None)) is not None:
                preds = await infer(frames)

                def write(
                    frames: list[np.ndarray] = frames,
                    preds: list[Prediction] = preds,
                    start: int = index,
                ) -> None:
                    for i, (frame, pred) in enumerate(zip(frames, preds, strict=True), start):
                        zf.writestr(f"frames/frame_{i:05d}.png", encode_png(frame))
                        zf.writestr(f"masks/frame_{i:05d}.png", encode_png(pred.mask))
                        zf.writestr(
                            f"colors/frame_{i:05d}.png", encode_png(colorize(pred.mask, colors))
                        )
                        writer.write(overlay(frame, pred.mask, colors, state.overlay_alpha))

                await run_in_threadpool(write)
                index += len(frames)
        finally:
            await run_in_threadpool(writer.close)
        zf.write(src, f"video/{src.name}")
        zf.write(seg_path, "video/segmented.mp4")
    return FileResponse(
        zip_path,
        media_type="application/zip",
        filename="video_predictions.zip",
        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
    )
