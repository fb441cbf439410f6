"""A live `mlflow server` killed mid-training: training carries on into a local fallback store."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from roadseg.config import load_params
from roadseg.testing import free_port
from roadseg.train.loop import train_model

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "server.log").open("wb"),
        start_new_session=True,  # the server forks uvicorn workers: kill the whole group
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if proc.poll() is not None:  # a broken server is a failure, never a skip
                log = (tmp_path / "server.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log}")
            time.sleep(1)
    else:
        _kill_group(proc)
        pytest.fail("mlflow server did not answer /health within 120 s")
    yield url, proc
    _kill_group(proc)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the server and its workers; killing only the parent leaves a worker serving."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_server_killed_mid_run(mlflow_server, tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    from roadseg.data.synth import synthesize_dataset

    url, proc = mlflow_server
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    torch.set_num_threads(1)
    data = tmp_path / "data"
    synthesize_dataset(data, train=4, val=2, test=0, height=32, width=48, seed=2)
    params = load_params(None, ["data.num_workers=0", "model.base_channels=4",
                                "train.image_size=[32,48]", "train.batch_size=2",
                                "train.epochs=3", f"train.checkpoint_dir={tmp_path / 'ck'}"])  # fmt: skip
    messages: list[str] = []

    def echo(message: str) -> None:
        messages.append(message)
        if message.startswith("epoch 1/3") and proc.returncode is None:
            _kill_group(proc)  # the tracking server dies after the first epoch was logged

    r = train_model(params, data, tracking_uri=url, progress=False, echo=echo)
    assert r.epochs_run == 3 and r.fell_back
    assert any("unreachable" in m for m in messages)
    assert (tmp_path / "ck/last.pt").is_file()
    local = MlflowClient(r.tracking_uri)
    run = local.get_run(r.run_id)
    assert run.data.tags["roadseg.fallback_from"] == url
    assert run.data.tags["roadseg.original_run_id"] != "None"
    # epoch 1 replayed from the lost run, epochs 2-3 logged locally
    assert [m.step for m in local.get_metric_history(r.run_id, "train_loss")] == [1, 2, 3]
    assert r.model_uri is not None
