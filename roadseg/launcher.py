"""Start and stop a real `bentoml serve` subprocess (integration tests and the benchmark)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_random_model(
    tracking_uri: str, *, base_channels: int = 4, name: str = "roadseg-unet", seed: int = 0
) -> str:
    """Log an untrained U-Net with `roadseg.modelio.log_model`, register it, alias `champion`.

    Returns the registered version.
    """
    import mlflow
    from mlflow import MlflowClient

    from roadseg.config import load_params
    from roadseg.modelio import log_model
    from roadseg.models import build_model
    from roadseg.serving import ModelSpec

    mlflow.set_tracking_uri(tracking_uri)
    params = load_params(overrides=[f"model.base_channels={base_channels}"])
    spec = ModelSpec.from_params(
        params, mean=(0.4, 0.4, 0.4), std=(0.25, 0.25, 0.25), loss="dice_ce"
    )
    import torch

    torch.manual_seed(seed)
    model = build_model(
        "unet", in_channels=3, num_classes=spec.num_classes, base_channels=base_channels
    )
    # An untrained U-Net's logits are nearly flat, so it often answers one class everywhere;
    # larger weights give masks with several classes, which content checks need.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    mlflow.set_experiment("roadseg-serve-test")
    with mlflow.start_run():
        mlflow.log_param("params_digest", params.digest())
        info = log_model(model, spec, registered_model_name=name)
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


@contextlib.contextmanager
def running_service(
    env: dict[str, str],
    *,
    port: int | None = None,
    timeout: float = 180.0,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Run `bentoml serve bento.service:RoadSegService` until /readyz answers 200; yield its URL.

    The process group is always terminated on exit (then killed if it lingers).
    """
    import httpx

    port = port or free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        "bento.service:RoadSegService",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {proc.returncode} (log: {log_path})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"service not ready within {timeout:.0f} s (log: {log_path})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        stop_process_group(proc)
        if log_path:
            log.close()


def stop_process_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group (server + its workers), SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
