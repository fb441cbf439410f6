"""Helpers for tests and benchmarks: a real `bentoml serve` subprocess, random models, params files."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_unet(
    *, base_channels: int = 4, seed: int = 0, overrides: Sequence[str] = (), **extra: Any
) -> tuple[Any, Any]:
    """An untrained U-Net (eval mode) and its `ModelSpec`, for tests and benchmarks.

    An untrained U-Net's logits are nearly flat, so it often answers one class everywhere;
    larger weights give masks with several classes, which content checks need. `overrides`
    are params overrides (e.g. `data.dataset=kitti_road` for the binary model); `extra` goes
    into the spec (e.g. `loss=`).
    """
    import torch

    from roadseg.config import load_params
    from roadseg.models import build_model
    from roadseg.models.spec import ModelSpec

    # The plain U-Net's spec (the params.yaml default is the pretrained encoder's U-Net)
    params = load_params(overrides=["model.name=unet", f"model.base_channels={base_channels}",
                                    *overrides])  # fmt: skip
    spec = ModelSpec.from_params(params, mean=(0.4, 0.4, 0.4), std=(0.25, 0.25, 0.25), **extra)
    torch.manual_seed(seed)
    model = build_model(
        "unet", in_channels=3, num_classes=spec.num_classes, base_channels=base_channels
    )
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval(), spec


def save_random_checkpoint(path: Path, *, epoch: int = 0, **kw: Any) -> tuple[Any, Any]:
    """`random_unet(**kw)` saved as a roadseg checkpoint (servable as ROADSEG_MODEL_URI=path)."""
    from roadseg.models.io import save_checkpoint

    model, spec = random_unet(**kw)
    save_checkpoint(path, {"model": model.state_dict(), "spec": spec.to_dict(), "epoch": epoch})
    return model, spec


def params_with(path: Path, replacements: dict[str, str]) -> Path:
    """Write the repository's params.yaml to `path` with each `old` text replaced by `new`
    (every `old` must occur: a renamed key fails loudly instead of being silently ignored)."""
    text = (REPO / "params.yaml").read_text()
    for old, new in replacements.items():
        if old not in text:
            raise ValueError(f"params.yaml has no {old!r}")
        text = text.replace(old, new)
    path.write_text(text)
    return path


def register_random_model(
    tracking_uri: str, *, base_channels: int = 4, name: str = "roadseg-unet", seed: int = 0
) -> str:
    """Log `random_unet` with `roadseg.models.io.log_model`, register it, alias `champion`.

    Returns the registered version.
    """
    import mlflow
    from mlflow import MlflowClient

    from roadseg.config import load_params
    from roadseg.models.io import log_model

    mlflow.set_tracking_uri(tracking_uri)
    params = load_params(overrides=[f"model.base_channels={base_channels}"])
    model, spec = random_unet(base_channels=base_channels, seed=seed, loss="dice_ce")
    mlflow.set_experiment("roadseg-serve-test")
    with mlflow.start_run():
        mlflow.log_param("params_digest", params.digest())
        info = log_model(model, spec, registered_model_name=name)
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


def package_champion(tracking_uri: str, bentoml_home: Path, cwd: Path) -> str:
    """`roadseg package` of `roadseg-unet@champion` (weights + model.onnx) into `bentoml_home`,
    run from `cwd` (where the store's relative artifact paths resolve); the Bento's tag."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "BENTOML_HOME": str(bentoml_home)}
    cmd = [sys.executable, "-m", "roadseg.cli", "package", "--model-uri",
           "models:/roadseg-unet@champion"]  # fmt: skip
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"roadseg package failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def running_service(
    env: dict[str, str | None],
    *,
    port: int | None = None,
    timeout: float = 180.0,
    log_path: Path | None = None,
    target: str = "bento.service:RoadSegService",
    cwd: Path = REPO,
) -> Iterator[str]:
    """Run `bentoml serve <target>` (the service module, or a built Bento's tag) until /readyz
    answers 200; yield its URL. `env` is added to this process's environment; a None value
    removes the variable. The process group is always terminated on exit (then killed if it
    lingers).
    """
    import httpx

    port = port or free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        target,
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
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
