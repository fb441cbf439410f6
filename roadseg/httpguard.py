"""HTTP hardening: the guard middleware, and what sits below the ASGI app, where BentoML 1.4
offers no setting (the HTTP connection and the Prometheus labels).

`GuardMiddleware` wraps the whole BentoML app: header budget (431), API key (401), body size
(413), body read timeouts (408), multipart part count (413), JSON bodies for every error,
`X-Model-Version` on every response, and cancellation of a route whose client hung up.

`bentoml serve` runs each worker as `uvicorn.Server(uvicorn.Config(app, timeout_keep_alive=...))`
(`_bentoml_impl/worker/service.py`) with no way to pass a protocol or a header timeout, and
uvicorn has none: its keep-alive timer only runs between requests, so a client that connects
and trickles a header (slowloris) holds the connection until BentoML's 300 s traffic timeout, and
httptools buffers headers without a size limit. An app cannot help: it is called only once the
headers are complete. So `install_http_guards` registers `GuardedHTTPProtocol` (uvicorn's own
protocol class plus a header timer and a pending-header byte cap) as uvicorn's "auto" protocol;
the worker imports the service module before it builds its `uvicorn.Config`, so the service
calls it at import.

BentoML's traffic metrics label requests by the raw `scope["path"]`, so requests to random
paths (even unauthenticated ones: the metrics middleware runs before ours) would create label
values without bound. `RouteLabelledMetrics` replaces the metrics middleware class BentoML
builds its app with; it labels by route (unknown paths share one label) and passes the real
path on to routing.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from roadseg.api import (
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    OPEN_PATHS,
    ServingState,
    StateSource,
    _api_key,
    _resolve,
    error_response,
    json_error,
)

logger = logging.getLogger(__name__)

# Every route the service answers (typed API, legacy app, BentoML's system routes); a path
# outside them is labelled UNKNOWN_ROUTE. tests/unit/test_hostile_http.py checks the list
# against the apps' routes.
KNOWN_ROUTES = frozenset(
    {
        "/",
        "/segment",
        "/segment/json",
        "/predict/returns-json/",
        "/predict-image/returns-zip/",
        "/predict-video/returns-zip/",
        "/upload",
        "/health",
        "/classes",
        "/metadata",
        "/stream",
        "/healthz",
        "/livez",
        "/readyz",
        "/metrics",
        "/docs",
        "/docs.json",
        "/schema.json",
    }
)
KNOWN_PREFIXES = ("/ui", "/static_content")
UNKNOWN_ROUTE = "/{unknown}"
MAX_PENDING_HEADER_BYTES = 64 * 1024  # the app answers 431 past 16 kB; this only caps memory
DEFAULT_HEADER_TIMEOUT = 10.0
_RAW_PATH_KEY = "roadseg.raw_path"
MULTIPART_SPARE_PARTS = 16  # form fields beyond the images a request may carry
HTTP_STATUSES = {s.value for s in HTTPStatus}
PROBLEMS = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
# Where the protocol finds the limits (set by install_http_guards): the service's live state.
_limits_source: Callable[[], Any] = lambda: None  # noqa: E731


class GuardMiddleware:
    """ASGI middleware: header budget (431), API key (401), body size (413) and body read
    timeouts (408), `X-Model-Version` on every response, and cancellation of the route when its
    client hangs up (so nothing is decoded or queued for nobody)."""

    def __init__(self, app: Any, state: StateSource) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = _resolve(self.state) or ServingState()
        exchange = Exchange(scope, receive, send, state.limits, state.version.encode())
        refusal = _refusal(scope, state)
        if refusal is not None:
            await exchange.answer(*refusal)
            return
        await exchange.run(self.app)


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
        given, problem = _api_key(raw)
        if given is None or not hmac.compare_digest(given.encode(), state.api_key.encode()):
            return 401, "unauthorized", problem or "missing or wrong X-API-Key header"
    limit = state.limits.max_request_bytes
    length = next((v.decode("latin-1") for k, v in raw if k.lower() == b"content-length"), None)
    if length is not None and length.isdigit() and int(length) > limit:
        return 413, "too_large", f"request body of {length} bytes exceeds the limit of {limit}"
    return None


class PartCounter:
    """Counts multipart boundaries as the body streams by, so a body of thousands of parts is
    refused before any parser (BentoML's typed routes answer starlette's own part limit as a
    500) walks them."""

    def __init__(self, scope: dict, limit: int) -> None:
        ctype = next((v for k, v in scope.get("headers", []) if k.lower() == b"content-type"), b"")
        boundary = ctype.partition(b"boundary=")[2].split(b";")[0].strip().strip(b'"')
        self.marker = b"--" + boundary if ctype.lower().startswith(b"multipart/") else b""
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

    def __init__(self, scope: dict, receive: Any, send: Any, limits: Any, version: bytes) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self.limits, self.version = limits, version
        self.started = self.answered = self.body_done = False
        self.hung_up = False
        self.seen = 0
        self.deadline = asyncio.get_running_loop().time() + limits.max_body_seconds
        self.route: asyncio.Task | None = None
        self.watcher: asyncio.Task | None = None
        self.held_status = 0  # a non-JSON error answer being replaced by a JSON one
        self.parts = PartCounter(scope, limits.max_zip_entries + MULTIPART_SPARE_PARTS)

    async def send(self, message: dict) -> None:
        if self.answered:
            return  # the guard already answered this request
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers", []))
            ctype = headers.get(b"content-type", b"")
            if message["status"] >= 400 and not ctype.startswith(b"application/json"):
                self.held_status = message["status"]  # e.g. the router's text/plain 404/405
                return
            message["headers"] = [*message.get("headers", []), (b"x-model-version", self.version)]
        elif self.held_status:
            if not message.get("more_body", False):
                status, self.held_status = self.held_status, 0
                phrase = HTTPStatus(status).phrase if status in HTTP_STATUSES else "Error"
                problem = PROBLEMS.get(status, "bad_request" if status < 500 else "server_error")
                self.started = False
                await self.answer(status, problem, phrase)
            return
        await self._send(message)

    async def answer(self, status: int, problem: str, detail: str) -> None:
        """The guard's own JSON answer (only if the route has not started one)."""
        if not self.started and not self.answered:
            headers = {"connection": "close"} if status in (408, 413) else None
            await JSONResponse(json_error(status, problem, detail), status, headers=headers)(
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
        except Exception:
            if not self.answered:
                raise  # a real error: BentoML's handlers answer it
        finally:
            if self.watcher is not None:
                self.watcher.cancel()


def route_label(path: str) -> str:
    """The metrics label of a request path: the route, a mount prefix, or UNKNOWN_ROUTE."""
    if path in KNOWN_ROUTES:
        return path
    for prefix in KNOWN_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return prefix
    return UNKNOWN_ROUTE


def raw_http_error(status: int, reason: str, problem: str, detail: str) -> bytes:
    """A complete `Connection: close` HTTP/1.1 answer with a JSON body, for the protocol layer."""
    body = json.dumps({"error": problem, "detail": detail, "status": status}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class HeaderGuard:
    """Mixin for uvicorn's HTTP protocols: a request's headers must be complete within
    `header_timeout_seconds` of the connection opening (or of the previous response), and at most
    MAX_PENDING_HEADER_BYTES may wait for them; otherwise answer 408/431 and close."""

    transport: Any
    loop: Any
    cycle: Any

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._pending_bytes = 0
        self._header_timer = None
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._pending_bytes = 0
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers get the same bound

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._awaiting_headers() and not self.transport.is_closing():
            self._pending_bytes += len(data)
            if self._pending_bytes > MAX_PENDING_HEADER_BYTES:
                self._refuse(
                    431,
                    "Request Header Fields Too Large",
                    "headers_too_large",
                    f"more than {MAX_PENDING_HEADER_BYTES} bytes of headers",
                )
        else:
            self._pending_bytes = 0

    def _awaiting_headers(self) -> bool:
        if self.transport.get_protocol() is not self:  # upgraded to a WebSocket: not ours now
            return False
        cycle = getattr(self, "cycle", None)
        return cycle is None or cycle.response_complete

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        limits = getattr(_limits_source(), "limits", None)
        timeout = getattr(limits, "header_timeout_seconds", DEFAULT_HEADER_TIMEOUT)
        self._header_timer = self.loop.call_later(timeout, self._header_timeout, timeout)

    def _header_timeout(self, timeout: float) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self._refuse(
                408,
                "Request Timeout",
                "header_timeout",
                f"request headers not complete within {timeout:g} s",
            )

    def _refuse(self, status: int, reason: str, problem: str, detail: str) -> None:
        logger.info("closing a connection: %s", detail)
        self.transport.write(raw_http_error(status, reason, problem, detail))
        self.transport.close()


def _guarded_protocol() -> type:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type("GuardedHTTPProtocol", (HeaderGuard, AutoHTTPProtocol), {})


def _route_labelled(base: type) -> type:
    class RouteLabelledMetrics(base):
        """BentoML's traffic metrics, labelled by route instead of the raw path."""

        def __init__(self, app: Any, **kwargs: Any) -> None:
            super().__init__(_restore_path(app), **kwargs)

        async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] in ("http", "websocket"):
                label = route_label(scope.get("path", ""))
                if label != scope.get("path"):
                    scope = {**scope, "path": label, _RAW_PATH_KEY: scope.get("path", "")}
            await super().__call__(scope, receive, send)

    return RouteLabelledMetrics


def _restore_path(app: Any) -> Any:
    async def restore(scope: dict, receive: Any, send: Any) -> None:
        raw = scope.get(_RAW_PATH_KEY)
        if raw is not None:
            scope = {k: v for k, v in scope.items() if k != _RAW_PATH_KEY}
            scope["path"] = raw
        await app(scope, receive, send)

    return restore


def install_http_guards(state_source: Callable[[], Any]) -> None:
    """Register the guarded protocol as uvicorn's "auto" HTTP protocol and the route-labelled
    metrics middleware in BentoML (idempotent; call before the app and the server are built)."""
    global _limits_source
    import uvicorn.config
    from bentoml._internal.server.http import instruments

    _limits_source = state_source
    if not isinstance(uvicorn.config.HTTP_PROTOCOLS["auto"], type):
        uvicorn.config.HTTP_PROTOCOLS["auto"] = _guarded_protocol()
    for name in ("HTTPTrafficMetricsMiddleware", "RunnerTrafficMetricsMiddleware"):
        base = getattr(instruments, name)
        if base.__name__ != "RouteLabelledMetrics":
            setattr(instruments, name, _route_labelled(base))
