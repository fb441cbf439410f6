"""A fake Kubernetes API server for the deploy step's tests: it replays API responses in order.

Objects have the shape the API server returns (apps/v1 Deployment, batch/v1 Job, v1 ConfigMap,
trimmed to the fields the deploy step reads); no cluster was available to record them live.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

NS = "roadseg"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NS}/deployments/roadseg-service"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
TEMPLATE_CM = f"/api/v1/namespaces/{NS}/configmaps/roadseg-buildkit-job"


def deployment(
    image: str,
    *,
    generation: int = 1,
    observed: int | None = None,
    replicas: int = 2,
    updated: int | None = None,
    total: int | None = None,
    available: int | None = None,
    deadline_exceeded: bool = False,
) -> dict[str, Any]:
    updated = replicas if updated is None else updated
    status = {
        "observedGeneration": generation if observed is None else observed,
        "replicas": replicas if total is None else total,
        "updatedReplicas": updated,
        "readyReplicas": updated if available is None else available,
        "availableReplicas": updated if available is None else available,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {
                "type": "Progressing",
                "status": "False" if deadline_exceeded else "True",
                "reason": "ProgressDeadlineExceeded"
                if deadline_exceeded
                else "NewReplicaSetAvailable",
                "message": 'ReplicaSet "roadseg-service-7d9f" has timed out progressing.'
                if deadline_exceeded
                else 'ReplicaSet "roadseg-service-7d9f" has successfully progressed.',
            },
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "roadseg-service", "namespace": NS, "generation": generation},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "bento", "image": image}]}},
        },
        "status": status,
    }


def job(name: str, *, succeeded: int = 0, failed: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"active": 0 if (succeeded or failed) else 1}
    if succeeded:
        status["succeeded"] = succeeded
        status["conditions"] = [{"type": "Complete", "status": "True"}]
    if failed:
        status["failed"] = 1
        status["conditions"] = [
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit"}
        ]  # fmt: skip
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "status": status}


class FakeApiServer:
    """Each (method, path) answers its queued responses in order; the last one repeats."""

    def __init__(self, routes: dict[tuple[str, str], Sequence[Any]]) -> None:
        self.routes = {k: list(v) for k, v in routes.items()}
        self.calls: list[tuple[str, str, Any]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        body = json.loads(request.content) if request.content else None
        self.calls.append((*key, body))
        queue = self.routes.get(key)
        if not queue:
            return httpx.Response(404, json={"kind": "Status", "reason": "NotFound"})
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, int):
            return httpx.Response(answer, json={"kind": "Status", "code": answer})
        return httpx.Response(200, json=answer)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def patched_images(self) -> list[str]:
        return [
            body["spec"]["template"]["spec"]["containers"][0]["image"]
            for method, path, body in self.calls
            if method == "PATCH" and path == DEPLOYMENT
        ]


def service(bento_tag: str | None, *, ready: int = 200) -> httpx.MockTransport:
    """The roadseg service's /readyz and /metadata."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/readyz":
            return httpx.Response(ready)
        if request.url.path == "/metadata":
            return httpx.Response(200, json={"bento_tag": bento_tag, "version": "3"})
        return httpx.Response(404)

    return httpx.MockTransport(handle)


class FakeClock:
    """time.monotonic/time.sleep stand-ins: sleeping advances the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
