"""WebSocket hardening below the app: uvicorn's WebSocket protocol, where BentoML 1.4 offers no
setting (`bentoml serve` builds `uvicorn.Config` itself, with uvicorn's WebSocket defaults).

uvicorn 0.5x runs WebSockets on `websockets`' sans-I/O protocol (`WebSocketsSansIOProtocol`, the
"auto" choice when `websockets` is installed). With the defaults BentoML leaves it:

- it negotiates permessage-deflate: a 20 kB message inflates to 16 MiB (`websockets` does bound
  the *decompressed* size by `ws_max_size`, but every such message still costs 16 MiB of
  inflating and copying, and our frames are JPEG/PNG, which do not deflate: compression only
  costs CPU on both ends). `GuardedWebSocketsProtocol` negotiates no extension at all.
- its message size limit is 16 MiB whatever `stream.max_frame_bytes` says; here it is
  `stream.max_frame_bytes` (the close code is the same 1009, from the frame header, before the
  payload is read).
- a message may come in any number of continuation frames; uvicorn keeps each one in a list, so
  empty fragments grow memory and burn CPU without growing the message size `websockets` checks.
  Here a message has at most MAX_FRAGMENTS fragments (else close 1009).
- every ping is answered at once, even while the client reads nothing: a ping flood from a client
  that never reads grows the server's send buffer without bound. Here pings beyond PING_RATE per
  second (burst PING_BURST) close with 1008, and no pong is queued while the send buffer is full.
- a text message that is not UTF-8 is logged with a traceback; here it is one log line (1007).
- on shutdown (SIGTERM) it closes open streams with 1012 (service restart); here with 1001 (going
  away: this server is stopping, the client reconnects to another replica).
- closing a connection whose peer reads nothing (or vanished) waits for the send buffer to drain,
  i.e. forever: here the transport is aborted ABORT_AFTER seconds after the app ended or the
  keepalive ping went unanswered, so a half-open or never-reading client cannot hold a socket
  (and the app, blocked on a send) indefinitely.

`install_ws_guard` registers the class as uvicorn's "auto" WebSocket protocol; the service module
calls it at import (`roadseg.serve.protocols.install_protocol_hooks`), before the worker builds its
`uvicorn.Config`, as it does for HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

MAX_FRAGMENTS = 1024  # continuation frames of one message
PING_RATE, PING_BURST = 10.0, 50  # pings per second a client may send, and its burst
ABORT_AFTER = 15.0  # seconds a closing connection may take to drain before it is aborted


class WebSocketGuard:
    """uvicorn's sans-I/O WebSocket protocol without compression, with the stream's size
    limit, a fragment cap, a ping budget and a bounded close (module docstring)."""

    # uvicorn's WebSocketsSansIOProtocol attributes this mixin uses
    config: Any
    conn: Any
    loop: Any
    transport: Any
    queue: Any
    writable: Any
    frames: list
    curr_msg_data_type: str
    close_sent: bool
    close_timer: Any
    disconnected: bool
    read_paused: bool
    handshake_complete: bool
    initial_response: Any
    # The message size limit, read per connection (bound by install_ws_guard).
    max_size_source: Callable[[], int | None] = staticmethod(lambda: None)

    def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None):
        from websockets.server import ServerProtocol

        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]
        max_size = self.max_size_source() or self.config.ws_max_size
        self.conn = ServerProtocol(extensions=[], max_size=max_size, logger=self.conn.logger)
        self.fragments = 0
        self.ping_tokens, self.ping_at = float(PING_BURST), self.loop.time()
        self.abort_timer: Any = None

    def handle_text(self, event: Any) -> None:
        self.fragments = 1
        super().handle_text(event)

    def handle_bytes(self, event: Any) -> None:
        self.fragments = 1
        super().handle_bytes(event)

    def handle_cont(self, event: Any) -> None:
        self.fragments += 1
        if self.fragments > MAX_FRAGMENTS:
            self.frames = []
            self.refuse(1009, f"a message in more than {MAX_FRAGMENTS} fragments")
            return
        super().handle_cont(event)

    def handle_ping(self) -> None:
        now = self.loop.time()
        self.ping_tokens = min(PING_BURST, self.ping_tokens + (now - self.ping_at) * PING_RATE)
        self.ping_at = now
        self.ping_tokens -= 1
        if self.ping_tokens < 0:
            self.refuse(1008, f"more than {PING_RATE:g} pings per second")
        elif not self.writable.is_set():  # the client reads nothing: queue no pong
            self.conn.data_to_send()
        else:
            super().handle_ping()

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError:
                self.frames = []
                self.refuse(1007, "a text message that is not UTF-8")
                return
        super().send_receive_event_to_app()

    def refuse(self, code: int, reason: str) -> None:
        """Fail the connection with `code` (one log line), as the parser does on errors."""
        if self.close_sent or self.transport.is_closing():
            return
        logger.info("closing a WebSocket (%d): %s", code, reason)
        self.conn.fail(code, reason)
        self.handle_parser_exception()

    def handle_parser_exception(self) -> None:
        """As uvicorn's (tell the app, send the close frame), but half-close and keep
        reading (`websockets` discards it) until the client closes or ABORT_AFTER: closing
        at once while the client still sends resets the connection, and the client never
        reads its close code (1009 for an oversize frame)."""
        if self.close_sent:  # called again on every read once the parser failed
            self.conn.data_to_send()
            return
        sent = self.conn.close_sent
        code, reason = (sent.code, sent.reason) if sent is not None else (1006, "")
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()
        if self.close_timer is None:  # uvicorn closes at once when the app ends unless set
            self.close_timer = self.loop.call_later(ABORT_AFTER, self.abort)

    def shutdown(self) -> None:
        """The server is stopping: an open stream is closed with 1001 (going away) and the app
        told so; anything else as uvicorn does."""
        if self.close_sent or not self.handshake_complete:
            super().shutdown()
            return
        self.stop_keepalive()  # type: ignore[attr-defined]
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1001})
        self.conn.send_close(1001, "server shutting down")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()  # sends 1011 but does not tell the app
        self.queue.put_nowait({"type": "websocket.disconnect", "code": 1011})
        self.abort_later()

    async def send(self, message: Any) -> None:
        """As uvicorn's, but a send once the connection is closing (keepalive timeout,
        a refused frame) is a disconnect for the app, not a RuntimeError."""
        await self.writable.wait()
        closing = self.close_sent and self.handshake_complete and not self.initial_response
        if closing and message["type"] in ("websocket.send", "websocket.close"):
            from uvicorn.protocols.utils import ClientDisconnected

            raise ClientDisconnected()
        await super().send(message)

    def on_task_complete(self, task: Any) -> None:
        super().on_task_complete(task)
        self.abort_later()

    def abort_later(self) -> None:
        if self.abort_timer is None and not self.disconnected:
            self.abort_timer = self.loop.call_later(ABORT_AFTER, self.abort)

    def abort(self) -> None:
        self.abort_timer = None
        if not self.disconnected:
            logger.info("aborting a WebSocket whose peer did not read its close")
            sock = self.transport.get_extra_info("socket")
            with contextlib.suppress(OSError, AttributeError):  # reset: drop unsent data too
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.abort_timer is not None:
            self.abort_timer.cancel()
            self.abort_timer = None
        super().connection_lost(exc)


def _guarded_protocol(max_size_source: Callable[[], int | None]) -> type:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    bound = {"max_size_source": staticmethod(max_size_source)}
    return type("GuardedWebSocketsProtocol", (WebSocketGuard, WebSocketsSansIOProtocol), bound)


def install_ws_guard(max_size_source: Callable[[], int | None]) -> None:
    """Register the guarded protocol as uvicorn's "auto" WebSocket protocol (idempotent; call
    before the server is built). `max_size_source()` gives the message size limit in bytes."""
    import uvicorn.config

    if not isinstance(uvicorn.config.WS_PROTOCOLS["auto"], type):
        uvicorn.config.WS_PROTOCOLS["auto"] = _guarded_protocol(max_size_source)
