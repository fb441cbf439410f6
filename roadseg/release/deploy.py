"""Bento → cluster: build the service image in the cluster, roll it out, verify, roll back.

The pipeline's deploy step (`components/deploy.py`, cluster runs with `deploy.enabled`) calls
`deploy_release`, which talks to the Kubernetes API server over plain HTTPS (`KubeApi`, the pod's
service-account token) and to the service over HTTP:

1. create a Job from the `roadseg-buildkit-job` template (rootless BuildKit, no privileged pod)
   that turns the `.bento` archive into an image and pushes it; wait for it;
2. set the `roadseg-service` Deployment's container image, wait for the rollout (timeout);
3. check `/readyz` and that `/metadata` reports the new Bento tag;
4. on any failure after step 2, set the previous image back; in every case write the outcome to
   the MLflow version's tags (`deployed_image`, `deployed_at`, `deployed_to` or `deploy=failed`,
   `deploy_failure_reason`).

Every call the step makes is listed in k8s/base/deploy/rbac.yaml (least privilege).
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger(__name__)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
BENTO_TAG_ANNOTATION = "roadseg.io/bento-tag"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"

SetTag = Callable[[str, str], None]  # (key, value) on the MLflow model version


class KubeError(RuntimeError):
    """The API server refused or failed a call; the message names the call and its status."""


class DeployFailed(RuntimeError):
    """A rollout that did not finish, or a service that did not report the new version."""


class KubeApi:
    """The few Kubernetes API calls the deploy step needs, as JSON over HTTP(S)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, verify=verify,
                                 transport=transport, timeout=30.0)  # fmt: skip

    @classmethod
    def in_cluster(cls) -> KubeApi:
        """The API server and token of the pod this runs in."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not host or not (SA_DIR / "token").is_file():
            raise KubeError("not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST or token)")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token = (SA_DIR / "token").read_text().strip()
        return cls(f"https://{host}:{port}", token=token, verify=str(SA_DIR / "ca.crt"))

    def call(self, method: str, path: str, body: Any = None, content_type: str = "") -> dict:
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            r = self.http.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as e:
            raise KubeError(f"{method} {path}: {e}") from e
        if r.status_code >= 400:
            raise KubeError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json()


@dataclass(frozen=True)
class Target:
    """The Deployment that serves the model, and the in-cluster URL of its Service."""

    namespace: str
    deployment: str
    container: str
    service_url: str

    @property
    def path(self) -> str:
        return f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.deployment}"


@dataclass(frozen=True)
class Outcome:
    ok: bool
    image: str
    previous_image: str
    bento_tag: str
    reason: str
    # None: the serving Deployment was never touched (e.g. the image build failed).
    rolled_back: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def container_image(deployment: Mapping[str, Any], container: str) -> str:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == container:
            return c["image"]
    name = deployment["metadata"]["name"]
    raise KubeError(f"deployment {name} has no container {container!r}")


def set_image(api: KubeApi, target: Target, image: str, bento_tag: str) -> dict:
    """Strategic-merge patch of the one container's image (and the Bento tag annotation)."""
    patch = {
        "spec": {
            "template": {
                "metadata": {"annotations": {BENTO_TAG_ANNOTATION: bento_tag}},
                "spec": {"containers": [{"name": target.container, "image": image}]},
            }
        }
    }
    return api.call("PATCH", target.path, patch, STRATEGIC_MERGE)


