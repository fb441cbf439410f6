"""The routes of the two original projects, on a FastAPI app mounted by the BentoML service.

Their clients read exact shapes, so these answers are contracts (see README, "Clients"):
- U-Net-SSeg Streamlit front-end: `/predict-image/returns-zip/` answers a ZIP whose
  `images/<name>` pairs with `pred_color/<name>` (and `pred_mask/<name>`), one shared PNG name
  per input; `/predict-video/returns-zip/` answers a ZIP with exactly two `.mp4` members, the
  original and `predicted.mp4`, both H.264 so a browser plays them.
- U-Net-SSeg scripts: `/predict/returns-json/` takes `{"image_names", "images"}` as the JSON body
  or as a multipart `file` part, and answers `images`, `pred_mask`, `pred_color` (base64 PNGs).
- KITTI road server: `POST /upload` (multipart `file`) answers the road probability as a
  grayscale JPEG at the input's size; `GET /health` answers `{"status": "healthy"}`.
Every route infers through `ServingState.infer`, the same batching queue as the typed API.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from roadseg.api import ServingState, encode_image, error_response
from roadseg.inputs import (
    JPEG_MAX_SIDE,
    InputError,
    Limits,
    decode_image,
    parse_predict_json,
    read_uploads,
)
from roadseg.serving import Prediction, colorize, encode_png, overlay
from roadseg.stream import register_stream
from roadseg.video import VideoWriter, read_video, sniff_video

PREDICT_JSON_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["image_names", "images"],
                "properties": {
                    "image_names": {"type": "array", "items": {"type": "string"}},
                    "images": {
                        "type": "array",
                        "items": {"type": "string", "format": "byte"},
                        "description": "base64 JPEG/PNG, one per name",
                    },
                },
            }
        },
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "the same JSON document as a file part",
                    }
                },
            }
        },
    },
}


def build_legacy_app(get_state: Callable[[], ServingState], ui_dir: Path | None = None) -> FastAPI:
    """The FastAPI app with the legacy, info and UI routes; `get_state` gives the live state."""
    # BentoML serves /docs for the whole service (it merges these routes into its spec).
    app = FastAPI(title="roadseg legacy routes", openapi_url=None, docs_url=None, redoc_url=None)
    app.add_exception_handler(InputError, lambda _r, e: error_response(e))
    app.add_exception_handler(HTTPException, lambda _r, e: error_response(e))

    @app.post(
        "/predict/returns-json/", tags=["legacy"], openapi_extra={"requestBody": PREDICT_JSON_BODY}
    )
    async def predict_json(request: Request) -> dict[str, Any]:
        """U-Net-SSeg: `{"image_names", "images": [base64]}` -> `images`, `pred_mask`,
        `pred_color` (base64 PNGs) and `image_names`."""
        state = get_state()
        body = await _json_document(request, state.limits)
        names, images = await run_in_threadpool(parse_predict_json, body, state.limits)
        preds = await state.infer(images)
        colors = state.require_engine().spec.colors

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
        """U-Net-SSeg: multipart `files` (JPEG/PNG images or ZIPs of them) -> ZIP with
        `images/<n>.png`, `pred_mask/<n>.png`, `pred_color/<n>.png` sharing one name per image."""
        state = get_state()
        entries = await _read_files(files, state.limits)
        preds = await state.infer([image for _, image in entries])
        blob = await run_in_threadpool(zip_results, state, entries, preds)
        return Response(
            blob,
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="predictions.zip"'},
        )

    @app.post("/predict-video/returns-zip/", tags=["legacy"], response_class=Response)
    async def predict_video(file: UploadFile = File(...)) -> Response:
        """U-Net-SSeg: multipart `file` (MP4/AVI/MOV) -> ZIP with `video/original.mp4` and
        `video/predicted.mp4` (H.264, the overlay), plus per frame `frames/`, `pred_mask/`,
        `pred_color/` PNGs. Frames go through the model in batches."""
        state = get_state()
        tmp = Path(tempfile.mkdtemp(prefix="roadseg-video-"))
        try:
            return await segment_video(state, file, tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @app.post("/upload", tags=["legacy"], response_class=Response)
    async def upload(
        file: UploadFile = File(...),
        format: Literal["probability", "overlay", "color", "mask"] | None = Query(None),
    ) -> Response:
        """KITTI road server: multipart `file` -> the road probability as a grayscale JPEG at the
        input's size (`?format=overlay|color` JPEG, `mask` PNG of class ids). A model with no
        class named "road" answers the overlay by default."""
        state = get_state()
        data = await file.read()
        image = await run_in_threadpool(
            decode_image, data, state.limits, name=file.filename or "file"
        )
        if format != "mask" and max(image.shape[:2]) > JPEG_MAX_SIDE:  # answered as JPEG
            raise InputError(
                f"image is {image.shape[1]}x{image.shape[0]}; a JPEG answer allows at most "
                f"{JPEG_MAX_SIDE} px a side (ask ?format=mask for a PNG)",
                413,
                "too_large_for_jpeg",
            )
        (pred,) = await state.infer([image])
        fmt = format or ("probability" if pred.road_probability is not None else "overlay")
        if fmt == "probability":
            if pred.road_probability is None:
                raise InputError("the served model has no 'road' class", 422, "no_road_class")
            body = await run_in_threadpool(encode_image, pred.road_probability, "JPEG")
        elif fmt == "mask":
            return Response(
                await run_in_threadpool(state.render, image, pred, "mask"), media_type="image/png"
            )
        else:
            body = await run_in_threadpool(state.render, image, pred, fmt, "JPEG")
        return Response(body, media_type="image/jpeg")

    @app.get("/health", tags=["info"])
    async def health() -> dict[str, str]:
        """KITTI road server's health check (liveness; `/readyz` says whether the model is loaded)."""
        return {"status": "healthy"}

    @app.get("/classes", tags=["info"])
    async def classes() -> list[dict[str, Any]]:
        """Class ids, names and colours of the served model."""
        spec = get_state().require_engine().spec
        return [
            {"id": i, "name": n, "color": list(c)}
            for i, (n, c) in enumerate(zip(spec.class_names, spec.colors, strict=True))
        ]

    @app.get("/metadata", tags=["info"])
    async def metadata() -> dict[str, Any]:
        """Model name, version, run id, params hash, lineage and serving settings."""
        state = get_state()
        state.require_engine()
        return {**state.metadata, "model_version": state.version}

    register_stream(app, get_state)  # GET /stream WebSocket (roadseg/stream.py)

    if ui_dir is not None and (ui_dir / "index.html").is_file():
        from fastapi.staticfiles import StaticFiles

        app.mount("/ui", StaticFiles(directory=ui_dir, html=True), name="ui")
    return app


