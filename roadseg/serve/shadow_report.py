"""Where the shadow challenger's figures go: Prometheus series and the MLflow summary.

`ShadowMetrics` holds the series on the service's /metrics (`roadseg_shadow_agreement`,
`roadseg_shadow_images_total`, `roadseg_shadow_dropped_total`, `roadseg_shadow_errors_total`,
`roadseg_shadow_active`); `mlflow_reporter` is the `Reporter` that records each periodic summary
on the challenger's registered version (`roadseg.release.evidence`), which `roadseg promote`
reads as evidence.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

# (challenger metadata, summary) -> None: the periodic report (MLflow).
Reporter = Callable[[Mapping[str, Any], dict[str, Any]], None]


def worker_source() -> str:
    """This serving worker, for its summary tag: pod (or host) name and process id."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}"


class ShadowMetrics:
    """Prometheus series on the service's /metrics (BentoML's registry), created by the service
    once per worker; where they cannot be registered (no BentoML, names taken), they record
    nothing."""

    def __init__(self) -> None:
        self.agreement = self.images = self.dropped = self.errors = self.active = None
        try:
            import bentoml

            m = bentoml.metrics
            self.agreement = m.Gauge(name="roadseg_shadow_agreement",
                                     documentation="Mean pixel agreement of the shadow challenger "
                                     "with the champion over the images shadowed")  # fmt: skip
            self.images = m.Counter(name="roadseg_shadow_images_total",
                                    documentation="Images run through the shadow challenger")  # fmt: skip
            self.dropped = m.Counter(name="roadseg_shadow_dropped_total",
                                     documentation="Sampled images dropped: the shadow queue was full")  # fmt: skip
            self.errors = m.Counter(name="roadseg_shadow_errors_total",
                                    documentation="Shadow challenger inferences that failed")  # fmt: skip
            self.active = m.Gauge(name="roadseg_shadow_active",
                                  documentation="1 while a shadow challenger runs beside the champion")  # fmt: skip
        except Exception as e:  # no BentoML, or the names are taken in this registry
            logger.debug("shadow metrics unavailable: %s", e)

    @classmethod
    def none(cls) -> ShadowMetrics:
        """Series that record nothing (tests, benchmarks)."""
        out = cls.__new__(cls)
        out.agreement = out.images = out.dropped = out.errors = out.active = None
        return out

    def set(self, name: str, value: float) -> None:
        metric = getattr(self, name)
        if metric is not None:
            metric.set(value)

    def inc(self, name: str, amount: float = 1) -> None:
        metric = getattr(self, name)
        if metric is not None and amount:
            metric.inc(amount)


def mlflow_reporter(source: str | None = None) -> Reporter:
    """Record each summary on the challenger's registered version (`roadseg.release.evidence`)
    and its per-class shares as `shadow/<source>.json` in the version's run."""
    from roadseg.release.evidence import record_summary, source_name

    src = source_name(source or worker_source())

    def report(challenger: Mapping[str, Any], summary: dict[str, Any]) -> None:
        name, version = challenger.get("model_name"), str(challenger.get("version"))
        if not name or not version.isdigit():
            return  # not a registered version: nowhere to record it
        from mlflow import MlflowClient

        client = MlflowClient()
        evidence = {k: summary[k] for k in ("images", "agreement", "dropped", "champion")}
        total = record_summary(client, name, version, src, evidence)
        if challenger.get("run_id"):
            client.log_dict(challenger["run_id"], summary, f"shadow/{src}.json")
        logger.info("shadow %s v%s: %d images here (agreement %s), %d in all", name, version,
                    summary["images"], summary["agreement"], total.images)  # fmt: skip

    return report
