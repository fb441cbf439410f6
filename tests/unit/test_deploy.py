"""The deploy step's logic over replayed Kubernetes API responses: rollout wait, timeout,
rollback, the image-build Job, and the MLflow tags written for each outcome."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest
import yaml

from roadseg.release.deploy import (
    KubeApi,
    KubeError,
    Target,
    deploy_release,
    image_build_job,
    roll_out,
    rollout_state,
)
from tests.kube_fake import (
    DEPLOYMENT,
    JOBS,
    TEMPLATE_CM,
    FakeApiServer,
    FakeClock,
    deployment,
    job,
    service,
)

REPO = Path(__file__).resolve().parents[2]
OLD, NEW = "ghcr.io/roadseg/roadseg-service:old1", "ghcr.io/roadseg/roadseg-service:abc123"
TAG = "roadseg:abc123"
TARGET = Target("roadseg", "roadseg-service", "bento", "http://svc:3000")
JOB_NAME = "roadseg-build-abc123"
NOW = dt.datetime(2026, 5, 4, 12, 30, tzinfo=dt.UTC)


def _api(server: FakeApiServer) -> KubeApi:
    return KubeApi("https://k8s.test", token="t", transport=server.transport)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (deployment(NEW, generation=3, observed=2), (False, None)),  # controller not caught up
        (deployment(NEW, replicas=2, updated=1), (False, None)),  # one pod still old
        (deployment(NEW, replicas=2, total=3), (False, None)),  # old pod terminating
        (deployment(NEW, replicas=2, available=1), (False, None)),  # new pod not ready
        (deployment(NEW, replicas=2), (True, None)),
    ],
)
def test_rollout_state_reads_the_status_like_kubectl(state, expected) -> None:
    assert rollout_state(state) == expected


def test_progress_deadline_is_a_failure() -> None:
    done, failure = rollout_state(deployment(NEW, updated=1, deadline_exceeded=True))
    assert not done and "progress deadline exceeded" in failure and "timed out" in failure


def test_rollout_waits_until_finished_then_checks_the_service() -> None:
    server = FakeApiServer(
        {
            ("GET", DEPLOYMENT): [
                deployment(OLD),  # before: the previous image
                deployment(NEW, generation=2, observed=1),
                deployment(NEW, generation=2, updated=1),
                deployment(NEW, generation=2),
            ],
            ("PATCH", DEPLOYMENT): [deployment(NEW, generation=2, observed=1)],
        }
    )
    clock = FakeClock()
    out = roll_out(_api(server), httpx.Client(transport=service(TAG)), TARGET, NEW, TAG,
                   timeout_s=60, poll_s=5, clock=clock, sleep=clock.sleep)  # fmt: skip
    assert out.ok and out.previous_image == OLD and out.rolled_back is None
    assert server.patched_images() == [NEW]
    patch = next(b for m, _, b in server.calls if m == "PATCH")
    assert patch["spec"]["template"]["metadata"]["annotations"] == {"roadseg.io/bento-tag": TAG}
    assert clock.sleeps == [5, 5]  # two polls saw it unfinished


def test_rollout_timeout_rolls_back_to_the_previous_image() -> None:
    stuck = deployment(NEW, generation=2, updated=1)
    server = FakeApiServer(
        {
            ("GET", DEPLOYMENT): [deployment(OLD), stuck, stuck, stuck, stuck, deployment(OLD)],
            ("PATCH", DEPLOYMENT): [stuck],
        }
    )
    clock = FakeClock()
    out = roll_out(_api(server), httpx.Client(transport=service(TAG)), TARGET, NEW, TAG,
                   timeout_s=12, poll_s=5, clock=clock, sleep=clock.sleep)  # fmt: skip
    assert not out.ok and out.rolled_back is True
    assert "not finished after 12 s" in out.reason
    assert server.patched_images() == [NEW, OLD]
    assert clock.sleeps[:3] == [5, 5, 5]  # polled at 0, 5, 10, 15 s, then gave up


def test_wrong_version_reported_by_the_service_rolls_back() -> None:
    server = FakeApiServer(
        {("GET", DEPLOYMENT): [deployment(OLD), deployment(NEW)], ("PATCH", DEPLOYMENT): [{}]}
    )
    http = httpx.Client(transport=service("roadseg:old1"))
    clock = FakeClock()
    out = roll_out(_api(server), http, TARGET, NEW, TAG, timeout_s=60, clock=clock,
                   sleep=clock.sleep)  # fmt: skip
    assert (
        not out.ok and "reports bento_tag 'roadseg:old1', expected 'roadseg:abc123'" in out.reason
    )
    assert server.patched_images() == [NEW, OLD]


def test_unready_service_rolls_back() -> None:
    server = FakeApiServer(
        {("GET", DEPLOYMENT): [deployment(OLD), deployment(NEW)], ("PATCH", DEPLOYMENT): [{}]}
    )
    http = httpx.Client(transport=service(TAG, ready=503))
    out = roll_out(_api(server), http, TARGET, NEW, TAG, timeout_s=60, sleep=lambda s: None)
    assert not out.ok and out.reason == "http://svc:3000/readyz answered 503"
    assert server.patched_images() == [NEW, OLD]


def test_forbidden_patch_is_reported_with_the_call() -> None:
    server = FakeApiServer({("GET", DEPLOYMENT): [deployment(OLD)], ("PATCH", DEPLOYMENT): [403]})
    out = roll_out(_api(server), httpx.Client(transport=service(TAG)), TARGET, NEW, TAG,
                   timeout_s=5, sleep=lambda s: None)  # fmt: skip
    assert not out.ok and out.reason.startswith(f"PATCH {DEPLOYMENT}: HTTP 403")
    assert out.rolled_back is False  # the rollback patch was refused too


def _template() -> dict:
    return yaml.safe_load((REPO / "k8s/base/deploy/buildkit-job.yaml").read_text())


def test_build_job_template_gets_name_image_and_archive() -> None:
    filled = image_build_job(_template(), name=JOB_NAME, image=NEW, archive="runs:/r1/bento/x")
    assert filled["metadata"]["name"] == JOB_NAME
    spec = filled["spec"]["template"]["spec"]
    env = {c["name"]: {e["name"]: e.get("value") for e in c["env"]}
           for c in spec["initContainers"] + spec["containers"]}  # fmt: skip
    assert env["context"]["BENTO_ARCHIVE"] == env["buildkit"]["BENTO_ARCHIVE"] == "runs:/r1/bento/x"
    assert env["buildkit"]["IMAGE"] == NEW
    assert _template()["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] == ""
    broken = _template()
    broken["spec"]["template"]["spec"]["containers"][0]["env"] = []
    broken["spec"]["template"]["spec"]["initContainers"][0]["env"] = []
    with pytest.raises(KubeError, match="lacks env"):
        image_build_job(broken, name=JOB_NAME, image=NEW, archive="a")


def _release(server: FakeApiServer, http: httpx.Client, tags: dict) -> object:
    clock = FakeClock()
    return deploy_release(
        _api(server), http, target=TARGET, bento_tag=TAG, archive="runs:/r1/bento/x",
        image_repository="ghcr.io/roadseg/roadseg-service", build_namespace="roadseg",
        build_template="roadseg-buildkit-job", build_timeout_s=100, rollout_timeout_s=100,
        set_tag=tags.__setitem__, clock=clock, sleep=clock.sleep, now=lambda: NOW,
    )  # fmt: skip


def _cm() -> dict:
    return {"data": {"job.yaml": (REPO / "k8s/base/deploy/buildkit-job.yaml").read_text()}}


def test_release_builds_rolls_out_and_tags_the_version() -> None:
    server = FakeApiServer(
        {
            ("GET", TEMPLATE_CM): [_cm()],
            ("POST", JOBS): [job(JOB_NAME)],
            ("GET", f"{JOBS}/{JOB_NAME}"): [job(JOB_NAME), job(JOB_NAME, succeeded=1)],
            ("GET", DEPLOYMENT): [deployment(OLD), deployment(NEW, generation=2)],
            ("PATCH", DEPLOYMENT): [{}],
        }
    )
    tags: dict[str, str] = {}
    out = _release(server, httpx.Client(transport=service(TAG)), tags)
    assert out.ok and out.image == NEW  # image tag = the Bento version
    created = next(b for m, p, b in server.calls if (m, p) == ("POST", JOBS))
    assert created["metadata"]["name"] == JOB_NAME
    assert tags == {
        "deployed_image": NEW,
        "deployed_at": "2026-05-04T12:30:00+00:00",
        "deployed_to": "roadseg/roadseg-service",
        "deploy": "succeeded",
    }


def test_failed_build_leaves_serving_alone_and_tags_the_failure() -> None:
    server = FakeApiServer(
        {
            ("GET", TEMPLATE_CM): [_cm()],
            ("POST", JOBS): [job(JOB_NAME)],
            ("GET", f"{JOBS}/{JOB_NAME}"): [job(JOB_NAME, failed=True)],
        }
    )
    tags: dict[str, str] = {}
    out = _release(server, httpx.Client(transport=service(TAG)), tags)
    assert not out.ok
    assert not [c for c in server.calls if c[1] == DEPLOYMENT]  # the Deployment was not touched
    assert tags == {
        "deploy": "failed",
        "deploy_failure_reason": f"image build: image build job {JOB_NAME} failed: "
        "BackoffLimitExceeded: Job has reached the specified backoff limit; serving unchanged",
    }


def test_failed_rollout_is_tagged_with_the_reason_and_the_rollback() -> None:
    stuck = deployment(NEW, generation=2, deadline_exceeded=True, updated=1)
    server = FakeApiServer(
        {
            ("GET", TEMPLATE_CM): [_cm()],
            ("POST", JOBS): [job(JOB_NAME)],
            ("GET", f"{JOBS}/{JOB_NAME}"): [job(JOB_NAME, succeeded=1)],
            ("GET", DEPLOYMENT): [deployment(OLD), stuck, deployment(OLD, generation=3)],
            ("PATCH", DEPLOYMENT): [{}],
        }
    )
    tags: dict[str, str] = {}
    out = _release(server, httpx.Client(transport=service(TAG)), tags)
    assert not out.ok and server.patched_images() == [NEW, OLD]
    assert tags["deploy"] == "failed" and "deployed_image" not in tags
    assert tags["deploy_failure_reason"].startswith(
        "rollout of roadseg-service failed: progress deadline exceeded"
    )
    assert tags["deploy_failure_reason"].endswith("; rolled back")


def test_in_cluster_outside_a_pod_says_so(monkeypatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeError, match="not in a Kubernetes pod"):
        KubeApi.in_cluster()
