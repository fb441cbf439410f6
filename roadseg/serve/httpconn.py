"""What sits below the ASGI app, where BentoML 1.4 offers no setting: the HTTP connection and
the Prometheus labels (`roadseg.serve.httpguard` is the ASGI middleware above them).

`bentoml serve` runs each worker as `uvicorn.Server(uvicorn.Config(app, timeout_keep_alive=...))`
(`_bentoml_impl/worker/service.py`) with no way to pass a protocol or a header timeout, and
uvicorn has none: its keep-alive timer only runs between requests, so a client that connects
and trickles a header (slowloris) holds the connection until BentoML's 300 s traffic timeout, and
httptools buffers headers without a size limit. An app cannot help: it is called only once the
headers are complete. So `install_http_guards` registers `GuardedHTTPProtocol` (uvicorn's own
protocol class plus a header timer, a pending-header byte cap and a JSON answer to requests the
HTTP parser rejects) as uvicorn's "auto" protocol; the worker imports the service module before
it builds its `uvicorn.Config`, so the service installs it there
(`roadseg.serve.protocols.install_protocol_hooks`).

BentoML's traffic metrics label requests by the raw `scope["path"]`, so requests to random
paths (even unauthenticated ones: the metrics middleware runs before ours) would create label
values without bound. `RouteLabelledMetrics` replaces the metrics middleware class BentoML
builds its app with; it labels by route (unknown paths share one label) and passes the real
path on to routing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

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
        "/model-card",
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
# Body pieces per request: each chunk of a chunked body costs a parser callback (~0.5 us), so
# 1-byte chunks made a 50 MB body ~50 M callbacks (~30 s of CPU). Honest clients send 4-64 kB.
MAX_BODY_CHUNKS = 100_000
DEFAULT_SEND_TIMEOUT = 30.0
SEND_TICK = 0.5  # how often a stalled answer is checked
DEFAULT_HEADER_TIMEOUT = 10.0
_RAW_PATH_KEY = "roadseg.raw_path"


def route_label(path: str) -> str:
    """The metrics label of a request path: the route, a mount prefix, or UNKNOWN_ROUTE."""
    if path in KNOWN_ROUTES:
        return path
    for prefix in KNOWN_PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return prefix
    return UNKNOWN_ROUTE


def raw_http_error(status: int, reason: str, problem: str, detail: str) -> bytes:
    """A complete `Connection: close` HTTP/1.1 answer with the problem body, for the protocol
    layer."""
    from roadseg.serve.errors import PROBLEM_JSON, problem_body

    body = json.dumps(problem_body(status, problem, detail)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: {PROBLEM_JSON}\r\n"
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
    # Where the limits are: the service's live state (bound by install_http_guards).
    state_source: Callable[[], Any] = staticmethod(lambda: None)

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._pending_bytes = 0
        self._header_timer = None
        self._answered = False  # a response was sent on this connection
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        if getattr(self, "_send_timer", None) is not None:
            self._send_timer.cancel()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._pending_bytes = 0
        self._answered = True
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers get the same bound

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._body_chunks = 0

    def on_body(self, body: bytes) -> None:
        """httptools calls this once per body chunk (or read): bound how many a request has."""
        self._body_chunks = getattr(self, "_body_chunks", 0) + 1
        if self._body_chunks > MAX_BODY_CHUNKS:
            if not self.transport.is_closing():
                detail = f"request body in more than {MAX_BODY_CHUNKS} chunks"
                self._refuse(413, "Content Too Large", "too_many_chunks", detail)
            return
        super().on_body(body)

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
        limits = getattr(self.state_source(), "limits", None)
        timeout = getattr(limits, "header_timeout_seconds", DEFAULT_HEADER_TIMEOUT)
        self._header_timer = self.loop.call_later(timeout, self._header_timeout, timeout)

    def _header_timeout(self, timeout: float) -> None:
        self._header_timer = None
        if self._awaiting_headers() and not self.transport.is_closing():
            if self._answered and self._pending_bytes == 0:
                # An idle keep-alive connection, not a request: close it without a word. A 408
                # there races with the client's next request on the pooled connection, which
                # would then read the 408 as its answer.
                self.transport.close()
                return
            self._refuse(
                408,
                "Request Timeout",
                "header_timeout",
                f"request headers not complete within {timeout:g} s",
            )

    def pause_writing(self) -> None:
        """The transport's buffer passed its high-water mark: watch that the client drains it."""
        super().pause_writing()
        self._watch_send(self.transport.get_write_buffer_size(), 0.0)

    def resume_writing(self) -> None:
        super().resume_writing()
        if getattr(self, "_send_timer", None) is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _watch_send(self, last: int, stalled: float) -> None:
        """Abort a connection whose client has read nothing of the answer for
        `send_timeout_seconds`: uvicorn has no send timeout, so a client that stops reading held
        the connection, and the answer's bytes in the write buffer, for ever. A slow reader
        that makes progress is never cut off."""
        self._send_timer = None
        size = self.transport.get_write_buffer_size()
        if size == 0:  # a closing transport still holds its unsent bytes: keep watching
            return
        stalled = stalled + SEND_TICK if size >= last else 0.0
        limits = getattr(self.state_source(), "limits", None)
        timeout = getattr(limits, "send_timeout_seconds", DEFAULT_SEND_TIMEOUT)
        if stalled >= timeout:
            logger.info("aborting a connection: %d bytes unread for %g s", size, stalled)
            self.transport.abort()
            return
        self._send_timer = self.loop.call_later(SEND_TICK, self._watch_send, size, stalled)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its HTTP parser rejects (a bad request line or header,
        Content-Length with Transfer-Encoding, a bad chunk size, an over-long URL): JSON, like
        every other refusal, instead of uvicorn's text/plain."""
        self._refuse(
            400,
            "Bad Request",
            "bad_http_request",
            "malformed HTTP request (request line, header, Content-Length or chunked framing)",
        )

    def _refuse(self, status: int, reason: str, problem: str, detail: str) -> None:
        logger.info("closing a connection: %s", detail)
        self.transport.write(raw_http_error(status, reason, problem, detail))
        self.transport.close()


def _guarded_protocol(state_source: Callable[[], Any]) -> type:
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    bound = {"state_source": staticmethod(state_source)}
    return type("GuardedHTTPProtocol", (HeaderGuard, AutoHTTPProtocol), bound)


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
    metrics middleware in BentoML (idempotent; call before the app and the server are built).
    `state_source()` gives the service's live state (None before it exists)."""
    import uvicorn.config
    from bentoml._internal.server.http import instruments

    if not isinstance(uvicorn.config.HTTP_PROTOCOLS["auto"], type):
        uvicorn.config.HTTP_PROTOCOLS["auto"] = _guarded_protocol(state_source)
    for name in ("HTTPTrafficMetricsMiddleware", "RunnerTrafficMetricsMiddleware"):
        base = getattr(instruments, name)
        if base.__name__ != "RouteLabelledMetrics":
            setattr(instruments, name, _route_labelled(base))
