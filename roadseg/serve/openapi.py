"""The API document (`GET /docs.json`) as the service really behaves.

BentoML writes the document from the typed methods and the mounted FastAPI app; it knows neither
the statuses the guards and the connection layer answer (401, 408, 413, 415, 429, 431, 503) nor
the problem body every error carries, and it declares FastAPI's and BentoML's own error schemas,
which the service never sends. `describe` rewrites that document: every operation lists each
status it can return with the RFC 9457 `Problem` schema, the headers every response carries
(`X-Model-Version`, `X-Model-Backend`), the raw-body form and the `format` enum of `/segment`, the
API key as a security scheme, and the request constraints the service enforces (`minItems`,
`minLength`). `DocumentRoutes` serves the rewritten document in place of BentoML's.
"""

from __future__ import annotations

import copy
import json
import logging
from http import HTTPStatus
from typing import Any

from roadseg.config import BACKEND_NAMES
from roadseg.serve.errors import PROBLEM_JSON, problem_response

logger = logging.getLogger(__name__)

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; `error` is the service's machine-readable code "
    "(`error`, `detail` and `status` are also the members of the earlier error body).",
    "required": ["type", "title", "status", "detail", "error"],
    "properties": {
        "type": {"type": "string", "format": "uri-reference", "enum": ["about:blank"]},
        "title": {"type": "string", "description": "the HTTP status phrase"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "what was wrong, for a person"},
        "error": {"type": "string", "description": "the problem code, e.g. too_large, busy"},
    },
}

# What every response of the app carries (roadseg.serve.httpguard.identity_headers), errors
# included; not the connection layer's answers to requests whose headers never completed
# (roadseg.serve.httpconn: 400, 408, 431), hence not `required`.
IDENTITY_HEADERS: dict[str, Any] = {
    "X-Model-Version": {
        "description": "the served model's version, as `GET /metadata`'s `model_version` (a "
        "Bento's: `<registry version>+<bento tag>`); `unloaded` before the model is",
        "schema": {"type": "string"},
    },
    "X-Model-Backend": {
        "description": "what ran the network, as `GET /metadata`'s `backend` (`unloaded` before "
        "the model is); `onnxruntime_int8` answers other masks than the float backends",
        "schema": {"type": "string", "enum": [*BACKEND_NAMES, "unloaded"]},
    },
}

# Why a route answers each error status (the same words go into the docs' table).
REASONS = {
    400: "malformed body, multipart or HTTP request",
    401: "missing or wrong API key (`X-API-Key` or `Authorization: Bearer`)",
    404: "the served model has no model card (`GET /model-card`)",
    405: "method not allowed (the `Allow` header lists the ones that are)",
    408: "the body did not arrive in time",
    413: "body, image, archive or video beyond the limits",
    415: "not an image, a video or the expected media type; compressed bodies",
    422: "a required part or field is missing or invalid",
    429: "the service is busy with other large requests (`Retry-After`)",
    431: "too many or too large headers",
    500: "an unexpected error (never a traceback)",
    503: "the model is not loaded yet, or its worker stopped (`Retry-After`)",
}
EVERY_ROUTE = (401, 405, 431, 500)
WITH_BODY = (400, 408, 413, 415, 422, 429, 503)
SERVING = (503,)
UNGUARDED = ("/healthz", "/livez", "/readyz", "/metrics", "/health")  # no key, no body


def statuses(path: str, method: str) -> list[int]:
    """The error statuses `method path` can answer."""
    codes = set(EVERY_ROUTE)
    if path in UNGUARDED:
        codes.discard(401)
        codes |= {503} if path == "/readyz" else set()
    elif method == "post":
        codes |= set(WITH_BODY)
    elif path == "/model-card":  # no card: 404; ?format other than html|md: 422
        codes |= {*SERVING, 404, 422}
    else:
        codes |= set(SERVING) if path == "/metadata" else set()
    return sorted(codes)


