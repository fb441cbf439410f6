"""BentoML service for the road-segmentation model.

Typed `@bentoml.api` methods for the native routes (`POST /segment`, `POST /segment/json`), so
`bentoml.SyncHTTPClient(url).segment(image=Path("street.jpg"))` works; the original projects'
routes (`roadseg/serve/legacy.py`), the live stream and the web UI on a mounted FastAPI app
(`roadseg/serve/app.py`). Both infer through the state on this
instance (`self.state`, one batching queue). Loads the model once per worker, on the GPU when
there is one, warms it up, and only then reports ready on /readyz::

    ROADSEG_MODEL_URI=models:/roadseg-unet@champion bentoml serve bento.service:RoadSegService --port 3000

Other environment: ROADSEG_API_KEY (require `X-API-Key` or `Authorization: Bearer`),
ROADSEG_MONITOR_DIR (monitoring log; default params drift.log_dir), ROADSEG_PARAMS (params file
for limits and batching), ROADSEG_BACKEND (torch, onnxruntime or onnxruntime_int8; default
params serve.backend), ROADSEG_INTRA_OP_THREADS (threads of one inference; default params
serve.intra_op_threads, else the pod's CPU limit).
ROADSEG_SHADOW_SHARE, ROADSEG_SHADOW_MODEL_URI: the shadow challenger (params serve.shadow,
roadseg/serve/shadow.py).
How it starts, fails and stops: `roadseg/serve/lifecycle.py`.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from roadseg.serve.api import Format, SegmentRoutes, ServingState
from roadseg.serve.app import build_app
from roadseg.serve.httpguard import GuardMiddleware
from roadseg.serve.lifecycle import die_with_parent, model_source, threads_setting
from roadseg.serve.openapi import DocumentRoutes
from roadseg.serve.protocols import install_protocol_hooks

logger = logging.getLogger("roadseg.serve")
UI_DIR = Path(__file__).resolve().parent / "ui"


def current_state() -> ServingState | None:
    """The state of this worker's service instance (None until it is created)."""
    try:
        return bentoml.get_current_service().state
    except Exception:  # not instantiated yet: the middleware answers as "unloaded"
        return None


def _live_state() -> ServingState:
    state = current_state()
    if state is None:
        raise HTTPException(503, "model is not loaded yet")
    return state


class SegmentResult(BaseModel):
    """`POST /segment/json`: the class-id mask and what it contains."""

    mask: str = Field(description="base64 PNG, one class id per pixel, at the input's size")
    width: int
    height: int
    class_shares: dict[str, float] = Field(description="class name -> share of the pixels")
    confidence: float = Field(description="mean over pixels of the max softmax probability")
    model_version: str


