"""HTTP hardening, the ASGI part: `GuardMiddleware` wraps the whole BentoML app: header budget
(431), API key (401), content encoding (415), body size (413), body read timeouts (408),
multipart part count (413), JSON bodies for every error, `X-Model-Version` and `X-Model-Backend`
on every response, and cancellation of a route whose client hung up. What sits below the app
(the connection's header timeout, parser errors, metric labels) is `roadseg.serve.httpconn`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from roadseg.serve.api import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    OPEN_PATHS,
    ServingState,
    StateSource,
    resolve_state,
)
from roadseg.serve.auth import read_api_key
from roadseg.serve.errors import PROBLEM_JSON, error_response, problem_response

logger = logging.getLogger(__name__)

MULTIPART_SPARE_PARTS = 16  # form fields beyond the images a request may carry
HTTP_STATUSES = {s.value for s in HTTPStatus}
# Codes of the error answers the guard replaces (BentoML's 503 is /readyz's "not ready").
PROBLEMS = {
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    503: "not_ready",
}
KEPT_HEADERS = (b"allow", b"retry-after", b"www-authenticate")
HELD_BODY_LIMIT = 4096  # of a replaced error body: enough for its message


def held_detail(status: int, body: bytes) -> str:
    """The message of an error body being replaced: its JSON `detail`/`error` text when it is a
    short string (BentoML's, FastAPI's), else the status phrase; pydantic error lists name
    their fields only (never echoing input)."""
    phrase = HTTPStatus(status).phrase if status in HTTP_STATUSES else "Error"
    try:
        data = json.loads(body)
    except ValueError:
        return phrase
    if not isinstance(data, dict):
        return phrase
    detail = data.get("detail")
    if isinstance(detail, list):
        fields = sorted(
            {".".join(str(p) for p in e.get("loc", ())) for e in detail if isinstance(e, dict)}
        )
        return (
            f"invalid or missing request field(s): {', '.join(fields)[:300]}" if fields else phrase
        )
    text = detail if isinstance(detail, str) else data.get("error")
    return text[:300] if isinstance(text, str) and text else phrase


class GuardMiddleware:
    """ASGI middleware: header budget (431), API key (401), body size (413) and body read
    timeouts (408), `X-Model-Version` on every response, and cancellation of the route when its
    client hangs up (so nothing is decoded or queued for nobody)."""

    def __init__(self, app: Any, state: StateSource) -> None:
        self.app = app
        self.state = state
        self.inflight = 0  # body bytes of the requests being served (declared, or the limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = resolve_state(self.state) or ServingState()
        exchange = Exchange(scope, receive, send, state.limits, identity_headers(state))
        refusal = _refusal(scope, state)
        weight = _body_weight(scope, state.limits)
        budget = state.limits.max_inflight_bytes
        if refusal is None and self.inflight and self.inflight + weight > budget:
            # Memory across requests: each is bounded alone, many big ones at once are not.
            detail = f"the service is busy with {self.inflight} bytes of requests; retry shortly"
            refusal = 429, "busy", detail
        if refusal is not None:
            await exchange.answer(*refusal)
            return
        self.inflight += weight
        try:
            await exchange.run(self.app)
        finally:
            self.inflight -= weight


def identity_headers(state: ServingState) -> list[tuple[bytes, bytes]]:
    """What answered, on every response: the model's version (`X-Model-Version`, as `/metadata`'s
    `model_version`) and the backend that ran it (`X-Model-Backend`: torch, onnxruntime or
    onnxruntime_int8, as `/metadata`'s `backend`; int8 answers other masks than the float
    model, so a client or a cache can tell them apart by the header alone)."""
    return [(b"x-model-version", state.version.encode()),
            (b"x-model-backend", state.backend.encode())]  # fmt: skip


def _body_weight(scope: dict, limits: Any) -> int:
    """What a request's body may hold: its Content-Length, else (chunked) the body limit."""
    raw = scope.get("headers", [])
    length = _header(raw, b"content-length").decode("latin-1").strip()
    if length.isdigit():
        return min(int(length), limits.max_request_bytes)
    chunked = b"chunked" in _header(raw, b"transfer-encoding").lower()
    return limits.max_request_bytes if chunked else 0


