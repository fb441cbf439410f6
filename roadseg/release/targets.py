"""Where a followed release goes: the `Release` protocol and its two targets.

`ClusterRelease` runs the pipeline's own package and deploy steps (`roadseg.release.rollout`:
BuildKit image, Deployment patch, checks, rollback); `LocalRelease` serves on one machine: the
follower runs `bentoml serve <bento tag>` itself and swaps it, with the same `/readyz` +
`/metadata` check and the previous Bento started again on failure. Both report what the service
serves now (`served_version`, from `/metadata`), so following is idempotent.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseOutcome:
    """What one release of a version did."""

    ok: bool
    reason: str
    bento_tag: str = ""


class Release(Protocol):
    """Where the champion is served: what it serves now, and how a version gets there."""

    def deployed_version(self, name: str) -> str | None:
        """The version of `name` the service reports (None: nothing served, or unreachable)."""
        ...

    def release(self, name: str, version: str) -> ReleaseOutcome:
        """Package `name` v`version` and deploy it with the deploy step's checks."""
        ...


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

    def __init__(
        self,
        params: Any,
        *,
        tracking_uri: str,
        export_dir: str | Path,
        int8_data: str | Path | None = None,
    ) -> None:
        self.params = params.model_copy(
            update={"deploy": params.deploy.model_copy(update={"enabled": True}),
                    "package": params.package.model_copy(update={"log_archive": True})})  # fmt: skip
        self.tracking_uri, self.export_dir = tracking_uri, export_dir
        self.int8_data = int8_data  # a dataset: each release also tries the int8 variant

    def deployed_version(self, name: str) -> str | None:
        with httpx.Client(timeout=10.0) as http:
            return served_version(http, self.params.deploy.service_url, name)

    def release(self, name: str, version: str) -> ReleaseOutcome:
        from roadseg.release.rollout import deploy_step, package_step

        registration = {"promoted": True, "model_name": name, "version": version}
        try:
            packaged = package_step(registration, self.params, tracking_uri=self.tracking_uri,
                                    export_dir=self.export_dir, int8_data=self.int8_data)  # fmt: skip
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
        int8_data: str | Path | None = None,
        params: Any = None,
    ) -> None:
        self.tracking_uri, self.port, self.ready_timeout_s = tracking_uri, port, ready_timeout_s
        self.int8_data, self.params = int8_data, params  # int8: calibrated on this dataset
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
                                     export_dir=self.export_dir, int8_data=self.int8_data,
                                     params=self.params)  # fmt: skip
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
