"""The service as an in-process ASGI app for tests (no `bentoml serve`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest


def fresh_service_asgi():
    """`RoadSegService`'s ASGI app for in-process tests.

    BentoML and the service register their Prometheus metrics in the process-global registry, so
    a second app in one pytest process would fail with DuplicateTimeseries; the collectors an
    earlier app registered are dropped first (each test module builds its own app).
    """
    import prometheus_client

    registry = prometheus_client.REGISTRY
    for collector, names in list(registry._collector_to_names.items()):
        if any(n.startswith(("bentoml_", "roadseg_")) for n in names):
            registry.unregister(collector)
    from bento.service import RoadSegService

    return RoadSegService.to_asgi()


@contextlib.contextmanager
def in_process_service(tmp: Path, params_edits: dict[str, str], api_key: str):
    """A random base-4 U-Net checkpoint served by a fresh in-process app, with `params_edits`
    (text replacements of params.yaml) and the API key; yields (client, model, spec)."""
    from starlette.testclient import TestClient

    from roadseg.testing import params_with, save_random_checkpoint

    ckpt = tmp / "model.pt"
    model, spec = save_random_checkpoint(ckpt, base_channels=4, seed=0, epoch=3)
    env = {
        "ROADSEG_MODEL_URI": str(ckpt),
        "ROADSEG_MONITOR_DIR": str(tmp / "monitoring"),
        "ROADSEG_API_KEY": api_key,
        "ROADSEG_PARAMS": str(params_with(tmp / "params.yaml", params_edits)),
    }
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        with TestClient(fresh_service_asgi()) as client:
            yield client, model, spec
    finally:
        mp.undo()
