"""The MLflow webhook receiver of `roadseg follow --listen`: signature, timestamp, event.

`webhook_app(follower, secret)` answers `POST /webhook` (MLflow's deliveries) and `GET /healthz`.
A delivery is acted on after checking its HMAC-SHA256 signature (`X-MLflow-Signature:
v1,<base64>` over `<delivery id>.<timestamp>.<body>`, the secret given to
`MlflowClient.create_webhook`) and that its timestamp is within `tolerance_s` of now (a captured
request cannot be replayed later). A refused request changes nothing and answers 401 with a
problem+json body. A verified `model_version_alias.created` for the followed model and alias
only asks the `Follower` (roadseg/release/follow.py) for a sync: the event's version is not
trusted as "the champion now", the sync reads the alias from the registry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roadseg.release.follow import Follower

log = logging.getLogger(__name__)

# What MLflow's webhook delivery sends (mlflow/webhooks/constants.py and delivery.py).
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_CREATED = ("model_version_alias", "created")
MAX_BODY_BYTES = 64 * 1024  # an alias event is ~200 bytes


class WebhookRefused(Exception):
    """A request the receiver does not act on: `status` and a problem code say why."""

    def __init__(self, status: int, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.problem = status, problem


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The `X-MLflow-Signature` value MLflow sends for this delivery: `v1,<base64 HMAC-SHA256>`
    of `<delivery id>.<timestamp>.<body>`."""
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, body: bytes, *, delivery_id: str, timestamp: float) -> dict:
    """The headers MLflow's delivery sets (for tests and the loop demonstration)."""
    ts = str(int(timestamp))
    return {"Content-Type": "application/json", DELIVERY_HEADER: delivery_id, TIMESTAMP_HEADER: ts,
            SIGNATURE_HEADER: signature(secret, delivery_id, ts, body)}  # fmt: skip


def verify_delivery(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float, tolerance_s: float
) -> str:
    """Check a delivery's signature and timestamp; its delivery id, or `WebhookRefused` (401).

    The timestamp is signed with the body, so a captured request replayed after `tolerance_s`
    fails here; within it, the receiver drops a delivery id it has already seen."""
    delivery = headers.get(DELIVERY_HEADER, "")
    stamp = headers.get(TIMESTAMP_HEADER, "")
    sent = headers.get(SIGNATURE_HEADER, "")
    if not (delivery and stamp and sent):
        missing = [h for h, v in ((DELIVERY_HEADER, delivery), (TIMESTAMP_HEADER, stamp),
                                  (SIGNATURE_HEADER, sent)) if not v]  # fmt: skip
        raise WebhookRefused(401, "unauthorized", f"unsigned delivery: no {', '.join(missing)}")
    expected = signature(secret, delivery, stamp, body).encode()
    # Standard Webhooks allow several space-separated signatures (secret rotation).
    if not any(hmac.compare_digest(expected, s.encode()) for s in sent.split()):
        raise WebhookRefused(401, "bad_signature", "the signature does not match the body")
    try:
        age = now - int(stamp)
    except ValueError:
        raise WebhookRefused(401, "bad_timestamp", f"{TIMESTAMP_HEADER} {stamp!r} is not unix "
                                                   "seconds") from None  # fmt: skip
    if abs(age) > tolerance_s:
        raise WebhookRefused(401, "stale_timestamp", f"delivery timestamp is {age:.0f} s from "
                             f"now, beyond the tolerance of {tolerance_s:g} s")  # fmt: skip
    return delivery


@dataclass(frozen=True)
class AliasEvent:
    entity: str
    action: str
    name: str
    alias: str
    version: str


def parse_event(body: bytes) -> AliasEvent:
    """MLflow's delivery body: `{"entity", "action", "timestamp", "data": {...}}`."""
    try:
        doc = json.loads(body)
        data = doc.get("data") or {}
        return AliasEvent(str(doc["entity"]), str(doc["action"]), str(data.get("name", "")),
                          str(data.get("alias", "")), str(data.get("version", "")))  # fmt: skip
    except (ValueError, KeyError, AttributeError, TypeError) as e:
        raise WebhookRefused(400, "bad_input", f"not an MLflow webhook delivery: {e}") from None


def problem(status: int, code: str, detail: str) -> dict[str, Any]:
    """The service's error body (RFC 9457 problem details, `roadseg.serve.errors.problem_body`;
    release code may not import serving, so it is written here again and a test compares)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"type": "about:blank", "title": phrase, "status": status, "detail": detail,
            "error": code}  # fmt: skip


def webhook_app(
    follower: Follower,
    secret: str,
    *,
    tolerance_s: float = 300.0,
    clock: Callable[[], float] = time.time,
) -> Any:
    """The receiver: `POST /webhook` (MLflow's deliveries), `GET /healthz` (the last follow).

    A verified `model_version_alias.created` for the followed model and alias asks the
    follower for a sync and answers 202; other events answer 200 and do nothing."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    if not secret:
        raise ValueError("a webhook receiver needs a secret (anyone could post events without)")
    seen: OrderedDict[str, float] = OrderedDict()  # delivery id -> when, within the tolerance

    def refuse(e: WebhookRefused) -> JSONResponse:
        log.warning("webhook refused (%s): %s", e.problem, e)
        headers = {"WWW-Authenticate": "MLflow-Signature"} if e.status == 401 else None
        return JSONResponse(problem(e.status, e.problem, str(e)), e.status, headers=headers,
                            media_type="application/problem+json")  # fmt: skip

    async def receive(request: Request) -> JSONResponse:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return refuse(WebhookRefused(413, "too_large", f"body over {MAX_BODY_BYTES} bytes"))
        now = clock()
        try:
            delivery = verify_delivery(secret, request.headers, body, now=now,
                                       tolerance_s=tolerance_s)  # fmt: skip
            event = parse_event(body)
        except WebhookRefused as e:
            return refuse(e)
        for old, at in list(seen.items()):
            if now - at > 2 * tolerance_s:
                del seen[old]
        if delivery in seen:  # MLflow's own retry, or a replay within the window: done already
            return JSONResponse({"delivery": delivery, "action": "duplicate"}, 200)
        seen[delivery] = now
        why = None
        if (event.entity, event.action) != ALIAS_CREATED:
            why = f"event {event.entity}.{event.action} is not {'.'.join(ALIAS_CREATED)}"
        elif event.name != follower.name or event.alias != follower.alias:
            why = f"alias {event.name}@{event.alias} is not {follower.name}@{follower.alias}"
        if why:
            return JSONResponse({"delivery": delivery, "action": "ignored", "reason": why}, 200)
        log.info("webhook %s: %s@%s -> v%s", delivery, event.name, event.alias, event.version)
        follower.request(force=True)
        return JSONResponse({"delivery": delivery, "action": "sync requested",
                             "version": event.version}, 202)  # fmt: skip

    async def healthz(request: Request) -> JSONResponse:
        last = follower.last.to_dict() if follower.last else None
        return JSONResponse({"status": "ok", "model": f"{follower.name}@{follower.alias}",
                             "last": last})  # fmt: skip

    return Starlette(routes=[Route("/webhook", receive, methods=["POST"]),
                             Route("/healthz", healthz, methods=["GET"])])  # fmt: skip
