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
- the webhook receiver (`webhook_app`, roadseg/release/webhook.py) syncs as soon as MLflow's
  `model_version_alias.created` arrives, after checking its signature and timestamp.

The event's version is not trusted as "the champion now": deliveries may arrive late or out of
order, so a sync always reads the alias from the registry. Version tags record each follow
(`follow`, `follow_reason`, `follow_at`; the deploy step adds its own `deploy*` tags); a version
whose release failed is not retried by the timer for `retry_after_s` (a webhook, i.e. a person
moving the alias again, retries at once).

Where the release goes is a `Release` (roadseg/release/targets.py: `ClusterRelease`, the
pipeline's package and deploy steps, or `LocalRelease`, `bentoml serve` on one machine); the
webhook receiver is roadseg/release/webhook.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

# ReleaseOutcome and the receiver are imported here too: tests take them from this module.
from roadseg.release.targets import Release, ReleaseOutcome  # noqa: F401
from roadseg.release.webhook import problem, signature, signed_headers, webhook_app  # noqa: F401

log = logging.getLogger(__name__)

# Tags this module writes on the followed version.
FOLLOW_TAG = "follow"  # "deployed" | "failed"
FOLLOW_REASON_TAG = "follow_reason"
FOLLOW_AT_TAG = "follow_at"  # unix time of the last follow of this version

Action = Literal["none", "deployed", "failed", "waiting", "no_champion"]


# --- the action -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FollowResult:
    action: Action
    version: str | None
    reason: str
    bento_tag: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
