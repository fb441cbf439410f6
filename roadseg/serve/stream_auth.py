"""The API key of a `GET /stream` WebSocket (roadseg/serve/stream.py): once, as the subprotocol
`roadseg.key.<key>`, an `X-API-Key`/`Authorization: Bearer` header, or a first text message
`{"api_key": ...}`; never from the URL, never logged, compared in constant time."""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from roadseg.serve.api import ServingState
from roadseg.serve.auth import read_api_key

KEY_PREFIX = "roadseg.key."
POLICY, TRY_LATER = 1008, 1013
MAX_KEY_MESSAGE = 4096  # bytes of a first {"api_key": ...} message


class StreamClosed(Exception):
    """End the session with a WebSocket close code and a reason (never holding the key)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


async def authenticate(websocket: WebSocket, state: ServingState, limits: Any, live: dict) -> None:
    """Check the API key when one is configured (compared in constant time, never logged). It
    comes once: as a subprotocol, a header, or a first text message; never from the URL."""
    if not state.api_key:
        return
    offered = websocket.scope.get("subprotocols") or []
    keys = [p[len(KEY_PREFIX) :] for p in offered if p.startswith(KEY_PREFIX)]
    headers = websocket.scope.get("headers", [])
    header_key, problem = read_api_key(headers)
    if header_key is not None:
        keys.append(header_key)
    elif any(k.lower() in (b"x-api-key", b"authorization") for k, _ in headers):
        raise StreamClosed(POLICY, problem or "bad API key header")
    if len(keys) > 1:
        raise StreamClosed(POLICY, "send the API key once (one subprotocol or one header)")
    if not keys:  # browsers cannot set headers: the first message may carry the key
        keys.append(await _first_message_key(websocket, limits, live))
    given = keys[0].encode("utf-8", "surrogatepass")
    if not hmac.compare_digest(given, state.api_key.encode("utf-8", "surrogatepass")):
        raise StreamClosed(POLICY, "wrong API key")


async def _first_message_key(websocket: WebSocket, limits: Any, live: dict) -> str:
    """The key of a first `{"api_key": ...}` message, within `auth_timeout_seconds`. At most
    `max_connections` connections wait for theirs, apart from the streams' own count."""
    if live["unauthenticated"] >= limits.max_connections:
        raise StreamClosed(TRY_LATER, "too many connections waiting for their key, try later")
    live["unauthenticated"] += 1
    try:
        message = await asyncio.wait_for(websocket.receive(), limits.auth_timeout_seconds)
    except TimeoutError:
        raise StreamClosed(POLICY, "no API key received") from None
    finally:
        live["unauthenticated"] -= 1
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    return _key_message(message.get("text"))


def _key_message(text: str | None) -> str:
    if text is None:
        raise StreamClosed(POLICY, "missing API key (subprotocol or first text message)")
    key = None
    if len(text) <= MAX_KEY_MESSAGE:
        try:
            body = json.loads(text)
        except (ValueError, RecursionError):  # bad JSON, 100k-deep nesting, 5000-digit numbers
            body = None
        key = body.get("api_key") if isinstance(body, dict) else None
    if not isinstance(key, str):
        raise StreamClosed(POLICY, 'first message must be {"api_key": "..."}')
    return key
