"""The shadow challenger: a second model beside the champion, on a share of the live images.

With `serve.shadow.share` > 0 (env ROADSEG_SHADOW_SHARE) the service loads the challenger
(`serve.shadow.model_uri`, env ROADSEG_SHADOW_MODEL_URI, default `models:/<served model>@challenger`)
with the same loader as the champion (`roadseg.serve.engine.create_engine`), in the background.
Every request's after-prediction hook offers its images and the champion's masks to the
`ShadowRunner`; it takes a deterministic share of them (never more than `share` of the images
offered) into a small bounded queue and returns at once. Its own thread runs the challenger on
what is queued and compares: per image the pixel agreement with the champion's mask and both
class-share vectors (roadseg/serve/shadow_stats.py). The champion's answer never waits for the
challenger: a full queue drops the image and counts it (`roadseg_shadow_dropped_total`).

Running figures: Prometheus (`roadseg_shadow_agreement`, `roadseg_shadow_images_total`,
`roadseg_shadow_dropped_total`, `roadseg_shadow_errors_total`, `roadseg_shadow_active`), the
`shadow` entry of `/metadata`, and a summary logged every `serve.shadow.log_every_s` and at
shutdown to the challenger's MLflow version (`roadseg.release.evidence`: tags `shadow.src.<worker>`
and the aggregate `shadow.images`, `shadow.agreement`, `shadow.dropped`; the per-class shares as
`shadow/<worker>.json` in its run), which `roadseg promote` reads as evidence. A challenger that
fails to load (or has other classes, or is the champion itself) logs one warning and leaves the
champion serving alone (`roadseg_shadow_active` 0, `/metadata` says why). The series and the
MLflow reporter are in roadseg/serve/shadow_report.py.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from roadseg.serve.shadow_report import Reporter, ShadowMetrics, mlflow_reporter

# The comparison is imported here too: tests and callers take it from this module.
from roadseg.serve.shadow_stats import (  # noqa: F401
    Sampler,
    ShadowStats,
    class_share_vector,
    pixel_agreement,
)

logger = logging.getLogger(__name__)

SHARE_ENV = "ROADSEG_SHADOW_SHARE"
URI_ENV = "ROADSEG_SHADOW_MODEL_URI"
CHALLENGER_ALIAS = "challenger"

# ---- settings ------------------------------------------------------------------------------


def shadow_settings(
    params: Any, metadata: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> tuple[float, str | None]:
    """(share, challenger URI) from `serve.shadow` and the env overrides; the URI defaults to
    the served model's registered name at alias `challenger` (None: no name to derive it from)."""
    env = os.environ if environ is None else environ
    raw = env.get(SHARE_ENV)
    try:
        share = float(raw) if raw not in (None, "") else float(params.serve.shadow.share)
    except ValueError:
        raise ValueError(f"{SHARE_ENV}={raw!r} is not a number") from None
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"shadow share {share} is not within 0..1")
    uri = env.get(URI_ENV) or params.serve.shadow.model_uri
    if not uri:
        lineage = metadata.get("lineage") or {}
        name = lineage.get("mlflow_model") if isinstance(lineage, Mapping) else None
        if not name and str(metadata.get("model_uri") or "").startswith("models:/"):
            name = metadata.get("model_name")
        name = name or params.register_.model_name_for(params.data.dataset)
        uri = f"models:/{name}@{CHALLENGER_ALIAS}"
    return share, uri


# ---- the runner ----------------------------------------------------------------------------

# () -> (engine, metadata): an object with `predict_now(images)` and `spec`, and its metadata.
Loader = Callable[[], tuple[Any, dict[str, Any]]]