def _refusal(scope: dict, state: ServingState) -> tuple[int, str, str] | None:
    """(status, problem, detail) when the headers alone refuse the request, else None."""
    raw = scope.get("headers", [])
    path = scope.get("path", "")
    header_bytes = sum(len(k) + len(v) for k, v in raw)
    if len(raw) > MAX_HEADERS or header_bytes > MAX_HEADER_BYTES:
        detail = (
            f"{len(raw)} headers, {header_bytes} bytes: the limits are {MAX_HEADERS} headers "
            f"and {MAX_HEADER_BYTES} bytes"
        )
        return 431, "headers_too_large", detail
    if state.api_key and not (path in OPEN_PATHS or path.startswith("/ui")):
        given, problem = read_api_key(raw)
        # the header's own bytes (latin-1 is how they were decoded) against the key's UTF-8
        if given is None or not hmac.compare_digest(
            given.encode("latin-1"), state.api_key.encode("utf-8")
        ):
            return 401, "unauthorized", problem or "missing or wrong X-API-Key header"
    encoding = _header(raw, b"content-encoding").strip().lower()
    if encoding not in (b"", b"identity"):
        detail = "compressed request bodies are not accepted (send them without Content-Encoding)"
        return 415, "unsupported_content_encoding", detail
    limit = state.limits.max_request_bytes
    length = _header(raw, b"content-length").decode("latin-1")
    if length.isdigit() and int(length) > limit:
        return 413, "too_large", f"request body of {length} bytes exceeds the limit of {limit}"
    return None


