"""`GET /model-card`: the served model's card (roadseg/release/card.py writes it at registration).

HTML by default, markdown with `?format=md`. A packaged model carries it in the Bento
(`model_card/`); a model served from MLflow (`models:/...`) has it fetched once from its run.
A model without a card answers 404 with the JSON error body.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, PlainTextResponse, Response

from roadseg.models.bento import CARD_DIR, CARD_HTML, CARD_MD
from roadseg.serve.errors import InputError

FILES = {"html": Path(CARD_HTML).name, "md": Path(CARD_MD).name}
# What /docs.json declares for 200: the card as HTML, or markdown with ?format=md.
CARD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/html": {}, "text/markdown": {}}, "description": "the model card"}
}


def card_folder(info: dict[str, Any], cache: dict[str, Path | None]) -> Path | None:
    """The served model's `model_card/` folder: packaged, or downloaded once from its MLflow run."""
    if info.get("model_card"):
        return Path(info["model_card"])
    run_id = info.get("run_id")
    if info.get("source") != "mlflow" or not run_id:
        return None
    if run_id not in cache:
        try:
            import mlflow

            local = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/{CARD_DIR}")
            cache[run_id] = Path(local)
        except Exception:  # no card logged (registered before cards), or MLflow unreachable
            cache[run_id] = None
    return cache[run_id]


def card_routes(get_state: Callable[[], Any]) -> APIRouter:
    """`GET /model-card?format=html|md`."""
    router = APIRouter(tags=["info"])
    cache: dict[str, Path | None] = {}

    @router.get("/model-card", response_class=HTMLResponse, responses=CARD_RESPONSES)
    async def model_card(
        format: str = Query("html", json_schema_extra={"enum": list(FILES)}),
    ) -> Response:
        """The served model version's model card: HTML, or markdown with `?format=md`."""
        if format not in FILES:  # checked here, not by FastAPI: the answer keeps its own code
            raise InputError("format: expected html or md", 422, "bad_format")
        engine = get_state().require_engine()
        folder = await run_in_threadpool(card_folder, engine.info, cache)  # may fetch from MLflow
        path = folder / FILES[format] if folder is not None else None
        if path is None or not path.is_file():
            raise HTTPException(404, f"model {engine.version} has no model card")
        text = path.read_text(encoding="utf-8")
        if format == "md":
            return PlainTextResponse(text, media_type="text/markdown; charset=utf-8")
        return HTMLResponse(text)

    return router
