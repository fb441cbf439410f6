"""Releases follow the registry: when alias `champion` moves, package and deploy that version.

A rollback in the MLflow UI or `roadseg promote` moves the alias without a pipeline run; the
follower then packages the new champion into a Bento and runs the deploy step with its checks
(readiness, `/metadata` reporting the new Bento tag, rollback on failure)::

    roadseg follow --poll 300                          # reconciler: compare every 5 min
    roadseg follow --poll 300 --listen --port 8080     # + MLflow webhook receiver (POST /webhook)

Two triggers, one action. `follow_champion(version)` is the action and is idempotent: when the
service already reports that version, it does nothing. `Follower.sync` resolves the alias in the
registry and calls it; both triggers only ask for a sync:

- the reconciler (`--poll SECONDS`) syncs on a timer: it needs no MLflow server setting, works
  with every store (SQLite, a local file store), and catches whatever a webhook missed;
- the webhook receiver (`webhook_app`) syncs as soon as MLflow's `model_version_alias.created`
  arrives, after checking its HMAC-SHA256 signature (`X-MLflow-Signature: v1,<base64>` over
  `<delivery id>.<timestamp>.<body>`, the secret given to `MlflowClient.create_webhook`) and that
  its timestamp is within `tolerance_s` of now (a captured request cannot be replayed later).
  A refused request changes nothing and answers 401 with a problem+json body.

The event's version is not trusted as "the champion now": deliveries may arrive late or out of
order, so a sync always reads the alias from the registry. Version tags record each follow
(`follow`, `follow_reason`, `follow_at`; the deploy step adds its own `deploy*` tags); a version
whose release failed is not retried by the timer for `retry_after_s` (a webhook, i.e. a person
moving the alias again, retries at once).

Where the release goes is a `Release`: `ClusterRelease` (the pipeline's own package and deploy
steps, `roadseg.release.rollout`: BuildKit image, Deployment patch, checks, rollback) or
`LocalRelease` (one machine: the follower runs `bentoml serve <bento tag>` itself and swaps it,
with the same `/readyz` + `/metadata` check and the previous Bento started again on failure).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

log = logging.getLogger(__name__)

# What MLflow's webhook delivery sends (mlflow/webhooks/constants.py and delivery.py).
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
ALIAS_CREATED = ("model_version_alias", "created")
MAX_BODY_BYTES = 64 * 1024  # an alias event is ~200 bytes

# Tags this module writes on the followed version.
FOLLOW_TAG = "follow"  # "deployed" | "failed"
FOLLOW_REASON_TAG = "follow_reason"
FOLLOW_AT_TAG = "follow_at"  # unix time of the last follow of this version

Action = Literal["none", "deployed", "failed", "waiting", "no_champion"]


# --- the action -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseOutcome:
    """What one release of a version did."""

    ok: bool
    reason: str
    bento_tag: str = ""


@dataclass(frozen=True)
class FollowResult:
    action: Action
    version: str | None
    reason: str
    bento_tag: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Release(Protocol):
    """Where the champion is served: what it serves now, and how a version gets there."""

    def deployed_version(self, name: str) -> str | None:
        """The version of `name` the service reports (None: nothing served, or unreachable)."""
        ...

    def release(self, name: str, version: str) -> ReleaseOutcome:
        """Package `name` v`version` and deploy it with the deploy step's checks."""
        ...


def follow_champion(version: str, *, name: str, release: Release) -> FollowResult:
    """Serve `version` of `name`: nothing when the service already reports it, else one release.

    Idempotent: calling it again after a successful release does nothing."""
    served = release.deployed_version(name)
    if served == version:
        return FollowResult("none", version, f"{name} v{version} is already served")
    log.info("%s champion is v%s, the service reports %s: releasing", name, version, served)
    outcome = release.release(name, version)
    action: Action = "deployed" if outcome.ok else "failed"
    return FollowResult(action, version, outcome.reason, outcome.bento_tag)