def describe(spec: dict[str, Any], *, api_key: bool) -> dict[str, Any]:
    """The service's document: `spec` (BentoML's) with the statuses, bodies and constraints the
    service really has. Pure: `spec` is not changed."""
    doc = copy.deepcopy(spec)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM_SCHEMA
    doc["components"].setdefault("headers", {}).update(copy.deepcopy(IDENTITY_HEADERS))
    if api_key:
        doc["components"]["securitySchemes"] = {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "bearer": {"type": "http", "scheme": "bearer"},
        }
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            op["responses"] = _responses(op["responses"], statuses(path, method))
            for response in op["responses"].values():
                if isinstance(response, dict) and "$ref" not in response:
                    response.setdefault("headers", {}).update(
                        {h: {"$ref": f"#/components/headers/{h}"} for h in IDENTITY_HEADERS}
                    )
            if api_key and path not in UNGUARDED:
                op["security"] = [{"apiKey": []}, {"bearer": []}]
            if path in ("/segment", "/segment/json") and method == "post":
                _raw_body(op, with_format=path == "/segment")
            for media in op.get("requestBody", {}).get("content", {}).values():
                _no_empty_files(_resolve(doc, media.get("schema", {})), doc)
    for schema in schemas.values():
        _at_least_one(schema)
    for unused in ("HTTPValidationError", "ValidationError", "InvalidArgument", "NotFound",
                   "InternalServerError"):  # fmt: skip
        if f'"#/components/schemas/{unused}"' not in json.dumps(doc):
            schemas.pop(unused, None)
    return doc


def _responses(declared: dict[str, Any], codes: list[int]) -> dict[str, Any]:
    kept = {k: v for k, v in declared.items() if not k.isdigit() or int(k) < 400}
    for code in codes:
        kept[str(code)] = {
            "description": f"{HTTPStatus(code).phrase}: {REASONS[code]}",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
    return kept


def _raw_body(op: dict[str, Any], *, with_format: bool) -> None:
    """`/segment` also takes the image as the raw body, and `format` as a query parameter."""
    content = op.setdefault("requestBody", {"required": True}).setdefault("content", {})
    raw = {"schema": {"type": "string", "format": "binary"}}
    for media in ("image/jpeg", "image/png", "application/octet-stream"):
        content.setdefault(media, raw)
    op["requestBody"]["required"] = True
    if with_format:
        param = {
            "name": "format",
            "in": "query",
            "required": False,
            "description": "the answer: class ids (`mask`), colour mask or overlay; a multipart "
            "`format` field wins",
            "schema": {"type": "string", "enum": ["mask", "color", "overlay"], "default": "mask"},
        }
        op["parameters"] = [p for p in op.get("parameters", []) if p.get("name") != "format"]
        op["parameters"].append(param)


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or the component its local `$ref` names."""
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        return doc["components"]["schemas"].get(ref.rsplit("/", 1)[1], schema)
    return schema


def _is_file(schema: dict[str, Any]) -> bool:
    return schema.get("type") in ("string", "file") and (
        schema.get("format") == "binary" or "contentMediaType" in schema
    )


def _no_empty_files(schema: dict[str, Any], doc: dict[str, Any]) -> None:
    """Uploads take at least one byte: the routes refuse an empty body or part (400 `empty`)."""
    if _is_file(schema):
        schema.setdefault("minLength", 1)
    for prop in schema.get("properties", {}).values():
        prop = _resolve(doc, prop)
        for item in (prop, _resolve(doc, prop.get("items", {}))):
            if _is_file(item):
                item.setdefault("minLength", 1)


def _at_least_one(schema: dict[str, Any]) -> None:
    """Required array fields take at least one item: the routes refuse an empty list (422)."""
    for name in schema.get("required", []):
        prop = schema.get("properties", {}).get(name)
        if isinstance(prop, dict) and prop.get("type") == "array":
            prop.setdefault("minItems", 1)


class DocumentRoutes:
    """ASGI middleware: `GET /docs.json` answers BentoML's document rewritten by `describe`
    (made once per worker, on the first request)."""

    PATH = "/docs.json"

    def __init__(self, app: Any, api_key: Any) -> None:
        self.app, self.api_key = app, api_key  # api_key(): whether the service requires one
        self.body: bytes | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope.get("path") != self.PATH
            or scope.get("method") != "GET"
        ):
            await self.app(scope, receive, send)
            return
        if self.body is None:
            status, body = await _inner_get(self.app, scope, receive)
            if status != 200:
                await self.app(scope, receive, send)
                return
            try:
                spec = describe(json.loads(body), api_key=bool(self.api_key()))
            except Exception:  # answered, never left hanging; the next request tries again
                logger.exception("the API document could not be rewritten")
                detail = "the API document could not be built; the service logged why"
                await problem_response(500, "server_error", detail)(scope, receive, send)
                return
            self.body = json.dumps(spec).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(self.body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


async def _inner_get(app: Any, scope: dict, receive: Any) -> tuple[int, bytes]:
    """(status, body) of the inner app's answer to this GET, captured instead of sent."""
    status, chunks = 0, []

    async def capture(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return status, b"".join(chunks)