@bentoml.service(name="roadseg", traffic={"timeout": 300}, http={"port": 3000})
@bentoml.asgi_app(build_app(_live_state, ui_dir=UI_DIR), path="/")
class RoadSegService:
    """Road-scene semantic segmentation (BDD100k 14 classes, or KITTI Road's binary model)."""

    @bentoml.on_deployment
    def check_model() -> None:
        """Once, in the main process, before any worker: a model that cannot be served stops
        the server with exit code 1 and one line naming it and why (no worker restart loop)."""
        from roadseg.serve.lifecycle import check_model

        checked = check_model(__file__)
        logger.info("serving %s (%s, version %s)", checked["source"], checked["model_name"],
                    checked["version"])  # fmt: skip

    def __init__(self) -> None:
        die_with_parent()  # a SIGKILLed manager takes its workers along
        from roadseg.config import load_params
        from roadseg.monitor.log import MonitorLog
        from roadseg.serve.decoding import Limits
        from roadseg.serve.engine import create_engine

        params = load_params(os.environ.get("ROADSEG_PARAMS") or None)
        self.state = ServingState(
            limits=Limits.from_params(params.serve),
            stream_limits=params.stream,
            api_key=os.environ.get("ROADSEG_API_KEY") or None,
            overlay_alpha=params.serve.overlay_alpha,
            # One file per pod: appends from several pods to one file on a shared (NFS-type)
            # volume are not atomic, appends within one pod are.
            monitor=MonitorLog(
                os.environ.get("ROADSEG_MONITOR_DIR") or params.drift.log_dir,
                prefix=f"features-{os.environ.get('POD_NAME') or socket.gethostname()}",
            ),
            ui_dir=UI_DIR,
        )
        uri, bento_dir = model_source(__file__)
        engine, metadata = create_engine(
            uri,
            bento_dir=bento_dir,
            backend=os.environ.get("ROADSEG_BACKEND") or params.serve.backend,
            max_batch_size=params.serve.batch_size,
            observer=_observer(),
            warm_up=True,
            model_process=params.serve.model_process,
            threads=threads_setting(params.serve.intra_op_threads),
        )
        self.state.engine, self.state.metadata = engine, metadata
        from roadseg.serve.shadow import start_shadow

        # The challenger loads in the background; failing, it leaves the champion serving alone.
        self.state.shadow = start_shadow(params, metadata, engine.spec.class_names,
                                         backend=metadata["backend"])  # fmt: skip
        bentoml.metrics.Gauge(
            name="roadseg_model_info",
            documentation="The served model (value 1)",
            labelnames=["model_name", "version", "run_id"],
        ).labels(
            model_name=metadata["model_name"],
            version=metadata["version"],
            run_id=str(metadata["run_id"]),
        ).set(1)

    def __is_ready__(self) -> bool:
        return self.state.ready

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        """After uvicorn has drained the requests in flight: the monitoring rows still queued are
        written and the batching queue stops."""
        await run_in_threadpool(self.state.flush, 10.0)
        if self.state.shadow is not None:  # the images queued, then its last summary to MLflow
            await run_in_threadpool(self.state.shadow.close, 10.0)
        if self.state.engine is not None:
            await self.state.engine.close()

    # The multipart requests to /segment and /segment/json reach these two methods (the BentoML
    # clients, HTML forms), after `SegmentRoutes` has checked them; raw bodies it answers itself.
    @bentoml.api(route="/segment")
    async def segment(
        self, image: Path, format: Format | None = None, ctx: bentoml.Context = None
    ) -> Annotated[Path, ContentType("image/png")]:
        """One JPEG/PNG (multipart `image`, or the raw body) -> PNG at the input's resolution:
        class ids (`mask`), colourised mask (`color`) or the image blended with it (`overlay`).
        `format` may also come as the query parameter `?format=`."""
        query = ctx.request.query_params.get("format") if ctx is not None else None
        data = await run_in_threadpool(Path(image).read_bytes)
        return _answer(ctx, await self.state.segment(data, format or query or "mask"))

    @bentoml.api(route="/segment/json")
    async def segment_json(self, image: Path, ctx: bentoml.Context = None) -> SegmentResult:
        """One JPEG/PNG -> base64 PNG mask, per-class pixel shares, mean confidence, version."""
        data = await run_in_threadpool(Path(image).read_bytes)
        return _answer(ctx, await self.state.segment_json(data))


def _answer(ctx: bentoml.Context | None, response: Any) -> Any:
    """A finished response from a typed method: BentoML answers with the context's status (200
    unless set), whatever the returned response says."""
    if ctx is not None:
        ctx.response.status_code = response.status_code
    return response


def _observer() -> Any:
    latency = bentoml.metrics.Histogram(
        name="roadseg_inference_latency_seconds",
        documentation="Model forward time per batch",
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )
    batch = bentoml.metrics.Histogram(
        name="roadseg_batch_size",
        documentation="Images per model forward pass",
        buckets=(1, 2, 4, 8, 16, 32, 64),
    )

    def observe(size: int, seconds: float) -> None:
        latency.observe(seconds)
        batch.observe(size)

    return observe


# Outermost first: the guard sees the request as sent, then /segment requests are read.
RoadSegService.add_asgi_middleware(GuardMiddleware, state=current_state)
# Below the app (roadseg/serve/protocols.py): header and send timeouts on the connection, metrics
# labelled by route, the WebSocket guard. BentoML has no setting for any, and its worker imports
# this module before it builds the server and the app.
install_protocol_hooks(current_state)
RoadSegService.add_asgi_middleware(SegmentRoutes, state=current_state)
# /docs.json as the service really answers: every status, the problem body (roadseg/serve/openapi.py).
RoadSegService.add_asgi_middleware(
    DocumentRoutes, api_key=lambda: getattr(current_state(), "api_key", None)
)
