"""Releases follow the registry (roadseg/release/follow.py): the MLflow webhook receiver's
signature and timestamp checks, which events it acts on, and the reconciler over a temporary
SQLite registry. The release itself (package + deploy) is faked at the `Release` boundary, the
way tests/unit/test_deploy.py replays the API server: nothing is built or served here."""

from __future__ import annotations

import json
import time
from pathlib import Path
from unittest.mock import patch

import pytest
from mlflow import MlflowClient
from starlette.testclient import TestClient
from typer.testing import CliRunner

from roadseg.cli import app as cli
from roadseg.release.follow import (
    FOLLOW_TAG,
    Follower,
    ReleaseOutcome,
    follow_champion,
    problem,
    signature,
    signed_headers,
    webhook_app,
)
from roadseg.serve.errors import problem_body

NAME = "roadseg-test"
SECRET = "s3cret-for-tests"
NOW = 1_800_000_000.0


class FakeRelease:
    """Serves whatever it was last asked to release; counts the releases."""

    def __init__(self, served: str | None = None, ok: bool = True) -> None:
        self.served, self.ok, self.calls = served, ok, []

    def deployed_version(self, name: str) -> str | None:
        return self.served

    def release(self, name: str, version: str) -> ReleaseOutcome:
        self.calls.append((name, version))
        if not self.ok:
            return ReleaseOutcome(False, "rollout failed; rolled back", f"roadseg:v{version}")
        self.served = version
        return ReleaseOutcome(True, "rollout finished", f"roadseg:v{version}")


@pytest.fixture
def registry(tmp_path: Path) -> tuple[str, MlflowClient]:
    """Two registered versions of NAME, v1 the champion."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    for _ in range(2):
        client.create_model_version(NAME, source=str(tmp_path / "model"))
    client.set_registered_model_alias(NAME, "champion", "1")
    return uri, client


def delivery(name: str = NAME, alias: str = "champion", version: str = "2",
             entity: str = "model_version_alias", action: str = "created") -> bytes:  # fmt: skip
    """A delivery body as MLflow's webhook delivery writes it."""
    doc = {"entity": entity, "action": action, "timestamp": "2027-01-15T08:00:00+00:00",
           "data": {"name": name, "alias": alias, "version": version}}  # fmt: skip
    return json.dumps(doc).encode()


def post(client: TestClient, body: bytes, *, secret: str = SECRET, at: float = NOW,
         delivery_id: str = "d-1", **override: str):  # fmt: skip
    headers = signed_headers(secret, body, delivery_id=delivery_id, timestamp=at) | override
    return client.post("/webhook", content=body, headers=headers)


def receiver(follower: Follower, now: float = NOW) -> TestClient:
    return TestClient(webhook_app(follower, SECRET, tolerance_s=300, clock=lambda: now))


def wait_for_result(follower: Follower, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while follower.last is None and time.monotonic() < deadline:
        time.sleep(0.02)


# --- what MLflow sends ----------------------------------------------------------------------


def test_signature_is_the_one_mlflow_delivery_computes() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = delivery().decode()
    assert signature(SECRET, "abc", "1800000000", body.encode()) == _generate_hmac_signature(
        SECRET, "abc", "1800000000", body
    )


def test_a_delivery_made_by_mlflow_itself_is_accepted(registry) -> None:
    """MLflow's own request builder (`_send_webhook_request`), captured instead of sent, then
    replayed into the receiver: same headers, same bytes."""
    from mlflow.entities.webhook import Webhook, WebhookEvent, WebhookStatus
    from mlflow.webhooks.delivery import _send_webhook_request
    from mlflow.webhooks.types import ModelVersionAliasCreatedPayload

    class Capture:
        def post(self, url, data, headers, timeout):
            self.data, self.headers = data, headers

    event = WebhookEvent.from_str("model_version_alias.created")
    hook = Webhook(webhook_id="w1", name="roadseg-follow", url="https://8.8.8.8/webhook",
                   events=[event], status=WebhookStatus.ACTIVE, secret=SECRET,
                   creation_timestamp=0, last_updated_timestamp=0)  # fmt: skip
    sent = Capture()
    payload = ModelVersionAliasCreatedPayload(name=NAME, alias="champion", version="2")
    _send_webhook_request(hook, payload, event, sent)
    uri, _ = registry
    follower = Follower(NAME, FakeRelease("1"), tracking_uri=uri)
    with patch.object(follower, "request") as request:
        client = TestClient(webhook_app(follower, SECRET))
        r = client.post("/webhook", content=sent.data, headers=sent.headers)
    assert r.status_code == 202, r.text
    assert r.json()["version"] == "2"
    request.assert_called_once_with(force=True)


# --- refused: nothing changes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"secret": "not-the-secret"}, "bad_signature"),
        ({"X-MLflow-Signature": "v1,AAAA"}, "bad_signature"),
        ({"X-MLflow-Signature": ""}, "unauthorized"),
        ({"at": NOW - 301}, "stale_timestamp"),  # a captured delivery replayed later
        ({"at": NOW + 301}, "stale_timestamp"),
    ],
    ids=["wrong-secret", "forged", "unsigned", "stale", "future"],
)
def test_refused_deliveries_answer_401_and_change_nothing(registry, kwargs, code) -> None:
    uri, client = registry
    release = FakeRelease("1")
    follower = Follower(NAME, release, tracking_uri=uri)
    with patch.object(follower, "request") as request:
        r = post(receiver(follower), delivery(), **kwargs)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == problem_body(401, code, r.json()["detail"])
    request.assert_not_called()
    assert release.calls == [] and FOLLOW_TAG not in client.get_model_version(NAME, "2").tags


