"""`GET /model-card` (roadseg/serve/card.py) through the service's FastAPI app: the served
model's card as HTML or markdown, and the JSON error body when it has none."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from roadseg.serve.api import ServingState
from roadseg.serve.app import build_app


def client_for(info: dict) -> TestClient:
    engine = SimpleNamespace(ready=True, info=info, version=str(info.get("version", "7")))
    state = ServingState(engine=engine)
    return TestClient(build_app(lambda: state))


@pytest.fixture
def card(tmp_path: Path) -> Path:
    folder = tmp_path / "model_card"
    folder.mkdir()
    (folder / "model_card.md").write_text("# Model card: roadseg-unet v7\n\n- pole: IoU 0.01\n")
    (folder / "model_card.html").write_text("<!doctype html><h1>Model card: roadseg-unet v7</h1>")
    return folder


def test_the_packaged_card_as_html_and_markdown(card: Path) -> None:
    client = client_for({"source": "bento", "model_card": str(card), "version": "7"})
    r = client.get("/model-card")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<h1>Model card: roadseg-unet v7</h1>" in r.text
    md = client.get("/model-card", params={"format": "md"})
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith("# Model card: roadseg-unet v7") and "pole: IoU 0.01" in md.text


def test_the_card_of_a_model_served_from_mlflow_is_fetched_from_its_run(
    card: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    asked = []

    def download(artifact_uri: str) -> str:
        asked.append(artifact_uri)
        return str(card)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    client = client_for({"source": "mlflow", "run_id": "abc123", "version": "7"})
    assert client.get("/model-card?format=md").text.startswith("# Model card: roadseg-unet v7")
    assert client.get("/model-card").status_code == 200
    assert asked == ["runs:/abc123/model_card"]  # fetched once


@pytest.mark.parametrize(
    "info",
    [
        {"source": "bento", "model_card": None, "version": "3"},  # packaged before cards
        {"source": "checkpoint", "run_id": None, "version": "3"},
    ],
)
def test_a_model_without_a_card_answers_404_with_the_json_body(info: dict) -> None:
    r = client_for(info).get("/model-card")
    assert r.status_code == 404
    body = r.json()  # the service's problem body (it may carry more keys)
    assert {k: body[k] for k in ("error", "detail", "status")} == {
        "error": "not_found", "detail": "model 3 has no model card", "status": 404}  # fmt: skip


def test_an_unknown_format_is_422(card: Path) -> None:
    r = client_for({"model_card": str(card)}).get("/model-card", params={"format": "pdf"})
    assert r.status_code == 422 and r.json()["error"] == "bad_format"
    assert "pdf" not in r.text  # the input is never echoed back


def test_the_document_declares_the_formats_and_the_answers_media_types(card: Path) -> None:
    """The API fuzzer's runs have no card (404): the 200 answers are checked here."""
    client = client_for({"source": "bento", "model_card": str(card), "version": "7"})
    op = client.app.openapi()["paths"]["/model-card"]["get"]
    (param,) = [p for p in op["parameters"] if p["name"] == "format"]
    assert param["schema"]["enum"] == ["html", "md"]
    declared = set(op["responses"]["200"]["content"])
    for fmt in param["schema"]["enum"]:
        answered = client.get("/model-card", params={"format": fmt}).headers["content-type"]
        assert answered.split(";")[0] in declared, (fmt, answered, declared)


def test_not_ready_is_503() -> None:
    state = ServingState()
    r = TestClient(build_app(lambda: state)).get("/model-card")
    assert r.status_code == 503 and r.json()["status"] == 503
