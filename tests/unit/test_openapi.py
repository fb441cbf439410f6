"""The API document's rewrite (`roadseg/serve/openapi.py`) and the statuses table in the docs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from roadseg.config import BACKEND_NAMES
from roadseg.serve.openapi import REASONS, describe, statuses

DOCS = Path(__file__).resolve().parents[2] / "docs/api/errors.md"
# A representative path of each row of the docs' table.
ROWS = {
    "`POST /segment`, `/segment/json`": ("/segment", "post"),
    "the original projects' `POST` routes": ("/upload", "post"),
    "`GET /classes`": ("/classes", "get"),
    "`GET /metadata`": ("/metadata", "get"),
    "`GET /model-card`": ("/model-card", "get"),
    "`GET /readyz`": ("/readyz", "get"),
    "`GET /healthz`, `/livez`, `/health`, `/metrics`": ("/healthz", "get"),
}

BENTOML_LIKE = {
    "openapi": "3.0.2",
    "paths": {
        "/segment": {
            "post": {
                "requestBody": {"content": {"multipart/form-data": {}}},
                "responses": {
                    "200": {"description": "ok"},
                    "400": {"$ref": "#/components/schemas/InvalidArgument"},
                },
            }
        },
        "/upload": {
            "post": {
                "responses": {
                    "200": {"description": "ok"},
                    "422": {
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/HTTPValidationError"}
                            }
                        }
                    },
                }
            }
        },
        "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}},
    },
    "components": {
        "schemas": {
            "HTTPValidationError": {"type": "object"},
            "InvalidArgument": {"type": "object"},
            "Body_upload": {
                "type": "object",
                "required": ["files"],
                "properties": {"files": {"type": "array", "items": {"type": "string"}}},
            },
        }
    },
}


def test_describe_declares_the_problem_for_every_status_and_leaves_its_input_alone() -> None:
    before = copy.deepcopy(BENTOML_LIKE)
    doc = describe(BENTOML_LIKE, api_key=True)
    assert before == BENTOML_LIKE
    for path, method in (("/segment", "post"), ("/upload", "post"), ("/healthz", "get")):
        responses = doc["paths"][path][method]["responses"]
        errors = sorted(int(k) for k in responses if int(k) >= 400)
        assert errors == statuses(path, method)
        for code in errors:
            ref = responses[str(code)]["content"]["application/problem+json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/Problem"
    assert "security" in doc["paths"]["/segment"]["post"]
    assert "security" not in doc["paths"]["/healthz"]["get"]  # probes carry no key
    assert {"image/png", "image/jpeg"} <= set(
        doc["paths"]["/segment"]["post"]["requestBody"]["content"]
    )
    assert doc["components"]["schemas"]["Body_upload"]["properties"]["files"]["minItems"] == 1
    assert "HTTPValidationError" not in json.dumps(doc) and "InvalidArgument" not in json.dumps(doc)
    assert "securitySchemes" not in describe(BENTOML_LIKE, api_key=False)["components"]


def test_every_response_declares_the_model_version_and_backend_headers() -> None:
    """A generated client can read which model and which backend answered, errors included."""
    doc = describe(BENTOML_LIKE, api_key=True)
    headers = doc["components"]["headers"]
    assert set(headers) == {"X-Model-Version", "X-Model-Backend"}
    assert headers["X-Model-Backend"]["schema"]["enum"] == [*BACKEND_NAMES, "unloaded"]
    assert "onnxruntime_int8" in BACKEND_NAMES
    seen = 0
    for path, operations in doc["paths"].items():
        for op in operations.values():
            for code, response in op["responses"].items():
                refs = {h: v["$ref"] for h, v in response["headers"].items()}
                assert refs == {h: f"#/components/headers/{h}" for h in headers}, (path, code)
                seen += 1
    assert seen == sum(1 + len(statuses(p, m)) for p, m in
                       (("/segment", "post"), ("/upload", "post"), ("/healthz", "get")))  # fmt: skip
    assert "headers" not in BENTOML_LIKE.get("components", {})  # the input is left alone


def test_uploads_take_at_least_one_byte() -> None:
    """An empty part or body is refused (400 `empty`): the document says so (`minLength`)."""
    spec = copy.deepcopy(BENTOML_LIKE)
    binary = {"type": "string", "contentMediaType": "application/octet-stream"}
    spec["components"]["schemas"]["Body_upload"]["properties"] = {
        "files": {"type": "array", "items": dict(binary)},
        "file": dict(binary),
        "name": {"type": "string"},
    }
    spec["paths"]["/upload"]["post"]["requestBody"] = {
        "content": {"multipart/form-data": {"schema": {"$ref": "#/components/schemas/Body_upload"}}}
    }
    doc = describe(spec, api_key=False)
    props = doc["components"]["schemas"]["Body_upload"]["properties"]
    assert props["files"]["items"]["minLength"] == 1 and props["file"]["minLength"] == 1
    assert "minLength" not in props["name"]
    raw = doc["paths"]["/segment"]["post"]["requestBody"]["content"]["image/png"]["schema"]
    assert raw["minLength"] == 1


def test_the_docs_table_lists_the_statuses_the_document_declares() -> None:
    text = DOCS.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| route |"))
    codes = [int(c) for c in re.findall(r"\d{3}", header)]
    assert codes == sorted(REASONS)
    seen = 0
    for line in text.splitlines():
        for label, (path, method) in ROWS.items():
            if line.startswith(f"| {label}"):
                marks = [c.strip() for c in line.strip().strip("|").split("|")[1:]]
                assert [code for code, m in zip(codes, marks, strict=True) if m] == statuses(
                    path, method
                ), label
                seen += 1
    assert seen == len(ROWS)


def test_a_document_that_cannot_be_rewritten_is_a_500_problem_not_a_hang(monkeypatch) -> None:
    import asyncio

    from roadseg.serve import openapi

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(BENTOML_LIKE).encode()})

    def broken(spec, *, api_key):
        raise KeyError(404)

    monkeypatch.setattr(openapi, "describe", broken)
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": "/docs.json", "method": "GET", "headers": []}
    asyncio.run(
        asyncio.wait_for(openapi.DocumentRoutes(inner, lambda: None)(scope, receive, send), 5)
    )
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"] == "server_error"