def test_a_tampered_body_is_refused() -> None:
    follower = Follower(NAME, FakeRelease("1"), tracking_uri="sqlite:///:memory:")
    headers = signed_headers(SECRET, delivery(version="2"), delivery_id="d", timestamp=NOW)
    with patch.object(follower, "request") as request:
        r = receiver(follower).post("/webhook", content=delivery(version="1"), headers=headers)
    assert r.status_code == 401 and r.json()["error"] == "bad_signature"
    request.assert_not_called()


def test_problem_body_is_the_services() -> None:
    assert problem(401, "bad_signature", "x") == problem_body(401, "bad_signature", "x")
    assert problem(413, "too_large", "y") == problem_body(413, "too_large", "y")


def test_a_receiver_without_a_secret_is_refused() -> None:
    follower = Follower(NAME, FakeRelease(), tracking_uri="sqlite:///:memory:")
    with pytest.raises(ValueError, match="secret"):
        webhook_app(follower, "")
    r = CliRunner().invoke(cli, ["follow", "--listen"], env={"ROADSEG_WEBHOOK_SECRET": ""})
    assert r.exit_code == 2 and "secret" in r.output


def test_follow_once_without_a_champion_exits_0(tmp_path: Path) -> None:
    """The command end to end, up to the registry: an unset alias is nothing to do."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns.db'}"}
    r = CliRunner().invoke(cli, ["follow", "--once"], env=env)
    assert r.exit_code == 0, r.output
    assert "no_champion" in r.output


# --- accepted -------------------------------------------------------------------------------


def test_a_good_delivery_for_the_champion_follows_exactly_once(registry) -> None:
    uri, client = registry
    release = FakeRelease("1")
    follower = Follower(NAME, release, tracking_uri=uri)
    client.set_registered_model_alias(NAME, "champion", "2")  # the move that sent the event
    follower.start(poll_s=None)
    try:
        web = receiver(follower)
        r = post(web, delivery(version="2"))
        assert r.status_code == 202 and r.json()["action"] == "sync requested"
        wait_for_result(follower)
        again = post(web, delivery(version="2"))  # MLflow's retry of the same delivery
        assert again.status_code == 200 and again.json()["action"] == "duplicate"
        time.sleep(0.2)
    finally:
        follower.stop(timeout=10)
    assert release.calls == [(NAME, "2")]
    assert follower.last.action == "deployed"
    tags = client.get_model_version(NAME, "2").tags
    assert tags[FOLLOW_TAG] == "deployed" and tags["follow_reason"] == "rollout finished"


@pytest.mark.parametrize(
    "body",
    [
        delivery(alias="challenger"),
        delivery(name="another-model"),
        delivery(entity="model_version_tag", action="set"),
        delivery(entity="model_version_alias", action="deleted"),
    ],
    ids=["other-alias", "other-model", "tag-event", "alias-deleted"],
)
def test_other_events_are_ignored(registry, body) -> None:
    uri, _ = registry
    follower = Follower(NAME, FakeRelease("1"), tracking_uri=uri)
    with patch.object(follower, "request") as request:
        r = post(receiver(follower), body)
    assert r.status_code == 200 and r.json()["action"] == "ignored"
    request.assert_not_called()


def test_the_event_version_is_not_trusted_the_registry_is(registry) -> None:
    """A late delivery for v2 after the alias went back to v1: v1 stays served."""
    uri, _ = registry
    release = FakeRelease("1")
    follower = Follower(NAME, release, tracking_uri=uri)
    follower.start(poll_s=None)
    try:
        assert post(receiver(follower), delivery(version="2")).status_code == 202
        wait_for_result(follower)
    finally:
        follower.stop(timeout=10)
    assert follower.last.action == "none" and release.calls == []


# --- the reconciler -------------------------------------------------------------------------


def test_reconciler_does_nothing_while_the_champion_is_served_and_follows_a_move(
    registry,
) -> None:
    uri, client = registry
    release = FakeRelease("1")
    follower = Follower(NAME, release, tracking_uri=uri)
    assert follower.sync().action == "none" and release.calls == []

    client.set_registered_model_alias(NAME, "champion", "2")  # `roadseg promote`
    assert follower.sync().action == "deployed" and release.calls == [(NAME, "2")]
    assert follower.sync().action == "none" and len(release.calls) == 1  # idempotent

    client.set_registered_model_alias(NAME, "champion", "1")  # a rollback in the MLflow UI
    result = follower.sync()
    assert result.action == "deployed" and release.calls[-1] == (NAME, "1")
    assert result.bento_tag == "roadseg:v1"


def test_follow_champion_is_idempotent() -> None:
    release = FakeRelease("3")
    assert follow_champion("3", name=NAME, release=release).action == "none"
    assert follow_champion("4", name=NAME, release=release).action == "deployed"
    assert follow_champion("4", name=NAME, release=release).action == "none"
    assert release.calls == [(NAME, "4")]


def test_a_failed_version_is_not_rebuilt_on_every_tick(registry) -> None:
    uri, client = registry
    clock = [NOW]
    release = FakeRelease("1", ok=False)
    follower = Follower(NAME, release, tracking_uri=uri, retry_after_s=3600,
                        clock=lambda: clock[0])  # fmt: skip
    client.set_registered_model_alias(NAME, "champion", "2")
    assert follower.sync().action == "failed"
    assert client.get_model_version(NAME, "2").tags[FOLLOW_TAG] == "failed"
    clock[0] += 60
    waiting = follower.sync()
    assert waiting.action == "waiting" and "next try in 3540 s" in waiting.reason
    assert len(release.calls) == 1
    assert follower.sync(force=True).action == "failed"  # a webhook: the alias moved again
    clock[0] += 3600
    release.ok = True
    assert follower.sync().action == "deployed" and len(release.calls) == 3


def test_no_champion_is_reported_not_raised(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    result = Follower("nothing-here", FakeRelease(), tracking_uri=uri).sync()
    assert result.action == "no_champion"


def test_the_timer_reconciles_without_any_event(registry) -> None:
    uri, client = registry
    release = FakeRelease("1")
    follower = Follower(NAME, release, tracking_uri=uri)
    client.set_registered_model_alias(NAME, "champion", "2")
    follower.start(poll_s=0.1)
    try:
        deadline = time.monotonic() + 20
        while not release.calls and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        follower.stop(timeout=10)
    assert release.calls == [(NAME, "2")]


# --- int8 (--int8 DATA_DIR) ------------------------------------------------------------------


def test_follow_int8_needs_a_directory(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["follow", "--once", "--int8", str(tmp_path / "missing")])
    said = " ".join(r.output.split())  # the console wraps long lines
    assert r.exit_code == 2 and f"--int8 {tmp_path / 'missing'}: not a directory" in said


def test_every_release_target_tries_int8_on_the_given_dataset(tmp_path: Path, monkeypatch) -> None:
    """`--int8 DIR` reaches the packaging of both targets; without it, no int8 is tried."""
    import roadseg.release.packaging as packaging
    import roadseg.release.rollout as rollout
    from roadseg.cli.follow import _release_target
    from roadseg.config import load_params

    seen: list[tuple[str, object]] = []

    def fake_step(registration, params, **kw):
        seen.append(("cluster", kw["int8_data"]))
        return {"packaged": False, "reason": "recorded"}

    def fake_package(uri, **kw):
        seen.append(("local", kw["int8_data"]))
        raise RuntimeError("recorded")

    monkeypatch.setattr(rollout, "package_step", fake_step)
    monkeypatch.setattr(packaging, "package_model", fake_package)
    p = load_params()
    for int8 in (tmp_path, None):
        for target in ("cluster", "local"):
            release = _release_target(p, target, uri="sqlite:///:memory:", params=None,
                                      serve_port=1, export_dir=tmp_path, int8_data=int8)  # fmt: skip
            assert not release.release(NAME, "3").ok
    assert seen == [("cluster", tmp_path), ("local", tmp_path), ("cluster", None), ("local", None)]