async def _json_document(request: Request, limits: Limits) -> Any:
    """The JSON document of `/predict/returns-json/`: the body, or a multipart `file` part."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=1)
        part = form.get("file")
        if part is None or not hasattr(part, "read"):
            raise InputError("multipart body has no file part 'file'", 422, "missing_field")
        raw = await part.read()
    else:
        raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InputError(f"body is not valid JSON ({detail})", 400, "bad_json") from None


async def _read_files(files: list[UploadFile], limits: Limits) -> list[tuple[str, np.ndarray]]:
    """Decode every part; the entry and byte budgets hold for the whole request, not per part."""
    entries: list[tuple[str, np.ndarray]] = []
    spent = 0
    for f in files:
        left = dataclasses.replace(
            limits,
            max_zip_entries=limits.max_zip_entries - len(entries),
            max_zip_uncompressed_bytes=limits.max_zip_uncompressed_bytes - spent,
        )
        if left.max_zip_entries <= 0:
            raise InputError(
                f"request holds more than {limits.max_zip_entries} images", 413, "too_many_images"
            )
        data = await f.read()
        got = await run_in_threadpool(read_uploads, data, left, filename=f.filename or "image")
        spent += sum(len(raw) for _, raw, _ in got)
        if len(entries) + len(got) > limits.max_zip_entries:
            raise InputError(
                f"request holds more than {limits.max_zip_entries} images", 413, "too_many_images"
            )
        entries += [(name, image) for name, _, image in got]
    return entries


def unique_stems(names: list[str]) -> list[str]:
    """Flat, safe, unique file stems (`a`, `a_1`, …) for the entries of an output ZIP."""
    out: list[str] = []
    seen: set[str] = set()
    for i, name in enumerate(names):
        stem = PurePosixPath(name.replace("\\", "/")).stem or f"image_{i}"
        stem = (
            "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip(".")
            or f"image_{i}"
        )
        candidate, k = stem, 1
        while candidate.lower() in seen:
            candidate, k = f"{stem}_{k}", k + 1
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def zip_results(
    state: ServingState, entries: list[tuple[str, np.ndarray]], preds: list[Prediction]
) -> bytes:
    """`images/`, `pred_mask/`, `pred_color/` with one shared PNG name per input (the original
    server's layout, which the Streamlit view page pairs by name)."""
    colors = state.require_engine().spec.colors
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        stems = unique_stems([name for name, _ in entries])
        for stem, (_, image), pred in zip(stems, entries, preds, strict=True):
            zf.writestr(f"images/{stem}.png", encode_png(image))
            zf.writestr(f"pred_mask/{stem}.png", encode_png(pred.mask))
            zf.writestr(f"pred_color/{stem}.png", encode_png(colorize(pred.mask, colors)))
    return buf.getvalue()


async def segment_video(state: ServingState, file: UploadFile, tmp: Path) -> Response:
    name = PurePosixPath((file.filename or "video.mp4").replace("\\", "/")).name
    head = await file.read(16)
    sniff_video(head, name)
    src = tmp / f"upload{Path(name).suffix.lower() or '.mp4'}"
    with src.open("wb") as out:
        out.write(head)
        while chunk := await file.read(1 << 20):
            out.write(chunk)
    engine = state.require_engine()
    info, batches = await run_in_threadpool(read_video, src, state.limits, engine.max_batch_size)
    colors = engine.spec.colors
    original, predicted = tmp / "original.mp4", tmp / "predicted.mp4"
    zip_path = tmp / "result.zip"
    size, index = (info.width, info.height), 0
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        writers = await run_in_threadpool(
            lambda: (VideoWriter(original, size, info.fps), VideoWriter(predicted, size, info.fps))
        )
        try:
            while (frames := await run_in_threadpool(next, batches, None)) is not None:
                preds = await state.infer(frames)

                def write(frames=frames, preds=preds, start=index) -> None:
                    for i, (frame, pred) in enumerate(zip(frames, preds, strict=True), start):
                        zf.writestr(f"frames/frame_{i:05d}.png", encode_png(frame))
                        zf.writestr(f"pred_mask/frame_{i:05d}.png", encode_png(pred.mask))
                        zf.writestr(
                            f"pred_color/frame_{i:05d}.png", encode_png(colorize(pred.mask, colors))
                        )
                        writers[0].write(frame)
                        writers[1].write(overlay(frame, pred.mask, colors, state.overlay_alpha))

                await run_in_threadpool(write)
                index += len(frames)
        finally:
            await run_in_threadpool(lambda: [w.close() for w in writers])
        if index == 0:
            raise InputError("video holds no frames", 400, "corrupt_video")
        # Exactly two .mp4 members: the Streamlit view page pairs them by the word "predicted".
        zf.write(original, "video/original.mp4")
        zf.write(predicted, "video/predicted.mp4")
    return FileResponse(
        zip_path,
        media_type="application/zip",
        filename="video_predictions.zip",
        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True),
    )