def _header(raw: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    """The first value of header `name` (lower case), or b""."""
    return next((v for k, v in raw if k.lower() == name), b"")


class PartCounter:
    """Counts multipart boundaries as the body streams by, so a body of thousands of parts is
    refused before any parser (BentoML's typed routes answer starlette's own part limit as a
    500) walks them."""

    def __init__(self, scope: dict, limit: int) -> None:
        from python_multipart.multipart import parse_options_header

        # The boundary as starlette's parser will read it (`BOUNDARY=`, quotes, a repeated
        # parameter: the last wins), so a body cannot count under one and parse under another.
        kind, params = parse_options_header(_header(scope.get("headers", []), b"content-type"))
        boundary = params.get(b"boundary", b"") if kind.startswith(b"multipart/") else b""
        self.marker = b"--" + boundary if boundary else b""
        self.limit, self.count, self.tail = limit, 0, b""

    def add(self, chunk: bytes) -> bool:
        """Count the boundaries in `chunk`; True once the parts exceed the limit."""
        if len(self.marker) <= 2 or not chunk:
            return False
        data = self.tail + chunk
        self.count += data.count(self.marker)
        self.tail = data[-(len(self.marker) - 1) :]  # too short to hold a whole marker
        return self.count - 1 > self.limit  # the closing delimiter is not a part


class Exchange:
    """One HTTP request seen by the guard.

    `receive` bounds the body: its size (`max_request_bytes`, chunked bodies included), the wait
    for each chunk (`body_timeout_seconds`: a lying Content-Length) and its total time
    (`max_body_seconds`: a trickle). On a breach the guard answers itself (`Connection: close`)
    and tells the route the client is gone; whatever the route sends afterwards is dropped.
    Once the body is in, a watcher waits for `http.disconnect` and cancels the route if its
    client hangs up before the answer is complete.
    """

    def __init__(
        self, scope: dict, receive: Any, send: Any, limits: Any, identity: list[tuple[bytes, bytes]]
    ) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self.limits, self.identity = limits, identity
        self.started = self.answered = self.body_done = False
        self.hung_up = False
        self.seen = 0
        self.deadline = asyncio.get_running_loop().time() + limits.max_body_seconds
        self.route: asyncio.Task | None = None
        self.watcher: asyncio.Task | None = None
        self.held_status = 0  # an error answer without the problem body, being replaced
        self.held_headers: dict[str, str] = {}
        self.held_body = b""
        self.parts = PartCounter(scope, limits.max_zip_entries + MULTIPART_SPARE_PARTS)

    async def send(self, message: dict) -> None:
        if self.answered:
            return  # the guard already answered this request
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers", []))
            ctype = headers.get(b"content-type", b"")
            if message["status"] >= 400 and not ctype.startswith(PROBLEM_JSON.encode()):
                # e.g. the router's text/plain 404/405, BentoML's own JSON errors: replaced by
                # the problem body, keeping the headers that tell the client what to do next.
                self.held_status = message["status"]
                self.held_headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                                     for k, v in headers.items() if k.lower() in KEPT_HEADERS}  # fmt: skip
                self.held_body = b""
                return
            message["headers"] = [*message.get("headers", []), *self.identity]
        elif self.held_status:
            if len(self.held_body) < HELD_BODY_LIMIT:
                self.held_body += message.get("body", b"")[:HELD_BODY_LIMIT]
            if not message.get("more_body", False):
                status, self.held_status = self.held_status, 0
                problem = PROBLEMS.get(status, "bad_request" if status < 500 else "server_error")
                self.started = False
                await self.answer(status, problem, held_detail(status, self.held_body),
                                  self.held_headers)  # fmt: skip
            return
        await self._send(message)

    async def answer(
        self, status: int, problem: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        """The guard's own problem answer (only if the route has not started one)."""
        if not self.started and not self.answered:
            headers = dict(headers or {})
            if status in (408, 413, 429):  # the body is left unread: the connection is done
                headers["connection"] = "close"
            if status == 429:
                headers["retry-after"] = "1"
            if status == 401:  # RFC 9110: a 401 names the scheme it wants
                headers.setdefault("www-authenticate", 'Bearer realm="roadseg"')
            await problem_response(status, problem, detail, headers)(
                self.scope, self._receive, self.send
            )
        self.answered = True

    async def receive(self) -> dict:
        if self.body_done or self.answered:
            return await self._receive()  # a route listening for http.disconnect: no timeout
        loop = asyncio.get_running_loop()
        wait = min(self.limits.body_timeout_seconds, self.deadline - loop.time())
        try:
            message = await asyncio.wait_for(self._receive(), max(wait, 0.0))
        except TimeoutError:
            total = self.deadline - loop.time() <= 0
            detail = (
                f"request body not complete within {self.limits.max_body_seconds:g} s"
                if total
                else f"no request body data for {self.limits.body_timeout_seconds:g} s"
            )
            await self.answer(408, "body_timeout", detail)
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limits.max_request_bytes:  # chunked uploads carry no length
                limit = self.limits.max_request_bytes
                await self.answer(413, "too_large", f"request body exceeds {limit} bytes")
                return {"type": "http.disconnect"}
            if self.parts.add(message.get("body", b"")):
                detail = f"multipart body holds more than {self.parts.limit} parts"
                await self.answer(413, "too_many_parts", detail)
                return {"type": "http.disconnect"}
            if not message.get("more_body", False):
                self.body_done = True
                self.watcher = asyncio.ensure_future(self._watch())
        return message

    async def _watch(self) -> None:
        message = await self._receive()
        # Only before the answer starts: a streamed answer's work is done, and cancelling it
        # would skip its clean-up (the video route's temporary files).
        if message["type"] == "http.disconnect" and not self.started and self.route is not None:
            self.hung_up = True
            self.route.cancel()

    async def run(self, app: Any) -> None:
        self.route = asyncio.ensure_future(app(self.scope, self.receive, self.send))
        try:
            await self.route
        except asyncio.CancelledError:
            if not self.hung_up:
                raise  # cancelled from outside (shutdown): not ours to swallow
            logger.info("%s: the client hung up; its work was cancelled", self.scope.get("path"))
        except HTTPException as e:
            await error_response(e)(self.scope, self._receive, self.send)
        except ClientDisconnect:  # gone mid-body (or cut off below the app): nobody to answer
            logger.info("%s: the client left before its body was read", self.scope.get("path"))
        except Exception:
            # A real error. Answered here: BentoML's TimeoutMiddleware above would hold the
            # client until its timeout and then close without any answer.
            if self.started and not self.answered:
                raise  # mid-answer: nothing left to say but the broken connection
            if not self.answered:
                logger.exception("%s: unexpected error", self.scope.get("path"))
                await self.answer(500, "server_error", "unexpected error; the service logged it")
        finally:
            if self.watcher is not None:
                self.watcher.cancel()
