"""The FastAPI app the BentoML service mounts at `/`: the original projects' routes
(`roadseg.serve.legacy`), what the served model is (`/classes`, `/metadata`), the live stream
(`GET /stream`, `roadseg.serve.stream`) and the web UI, with the JSON error body on every error.
`POST /segment` and `/segment/json` are `roadseg.serve.api.SegmentRoutes` and the typed methods of
bento/service.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from roadseg.serve.api import ServingState
from roadseg.serve.card import card_routes
from roadseg.serve.errors import InputError, error_response, validation_error
from roadseg.serve.legacy import health_routes, image_routes, video_routes
from roadseg.serve.stream import register_stream

StateGetter = Callable[[], ServingState]


def build_app(get_state: StateGetter, ui_dir: Path | None = None) -> FastAPI:
    """The FastAPI app the service mounts at `/`; `get_state` gives the live state."""
    # BentoML serves /docs for the whole service (it merges these routes into its spec).
    app = FastAPI(title="roadseg routes", openapi_url=None, docs_url=None, redoc_url=None)
    app.add_exception_handler(InputError, lambda _r, e: error_response(e))
    app.add_exception_handler(HTTPException, lambda _r, e: error_response(e))
    app.add_exception_handler(RequestValidationError, lambda _r, e: validation_error(e))
    app.include_router(image_routes(get_state))  # the original projects' routes
    app.include_router(video_routes(get_state))
    app.include_router(health_routes())
    app.include_router(info_routes(get_state))
    app.include_router(card_routes(get_state))  # GET /model-card (roadseg/serve/card.py)
    register_stream(app, get_state)  # GET /stream WebSocket (roadseg/serve/stream.py)
    if ui_dir is not None and (ui_dir / "index.html").is_file():
        from fastapi.staticfiles import StaticFiles

        app.mount("/ui", StaticFiles(directory=ui_dir, html=True), name="ui")
    return app


def info_routes(get_state: StateGetter) -> APIRouter:
    """`GET /classes` and `/metadata`: what the served model is."""
    router = APIRouter(tags=["info"])

    @router.get("/classes")
    async def classes() -> list[dict[str, Any]]:
        """Class ids, names and colours of the served model."""
        spec = get_state().require_engine().spec
        return [
            {"id": i, "name": n, "color": list(c)}
            for i, (n, c) in enumerate(zip(spec.class_names, spec.colors, strict=True))
        ]

    @router.get("/metadata")
    async def metadata() -> dict[str, Any]:
        """Model name, version, run id, params hash, lineage and serving settings; `shadow`:
        the shadow challenger's state and running agreement (roadseg/serve/shadow.py)."""
        state = get_state()
        state.require_engine()
        shadow = state.shadow.status() if state.shadow is not None else {"state": "off"}
        return {**state.metadata, "model_version": state.version, "shadow": shadow}

    return router
