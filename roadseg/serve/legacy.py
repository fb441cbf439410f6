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
Every route infers through `ServingState.infer`, the same batching queue as the typed API. The
app that mounts them with the service's own routes is `roadseg.serve.app`.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from roadseg.inference.predict import Prediction
from roadseg.inference.render import colorize, encode_png
from roadseg.serve.api import ServingState, encode_image
from roadseg.serve.decoding import JPEG_MAX_SIDE, Budget, Limits, Probe, probe_image
from roadseg.serve.errors import InputError
from roadseg.serve.inputs import probe_predict_json, probe_uploads, safe_filename
from roadseg.serve.video import segment_video

StateGetter = Callable[[], ServingState]

PREDICT_JSON_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["image_names", "images"],
                "properties": {
                    "image_names": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "images": {
                        "type": "array",
                        "items": {"type": "string", "format": "byte"},
                        "minItems": 1,
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


def image_routes(get_state: StateGetter) -> APIRouter:
    """U-Net-SSeg's JSON and ZIP routes and the KITTI server's `/upload`."""
    router = APIRouter(tags=["legacy"])

    @router.post("/predict/returns-json/", openapi_extra={"requestBody": PREDICT_JSON_BODY})
    async def predict_json(request: Request) -> dict[str, Any]:
        """U-Net-SSeg: `{"image_names", "images": [base64]}` -> `images`, `pred_mask`,
        `pred_color` (base64 PNGs) and `image_names`."""
        state = get_state()
        body = await _json_document(request, state.limits)
        names, probes = await run_in_threadpool(probe_predict_json, body, state.limits)
        colors = state.require_engine().spec.colors
        b64 = lambda a: base64.b64encode(encode_png(a)).decode()  # noqa: E731
        masks: list[str] = []
        color_masks: list[str] = []
        async for _, preds in infer_in_chunks(state, probes):
            masks += await run_in_threadpool(lambda p=preds: [b64(x.mask) for x in p])
            color_masks += await run_in_threadpool(
                lambda p=preds: [b64(colorize(x.mask, colors)) for x in p]
            )
        return {
            "image_names": names,
            "images": body["images"],
            "pred_mask": masks,
            "pred_color": color_masks,
        }

    @router.post("/predict-image/returns-zip/", response_class=Response)
    async def predict_zip(files: list[UploadFile] = File(...)) -> Response:
        """U-Net-SSeg: multipart `files` (JPEG/PNG images or ZIPs of them) -> ZIP with
        `images/<n>.png`, `pred_mask/<n>.png`, `pred_color/<n>.png` sharing one name per image."""
        state = get_state()
        probes = await _read_files(files, state.limits)
        blob = await zip_results(state, probes)
        return Response(
            blob,
            media_type="application/zip",
            headers={"Content-Disposition": 'attachment; filename="predictions.zip"'},
        )

    @router.post("/upload", response_class=Response)
    async def upload(
        file: UploadFile = File(...),
        format: Literal["probability", "overlay", "color", "mask"] | None = Query(None),
    ) -> Response:
        """KITTI road server: multipart `file` -> the road probability as a grayscale JPEG at the
        input's size (`?format=overlay|color` JPEG, `mask` PNG of class ids). A model with no
        class named "road" answers the overlay by default."""
        state = get_state()
        data = await file.read()
        name = safe_filename(file.filename, "file")
        probe = await run_in_threadpool(
            probe_image, data, state.limits, name=name, budget=Budget(state.limits)
        )
        if format != "mask" and max(probe.width, probe.height) > JPEG_MAX_SIDE:  # a JPEG answer
            raise InputError(
                f"image is {probe.width}x{probe.height}; a JPEG answer allows at most "
                f"{JPEG_MAX_SIDE} px a side (ask ?format=mask for a PNG)",
                413,
                "too_large_for_jpeg",
            )
        image = await run_in_threadpool(probe.decode, state.limits)
        (pred,) = await state.infer([image])
        return await run_in_threadpool(upload_answer, state, image, pred, format)

    return router


def upload_answer(state: ServingState, image: np.ndarray, pred: Prediction, fmt: str | None):
    fmt = fmt or ("probability" if pred.road_probability is not None else "overlay")
    if fmt == "probability":
        if pred.road_probability is None:
            raise InputError("the served model has no 'road' class", 422, "no_road_class")
        return Response(encode_image(pred.road_probability, "JPEG"), media_type="image/jpeg")
    if fmt == "mask":
        return Response(state.render(image, pred, "mask"), media_type="image/png")
    return Response(state.render(image, pred, fmt, "JPEG"), media_type="image/jpeg")


def video_routes(get_state: StateGetter) -> APIRouter:
    router = APIRouter(tags=["legacy"])

    @router.post("/predict-video/returns-zip/", response_class=Response)
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

    return router


def health_routes() -> APIRouter:
    router = APIRouter(tags=["info"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        """KITTI road server's health check (liveness; `/readyz` says whether the model is loaded)."""
        return {"status": "healthy"}

    return router


async def infer_in_chunks(
    state: ServingState, probes: list[Probe]
) -> AsyncIterator[tuple[list[np.ndarray], list[Prediction]]]:
    """Decode and infer a request's probed images one batch at a time: memory holds one batch
    of decoded pixels, not the whole request (the budget was charged from the headers)."""
    size = state.require_engine().max_batch_size
    for k in range(0, len(probes), size):
        chunk = probes[k : k + size]
        images = await run_in_threadpool(lambda c=chunk: [p.decode(state.limits) for p in c])
        yield images, await state.infer(images)


async def _json_document(request: Request, limits: Limits) -> Any:
    """The JSON document of `/predict/returns-json/`: the body, or a multipart `file` part."""
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=1)
        part = form.get("file")
        if part is None or not hasattr(part, "read"):
            raise InputError("multipart body has no file part 'file'", 422, "missing_field")
        raw = await part.read()
    else:
        raw = await request.body()
    return await run_in_threadpool(parse_json, raw)


def parse_json(raw: bytes) -> Any:
    """Strict JSON; a 100k-deep nesting (RecursionError) or a 5000-digit integer (ValueError)
    is a 400 like any other malformed body."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
        detail = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise InputError(f"body is not valid JSON ({detail})", 400, "bad_json") from None


async def _read_files(files: list[UploadFile], limits: Limits) -> list[Probe]:
    """Probe every part (headers only); one budget holds for the whole request, not per part."""
    budget = Budget(limits)
    probes: list[Probe] = []
    for f in files:
        if budget.images_left <= 0:
            raise InputError(
                f"request holds more than {limits.max_zip_entries} images", 413, "too_many_images"
            )
        data = await f.read()
        name = safe_filename(f.filename, "image")
        probes += await run_in_threadpool(probe_uploads, data, limits, budget, filename=name)
    return probes


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


async def zip_results(state: ServingState, probes: list[Probe]) -> bytes:
    """`images/`, `pred_mask/`, `pred_color/` with one shared PNG name per input (the original
    server's layout, which the Streamlit view page pairs by name), written batch by batch."""
    colors = state.require_engine().spec.colors
    stems = iter(unique_stems([p.name for p in probes]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        async for images, preds in infer_in_chunks(state, probes):

            def write(images=images, preds=preds) -> None:
                for image, pred in zip(images, preds, strict=True):
                    stem = next(stems)
                    zf.writestr(f"images/{stem}.png", encode_png(image))
                    zf.writestr(f"pred_mask/{stem}.png", encode_png(pred.mask))
                    zf.writestr(f"pred_color/{stem}.png", encode_png(colorize(pred.mask, colors)))

            await run_in_threadpool(write)
    return buf.getvalue()
