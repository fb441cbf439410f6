"""How the service starts, fails and stops (`bento/service.py` calls these).

- **Fail fast**: `check_model` loads the model once in BentoML's main process, before any worker
  is spawned; a model that cannot be served stops the server with exit code 1 and one line naming
  the URI and the cause (`StartFailure`), also written to the pod's termination message. Without
  it a worker's load failure is retried by BentoML's process manager forever.
- **No orphans**: `die_with_parent` makes a worker follow its manager: when the manager dies,
  even by SIGKILL, the kernel sends the worker SIGTERM (`PR_SET_PDEATHSIG`).
- **Drain**: SIGTERM to the manager stops the workers; uvicorn stops accepting, lets the
  requests in flight finish (at most `serve.drain_seconds`, `roadseg serve` passes it on) and
  then runs the service's shutdown hook, which flushes the monitoring log.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

DEFAULT_MODEL_URI = "models:/roadseg-unet@champion"
TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' default terminationMessagePath
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class StartFailure(SystemExit):
    """The service cannot start: Python prints the message (the one line a user reads) and exits
    with code 1."""


def model_source(service_file: str | Path) -> tuple[str | None, Path | None]:
    """(model URI, Bento directory) the service loads from: ROADSEG_MODEL_URI (any MLflow URI or
    checkpoint) when set; else, served from a built Bento, the model `roadseg package` put in it
    (no MLflow needed); else the registry's champion (development)."""
    from roadseg.models.bento import bento_of

    uri = os.environ.get("ROADSEG_MODEL_URI") or None
    bento_dir = None if uri else bento_of(service_file)
    return (uri or (None if bento_dir else DEFAULT_MODEL_URI)), bento_dir


def one_line(text: str, limit: int = 400) -> str:
    """The first non-empty line of an error text, bounded (MLflow's errors run to many lines)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else "unknown error"
    return first if len(first) <= limit else first[: limit - 3] + "..."


def start_failure(source: str, error: BaseException) -> StartFailure:
    """The one-line reason a model cannot be served, also left as the pod's termination message."""
    cause = one_line(str(error)) or type(error).__name__
    message = f"roadseg: cannot serve {source}: {cause}"
    write_termination_message(message)
    return StartFailure(message)


def write_termination_message(message: str, path: str | None = None) -> bool:
    """Write `message` where Kubernetes reads a container's last words (`kubectl describe pod`);
    False where there is no such file (outside a pod)."""
    target = Path(path or os.environ.get("ROADSEG_TERMINATION_LOG") or TERMINATION_LOG)
    if not target.parent.is_dir() or (not target.exists() and target.parent == Path("/dev")):
        return False
    try:
        target.write_text(message + "\n")
    except OSError:
        return False
    return True


def threads_setting(configured: int | None) -> int | None:
    """One inference's threads: ROADSEG_INTRA_OP_THREADS, else `serve.intra_op_threads`
    (None: the pod's CPU limit).

    Raises:
        ValueError: the variable is not a whole number of at least 1.
    """
    raw = os.environ.get("ROADSEG_INTRA_OP_THREADS")
    if not raw:
        return configured
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"ROADSEG_INTRA_OP_THREADS={raw!r} is not a whole number of at least 1")
    return int(raw)


def check_model(service_file: str | Path) -> dict[str, str]:
    """Load the model the service would serve, once, and let it go; raises `StartFailure` with the
    one-line reason (not found, unreachable registry, corrupt weights, wrong model kind)."""
    from roadseg.config import BACKEND_NAMES

    uri, bento_dir = model_source(service_file)
    source = uri or f"the model packaged in {bento_dir}"
    backend = os.environ.get("ROADSEG_BACKEND")
    if backend and backend not in BACKEND_NAMES:
        problem = ValueError(
            f"ROADSEG_BACKEND={backend!r} is not one of {', '.join(BACKEND_NAMES)}"
        )
        raise start_failure(source, problem)
    try:
        threads_setting(None)
    except ValueError as e:
        raise start_failure(source, e) from None
    try:
        if uri is not None:
            from roadseg.models.io import load_model
            from roadseg.tracking import configure_http

            configure_http()  # a few bounded retries, not MLflow's default of minutes
            _, spec, info = load_model(uri)
        else:
            from roadseg.models.bento import load_packaged_model

            _, spec, info = load_packaged_model(bento_dir=bento_dir)
        if (backend or _params_backend()) == "onnxruntime_int8":
            from roadseg.serve.backends import onnx_file_for

            onnx_file_for("onnxruntime_int8", info)  # Int8NotShipped: the one line says why
    except Exception as e:
        raise start_failure(source, e) from None
    return {"source": source, "model_name": spec.model_name, "version": str(info.get("version"))}


def _params_backend() -> str:
    """serve.backend of the params the service loads (ROADSEG_PARAMS or params.yaml)."""
    from roadseg.config import load_params

    return load_params(os.environ.get("ROADSEG_PARAMS") or None).serve.backend


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux); exit at once if
    the parent is already gone. False where the call is not available."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent == 1 or os.getppid() != parent:  # the parent died before the call took effect
        os.kill(os.getpid(), sig)
    return True