class ShadowRunner:
    """The challenger on its own thread behind a bounded queue; `offer` is the hook."""

    def __init__(
        self,
        load: Loader,
        *,
        share: float,
        uri: str | None,
        champion: Mapping[str, Any],
        class_names: Sequence[str],
        queue_size: int = 4,
        log_every_s: float = 300.0,
        reporter: Reporter | None = None,
        metrics: ShadowMetrics | None = None,
        max_batch: int = 8,
    ) -> None:
        self.sampler = Sampler(share)
        self.uri = uri
        self.champion = dict(champion)
        self.stats = ShadowStats(list(class_names))
        self.state = "loading"
        self.reason = ""
        self.challenger: dict[str, Any] = {}
        self.log_every_s = log_every_s
        self.reporter = reporter
        self.metrics = metrics or ShadowMetrics.none()
        self.max_batch = max_batch
        self._load = load
        self._engine: Any = None
        self._queue: queue.Queue = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_report = time.monotonic()
        self._reported_images = -1

    # -- life cycle --

    def start(self) -> ShadowRunner:
        """Load the challenger and serve the queue, on the runner's own daemon thread."""
        self.metrics.set("active", 0)
        self._thread = threading.Thread(target=self._run, name="roadseg-shadow", daemon=True)
        self._thread.start()
        return self

    def wait_loaded(self, timeout: float | None = None) -> str:
        """Wait until the challenger is loaded or refused; the state (tests, benchmarks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state == "loading" and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.01)
        return self.state

    def close(self, timeout: float = 10.0) -> None:
        """Finish the images queued (up to `timeout`), stop the thread, write the last summary."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.metrics.set("active", 0)
        if self.state == "on":
            self.state = "off"
            self.reason = "stopped"
            self._report(force=True)

    # -- the hook (request threads) --

    def offer(self, images: Sequence[np.ndarray], preds: Sequence[Any]) -> None:
        """After-prediction hook: queue the sampled images with the champion's masks; never
        blocks (a full queue drops the image and counts it)."""
        if self.state != "on":
            return
        for image, pred in zip(images, preds, strict=True):
            if not self.sampler.take():
                continue
            try:
                self._queue.put_nowait((image, pred.mask))
            except queue.Full:
                with self._lock:
                    self.stats.dropped += 1
                    dropped = self.stats.dropped
                self.metrics.inc("dropped")
                if dropped & (dropped - 1) == 0:  # 1, 2, 4, ...: visible, never a flood
                    logger.warning("shadow challenger behind: %d sampled images dropped", dropped)

    def status(self) -> dict[str, Any]:
        """For /metadata: state, why, share, the challenger, the running figures."""
        with self._lock:
            summary = self.stats.summary()
        return {
            "state": self.state,
            "reason": self.reason or None,
            "share": float(self.sampler.share),
            "challenger_uri": self.uri,
            "challenger_version": self.challenger.get("version"),
            "images_offered": self.sampler.offered,
            "images_sampled": self.sampler.taken,
            **{
                k: summary[k] for k in ("images", "agreement", "min_agreement", "dropped", "errors")
            },
        }

    # -- the runner's thread --

    def _run(self) -> None:
        if not self._start_challenger():
            return
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                self._maybe_report()
                continue
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._compare(batch)
            self._maybe_report()

    def _start_challenger(self) -> bool:
        try:
            engine, metadata = self._load()
        except Exception as e:
            return self._refuse(f"cannot load {self.uri}: {_one_line(e)}", "failed")
        names = list(getattr(engine.spec, "class_names", []))
        if names != list(self.stats.class_names):
            return self._refuse(f"{self.uri} has other classes than the champion "
                                f"({len(names)} vs {len(self.stats.class_names)})", "failed")  # fmt: skip
        if _same_version(self.champion, metadata):
            return self._refuse(f"{self.uri} is the served champion (v{metadata.get('version')})",
                                "off")  # fmt: skip
        self._engine, self.challenger = engine, dict(metadata)
        self.state = "on"
        self.metrics.set("active", 1)
        logger.info("shadow challenger %s (v%s) on %.3g of the images", self.uri,
                    metadata.get("version"), float(self.sampler.share))  # fmt: skip
        return True

    def _refuse(self, reason: str, state: str) -> bool:
        logger.warning("shadow challenger off, the champion serves alone: %s", reason)
        self.reason, self.state = reason, state  # after the warning: waiters see both
        return False

    def _compare(self, batch: list[tuple[np.ndarray, np.ndarray]]) -> None:
        try:
            preds = self._engine.predict_now([im for im, _ in batch])
        except Exception as e:
            with self._lock:
                self.stats.errors += len(batch)
            self.metrics.inc("errors", len(batch))
            logger.warning("shadow challenger failed on %d image(s): %s", len(batch), _one_line(e))
            return
        done = 0
        for (_, champion_mask), pred in zip(batch, preds, strict=True):
            try:
                with self._lock:
                    self.stats.add(champion_mask, pred.mask)
                done += 1
            except ValueError as e:
                with self._lock:
                    self.stats.errors += 1
                self.metrics.inc("errors")
                logger.warning("shadow comparison skipped: %s", e)
        self.metrics.inc("images", done)
        if self.stats.agreement is not None:
            self.metrics.set("agreement", self.stats.agreement)

    def _maybe_report(self) -> None:
        if time.monotonic() - self._last_report >= self.log_every_s:
            self._report()

    def _report(self, force: bool = False) -> None:
        """The summary to the reporter (MLflow), when something changed since the last one."""
        self._last_report = time.monotonic()
        with self._lock:
            summary = self.stats.summary()
        if self.reporter is None or (summary["images"] == self._reported_images and not force):
            return
        if summary["images"] == 0 and summary["dropped"] == 0:
            return
        summary |= {"champion": self.champion.get("mlflow_version") or self.champion.get("version"),
                    "offered": self.sampler.offered, "share": float(self.sampler.share)}  # fmt: skip
        try:
            self.reporter(self.challenger, summary)
            self._reported_images = summary["images"]
        except Exception as e:  # the registry is down: the next period tries again
            logger.warning("shadow summary not recorded: %s", _one_line(e))


