"""Registration against a real `mlflow server` process over HTTP.

Backend store: a fresh PostgreSQL database at 127.0.0.1:5432 when a server answers there
(`ROADSEG_TEST_PG`, default postgresql://postgres@127.0.0.1:5432/postgres, needs psycopg2),
otherwise SQLite. Artifacts are proxied by the server (mlflow-artifacts:/), as on the cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from roadseg.config import RegisterParams
from roadseg.release.registry import Candidate, download_reference_profile, register_best
from roadseg.testing import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

PG_ADMIN = os.environ.get("ROADSEG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PARAMS = RegisterParams(model_name="roadseg-unet", min_miou=0.1, class_iou_floor=0.0, margin=0.01)


def _postgres_backend() -> Iterator[str | None]:
    """Yield the URI of a fresh PostgreSQL database (dropped afterwards), or None."""
    try:
        import psycopg2
    except ImportError:
        yield None
        return
    try:
        admin = psycopg2.connect(PG_ADMIN, connect_timeout=3)
    except psycopg2.OperationalError:
        yield None
        return
    admin.autocommit = True
    name = f"roadseg_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        # Explicit driver: psycopg2 is what the dev extra (and the MLflow image) installs.
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1)
        yield f"{base}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("mlflow-server")
    backends = _postgres_backend()
    backend = next(backends) or f"sqlite:///{tmp / 'mlflow.db'}"
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend, "--artifacts-destination", str(tmp / "artifacts"),
           "--workers", "1"]  # fmt: skip
    log = (tmp / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(1)
        yield url, backend.split(":", 1)[0]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        next(backends, None)  # drop the database


def _train_stand_in(uri: str, loss: str, miou: float) -> Candidate:
    """A run with a logged model and val metrics, logged over HTTP as training does."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bdd100k")
    with mlflow.start_run(run_name=loss) as run:
        mlflow.log_metric("best_val_miou", miou)
        info = mlflow.pytorch.log_model(torch.nn.Conv2d(3, 14, 1), name="model",
                                        serialization_format="pickle", pip_requirements=["torch"])  # fmt: skip
    per_class = [{"name": "road", "iou": miou + 0.2, "present": True}]
    return Candidate(loss, run.info.run_id, info.model_uri, {"miou": miou, "per_class": per_class})


def test_register_over_http(server: tuple[str, str], tmp_path: Path) -> None:
    url, backend = server
    print(f"mlflow server backend: {backend}")
    tags = {"dataset_version": "sha256:abc", "git_commit": "c0ffee", "params_hash": "h",
            "pipeline_run_id": "job-1"}  # fmt: skip
    profile = pd.DataFrame({"brightness": [0.2, 0.3, 0.4], "share_road": [0.3, 0.3, 0.4]})
    first = [_train_stand_in(url, "wce", 0.30), _train_stand_in(url, "dice_ce", 0.42)]
    r1 = register_best(
        first, PARAMS, tracking_uri=url, tags=tags, profile_builder=lambda c: profile
    )
    assert r1.promoted and r1.loss == "dice_ce"

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    champion = client.get_model_version_by_alias("roadseg-unet", "champion")
    assert str(champion.version) == r1.version and champion.tags["git_commit"] == "c0ffee"
    got = download_reference_profile("roadseg-unet", "champion", tracking_uri=url, dst=tmp_path)
    assert pd.read_csv(got).equals(profile)

    # A worse model: registered as challenger, champion unchanged, the reason on the version.
    r2 = register_best([_train_stand_in(url, "ohem", 0.35)], PARAMS, tracking_uri=url, tags=tags)
    assert not r2.promoted and r2.champion_version == r1.version
    assert str(client.get_model_version_by_alias("roadseg-unet", "champion").version) == r1.version
    v2 = client.get_model_version_by_alias("roadseg-unet", "challenger")
    assert v2.tags["promotion"] == "rejected" and "does not beat" in v2.tags["promotion_reason"]

    # The champion loads back through the registry as the serving side does.
    mlflow.set_tracking_uri(url)
    model = mlflow.pytorch.load_model("models:/roadseg-unet@champion")
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 14, 8, 8)