def rollout_state(deployment: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(finished, failure reason) of a Deployment's rollout, as `kubectl rollout status` reads it."""
    meta, spec, status = deployment["metadata"], deployment["spec"], deployment.get("status", {})
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return False, None
    for cond in status.get("conditions", []):
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return False, f"progress deadline exceeded: {cond.get('message', '')}".strip()
    want = spec.get("replicas", 1)
    updated = status.get("updatedReplicas", 0)
    if updated < want or status.get("replicas", 0) > updated:
        return False, None
    return status.get("availableReplicas", 0) >= updated, None


def wait_for_rollout(
    api: KubeApi,
    target: Target,
    *,
    timeout_s: float,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll the Deployment until its rollout finished; `DeployFailed` on failure or timeout."""
    deadline = clock() + timeout_s
    while True:
        done, failure = rollout_state(api.call("GET", target.path))
        if failure:
            raise DeployFailed(f"rollout of {target.deployment} failed: {failure}")
        if done:
            return
        if clock() >= deadline:
            raise DeployFailed(
                f"rollout of {target.deployment} not finished after {timeout_s:.0f} s"
            )
        sleep(poll_s)


def check_service(http: httpx.Client, url: str, bento_tag: str) -> dict[str, Any]:
    """`/readyz` answers 200 and `/metadata` reports `bento_tag`; its metadata."""
    try:
        ready = http.get(f"{url}/readyz")
        meta = http.get(f"{url}/metadata")
    except httpx.HTTPError as e:
        raise DeployFailed(f"service at {url} unreachable: {e}") from e
    if ready.status_code != 200:
        raise DeployFailed(f"{url}/readyz answered {ready.status_code}")
    if meta.status_code != 200:
        raise DeployFailed(f"{url}/metadata answered {meta.status_code}")
    served = meta.json().get("bento_tag")
    if served != bento_tag:
        raise DeployFailed(f"{url}/metadata reports bento_tag {served!r}, expected {bento_tag!r}")
    return meta.json()


def roll_out(
    api: KubeApi,
    http: httpx.Client,
    target: Target,
    image: str,
    bento_tag: str,
    *,
    timeout_s: float,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Set the image, wait, verify; on failure put the previous image back (and wait for it)."""
    previous = container_image(api.call("GET", target.path), target.container)
    wait = {"timeout_s": timeout_s, "poll_s": poll_s, "clock": clock, "sleep": sleep}
    try:
        set_image(api, target, image, bento_tag)
        wait_for_rollout(api, target, **wait)
        check_service(http, target.service_url, bento_tag)
    except (DeployFailed, KubeError) as e:
        log.error("deploy of %s failed (%s); rolling back to %s", image, e, previous)
        try:
            set_image(api, target, previous, "rollback")
            wait_for_rollout(api, target, **wait)
            rolled_back = True
        except (DeployFailed, KubeError) as back:
            log.error("rollback to %s did not finish: %s", previous, back)
            rolled_back = False
        return Outcome(False, image, previous, bento_tag, str(e), rolled_back)
    return Outcome(True, image, previous, bento_tag, "rollout finished, service reports the tag")


def record_outcome(outcome: Outcome, target: Target, set_tag: SetTag, now: dt.datetime) -> None:
    """Write the deploy result to the MLflow model version's tags."""
    if outcome.ok:
        set_tag("deployed_image", outcome.image)
        set_tag("deployed_at", now.astimezone(dt.UTC).isoformat(timespec="seconds"))
        set_tag("deployed_to", f"{target.namespace}/{target.deployment}")
        set_tag("deploy", "succeeded")
    else:
        set_tag("deploy", "failed")
        suffix = {None: "; serving unchanged", True: "; rolled back"}.get(
            outcome.rolled_back, "; rollback did not finish"
        )
        set_tag("deploy_failure_reason", (outcome.reason + suffix)[:5000])


# --- the image build (rootless BuildKit Job) ----------------------------------------------------

JOB_TEMPLATE_KEY = "job.yaml"


def image_build_job(template: Mapping[str, Any], *, name: str, image: str, archive: str) -> dict:
    """The Job template with its name and the `IMAGE` / `BENTO_ARCHIVE` env values filled in."""
    job = copy.deepcopy(dict(template))
    job["metadata"] = {**job.get("metadata", {}), "name": name}
    job["metadata"].pop("generateName", None)
    spec = job["spec"]["template"]["spec"]
    filled = set()
    for c in spec.get("initContainers", []) + spec["containers"]:
        for e in c.get("env", []):
            if e["name"] in {"IMAGE", "BENTO_ARCHIVE"}:
                e["value"] = image if e["name"] == "IMAGE" else archive
                filled.add(e["name"])
    if filled != {"IMAGE", "BENTO_ARCHIVE"}:
        raise KubeError(f"job template lacks env {sorted({'IMAGE', 'BENTO_ARCHIVE'} - filled)}")
    return job


def job_state(job: Mapping[str, Any]) -> tuple[bool, str | None]:
    """(succeeded, failure reason) of a Job."""
    status = job.get("status", {})
    for cond in status.get("conditions", []):
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return False, f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip()
    return status.get("succeeded", 0) >= 1, None


def build_image(
    api: KubeApi,
    namespace: str,
    template_configmap: str,
    *,
    name: str,
    image: str,
    archive: str,
    timeout_s: float,
    poll_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Create the BuildKit Job from the template ConfigMap and wait until it pushed `image`."""
    import yaml

    cm = api.call("GET", f"/api/v1/namespaces/{namespace}/configmaps/{template_configmap}")
    template = yaml.safe_load(cm["data"][JOB_TEMPLATE_KEY])
    job = image_build_job(template, name=name, image=image, archive=archive)
    jobs = f"/apis/batch/v1/namespaces/{namespace}/jobs"
    api.call("POST", jobs, job)
    deadline = clock() + timeout_s
    while True:
        done, failure = job_state(api.call("GET", f"{jobs}/{name}"))
        if failure:
            raise DeployFailed(f"image build job {name} failed: {failure}")
        if done:
            return
        if clock() >= deadline:
            raise DeployFailed(f"image build job {name} not finished after {timeout_s:.0f} s")
        sleep(poll_s)


def deploy_release(
    api: KubeApi,
    http: httpx.Client,
    *,
    target: Target,
    bento_tag: str,
    archive: str,
    image_repository: str,
    build_namespace: str,
    build_template: str,
    build_timeout_s: float,
    rollout_timeout_s: float,
    set_tag: SetTag,
    poll_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> Outcome:
    """Build the image of `bento_tag`, roll it out, verify, record; roll back on failure.

    The image tag is the Bento version, so one Bento always maps to one image.
    """
    name, _, version = bento_tag.partition(":")
    image = f"{image_repository}:{version}"
    waits = {"poll_s": poll_s, "clock": clock, "sleep": sleep}
    try:
        build_image(api, build_namespace, build_template, name=f"{name}-build-{version}"[:63],
                    image=image, archive=archive, timeout_s=build_timeout_s, **waits)  # fmt: skip
    except (DeployFailed, KubeError) as e:
        # Nothing was changed on the cluster's serving side: no rollback needed.
        outcome = Outcome(False, image, "", bento_tag, f"image build: {e}")
    else:
        outcome = roll_out(api, http, target, image, bento_tag, timeout_s=rollout_timeout_s,
                           **waits)  # fmt: skip
    record_outcome(outcome, target, set_tag, now())
    return outcome