def _same_version(champion: Mapping[str, Any], challenger: Mapping[str, Any]) -> bool:
    """Whether both name the same registered version (or the same model URI)."""
    uri = champion.get("model_uri")
    if uri and uri == challenger.get("model_uri"):
        return True
    version = champion.get("mlflow_version") or champion.get("version")
    return bool(challenger.get("model_name") == champion.get("model_name")
                and str(challenger.get("version")) == str(version)
                and str(version).isdigit())  # fmt: skip


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0][:300] if lines else "") or type(error).__name__


# ---- wiring --------------------------------------------------------------------------------


def start_shadow(
    params: Any,
    champion: Mapping[str, Any],
    class_names: Sequence[str],
    *,
    backend: str = "torch",
    environ: Mapping[str, str] | None = None,
    loader: Loader | None = None,
    reporter: Reporter | None = None,
) -> ShadowRunner | None:
    """The service's shadow runner (loading in the background), or None when the share is 0."""
    try:
        share, uri = shadow_settings(params, champion, environ)
    except ValueError as e:
        logger.warning("shadow challenger off: %s", e)
        return None
    if share <= 0:
        return None
    if loader is None:

        def loader() -> tuple[Any, dict[str, Any]]:
            from roadseg.serve.engine import create_engine

            # The challenger comes from the registry, never with an int8 file: its float ONNX.
            net = "onnxruntime" if backend == "onnxruntime_int8" else backend
            return create_engine(uri, backend=net, max_batch_size=params.serve.batch_size,
                                 warm_up=True)  # fmt: skip

    runner = ShadowRunner(
        loader,
        share=share,
        uri=uri,
        champion=champion,
        class_names=class_names,
        queue_size=params.serve.shadow.queue,
        log_every_s=params.serve.shadow.log_every_s,
        reporter=reporter if reporter is not None else mlflow_reporter(),
        metrics=ShadowMetrics(),
        max_batch=params.serve.batch_size,
    )
    return runner.start()