class Follower:
    """Keeps the service on the version behind `models:/<name>@<alias>`.

    `sync` is serialised (one release at a time); `request` asks the background worker
    (`start`) for a sync without waiting: the webhook answers within MLflow's timeout while a
    release takes minutes, and events that arrive during a release coalesce into one more sync.
    """

    def __init__(
        self,
        name: str,
        release: Release,
        *,
        tracking_uri: str,
        alias: str = "champion",
        retry_after_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        from mlflow import MlflowClient

        self.name, self.alias, self.release = name, alias, release
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.retry_after_s, self.clock = retry_after_s, clock
        self.last: FollowResult | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._force = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def champion(self) -> tuple[str, dict[str, str]] | None:
        """The version behind the alias and its tags (None when the alias is not set)."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, self.alias)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return str(mv.version), dict(mv.tags)

    def sync(self, *, force: bool = False) -> FollowResult:
        """Resolve the alias and follow it. Without `force` (the timer), a version whose last
        release failed less than `retry_after_s` ago is left alone: a broken version must not
        be rebuilt on every tick."""
        with self._lock:
            found = self.champion()
            if found is None:
                result = FollowResult("no_champion", None, f"{self.name}@{self.alias} is not set")
            else:
                version, tags = found
                failed_at = float(tags.get(FOLLOW_AT_TAG) or 0)
                wait = failed_at + self.retry_after_s - self.clock()
                if not force and tags.get(FOLLOW_TAG) == "failed" and wait > 0 and (
                    self.release.deployed_version(self.name) != version
                ):  # fmt: skip
                    result = FollowResult("waiting", version, f"v{version} failed to release "
                                          f"({tags.get(FOLLOW_REASON_TAG, '?')}); next try in "
                                          f"{wait:.0f} s or on the next alias move")  # fmt: skip
                else:
                    result = follow_champion(version, name=self.name, release=self.release)
                    if result.action in ("deployed", "failed"):
                        self._record(version, result)
            self.last = result
            log.info("follow %s@%s: %s (%s)", self.name, self.alias, result.action, result.reason)
            return result

    def _record(self, version: str, result: FollowResult) -> None:
        tags = {FOLLOW_TAG: result.action, FOLLOW_REASON_TAG: result.reason[:5000],
                FOLLOW_AT_TAG: f"{self.clock():.0f}"}  # fmt: skip
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    # --- the background worker: webhook requests and the reconciler's timer ----------------

    def request(self, *, force: bool = True) -> None:
        """Ask the worker for a sync (a webhook event: `force`, the person moved the alias)."""
        self._force = self._force or force
        self._wake.set()

    def start(self, poll_s: float | None) -> threading.Thread:
        """Run the worker: a sync on each `request`, and every `poll_s` seconds when given."""

        def loop() -> None:
            while not self._stop.is_set():
                woken = self._wake.wait(poll_s)
                if self._stop.is_set():
                    return
                self._wake.clear()
                force, self._force = self._force, False
                if woken or poll_s:
                    try:
                        self.sync(force=force)
                    except Exception:  # MLflow or the service down: the next tick tries again
                        log.exception("follow %s@%s failed", self.name, self.alias)

        self._thread = threading.Thread(target=loop, name="roadseg-follow", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)


# --- the webhook: signature, timestamp, event -------------------------------------------------


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


# --- where releases go ----------------------------------------------------------------------


def served_version(http: httpx.Client, url: str, name: str) -> str | None:
    """The registered version of `name` the service at `url` reports in `/metadata` (None when
    it is down, serves another model, or was not served from the registry)."""
    meta = _metadata(http, url)
    if not meta or meta.get("model_name") != name:
        return None
    version = meta.get("mlflow_version") or str(meta.get("version") or "").split("+")[0]
    return str(version) or None


class ClusterRelease:
    """The pipeline's package and deploy steps (`roadseg.release.rollout`), run by the follower.

    The image is built in the cluster (BuildKit Job), the Deployment patched, `/readyz` and
    `/metadata` checked, the previous image set back on failure; the deploy tags are written."""

    def __init__(self, params: Any, *, tracking_uri: str, export_dir: str | Path) -> None:
        self.params = params.model_copy(
            update={"deploy": params.deploy.model_copy(update={"enabled": True}),
                    "package": params.package.model_copy(update={"log_archive": True})})  # fmt: skip
        self.tracking_uri, self.export_dir = tracking_uri, export_dir

    def deployed_version(self, name: str) -> str | None:
        with httpx.Client(timeout=10.0) as http:
            return served_version(http, self.params.deploy.service_url, name)

    def release(self, name: str, version: str) -> ReleaseOutcome:
        from roadseg.release.rollout import deploy_step, package_step

        registration = {"promoted": True, "model_name": name, "version": version}
        try:
            packaged = package_step(registration, self.params, tracking_uri=self.tracking_uri,
                                    export_dir=self.export_dir)  # fmt: skip
        except Exception as e:  # unknown version, a model that will not export: nothing changed
            return ReleaseOutcome(False, f"packaging v{version} failed: {e}")
        deployed = deploy_step(packaged, self.params, tracking_uri=self.tracking_uri)
        ok = bool(deployed.get("deployed"))
        reason = deployed.get("reason") or ("deployed" if ok else "not deployed")
        return ReleaseOutcome(ok, str(reason), str(packaged.get("bento_tag", "")))


class LocalRelease:
    """One machine: the follower serves the Bento itself (`bentoml serve <tag>` on `port`).

    A release packages the version, stops the running server, starts the new Bento and checks
    it as the deploy step does (`/readyz`, `/metadata` reports the Bento tag); when the check
    fails, the previous Bento is started again. One port, so the swap has a gap of a start-up;
    the cluster's rolling update has none."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        port: int = 3000,
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 120.0,
        export_dir: str | Path | None = None,
        log_file: str | Path | None = None,
    ) -> None:
        self.tracking_uri, self.port, self.ready_timeout_s = tracking_uri, port, ready_timeout_s
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, **(env or {})}
        self.export_dir, self.log_file = export_dir, log_file
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.bento_tag = ""

    def deployed_version(self, name: str) -> str | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        with httpx.Client(timeout=10.0) as http:
            return served_version(http, self.url, name)

    def start(self, bento_tag: str) -> None:
        """Start `bentoml serve <bento_tag>` and wait until it is ready and reports the tag."""
        from roadseg.release.deploy import DeployFailed, check_service

        self.stop()
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        cmd = [sys.executable, "-m", "bentoml", "serve", bento_tag, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        self.bento_tag = bento_tag
        deadline = time.monotonic() + self.ready_timeout_s
        with httpx.Client(timeout=5.0) as http:
            while True:
                try:
                    check_service(http, self.url, bento_tag)
                    return
                except DeployFailed as e:
                    if self.proc.poll() is not None:
                        raise DeployFailed(f"bentoml serve {bento_tag} exited with "
                                           f"{self.proc.returncode}") from e  # fmt: skip
                    if time.monotonic() > deadline:
                        raise DeployFailed(f"{bento_tag} not ready after "
                                           f"{self.ready_timeout_s:.0f} s: {e}") from e  # fmt: skip
                time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM the server's process group (it drains), SIGKILL after 30 s."""
        import signal

        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def release(self, name: str, version: str) -> ReleaseOutcome:
        from mlflow import MlflowClient

        from roadseg.release.deploy import DeployFailed, Outcome, Target, record_outcome
        from roadseg.release.packaging import package_model

        try:
            packaged = package_model(f"models:/{name}/{version}", tracking_uri=self.tracking_uri,
                                     export_dir=self.export_dir)  # fmt: skip
        except Exception as e:
            return ReleaseOutcome(False, f"packaging v{version} failed: {e}")
        previous, tag = self.bento_tag, packaged.bento_tag
        try:
            self.start(tag)
            outcome = Outcome(True, tag, previous, tag, "bentoml serve ready, /metadata reports "
                              "the tag")  # fmt: skip
        except DeployFailed as e:
            log.error("local release of %s failed (%s); back to %s", tag, e, previous or "nothing")
            rolled_back = None
            if previous:
                try:
                    self.start(previous)
                    rolled_back = True
                except DeployFailed as back:
                    log.error("previous Bento %s did not start again: %s", previous, back)
                    rolled_back = False
            outcome = Outcome(False, tag, previous, tag, str(e), rolled_back)
        client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        target = Target("local", "bentoml-serve", "", self.url)
        record_outcome(outcome, target, lambda k, v: client.set_model_version_tag(name, version,
                       k, v), dt.datetime.now(dt.UTC))  # fmt: skip
        return ReleaseOutcome(outcome.ok, outcome.reason, tag)


def _metadata(http: httpx.Client, url: str) -> dict[str, Any] | None:
    try:
        r = http.get(f"{url}/metadata")
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None
